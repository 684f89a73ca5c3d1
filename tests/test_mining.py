from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from xmine.config import ClusterScheduleConfig, IndexConfig
from xmine.errors import ConfigError
from xmine.mining import ClusterBatchSampler, ClusterSchedule, MIPSNegativeSampler, balanced_clusters


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_balanced_clusters_cover_every_point_once_and_are_balanced():
    rng = np.random.default_rng(0)
    clusters = balanced_clusters(_unit(rng, 1000, 8), 16, rng)
    allpoints = np.concatenate(clusters)
    assert np.array_equal(np.sort(allpoints), np.arange(1000))
    sizes = [len(c) for c in clusters]
    assert max(sizes) <= 16 and max(sizes) - min(sizes) <= 1


def _plain_balanced_clusters(x: np.ndarray, cluster_size: int, rng: np.random.Generator,
                             iterations: int = 5) -> list[np.ndarray]:
    """The same recursive balanced 2-means, node by node in numpy and float64: what the compiled levels must equal."""
    nodes = [np.arange(len(x))]
    while any(len(node) > cluster_size for node in nodes):
        lengths = np.array([len(node) for node in nodes if len(node) > cluster_size])
        first, second = rng.integers(0, lengths), rng.integers(0, lengths - 1)
        second += second >= first
        seeds = iter(zip(first, second, strict=True))
        next_nodes = []
        for node in nodes:
            if len(node) <= cluster_size:
                next_nodes.append(node)
                continue
            a, b = next(seeds)
            points, half = x[node].astype(np.float64), len(node) // 2
            c0, c1 = points[a], points[b]
            for it in range(iterations):
                order = np.argsort(-(points @ (c0 - c1)), kind="stable")
                if it < iterations - 1:
                    c0, c1 = (points[part].sum(0) / np.linalg.norm(points[part].sum(0))
                              for part in (order[:half], order[half:]))
            next_nodes += [node[order[:half]], node[order[half:]]]
        nodes = next_nodes
    return nodes


@pytest.mark.parametrize(("n", "d", "cluster_size"), [(1000, 8, 16), (777, 5, 3), (64, 16, 1), (513, 32, 100)])
def test_compiled_balanced_clusters_equal_the_plain_node_by_node_splits(n, d, cluster_size):
    x = _unit(np.random.default_rng(n), n, d)
    fast = balanced_clusters(x, cluster_size, np.random.default_rng(7))
    plain = _plain_balanced_clusters(x, cluster_size, np.random.default_rng(7))
    # the same clusters, in the same order, each with its points in the same order
    assert len(fast) == len(plain) and all(np.array_equal(f, p) for f, p in zip(fast, plain, strict=True))


def test_balanced_clusters_keep_duplicate_points_apart_only_by_their_order():
    # exact ties everywhere: every point appears once, the halves stay balanced, and the result is deterministic
    x = np.repeat(_unit(np.random.default_rng(3), 10, 4), 30, axis=0)
    a = balanced_clusters(x, 8, np.random.default_rng(1))
    b = balanced_clusters(x, 8, np.random.default_rng(1))
    assert np.array_equal(np.sort(np.concatenate(a)), np.arange(300))
    assert max(map(len, a)) <= 8 and max(map(len, a)) - min(map(len, a)) <= 1
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))


def test_cluster_size_larger_than_training_set_is_a_clear_error():
    with pytest.raises(ConfigError, match="larger than the training set"):
        balanced_clusters(np.zeros((10, 4), dtype=np.float32), 64, np.random.default_rng(0))


def test_sampler_yields_every_point_once_per_epoch_with_and_without_clusters():
    rng = np.random.default_rng(1)
    sampler = ClusterBatchSampler(1003, 100, seed=3)
    for clustered in (False, True):
        if clustered:
            sampler.update(_unit(rng, 1003, 8), 8)
        seen = np.concatenate(list(sampler))
        assert np.array_equal(np.sort(seen), np.arange(1003))


def test_cluster_batches_are_harder_than_random_batches():
    # points drawn around 50 centres: clustered batches hold similar points
    rng = np.random.default_rng(2)
    centres = _unit(rng, 50, 16)
    x = centres[rng.integers(0, 50, 2000)] + 0.3 * rng.normal(size=(2000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)

    def mean_batch_similarity(sampler: ClusterBatchSampler) -> float:
        sims = []
        for batch in sampler:
            s = x[batch] @ x[batch].T
            sims.append((s.sum() - np.trace(s)) / (len(batch) * (len(batch) - 1)))
        return float(np.mean(sims))

    random_sampler = ClusterBatchSampler(2000, 64, seed=0)
    clustered = ClusterBatchSampler(2000, 64, seed=0)
    clustered.update(x, 16)
    assert mean_batch_similarity(clustered) > mean_batch_similarity(random_sampler) + 0.05


def test_schedule_fraction_scales_and_epoch_unit_reproduces_the_paper():
    short = ClusterSchedule(ClusterScheduleConfig(unit="fraction", start=0.2, refresh_every=2,
                                                  milestones=[0.2, 0.6], sizes=[8, 32]), epochs=10)
    assert [short.cluster_size(e) for e in range(10)] == [None, None, 8, 8, 8, 8, 32, 32, 32, 32]
    assert [e for e in range(10) if short.is_refresh_epoch(e)] == [2, 4, 6, 8]
    paper = ClusterSchedule(ClusterScheduleConfig(unit="epoch", start=10, refresh_every=5,
                                                  milestones=[10, 20, 25, 50, 75, 100, 125, 150, 200],
                                                  sizes=[2, 4, 8, 16, 32, 64, 128, 256, 512]), epochs=300)
    assert paper.cluster_size(9) is None and paper.cluster_size(10) == 2 and paper.cluster_size(24) == 4
    assert paper.cluster_size(25) == 8 and paper.cluster_size(299) == 512
    assert paper.is_refresh_epoch(10) and paper.is_refresh_epoch(15) and not paper.is_refresh_epoch(16)


def _positives(rows: list[list[int]], n_labels: int) -> sp.csr_matrix:
    indptr = np.cumsum([0] + [len(r) for r in rows])
    return sp.csr_matrix((np.ones(indptr[-1]), np.concatenate(rows), indptr), shape=(len(rows), n_labels))


def test_mips_negatives_are_the_top_non_positive_labels_with_exact_index():
    rng = np.random.default_rng(4)
    labels, queries = _unit(rng, 300, 16), _unit(rng, 20, 16)
    scores = queries @ labels.T
    top = np.argsort(-scores, axis=1)
    positives = _positives([list(top[i, :3:2]) for i in range(20)], 300)  # the 1st and 3rd best are positives
    sampler = MIPSNegativeSampler(300, mips_negatives=5, uniform_negatives=0,
                                  index_config=IndexConfig(kind="exact"))
    sampler.rebuild(labels)
    hard = sampler.hard_negatives(queries, positives)
    for i in range(20):
        pos = set(positives[i].indices)
        expected = [j for j in top[i] if j not in pos][:5]
        assert list(hard[i]) == expected


def test_sampled_candidates_exclude_positives_have_no_duplicates_and_the_configured_mix():
    rng = np.random.default_rng(5)
    labels, queries = _unit(rng, 2000, 16), _unit(rng, 64, 16)
    positives = _positives([list(rng.choice(2000, 20, replace=False)) for _ in range(64)], 2000)
    sampler = MIPSNegativeSampler(2000, mips_negatives=5, uniform_negatives=100,
                                  index_config=IndexConfig(kind="exact"), seed=1)
    sampler.rebuild(labels)
    cand = sampler.sample(queries, positives)
    assert cand.shape == (64, 105)
    hard = sampler.hard_negatives(queries, positives)
    for i in range(64):
        row = cand[i]
        assert (row >= 0).all()
        assert len(set(row)) == len(row)
        assert not set(row) & set(positives[i].indices)
        assert list(row[:5]) == list(hard[i])  # the first 5 are the MIPS negatives
    # warm-up: all uniform
    warm = sampler.sample(queries, positives, use_mips=False)
    assert warm.shape == (64, 105) and (warm >= 0).all()


def test_uniform_negatives_on_a_tiny_label_space_pad_instead_of_repeating():
    positives = _positives([[0, 1], [2]], 6)
    sampler = MIPSNegativeSampler(6, mips_negatives=0, uniform_negatives=10, seed=0)
    cand = sampler.sample(None, positives, use_mips=False)
    assert set(cand[0][cand[0] >= 0]) <= {2, 3, 4, 5} and len(set(cand[0][cand[0] >= 0])) == 4
    assert (cand[0] == -1).sum() == 6


def test_is_in_equals_numpy_isin_and_shortlist_recall_counts_hits():
    from xmine.shortlist import recall_of_shortlist
    from xmine.topk import is_in

    rng = np.random.default_rng(0)
    for n_values, n_pool in ((1000, 50), (50, 1000), (300, 0), (0, 10)):
        values, pool = rng.integers(-5, 200, n_values), rng.integers(-5, 200, (n_pool, 1)) if n_pool else []
        assert np.array_equal(is_in(values, pool), np.isin(values, pool))
    cand = np.array([[3, 1, -1], [0, -1, -1]])
    labels = sp.csr_matrix(np.array([[0, 1, 1, 1], [1, 1, 0, 0]]))
    assert recall_of_shortlist(cand, labels) == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)
