"""Per-label linear classifiers over [dense embedding (+) sparse features].

score(x, l) = <w_l, e(x)> + b_l + sum_f x_f * v[h(l, f)]

The dense part w_l (one d-vector per label) starts from the label's normalised encoder embedding
(NGAME stage 2). The sparse part is a one-vs-all linear model over TF-IDF features whose weights
live in a hashed table v of fixed size: memory does not grow with labels x features, and only
(label, feature) pairs that meet in training get trained, as in a sparse linear XMC model.
Scores are only ever computed for candidate pairs (a shortlist), never as a dense n x L matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numba
import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from xmine.config import FeatureSet
from xmine.errors import XmineError
from xmine.safeio import json_field, load_state_dict_into, load_tensors, model_error
from xmine.topk import PARALLEL_ROWS, csr_row_topk, pair_dots, unique_ids
from xmine.utils import atomic_torch_save

_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xC2B2AE3D27D4EB4F)
_K3 = np.uint64(0x165667B19E3779F9)


def hash_pairs(labels: np.ndarray, features: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket of each (label, feature) pair: a multiplicative hash, top bits kept (`_bucket`, the one definition
    the compiled scoring kernels use too)."""
    shift = _hash_shift(buckets)
    labels, features = np.broadcast_arrays(np.asarray(labels, dtype=np.int64), np.asarray(features, dtype=np.int64))
    return _hash_pairs_kernel(labels.ravel(), features.ravel(), shift).reshape(labels.shape)


def _hash_shift(buckets: int) -> int:
    """The right shift that keeps log2(buckets) top bits of the 64-bit hash (64: one bucket)."""
    bits = int(buckets).bit_length() - 1
    if 1 << bits != buckets:
        raise XmineError(f"hash_buckets must be a power of two, got {buckets}")
    return 64 - bits


class LabelClassifiers(nn.Module):
    def __init__(self, n_labels: int, dim: int, features: FeatureSet, hash_buckets: int = 1 << 22,
                 max_sparse_features: int = 32, sparse_grad: bool = False, pair_kernel: bool = False) -> None:
        super().__init__()
        # sparse_grad: the dense weights' gradient holds only the rows a batch scored (for a row-wise optimizer,
        # whose step then costs those rows, not all L); a training setting, not saved
        self.sparse_grad = sparse_grad
        # pair_kernel: training on CPU scores the dense part pair by pair in compiled code (DensePairScores)
        # instead of a product against the batch's distinct candidates; a training setting, not saved
        self.pair_kernel = pair_kernel
        self.n_labels, self.dim_dense, self.features, self.hash_buckets = n_labels, dim, features, hash_buckets
        self.max_sparse_features = max_sparse_features
        self.use_dense = features in ("dense", "dense+sparse")
        self.use_sparse = features in ("sparse", "dense+sparse")
        self.weight = nn.Parameter(torch.zeros(n_labels, dim)) if self.use_dense else None
        self.bias = nn.Parameter(torch.zeros(n_labels))
        # dense gradients: for a table of a few million buckets, a dense Adagrad step is faster on CPU than
        # coalescing the sparse gradient of the ~10^6 lookups of a batch. Only its weight is used (see
        # _sparse_scores); the module stays so that saved models keep their "sparse_table.weight" key.
        self.sparse_table = nn.EmbeddingBag(hash_buckets, 1, mode="sum") if self.use_sparse else None
        if self.sparse_table is not None:
            nn.init.zeros_(self.sparse_table.weight)
        # labels from this id on were added after training (xmine.labels): the hashed table has nothing for them
        self.sparse_trained_labels: int | None = None

    def init_dense(self, label_embeddings: np.ndarray) -> None:
        """NGAME: each classifier starts as its label's normalised encoder embedding."""
        if self.weight is None:
            return
        if label_embeddings.shape != (self.n_labels, self.dim_dense):
            raise XmineError(f"label embeddings of shape {label_embeddings.shape} do not match "
                             f"{(self.n_labels, self.dim_dense)}")
        emb = label_embeddings / np.maximum(np.linalg.norm(label_embeddings, axis=1, keepdims=True), 1e-12)
        with torch.no_grad():
            self.weight.copy_(torch.from_numpy(emb.astype(np.float32)))

    def dense_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.weight, self.bias) if p is not None]

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.sparse_table.weight] if self.sparse_table is not None else []

    def score(self, embeddings: torch.Tensor | None, sparse_x: sp.csr_matrix | None,
              candidates: np.ndarray) -> torch.Tensor:
        """Scores (B, C) of candidate labels (B, C) (entries < 0 are padding, scored 0)."""
        cand_ids = np.maximum(candidates, 0)
        cand = torch.from_numpy(cand_ids).to(self.bias.device)
        # index_select rather than [] indexing: its backward is an index_add, several times faster on CPU
        # than the sorting index_put that advanced indexing backpropagates through
        out = self.bias.index_select(0, cand.reshape(-1)).view(cand.shape)
        if self.use_dense:
            if embeddings is None:
                raise XmineError("these classifiers need dense embeddings")
            if not torch.is_grad_enabled() and self.weight.device.type == "cpu":
                # prediction: one compiled dot product per (point, candidate) pair, no gathered copy of rows
                dense = pair_dots(embeddings.numpy(), self.weight.detach().numpy(), cand_ids)
                return self._with_sparse(out + torch.from_numpy(dense), sparse_x, candidates)
            if self.pair_kernel and self.weight.device.type == "cpu":
                dense = DensePairScores.apply(embeddings, self.weight, np.ascontiguousarray(cand_ids, dtype=np.int64),
                                              self.sparse_grad)
                return self._with_sparse(out + dense, sparse_x, candidates)
            # training: score against the batch's distinct candidates only, then pick: avoids materialising a
            # (B, C, d) tensor of gathered weights (the dominant cost of a step otherwise)
            unique, inverse = (torch.from_numpy(a).to(cand.device) for a in unique_ids(cand_ids, self.bias.shape[0]))
            rows = nn.functional.embedding(unique, self.weight, sparse=True) if self.sparse_grad else \
                self.weight.index_select(0, unique)
            dense = embeddings @ rows.T  # (B, U)
            out = out + dense.gather(1, inverse)
        return self._with_sparse(out, sparse_x, candidates)

    def _with_sparse(self, out: torch.Tensor, sparse_x: sp.csr_matrix | None, candidates: np.ndarray
                     ) -> torch.Tensor:
        """`out` plus the hashed sparse features' scores, for classifiers that use them."""
        if not self.use_sparse:
            return out
        if sparse_x is None:
            raise XmineError("these classifiers need sparse features")
        sparse = self._sparse_scores(sparse_x, candidates)
        if self.sparse_trained_labels is not None and self.sparse_trained_labels < self.n_labels:
            sparse = sparse * torch.from_numpy(candidates < self.sparse_trained_labels).to(sparse.device)
        return out + sparse

    def _sparse_scores(self, sparse_x: sp.csr_matrix, candidates: np.ndarray) -> torch.Tensor:
        """(B, C) hashed-table scores: for each (point, candidate label) pair, the sum over the point's strongest
        `max_sparse_features` features f of x_f * table[h(label, f)] (padding candidates < 0 read label 0)."""
        sparse_x = csr_row_topk(sparse_x, self.max_sparse_features)
        table = self.sparse_table.weight.view(-1)
        labels = np.ascontiguousarray(np.maximum(candidates, 0), dtype=np.int64)
        if table.device.type == "cpu":
            return HashedPairScores.apply(table, sparse_x, labels)
        return self._sparse_scores_gathered(table, sparse_x, labels)

    def _sparse_scores_gathered(self, table: torch.Tensor, sparse_x: sp.csr_matrix, labels: np.ndarray
                                ) -> torch.Tensor:
        """`_sparse_scores` with torch operations on the table's device (GPU): every (pair, feature) entry's
        bucket and value laid out as arrays, a gather, and an index_add per pair."""
        b, c = labels.shape
        nnz = np.diff(sparse_x.indptr)  # features per point
        # one bag per (point, candidate) pair holding the point's features hashed with the label
        pair_len = np.repeat(nnz, c)
        point_of_entry = np.repeat(np.arange(b), nnz * c)
        # position of each entry within its point's feature list, repeated for every candidate
        within = np.arange(pair_len.sum()) - np.repeat(np.cumsum(pair_len) - pair_len, pair_len)
        feat_pos = sparse_x.indptr[point_of_entry] + within
        label_of_entry = np.repeat(labels.ravel(), pair_len)
        buckets = hash_pairs(label_of_entry, sparse_x.indices[feat_pos], self.hash_buckets)
        device = table.device
        # gather + index_add instead of EmbeddingBag: the same sums, but the backward is an index_add into the
        # table's gradient, where EmbeddingBag's dense backward sorts every lookup (3x slower measured)
        contributions = table.index_select(0, torch.from_numpy(buckets).to(device)) * \
            torch.from_numpy(sparse_x.data[feat_pos].astype(np.float32)).to(device)
        pair_of_entry = torch.from_numpy(np.repeat(np.arange(b * c), pair_len)).to(device)
        scores = torch.zeros(b * c, device=device, dtype=contributions.dtype).index_add(0, pair_of_entry,
                                                                                        contributions)
        return scores.view(b, c)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {"n_labels": self.n_labels, "dim": self.dim_dense, "features": self.features,
                 "hash_buckets": self.hash_buckets, "max_sparse_features": self.max_sparse_features,
                 "state": {k: v.cpu() for k, v in self.state_dict().items()}}
        atomic_torch_save(directory / "classifiers.pt", state)

    @classmethod
    def load(cls, directory: str | Path, n_labels: int | None = None, dim: int | None = None) -> LabelClassifiers:
        """The classifiers saved in `directory`; `n_labels` and `dim`, when given, must match."""
        path = Path(directory) / "classifiers.pt"
        state = load_tensors(path, "classifiers")
        if not isinstance(state, dict):
            raise model_error("classifiers", path, "not a classifiers file")
        n = json_field(state, "n_labels", "classifiers", path, int)
        d = json_field(state, "dim", "classifiers", path, int)
        features = json_field(state, "features", "classifiers", path, str)
        buckets = json_field(state, "hash_buckets", "classifiers", path, int)
        max_sparse = json_field(state, "max_sparse_features", "classifiers", path, int)
        if features not in ("dense", "sparse", "dense+sparse"):
            raise model_error("classifiers", path, f"unknown feature set {features!r}")
        for name, value, want in (("n_labels", n, n_labels), ("dim", d, dim)):
            if value < 1 or (want is not None and value != want):
                raise model_error("classifiers", path, f"{name} is {value}, expected {want or 'a positive number'}")
        if buckets < 1 or buckets & (buckets - 1) or max_sparse < 1:
            raise model_error("classifiers", path, f"hash_buckets {buckets} is not a power of two or "
                              f"max_sparse_features {max_sparse} < 1")
        expected = {"bias": (n,)}
        if features != "sparse":
            expected["weight"] = (n, d)
        if features != "dense":
            expected["sparse_table.weight"] = (buckets, 1)
        tensors = state.get("state")
        if not isinstance(tensors, dict) or set(tensors) != set(expected) or \
                any(not isinstance(v, torch.Tensor) or tuple(v.shape) != expected[k] for k, v in tensors.items()):
            raise model_error("classifiers", path, "weights do not have the layout "
                              + ", ".join(f"{k} {v}" for k, v in expected.items()))
        obj = cls(n, d, features, buckets, max_sparse)
        load_state_dict_into(obj, tensors, "classifiers", path)
        return obj


class DensePairScores(torch.autograd.Function):
    """<e_i, w_l> of each (point i, candidate label l) pair on CPU, forward and backward in compiled code: B*C*d
    operations per pass. The product against the batch's distinct candidates computes B*U*d (U: distinct labels
    of the batch, tens of thousands on debian-related against a few hundred candidates per point) and its backward
    scatters a (B, U) gradient and adds U rows into the weights' gradient.

    apply(embeddings (B, d), weight (L, d), candidates (B, C) int64 ids >= 0, sparse_rows) -> (B, C). The weight's
    gradient is dense (L, d), or with `sparse_rows` a coalesced sparse tensor of the scored rows (for RowSparseAdam).
    Each score sums over d in its own order (not BLAS's); each gradient row sums its pairs in (point, candidate)
    order, so results do not depend on the thread count."""

    @staticmethod
    def forward(ctx: Any, embeddings: torch.Tensor, weight: torch.Tensor, candidates: np.ndarray,
                sparse_rows: bool) -> torch.Tensor:
        queries = embeddings.detach().contiguous().numpy()
        table = weight.detach().contiguous().numpy()
        ctx.arrays = (queries, table, candidates, sparse_rows)
        return torch.from_numpy(pair_dots(queries, table, candidates))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        queries, table, candidates, sparse_rows = ctx.arrays
        grad = np.ascontiguousarray(grad.detach().numpy(), dtype=np.float32)
        grad_queries = grad_table = None
        if ctx.needs_input_grad[0]:
            grad_queries = torch.from_numpy(_dense_pair_grad_queries_kernel(grad, table, candidates))
        if ctx.needs_input_grad[1]:
            rows, order, starts = _pairs_by_label(candidates.ravel(), table.shape[0])
            if sparse_rows:
                values = np.zeros((len(rows), table.shape[1]), np.float32)
                _dense_pair_grad_rows_kernel(grad, queries, candidates.shape[1], order, starts,
                                             np.arange(len(rows)), values)
                grad_table = torch.sparse_coo_tensor(torch.from_numpy(rows)[None], torch.from_numpy(values),
                                                     table.shape, is_coalesced=True,
                                                     check_invariants=False)
            else:
                values = np.zeros(table.shape, np.float32)
                _dense_pair_grad_rows_kernel(grad, queries, candidates.shape[1], order, starts, rows, values)
                grad_table = torch.from_numpy(values)
        return grad_queries, grad_table, None, None


@numba.njit(cache=True, nogil=True)
def _pairs_by_label(labels: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A counting sort of the pairs by label: the distinct labels (ascending), the pairs' flat positions grouped by
    label (in order within a label), and where each label's group starts (one more entry: the end)."""
    counts = np.zeros(n_labels + 1, np.int64)
    for label in labels:
        counts[label + 1] += 1
    for label in range(n_labels):
        counts[label + 1] += counts[label]
    order = np.empty(len(labels), np.int64)
    fill = counts[:-1].copy()
    for p in range(len(labels)):
        order[fill[labels[p]]] = p
        fill[labels[p]] += 1
    n_rows = 0
    for label in range(n_labels):
        if counts[label + 1] > counts[label]:
            n_rows += 1
    rows = np.empty(n_rows, np.int64)
    starts = np.empty(n_rows + 1, np.int64)
    k = 0
    for label in range(n_labels):
        if counts[label + 1] > counts[label]:
            rows[k] = label
            starts[k] = counts[label]
            k += 1
    starts[n_rows] = len(labels)
    return rows, order, starts


@numba.njit(cache=True, nogil=True, parallel=True)
def _dense_pair_grad_rows_kernel(grad: np.ndarray, queries: np.ndarray, width: int, order: np.ndarray,
                                 starts: np.ndarray, targets: np.ndarray, out: np.ndarray) -> None:
    """out[targets[u]] += sum over label u's pairs (i, j) of grad[i, j] * queries[i], pairs in order."""
    d = queries.shape[1]
    for u in numba.prange(len(targets)):
        target = targets[u]
        for p in range(starts[u], starts[u + 1]):
            i = order[p] // width
            weight = grad[i, order[p] - i * width]
            for t in range(d):
                out[target, t] += weight * queries[i, t]


@numba.njit(cache=True, nogil=True, parallel=True)
def _dense_pair_grad_queries_kernel(grad: np.ndarray, table: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    b, c = candidates.shape
    d = table.shape[1]
    out = np.zeros((b, d), np.float32)
    for i in numba.prange(b):
        for j in range(c):
            weight = grad[i, j]
            row = candidates[i, j]
            for t in range(d):
                out[i, t] += weight * table[row, t]
    return out


class HashedPairScores(torch.autograd.Function):
    """The hashed sparse scores of (point, label) pairs on CPU, forward and backward in compiled code: each
    pair's buckets are hashed as they are read, with no (pairs x features) arrays of buckets, values and pair ids
    (which cost most of a classifier step on long texts). The gradient is dense over the table, as the gathered
    path's index_add gives it; sums run in the same order, bucket gradients may add up in another."""

    @staticmethod
    def forward(ctx: Any, table: torch.Tensor, sparse_x: sp.csr_matrix, labels: np.ndarray) -> torch.Tensor:
        indptr, indices = sparse_x.indptr, sparse_x.indices
        values = sparse_x.data.astype(np.float32, copy=False)
        shift = _hash_shift(int(table.shape[0]))
        ctx.arrays = (indptr, indices, values, labels, shift, int(table.shape[0]))
        weights = table.detach().contiguous().numpy()
        return torch.from_numpy(_hashed_scores(weights, indptr, indices, values, labels, shift))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        indptr, indices, values, labels, shift, buckets = ctx.arrays
        grad_table = _hashed_scores_grad_kernel(np.ascontiguousarray(grad.detach().numpy(), dtype=np.float32),
                                                indptr, indices, values, labels, shift, buckets)
        return torch.from_numpy(grad_table), None, None


@numba.njit(cache=True, nogil=True, inline="always")
def _bucket(label: int, feature: int, shift: int) -> int:
    """The bucket of one (label, feature) pair; `shift` from `_hash_shift`."""
    if shift >= 64:
        return np.int64(0)
    h = (np.uint64(label) * _K1) ^ (np.uint64(feature) * _K2)
    return np.int64((h * _K3) >> np.uint64(shift))


@numba.njit(cache=True, nogil=True)
def _hash_pairs_kernel(labels: np.ndarray, features: np.ndarray, shift: int) -> np.ndarray:
    out = np.empty(labels.shape[0], np.int64)
    for i in range(labels.shape[0]):
        out[i] = _bucket(labels[i], features[i], shift)
    return out


def _hashed_scores(table: np.ndarray, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
                   labels: np.ndarray, shift: int) -> np.ndarray:
    """(B, C) hashed-table scores. Rows are independent and each pair's sum runs in the same order either way, so
    the parallel kernel gives the serial one's floats bit for bit; a single text (serving) stays serial, where
    starting the thread team would cost more than it saves."""
    kernel = _hashed_scores_parallel if labels.shape[0] >= PARALLEL_ROWS else _hashed_scores_kernel
    return kernel(table, indptr, indices, values, labels, shift)


@numba.njit(cache=True, nogil=True, inline="always")
def _hashed_scores_row(table: np.ndarray, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
                       labels: np.ndarray, shift: int, out: np.ndarray, i: int) -> None:
    for j in range(labels.shape[1]):
        total = np.float32(0.0)
        for a in range(indptr[i], indptr[i + 1]):
            total += values[a] * table[_bucket(labels[i, j], indices[a], shift)]
        out[i, j] = total


@numba.njit(cache=True, nogil=True)
def _hashed_scores_kernel(table: np.ndarray, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
                          labels: np.ndarray, shift: int) -> np.ndarray:
    out = np.zeros(labels.shape, np.float32)
    for i in range(labels.shape[0]):
        _hashed_scores_row(table, indptr, indices, values, labels, shift, out, i)
    return out


@numba.njit(cache=True, nogil=True, parallel=True)
def _hashed_scores_parallel(table: np.ndarray, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
                            labels: np.ndarray, shift: int) -> np.ndarray:
    out = np.zeros(labels.shape, np.float32)
    for i in numba.prange(labels.shape[0]):
        _hashed_scores_row(table, indptr, indices, values, labels, shift, out, i)
    return out


@numba.njit(cache=True, nogil=True)
def _hashed_scores_grad_kernel(grad: np.ndarray, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
                               labels: np.ndarray, shift: int, buckets: int) -> np.ndarray:
    b, c = labels.shape
    out = np.zeros(buckets, np.float32)
    for i in range(b):
        for j in range(c):
            g = grad[i, j]
            if g != 0:
                for a in range(indptr[i], indptr[i + 1]):
                    out[_bucket(labels[i, j], indices[a], shift)] += g * values[a]
    return out
