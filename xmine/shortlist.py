"""Candidate shortlists: the labels a model scores exactly for a point, merged from several
sources (ANN over label embeddings, ANN over classifier vectors, labels of TF-IDF neighbours). The array
helpers they are built with (`union_candidates`, `csr_rows_to_ids`, `is_in`) live in xmine.topk."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from xmine.topk import candidate_keys, csr_entry_keys, csr_row_ids, is_in


def recall_of_shortlist(candidates: np.ndarray, labels: sp.csr_matrix) -> float:
    """Share of true labels that appear in the shortlist, averaged over points with labels (%)."""
    keys = candidate_keys(candidates, labels.shape[1])[candidates.ravel() >= 0]
    hit = is_in(csr_entry_keys(labels), keys)
    per_row = np.bincount(csr_row_ids(labels), weights=hit, minlength=labels.shape[0])
    counts = np.diff(labels.indptr)
    has = counts > 0
    return float(100 * np.mean(per_row[has] / counts[has])) if has.any() else 0.0
