"""A sparse linear ranker: one L2-regularised linear model per label over the TF-IDF features, trained on the
label's positives and its *shortlist negatives* (the training points whose ANN/neighbour shortlist proposes the
label without it being theirs), each solved to convergence by liblinear.

This is the ranking layer of the sparse XMC models (PECOS XR-Linear trains its rankers on matcher-aware
negatives the same way), with NGAME's semantic shortlist as the matcher. It complements the per-label
classifiers of `xmine.classifiers`, which are trained by SGD jointly over [dense (+) sparse] features:
measured on Bibtex (same shortlists), those reach P@1 63.1 and this ranker 65.3; a dense part that fits
training points the encoder has memorised leaves the sparse part under-trained.

score(x, l) = b_l + sum_f x_f * W[l, f], computed for candidate pairs only. Weights with |w| below
`prune_below` are dropped (PECOS's default threshold 0.1), which keeps W small.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC
from tqdm.auto import tqdm

from xmine.config import RankerConfig
from xmine.errors import XmineError
from xmine.fusion import lookup_csr
from xmine.safeio import load_json, load_npy, load_sparse_npz, model_error, params_from
from xmine.topk import csr_from_topk
from xmine.utils import atomic_save_npy, atomic_write

UNTRAINED_BIAS = -10.0  # labels without a training positive: never ranked above a trained label by this source


def shortlist_matrix(shortlist: np.ndarray, n_labels: int) -> sp.csr_matrix:
    """(L, n) 0/1 matrix: which points' shortlists hold each label."""
    out = csr_from_topk(np.ones(shortlist.shape, dtype=np.float32), shortlist, n_labels).T.tocsr()
    out.data[:] = 1  # a label listed twice in a row was summed
    return out


def _fit_labels(labels: np.ndarray, features: sp.csr_matrix, label_rows: sp.csr_matrix, positives: sp.csr_matrix,
                config: RankerConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit the rankers of `labels`; returns (label, feature, weight) triples of the kept weights, and biases."""
    out_l, out_f, out_w = [], [], []
    bias = np.full(len(labels), UNTRAINED_BIAS)
    for i, label in enumerate(labels):
        rows = label_rows.indices[label_rows.indptr[label]:label_rows.indptr[label + 1]]
        pos = positives.indices[positives.indptr[label]:positives.indptr[label + 1]]
        if len(pos) == 0:
            continue
        y = np.isin(rows, pos)
        if y.all():  # no point was shortlisted this label without having it: nothing to separate
            bias[i] = -UNTRAINED_BIAS
            continue
        x = features[rows]
        used = np.unique(x.indices)  # solve over the features that occur, not all F columns
        if len(used) == 0:  # featureless rows (empty texts): the best constant model is the prior's logit
            bias[i] = float(np.log(y.mean() / (1 - y.mean())))
            continue
        x = x[:, used]
        model = (LogisticRegression(C=config.C, solver="liblinear") if config.loss == "logistic"
                 else LinearSVC(C=config.C, loss="squared_hinge", dual=True))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x, y)
        w = model.coef_[0]
        keep = np.abs(w) >= config.prune_below
        out_l.append(np.full(int(keep.sum()), label, dtype=np.int64))
        out_f.append(used[keep].astype(np.int64))
        out_w.append(w[keep].astype(np.float32))
        bias[i] = float(model.intercept_[0])
    empty_i, empty_f = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    return (np.concatenate(out_l) if out_l else empty_i, np.concatenate(out_f) if out_f else empty_i,
            np.concatenate(out_w) if out_w else empty_f, bias)


class SparseRanker:
    def __init__(self, weights: sp.csr_matrix, bias: np.ndarray, config: RankerConfig) -> None:
        if weights.shape[0] != bias.shape[0]:
            raise XmineError(f"ranker weights have {weights.shape[0]} rows, biases {bias.shape[0]}")
        self.weights = sp.csr_matrix(weights, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.config = config
        self._weights_t = self.weights.T.tocsr()  # (F, L): a batch's scores are one sparse product

    @property
    def n_labels(self) -> int:
        return self.weights.shape[0]

    @property
    def n_features(self) -> int:
        return self.weights.shape[1]

    @classmethod
    def train(cls, features: sp.csr_matrix, labels: sp.csr_matrix, shortlist: np.ndarray, config: RankerConfig,
              n_jobs: int = 1, progress: bool = True) -> SparseRanker:
        """One ranker per label on the rows of `labels` that have labels: the label's positives against the
        rows whose `shortlist` (n, C) proposes it. Rows without labels (held out) take no part."""
        features, labels = sp.csr_matrix(features), sp.csr_matrix(labels)
        n, n_labels = labels.shape
        if features.shape[0] != n or shortlist.shape[0] != n:
            raise XmineError(f"ranker: {features.shape[0]} feature rows, {n} label rows and {shortlist.shape[0]} "
                             "shortlist rows must match")
        has_labels = np.diff(labels.indptr) > 0
        shortlist = np.where(has_labels[:, None], shortlist, -1)
        positives = labels.T.tocsr()
        label_rows = (shortlist_matrix(shortlist, n_labels) + positives).tocsr()
        label_rows.data[:] = 1
        # chunks of labels balanced by work (rows to fit), run in threads: liblinear releases the GIL
        work = np.diff(label_rows.indptr).astype(np.float64) * (np.diff(positives.indptr) > 0)
        n_chunks = max(1, min(n_labels, 64 * max(n_jobs, 1)))
        bounds = np.searchsorted(np.cumsum(work), np.linspace(0, work.sum(), n_chunks + 1)[1:-1])
        chunks = [c for c in np.split(np.arange(n_labels), np.unique(bounds)) if len(c)]
        jobs = (delayed(_fit_labels)(chunk, features, label_rows, positives, config) for chunk in chunks)
        parts = Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator")(jobs)
        bias = np.full(n_labels, UNTRAINED_BIAS, dtype=np.float32)
        trip_l, trip_f, trip_w = [], [], []
        # the generator yields in submission order, so each result belongs to the chunk beside it
        for chunk, (lab, feat, w, chunk_bias) in zip(chunks, tqdm(parts, total=len(chunks), desc="sparse ranker",
                                                                  disable=not progress, unit="chunk"), strict=True):
            trip_l.append(lab)
            trip_f.append(feat)
            trip_w.append(w)
            bias[chunk] = chunk_bias
        weights = sp.csr_matrix((np.concatenate(trip_w), (np.concatenate(trip_l), np.concatenate(trip_f))),
                                shape=(n_labels, features.shape[1]))
        return cls(weights, bias, config)

    def with_labels(self, n_labels: int) -> SparseRanker:
        """This ranker over `n_labels` labels: the ones beyond its own have no weights and UNTRAINED_BIAS
        (labels added after training). The weight arrays are shared, not copied."""
        if n_labels < self.n_labels:
            raise XmineError(f"cannot shrink a ranker from {self.n_labels} to {n_labels} labels")
        new = copy.copy(self)
        w, wt = self.weights, self._weights_t
        new.weights = sp.csr_matrix((w.data, w.indices, np.concatenate([w.indptr, np.full(
            n_labels - self.n_labels, w.indptr[-1], dtype=w.indptr.dtype)])), shape=(n_labels, self.n_features))
        new._weights_t = sp.csr_matrix((wt.data, wt.indices, wt.indptr), shape=(self.n_features, n_labels))
        new.bias = np.concatenate([self.bias, np.full(n_labels - self.n_labels, UNTRAINED_BIAS, dtype=np.float32)])
        return new

    def score(self, sparse_x: sp.csr_matrix, candidates: np.ndarray, chunk: int = 512) -> np.ndarray:
        """Scores (n, C) of candidate labels (n, C); padding candidates (< 0) get UNTRAINED_BIAS."""
        sparse_x = sp.csr_matrix(sparse_x)
        if sparse_x.shape[1] != self.n_features:
            raise XmineError(f"ranker expects {self.n_features} features, got {sparse_x.shape[1]}")
        out = np.empty(candidates.shape, dtype=np.float32)
        for start in range(0, candidates.shape[0], chunk):
            rows = slice(start, start + chunk)
            cand = candidates[rows]
            # (chunk, L) sparse: only labels sharing a feature with the point are stored
            products = (sparse_x[rows] @ self._weights_t).tocsr()
            out[rows] = lookup_csr(products, cand) + self.bias[np.maximum(cand, 0)]
        out[candidates < 0] = UNTRAINED_BIAS
        return out

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)

        def write_weights(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                sp.save_npz(fh, self.weights)

        atomic_write(directory / "weights.npz", write_weights)
        atomic_save_npy(directory / "bias.npy", self.bias)
        self.config.save(directory / "config.json")

    @classmethod
    def load(cls, directory: str | Path, n_labels: int | None = None) -> SparseRanker:
        directory = Path(directory)
        config = params_from(RankerConfig, load_json(directory / "config.json", "ranker"), "ranker",
                             directory / "config.json")
        weights = load_sparse_npz(directory / "weights.npz", "ranker")
        bias = load_npy(directory / "bias.npy", "ranker", shape=(weights.shape[0],))
        if n_labels is not None and weights.shape[0] != n_labels:
            raise model_error("ranker", directory / "weights.npz", f"weights for {weights.shape[0]} labels, "
                              f"the model has {n_labels}")
        return cls(weights, bias, config)
