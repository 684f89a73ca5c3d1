"""NGAME's negative-mining-aware mini-batching: a batch sampler that groups training points by
their current embeddings (balanced clusters), so that the positives of a point's batch-mates
are hard negatives for it, at no extra encoding cost."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numba
import numpy as np

from xmine.config import ClusterScheduleConfig
from xmine.errors import ConfigError
from xmine.sorting import stable_argsort


def balanced_clusters(embeddings: np.ndarray, cluster_size: int, rng: np.random.Generator,
                      iterations: int = 5) -> list[np.ndarray]:
    """Recursive balanced 2-means (spherical): split every node in two equal halves by the
    difference of its similarities to two centroids, until nodes hold <= cluster_size points.
    Returns the clusters as arrays of point indices; sizes differ by at most one within a level.

    A level is split at once by compiled code (`_split_level`), nodes in parallel: the nodes are
    segments of one permutation of the points, so a split writes its halves in place."""
    n = embeddings.shape[0]
    if cluster_size < 1:
        raise ConfigError(f"cluster size must be >= 1, got {cluster_size}")
    if cluster_size > n:
        raise ConfigError(f"cluster size {cluster_size} is larger than the training set ({n} points)")
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    perm = np.arange(n, dtype=np.int64)
    bounds = np.array([0, n], dtype=np.int64)  # node k is perm[bounds[k]:bounds[k + 1]]
    for _ in range(max(0, math.ceil(math.log2(n / cluster_size)))):
        starts, lengths = bounds[:-1], np.diff(bounds)
        split = lengths > cluster_size
        starts, lengths = starts[split], lengths[split]
        # two distinct seed points per node (lengths >= 2 here)
        first = rng.integers(0, lengths)
        second = rng.integers(0, lengths - 1)
        second += second >= first
        _split_level(x, perm, starts, lengths, first, second, iterations)
        bounds = np.union1d(bounds, starts + lengths // 2)
    return np.split(perm, bounds[1:-1])


@numba.njit(cache=True, nogil=True, inline="always")
def _dot(row: np.ndarray, v: np.ndarray) -> float:
    """row . v in float64 with four running sums in a fixed order (the same result on every machine)."""
    a0 = a1 = a2 = a3 = 0.0
    d = row.shape[0]
    j = 0
    while j + 4 <= d:
        a0 += row[j] * v[j]
        a1 += row[j + 1] * v[j + 1]
        a2 += row[j + 2] * v[j + 2]
        a3 += row[j + 3] * v[j + 3]
        j += 4
    while j < d:
        a0 += row[j] * v[j]
        j += 1
    return (a0 + a1) + (a2 + a3)


@numba.njit(cache=True, nogil=True)
def _add_row(total: np.ndarray, row: np.ndarray) -> None:
    """total += row (float64 += float32), element by element (why: xmine.sorting)."""
    for j in range(total.shape[0]):
        total[j] += row[j]


@numba.njit(cache=True, nogil=True)
def _difference(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a - b, element by element (why: xmine.sorting)."""
    for j in range(out.shape[0]):
        out[j] = a[j] - b[j]


@numba.njit(cache=True, nogil=True)
def _unit(v: np.ndarray) -> np.ndarray:
    """v / max(|v|, 1e-12), the squares summed left to right."""
    squares = 0.0
    for j in range(v.shape[0]):
        squares += v[j] * v[j]
    scale = max(np.sqrt(squares), 1e-12)
    out = np.empty_like(v)
    for j in range(v.shape[0]):
        out[j] = v[j] / scale
    return out


@numba.njit(cache=True, nogil=True, parallel=True)
def _split_level(x: np.ndarray, perm: np.ndarray, starts: np.ndarray, lengths: np.ndarray, first: np.ndarray,
                 second: np.ndarray, iterations: int) -> None:
    """Split each node perm[starts[k]:starts[k] + lengths[k]] in two halves, in place: centroids start at the
    node's points `first[k]` and `second[k]`; each iteration ranks the points by their preference for centroid 0
    over centroid 1 (stable, most preferred first), gives the first half to centroid 0 and the rest to 1, and
    moves both centroids to their half's normalised mean. The node is left in the last ranking's order."""
    d = x.shape[1]
    for k in numba.prange(starts.shape[0]):
        s, m = starts[k], lengths[k]
        half = m // 2
        idx = perm[s:s + m].copy()
        total = np.zeros(d)
        for i in range(m):
            _add_row(total, x[idx[i]])
        c0 = x[idx[first[k]]].astype(np.float64)
        c1 = x[idx[second[k]]].astype(np.float64)
        negative_preference = np.empty(m)
        diff = np.empty(d)
        rest = np.empty(d)
        order = np.arange(m)
        for it in range(iterations):
            _difference(c0, c1, diff)
            for i in range(m):
                negative_preference[i] = -_dot(x[idx[i]], diff)
            order = stable_argsort(negative_preference)
            if it == iterations - 1:
                break  # the centroids of the last ranking are not used
            sum0 = np.zeros(d)
            for i in range(half):
                _add_row(sum0, x[idx[order[i]]])
            _difference(total, sum0, rest)
            c0 = _unit(sum0)
            c1 = _unit(rest)
        for i in range(m):
            perm[s + i] = idx[order[i]]


class ClusterSchedule:
    """NGAME's curriculum resolved for a run of `epochs` epochs: random batches before
    `start_epoch`; afterwards re-cluster every `refresh_every` epochs with the cluster size in
    force at that epoch."""

    def __init__(self, config: ClusterScheduleConfig, epochs: int) -> None:
        self.config = config
        self.epochs = epochs
        to_epoch = (lambda v: int(round(v * epochs))) if config.unit == "fraction" else (lambda v: int(v))
        self.start_epoch = to_epoch(config.start)
        self.milestones = [to_epoch(m) for m in config.milestones]
        self.sizes = list(config.sizes)

    def cluster_size(self, epoch: int) -> int | None:
        """Points per cluster at `epoch`, or None for random batches."""
        if epoch < self.start_epoch:
            return None
        size = None
        for milestone, s in zip(self.milestones, self.sizes, strict=True):
            if epoch >= milestone:
                size = s
        return size if size is not None else self.sizes[0]

    def is_refresh_epoch(self, epoch: int) -> bool:
        if epoch < self.start_epoch:
            return False
        return (epoch - self.start_epoch) % self.config.refresh_every == 0 or (
            epoch in self.milestones and self.cluster_size(epoch) != self.cluster_size(epoch - 1))


class ClusterBatchSampler:
    """Yields batches of point indices. Before `update()` (or with cluster size None), batches are
    random; after, a batch is a concatenation of whole clusters, in shuffled order. Every point
    appears exactly once per epoch."""

    def __init__(self, n_points: int, batch_size: int, seed: int = 0, drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        self.n_points = n_points
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.clusters: list[np.ndarray] | None = None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def update(self, embeddings: np.ndarray, cluster_size: int | None) -> None:
        """Re-cluster from the points' current embeddings (None: back to random batches)."""
        if embeddings.shape[0] != self.n_points:
            raise ConfigError(f"sampler has {self.n_points} points, got {embeddings.shape[0]} embeddings")
        if cluster_size is None or cluster_size <= 1:
            self.clusters = None
            return
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        self.clusters = balanced_clusters(np.asarray(embeddings, dtype=np.float32), cluster_size, rng)

    def batches_of_clusters(self) -> Iterator[list[np.ndarray]]:
        """Each batch as its list of whole clusters (one part for a random batch); data-parallel training
        hands whole clusters to each rank."""
        rng = np.random.default_rng([self.seed, self.epoch, 2])
        if self.clusters is None:
            order = rng.permutation(self.n_points)
            batches = [[order[i:i + self.batch_size]] for i in range(0, self.n_points, self.batch_size)]
        else:
            batches, current, filled = [], [], 0
            for c in rng.permutation(len(self.clusters)):
                current.append(self.clusters[c])
                filled += len(self.clusters[c])
                if filled >= self.batch_size:
                    batches.append(current)
                    current, filled = [], 0
            if current:
                batches.append(current)
        for parts in batches:
            if self.drop_last and sum(len(p) for p in parts) < self.batch_size:
                continue
            yield parts

    def __iter__(self) -> Iterator[np.ndarray]:
        for parts in self.batches_of_clusters():
            yield np.concatenate(parts)

    def __len__(self) -> int:
        return math.ceil(self.n_points / self.batch_size)

    def state_dict(self) -> dict:
        return {"clusters": None if self.clusters is None else [c.tolist() for c in self.clusters],
                "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        clusters = state["clusters"]
        self.clusters = None if clusters is None else [np.asarray(c, dtype=np.int64) for c in clusters]
