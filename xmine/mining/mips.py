"""MIPS negative sampling (Qaraei & Babbar, 2023): for each query, a FEW hard negatives from a
maximum-inner-product search over the current classifier vectors, plus uniformly sampled labels.

A standalone component: `rebuild(label_vectors)` refreshes the (stale-prone) index;
`sample(queries, positives)` returns candidate negative label ids, never a positive, no duplicates.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from xmine.config import IndexConfig
from xmine.errors import XmineError
from xmine.index import LabelIndex
from xmine.topk import candidate_keys, csr_entry_keys, is_in


def remove_positives_and_duplicates(candidates: np.ndarray, positives: sp.csr_matrix) -> np.ndarray:
    """Set to -1 every candidate that is a positive of its row or repeats an earlier candidate."""
    n_labels = positives.shape[1]
    out = candidates.copy()
    keys = candidate_keys(out, n_labels)
    pos_keys = csr_entry_keys(positives)
    bad = is_in(keys, pos_keys) | (out.ravel() < 0)
    # duplicates: keep the first occurrence of each key
    _, first = np.unique(keys, return_index=True)
    dup = np.ones(keys.shape[0], dtype=bool)
    dup[first] = False
    out.ravel()[bad | dup] = -1
    return out


def compact(candidates: np.ndarray, width: int) -> np.ndarray:
    """Move valid ids (>= 0) to the front of each row, keeping their order; keep `width` columns."""
    order = np.argsort(candidates < 0, axis=1, kind="stable")
    out = np.take_along_axis(candidates, order, axis=1)[:, :width]
    if out.shape[1] < width:
        out = np.concatenate([out, np.full((out.shape[0], width - out.shape[1]), -1, dtype=out.dtype)], axis=1)
    return out


POSITIVE_ROOM = 32


class MIPSNegativeSampler:
    def __init__(self, n_labels: int, mips_negatives: int = 5, uniform_negatives: int = 200,
                 index_config: IndexConfig | None = None, seed: int = 0) -> None:
        if mips_negatives < 0 or uniform_negatives < 0 or mips_negatives + uniform_negatives == 0:
            raise XmineError("need mips_negatives >= 0, uniform_negatives >= 0 and at least one negative")
        self.n_labels = n_labels
        self.mips_negatives = mips_negatives
        self.uniform_negatives = uniform_negatives
        self.index_config = index_config or IndexConfig(kind="ivf")
        self.rng = np.random.default_rng(seed)
        self.index: LabelIndex | None = None
        self.rebuilds = 0
        self.rebuild_seconds = 0.0

    @property
    def width(self) -> int:
        return self.mips_negatives + self.uniform_negatives

    def rebuild(self, label_vectors: np.ndarray) -> None:
        start = time.perf_counter()
        self.index = LabelIndex.build(label_vectors, self.index_config)
        self.rebuild_seconds += time.perf_counter() - start
        self.rebuilds += 1

    def hard_negatives(self, queries: np.ndarray, positives: sp.csr_matrix) -> np.ndarray:
        """(B, mips_negatives): the top-scoring non-positive labels by inner product (-1 padded)."""
        if self.index is None:
            raise XmineError("MIPSNegativeSampler.rebuild() must be called before sampling hard negatives")
        max_pos = int(np.diff(positives.indptr).max()) if positives.nnz else 0
        # room for the positives that can crowd the top; capped because a large k makes the search slow
        # (a point with more than `POSITIVE_ROOM` positives among its top labels gets fewer hard negatives)
        k = min(self.mips_negatives + min(max_pos, max(POSITIVE_ROOM, self.mips_negatives)), self.n_labels)
        _, ids = self.index.search(queries, k)
        return compact(remove_positives_and_duplicates(ids, positives), self.mips_negatives)

    def sample(self, queries: np.ndarray | None, positives: sp.csr_matrix, use_mips: bool = True) -> np.ndarray:
        """(B, mips_negatives + uniform_negatives) candidate negatives; -1 pads a row when there are
        not enough distinct non-positive labels. Without `use_mips` (warm-up), all are uniform."""
        b = positives.shape[0]
        parts = []
        n_mips = self.mips_negatives if use_mips else 0
        if n_mips:
            parts.append(self.hard_negatives(queries, positives))
        n_uniform = self.width - n_mips
        if n_uniform:
            # oversample, then drop positives / duplicates (of MIPS picks too) and keep n_uniform
            extra = n_uniform + max(16, n_uniform // 4) + int(np.diff(positives.indptr).max(initial=0))
            if extra >= self.n_labels:
                # small label space: a random order of ALL labels per row, so no label is missed by chance
                parts.append(self.rng.permuted(np.tile(np.arange(self.n_labels), (b, 1)), axis=1))
            else:
                parts.append(self.rng.integers(0, self.n_labels, size=(b, extra)))
        cleaned = remove_positives_and_duplicates(np.concatenate(parts, axis=1), positives)
        if n_mips:
            # MIPS picks stay in the first n_mips columns; the uniform ones follow
            head = cleaned[:, :n_mips]
            tail = compact(cleaned[:, n_mips:], n_uniform)
            return np.concatenate([head, tail], axis=1)
        return compact(cleaned, n_uniform)
