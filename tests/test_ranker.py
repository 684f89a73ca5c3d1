"""The sparse linear ranker: per-label L2-regularised linear models on positives + shortlist negatives, solved by
xmine.linear_solver's compiled dual coordinate descent."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import shared_dataset

from xmine.config import RankerConfig
from xmine.errors import ConfigError, XmineError
from xmine.linear_solver import score_pairs
from xmine.ranker import UNTRAINED_BIAS, SparseRanker, shortlist_matrix


def _toy(seed: int = 0, n: int = 300, n_features: int = 40, n_labels: int = 12):
    """Each label owns a few features; a point holds its labels' features plus noise features."""
    rng = np.random.default_rng(seed)
    owned = rng.permutation(n_features)[:n_labels * 3].reshape(n_labels, 3)
    rows, cols, lab_rows, lab_cols = [], [], [], []
    for i in range(n):
        labels = rng.choice(n_labels, size=rng.integers(1, 3), replace=False)
        feats = np.unique(np.concatenate([owned[labels].ravel(), rng.choice(n_features, 3)]))
        rows += [i] * len(feats)
        cols += list(feats)
        lab_rows += [i] * len(labels)
        lab_cols += list(labels)
    x = sp.csr_matrix((rng.uniform(0.5, 1.0, len(rows)), (rows, cols)), shape=(n, n_features))
    y = sp.csr_matrix((np.ones(len(lab_rows)), (lab_rows, lab_cols)), shape=(n, n_labels))
    return x, y


def _all_labels(n: int, n_labels: int) -> np.ndarray:
    return np.tile(np.arange(n_labels), (n, 1))


def test_scores_are_the_linear_model_and_padding_gets_the_untrained_bias():
    x, y = _toy()
    ranker = SparseRanker.train(x, y, _all_labels(*y.shape), RankerConfig(), progress=False)
    cand = np.array([[0, 3, -1], [5, 1, 2]])
    scores = ranker.score(x[:2], cand)
    dense_w = ranker.weights.toarray()
    for i in range(2):
        for j in range(2 if i == 0 else 3):
            expected = x[i].toarray().ravel() @ dense_w[cand[i, j]] + ranker.bias[cand[i, j]]
            assert scores[i, j] == pytest.approx(expected, abs=1e-5)
    assert scores[0, 2] == UNTRAINED_BIAS


def test_ranker_separates_the_labels_it_was_trained_on():
    x, y = _toy()
    ranker = SparseRanker.train(x, y, _all_labels(*y.shape), RankerConfig(), progress=False)
    scores = ranker.score(x, _all_labels(*y.shape))
    truth = y.toarray() > 0
    # every point's best-scored label is one of its own
    assert truth[np.arange(len(truth)), scores.argmax(1)].mean() > 0.95


def test_only_positives_and_shortlisted_points_with_labels_train_a_label():
    x, y = _toy(n_labels=4, n=40)
    n, n_labels = y.shape
    # label 0's shortlist: nobody; a point holding a feature no one else has is neither positive nor
    # shortlisted for label 0 (row 0 gets a private feature 40) -> label 0 never weighs that feature
    x = sp.hstack([x, sp.csr_matrix(([1.0], ([0], [0])), shape=(n, 1))]).tocsr()
    y = y.tolil()
    y[0, :] = 0
    y[0, 1] = 1
    y = y.tocsr()
    shortlist = np.full((n, 1), -1)
    shortlist[0, 0] = 0  # row 0 is shortlisted for label 0 ...
    held_out = y.copy().tolil()
    held_out[0, :] = 0  # ... but when row 0 has no labels (held out), it takes no part
    ranker = SparseRanker.train(x, held_out.tocsr(), shortlist, RankerConfig(prune_below=0.0), progress=False)
    assert ranker.weights[0, 40] == 0
    ranker = SparseRanker.train(x, y, shortlist, RankerConfig(prune_below=0.0), progress=False)
    assert ranker.weights[0, 40] < 0  # a shortlist negative with labels: label 0 learns against its feature


def test_labels_without_positives_or_negatives():
    x, y = _toy(n_labels=5)
    y = sp.hstack([y, sp.csr_matrix((y.shape[0], 1))]).tocsr()  # label 5: no training point
    ranker = SparseRanker.train(x, y, np.full((y.shape[0], 1), -1), RankerConfig(), progress=False)
    assert ranker.bias[5] == UNTRAINED_BIAS
    # no shortlist at all: each label has positives only, nothing to separate from -> the highest bias
    assert np.all(ranker.bias[:5] == -UNTRAINED_BIAS)


def test_shortlist_matrix_ignores_padding_and_duplicates():
    m = shortlist_matrix(np.array([[2, 2, -1], [0, 2, 1]]), 3)
    assert m.toarray().tolist() == [[0, 1], [0, 1], [1, 1]]


def test_save_load_round_trip(tmp_path):
    x, y = _toy(1)
    ranker = SparseRanker.train(x, y, _all_labels(*y.shape), RankerConfig(loss="squared_hinge", C=1.0),
                                progress=False)
    ranker.save(tmp_path / "ranker")
    loaded = SparseRanker.load(tmp_path / "ranker")
    cand = _all_labels(*y.shape)
    assert np.array_equal(ranker.score(x, cand), loaded.score(x, cand))
    assert loaded.config.loss == "squared_hinge"
    (tmp_path / "ranker" / "bias.npy").unlink()
    with pytest.raises(XmineError, match="bias.npy: file missing"):
        SparseRanker.load(tmp_path / "ranker")


def test_bad_inputs_are_clear_errors():
    x, y = _toy()
    with pytest.raises(XmineError, match="must match"):
        SparseRanker.train(x[:10], y, _all_labels(*y.shape), RankerConfig(), progress=False)
    ranker = SparseRanker.train(x, y, _all_labels(*y.shape), RankerConfig(), progress=False)
    with pytest.raises(XmineError, match="expects 40 features"):
        ranker.score(x[:, :30], _all_labels(2, y.shape[1]))
    with pytest.raises(ConfigError):
        RankerConfig.from_dict({"C": 0})


def test_ranker_beats_the_knn_baseline_on_bibtex():
    from xmine.config import KNNConfig
    from xmine.data import load_dataset
    from xmine.metrics import evaluate
    from xmine.models import TfidfKNN
    from xmine.topk import csr_from_topk, csr_row_topk

    ds = load_dataset(shared_dataset("mldr-bibtex"))
    knn = TfidfKNN.train(ds, KNNConfig())
    n_labels = ds.n_labels
    ranker = SparseRanker.train(knn.train_features, ds.train.labels, _all_labels(ds.train.n_points, n_labels),
                                RankerConfig(), n_jobs=2, progress=False)
    x_test = knn.featurizer.transform(ds.test.texts, ds.test.features)
    cand = _all_labels(ds.test.n_points, n_labels)
    pred = csr_row_topk(csr_from_topk(ranker.score(x_test, cand), cand, n_labels), 5)
    ranker_p1 = evaluate(pred, ds.test.labels, ks=(1,), recall_ks=())["P@1"]
    knn_p1 = evaluate(knn.predict(ds.test, k=5), ds.test.labels, ks=(1,), recall_ks=())["P@1"]
    assert ranker_p1 > knn_p1 + 1.0  # measured: 65.3 vs 62.3


def test_points_without_features_give_the_prior():
    x = sp.csr_matrix((4, 5))
    y = sp.csr_matrix(np.array([[1, 0], [0, 1], [0, 1], [0, 1]], dtype=float))
    ranker = SparseRanker.train(x, y, _all_labels(4, 2), RankerConfig(), progress=False)
    assert ranker.bias[0] == pytest.approx(np.log(1 / 3))
    assert ranker.bias[1] == pytest.approx(np.log(3))


def _liblinear_reference(x: sp.csr_matrix, y: sp.csr_matrix, shortlist: np.ndarray, config: RankerConfig):
    """The plain path: one scikit-learn/liblinear fit per label on its positives + shortlist negatives."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    weights, bias = np.zeros((y.shape[1], x.shape[1])), np.zeros(y.shape[1])
    label_rows = (shortlist_matrix(shortlist, y.shape[1]) + y.T.tocsr()).tocsr()
    for label in range(y.shape[1]):
        rows = label_rows[label].indices
        target = y[rows, label].toarray().ravel() > 0
        model = (LogisticRegression(C=config.C, solver="liblinear", tol=1e-10, max_iter=10_000)
                 if config.loss == "logistic" else
                 LinearSVC(C=config.C, loss="squared_hinge", dual=True, tol=1e-10, max_iter=100_000))
        model.fit(x[rows], target)
        weights[label], bias[label] = model.coef_[0], model.intercept_[0]
    return weights, bias


@pytest.mark.parametrize("loss,C", [("logistic", 4.0), ("squared_hinge", 1.0)])
def test_compiled_solver_reaches_liblinears_solution(loss, C):
    """Both solve the same strictly convex problem (bias as a regularised constant feature, liblinear's
    intercept), so the optima agree; the difference left is the solvers' stopping tolerance. With tol 1e-6 the
    weights agree to 1e-3 (absolute, weights of order 1)."""
    x, y = _toy(3, n=200, n_features=30, n_labels=6)
    rng = np.random.default_rng(0)
    shortlist = rng.integers(0, y.shape[1], size=(y.shape[0], 3))
    config = RankerConfig(loss=loss, C=C, prune_below=0.0, tol=1e-6, max_iter=100_000)
    ranker = SparseRanker.train(x, y, shortlist, config, progress=False)
    weights, bias = _liblinear_reference(x, y, shortlist, config)
    np.testing.assert_allclose(ranker.weights.toarray(), weights, atol=1e-3)
    np.testing.assert_allclose(ranker.bias, bias, atol=1e-3)


def test_warm_started_refit_reaches_the_cold_fits_solution():
    """The refit on all points starts from the fit on a subset (its dual variables) and ends at the solution a
    cold fit on all points reaches (to the solvers' tolerance)."""
    x, y = _toy(4)
    # one more label whose positives are all among the rows the first fit leaves out: unsolved there
    extra = sp.csr_matrix((np.ones(5), (np.arange(5), np.zeros(5, dtype=int))), shape=(y.shape[0], 1))
    y = sp.hstack([y, extra]).tocsr()
    shortlist = np.random.default_rng(1).integers(0, y.shape[1], size=(y.shape[0], 4))
    config = RankerConfig(prune_below=0.0, tol=1e-6, max_iter=100_000)
    subset = y.copy().tolil()
    subset[:60, :] = 0
    first = SparseRanker.train(x, subset.tocsr(), shortlist, config, progress=False)
    warm = SparseRanker.train(x, y, shortlist, config, progress=False, warm_start=first)
    cold = SparseRanker.train(x, y, shortlist, config, progress=False)
    np.testing.assert_allclose(warm.weights.toarray(), cold.weights.toarray(), atol=1e-3)
    np.testing.assert_allclose(warm.bias, cold.bias, atol=1e-3)
    assert not np.allclose(first.weights.toarray(), cold.weights.toarray(), atol=1e-3)  # the refit moved it


def test_fit_is_the_same_in_threads_and_alone():
    x, y = _toy(5)
    shortlist = np.random.default_rng(2).integers(0, y.shape[1], size=(y.shape[0], 4))
    one = SparseRanker.train(x, y, shortlist, RankerConfig(), n_jobs=1, progress=False)
    two = SparseRanker.train(x, y, shortlist, RankerConfig(), n_jobs=2, progress=False)
    assert (one.weights != two.weights).nnz == 0 and np.array_equal(one.bias, two.bias)


def test_candidate_scores_equal_the_product_against_all_labels():
    """The compiled gather over the candidates' weight rows equals the plain sparse product x @ W.T looked up
    at the candidates (float32 sums in another order: 1e-5)."""
    x, y = _toy(6)
    ranker = SparseRanker.train(x, y, _all_labels(*y.shape), RankerConfig(), progress=False)
    rng = np.random.default_rng(3)
    cand = rng.integers(-1, y.shape[1], size=(x.shape[0], 7))
    plain = (x @ ranker.weights.T).toarray() + ranker.bias
    expected = np.where(cand >= 0, np.take_along_axis(plain, np.maximum(cand, 0), axis=1), UNTRAINED_BIAS)
    np.testing.assert_allclose(ranker.score(x, cand), expected, atol=1e-5)
    # the serial kernel (one block) and the parallel one (several blocks) give the same numbers
    wt = ranker._weights_t
    args = (x.indptr, x.indices, x.data.astype(np.float32), wt.indptr, wt.indices, wt.data,
            np.ascontiguousarray(cand, dtype=np.int64), y.shape[1])
    assert x.shape[0] > 2
    np.testing.assert_array_equal(score_pairs(*args, block=2), score_pairs(*args))
    with pytest.raises(XmineError, match="candidate label"):
        ranker.score(x, np.full((x.shape[0], 1), y.shape[1]))
