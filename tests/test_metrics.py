from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from xmine.errors import XmineError
from xmine.metrics import (
    PROPENSITY_PRESETS,
    evaluate,
    filter_predictions,
    format_metrics,
    inverse_propensity,
    top_k_indices,
)

L = 6
C = 1 / math.log2(3)  # discount of rank 2; ranks 1 and 3 discount by 1 and 1/2


def csr_from_rows(rows: list[dict[int, float]], n_labels: int = L) -> sp.csr_matrix:
    """Build a csr from per-row {label: value} dicts, in the given (unsorted) order."""
    r, c, v = [], [], []
    for i, row in enumerate(rows):
        for label, value in row.items():
            r.append(i)
            c.append(label)
            v.append(value)
    return sp.csr_matrix((np.array(v, dtype=np.float64), (r, c)), shape=(len(rows), n_labels))


def truth(rows: list[set[int]], n_labels: int = L) -> sp.csr_matrix:
    return csr_from_rows([dict.fromkeys(s, 1.0) for s in rows], n_labels)


# Hand case: 4 points, 6 labels, inverse propensity q_l = l + 1.
#   point 0: ranking 0,1,2,3,5      true {0,2,5}  rel 1,0,1,0,1
#   point 1: ranking 3,1,5          true {5}      rel 0,0,1
#   point 2: ranking 4 (one pred)   true {1,4}    rel 1
#   point 3: ranking 0,1            true {}       rel 0,0
HAND_PRED = csr_from_rows(
    [
        {0: 0.9, 1: 0.8, 2: 0.7, 3: 0.6, 5: 0.5},
        {5: 0.2, 3: 0.9, 1: 0.5},
        {4: 0.3},
        {0: 0.5, 1: 0.4},
    ]
)
HAND_TRUE = truth([{0, 2, 5}, {5}, {1, 4}, set()])
HAND_Q = np.arange(1.0, L + 1.0)


def test_hand_case_all_metrics():
    m = evaluate(HAND_PRED, HAND_TRUE, ks=(1, 3), inv_propensity=HAND_Q, recall_ks=(3, 5, 6))
    assert list(m) == [
        "P@1",
        "P@3",
        "nDCG@1",
        "nDCG@3",
        "PSP@1",
        "PSP@3",
        "PSnDCG@1",
        "PSnDCG@3",
        "R@3",
        "R@5",
    ]
    # P@1: hits at rank 1 are 1,0,1,0 -> 2/4
    assert m["P@1"] == pytest.approx(100 * 1 / 2)
    # P@3: (2/3 + 1/3 + 1/3 + 0) / 4 = 1/3  (point 2 has one prediction but still divides by 3)
    assert m["P@3"] == pytest.approx(100 * 1 / 3)
    # nDCG@1: 1, 0, 1, 0 -> 1/2
    assert m["nDCG@1"] == pytest.approx(100 * 1 / 2)
    # nDCG@3: p0 (1 + 1/2) / (1 + c + 1/2); p1 (1/2) / 1; p2 1 / (1 + c); p3 0  (c = 1/log2 3)
    ndcg3 = (1.5 / (1.5 + C) + 0.5 + 1 / (1 + C) + 0) / 4
    assert m["nDCG@3"] == pytest.approx(100 * ndcg3)
    # PSP@1: numerators q: 1, 0, 5, 0 = 6; best top-1 q of the true sets: 6, 6, 5, 0 = 17 -> 6/17
    assert m["PSP@1"] == pytest.approx(100 * 6 / 17)
    # PSP@3: numerators 1+3, 6, 5, 0 = 15; best top-3 q: 6+3+1, 6, 5+2, 0 = 23 -> 15/23
    assert m["PSP@3"] == pytest.approx(100 * 15 / 23)
    # PSnDCG@1: IDCG@1 = 1 for every labelled point, so it equals PSP@1 = 6/17
    assert m["PSnDCG@1"] == pytest.approx(100 * 6 / 17)
    # PSnDCG@3, each term divided by the binary IDCG@3 of its point (1.5 + c, 1, 1 + c):
    #   numerators  p0 (1 + 3/2) = 5/2, p1 6/2 = 3, p2 5
    #   best        p0 6 + 3c + 1/2,    p1 6,       p2 5 + 2c
    num = 2.5 / (1.5 + C) + 3 / 1 + 5 / (1 + C)
    den = (6.5 + 3 * C) / (1.5 + C) + 6 / 1 + (5 + 2 * C) / (1 + C)
    assert m["PSnDCG@3"] == pytest.approx(100 * num / den)
    # R@3 over the 3 labelled points: (2/3 + 1/1 + 1/2) / 3 = 13/18
    assert m["R@3"] == pytest.approx(100 * 13 / 18)
    # R@5: (3/3 + 1 + 1/2) / 3 = 5/6; R@6 is omitted because no row stores 6 predictions
    assert m["R@5"] == pytest.approx(100 * 5 / 6)


def test_without_propensity_no_ps_keys_and_default_recall_omitted():
    m = evaluate(HAND_PRED, HAND_TRUE)
    assert list(m) == ["P@1", "P@3", "P@5", "nDCG@1", "nDCG@3", "nDCG@5"]
    # P@5: hits 3, 1, 1, 0 over 5 slots -> (3/5 + 1/5 + 1/5) / 4 = 1/4
    assert m["P@5"] == pytest.approx(100 * 1 / 4)


def test_points_without_labels_count_as_zero_except_for_recall():
    empty = evaluate(HAND_PRED, truth([set()] * 4), ks=(1, 3), inv_propensity=HAND_Q, recall_ks=(3,))
    assert all(v == 0.0 for v in empty.values()) and len(empty) == 9

    # Appending a labelless point scales P/nDCG by 4/5 and leaves R@k (labelled points only) alone.
    pred5 = sp.vstack([HAND_PRED, csr_from_rows([{2: 1.0}])]).tocsr()
    true5 = sp.vstack([HAND_TRUE, truth([set()])]).tocsr()
    m4 = evaluate(HAND_PRED, HAND_TRUE, ks=(1, 3), recall_ks=(3,))
    m5 = evaluate(pred5, true5, ks=(1, 3), recall_ks=(3,))
    for key in ("P@1", "P@3", "nDCG@1", "nDCG@3"):
        assert m5[key] == pytest.approx(m4[key] * 4 / 5)
    assert m5["R@3"] == pytest.approx(m4["R@3"])


def test_truth_values_are_binary_relevance():
    graded = HAND_TRUE.copy()
    graded.data = np.array([3.0, 0.5, 7.0, 2.0, 1.0, 9.0])
    # Explicit zeros (point 3, label 0 is also ranked first there) are not relevant labels.
    with_zero = csr_from_rows([{0: 1, 2: 1, 5: 1, 1: 0.0}, {5: 1}, {1: 1, 4: 1}, {0: 0.0}])
    assert with_zero.nnz == HAND_TRUE.nnz + 2
    ref = evaluate(HAND_PRED, HAND_TRUE, inv_propensity=HAND_Q, recall_ks=(5,))
    assert evaluate(HAND_PRED, graded, inv_propensity=HAND_Q, recall_ks=(5,)) == pytest.approx(ref)
    assert evaluate(HAND_PRED, with_zero, inv_propensity=HAND_Q, recall_ks=(5,)) == pytest.approx(ref)


def test_evaluate_does_not_mutate_inputs():
    pred, true = HAND_PRED.copy(), HAND_TRUE.copy()
    evaluate(pred, true, inv_propensity=HAND_Q, filter_pairs=np.array([[0, 0]]))
    assert (pred != HAND_PRED).nnz == 0 and (true != HAND_TRUE).nnz == 0


# ---------------------------------------------------------------- top-k and ties


def reference_topk(pred: sp.csr_matrix, k: int) -> np.ndarray:
    out = np.full((pred.shape[0], k), -1, dtype=np.int64)
    for i in range(pred.shape[0]):
        row = pred.getrow(i)
        ranked = sorted(
            zip(row.indices.tolist(), row.data.tolist(), strict=True), key=lambda e: (-e[1], e[0])
        )
        labels = [label for label, _ in ranked[:k]]
        out[i, : len(labels)] = labels
    return out


def test_ties_break_by_lower_label_and_short_rows_pad():
    pred = csr_from_rows([{4: 0.5, 1: 0.5, 3: 0.5, 0: 0.1}, {2: 1.0}, {}, {5: 0.0, 0: -1.0}])
    np.testing.assert_array_equal(top_k_indices(pred, 3), [[1, 3, 4], [2, -1, -1], [-1, -1, -1], [5, 0, -1]])
    # k smaller than the widest row goes through the partition path; the tie must still pick 1, 3.
    np.testing.assert_array_equal(top_k_indices(pred, 2), [[1, 3], [2, -1], [-1, -1], [5, 0]])
    assert top_k_indices(pred, 2).dtype == np.int64


def test_tied_prediction_scoring_is_deterministic():
    # Labels 1 and 3 tie; label 1 ranks first, so P@1 is 1 when 1 is true and 0 when only 3 is.
    pred = csr_from_rows([{3: 0.5, 1: 0.5}, {3: 0.5, 1: 0.5}])
    m = evaluate(pred, truth([{1}, {3}]), ks=(1,), recall_ks=())
    assert m["P@1"] == pytest.approx(50.0)


@pytest.mark.parametrize("k", [1, 3, 7, 40])
def test_top_k_matches_reference_with_many_ties(k):
    rng = np.random.default_rng(k)
    n, n_labels = 400, 60
    dense = np.where(rng.random((n, n_labels)) < 0.3, rng.integers(-3, 4, (n, n_labels)) / 2, 0.0)
    pred = sp.csr_matrix(dense)
    pred.data[::7] = 0.0  # explicit zero scores are predictions too
    np.testing.assert_array_equal(top_k_indices(pred, k), reference_topk(pred, k))


def test_top_k_uneven_rows_fallback_matches_reference():
    # One very wide row among thousands of short ones takes the sort-all-entries path.
    rng = np.random.default_rng(0)
    n, n_labels = 5000, 1200
    rows = [dict.fromkeys(range(0, n_labels, 1), 0.0)] + [{} for _ in range(n - 1)]
    rows[0] = {label: float(rng.integers(0, 5)) for label in range(n_labels)}
    for i in range(1, n, 3):
        rows[i] = {int(label): float(rng.integers(0, 3)) for label in rng.choice(n_labels, 3, replace=False)}
    pred = csr_from_rows(rows, n_labels)
    for k in (1, 5, 1500):
        np.testing.assert_array_equal(top_k_indices(pred, k), reference_topk(pred, k))


def test_top_k_rejects_bad_k_and_nan():
    with pytest.raises(XmineError, match="k must"):
        top_k_indices(HAND_PRED, 0)
    bad = HAND_PRED.copy()
    bad.data[0] = np.nan
    with pytest.raises(XmineError, match="NaN"):
        top_k_indices(bad, 1)


# ---------------------------------------------------------------- filtering


def test_filter_predictions_removes_exactly_listed_entries():
    pairs = np.array([[0, 1], [1, 3], [2, 2]])  # (2, 2) is not stored: ignored
    out = filter_predictions(HAND_PRED, pairs)
    assert isinstance(out, sp.csr_matrix)
    assert out.nnz == HAND_PRED.nnz - 2
    expected = HAND_PRED.toarray()
    expected[0, 1] = expected[1, 3] = 0.0
    np.testing.assert_array_equal(out.toarray(), expected)
    assert 0.0 not in out.data  # removed, not stored as explicit zeros
    assert HAND_PRED.nnz == 11  # input untouched
    assert filter_predictions(HAND_PRED, None) is HAND_PRED
    assert filter_predictions(HAND_PRED, np.zeros((0, 2), dtype=np.int64)) is HAND_PRED


def test_filtered_prediction_lets_next_move_up():
    # Point 0 ranks 0,1,2,...: removing label 1 moves label 2 (relevant) into the top 2.
    pairs = np.array([[0, 1]])
    np.testing.assert_array_equal(top_k_indices(filter_predictions(HAND_PRED, pairs), 3)[0], [0, 2, 3])
    before = evaluate(HAND_PRED[:1], HAND_TRUE[:1], ks=(2,), recall_ks=())
    after = evaluate(HAND_PRED[:1], HAND_TRUE[:1], ks=(2,), filter_pairs=pairs, recall_ks=())
    assert before["P@2"] == pytest.approx(50.0)  # top 2 = {0, 1}: 1 of 2
    assert after["P@2"] == pytest.approx(100.0)  # top 2 = {0, 2}: 2 of 2


def test_recall_availability_counts_predictions_before_filtering():
    m = evaluate(HAND_PRED, HAND_TRUE, ks=(1,), recall_ks=(5,), filter_pairs=np.array([[0, 5]]))
    # Point 0 still asked for 5 predictions; with label 5 filtered, R@5 = (2/3 + 1 + 1/2) / 3
    assert m["R@5"] == pytest.approx(100 * 13 / 18)


def test_filter_pairs_validation():
    with pytest.raises(XmineError, match=r"\(m, 2\)"):
        filter_predictions(HAND_PRED, np.array([1, 2, 3]))
    with pytest.raises(XmineError, match=r"\(4, 6\)"):
        filter_predictions(HAND_PRED, np.array([[4, 0]]))


# ---------------------------------------------------------------- validation


def test_shape_mismatch_names_shapes():
    with pytest.raises(XmineError, match=r"\(4, 6\).*\(4, 7\)"):
        evaluate(HAND_PRED, truth([set()] * 4, n_labels=7))
    with pytest.raises(XmineError, match=r"\(4, 6\).*\(3, 6\)"):
        evaluate(HAND_PRED, HAND_TRUE[:3])
    with pytest.raises(XmineError, match=r"\(5,\).*\(4, 6\)"):
        evaluate(HAND_PRED, HAND_TRUE, inv_propensity=np.ones(5))
    with pytest.raises(XmineError, match="ks must"):
        evaluate(HAND_PRED, HAND_TRUE, ks=(0, 1))
    with pytest.raises(XmineError, match="sparse"):
        evaluate(HAND_PRED.toarray(), HAND_TRUE)


# ---------------------------------------------------------------- propensity


def test_inverse_propensity_formula_by_hand():
    # N = 4 points; column counts 4, 1, 0 (the explicit zero in column 2 is not a label).
    y = sp.csr_matrix(
        (np.array([1.0, 1, 1, 1, 1, 0]), ([0, 1, 2, 3, 0, 1], [0, 0, 0, 0, 1, 2])), shape=(4, 3)
    )
    a, b = 0.55, 1.5
    c = (math.log(4) - 1) * (b + 1) ** a
    expected = [1 + c * (4 + b) ** -a, 1 + c * (1 + b) ** -a, 1 + c * (0 + b) ** -a]
    got = inverse_propensity(y, a, b)
    assert got.dtype == np.float64 and got.shape == (3,)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(inverse_propensity(y.toarray(), a, b), expected, rtol=1e-12)
    # Wikipedia preset: A = 0.5, B = 0.4
    c = (math.log(4) - 1) * 1.4**0.5
    np.testing.assert_allclose(
        inverse_propensity(y, *PROPENSITY_PRESETS["wikipedia"]),
        [1 + c * 4.4**-0.5, 1 + c * 1.4**-0.5, 1 + c * 0.4**-0.5],
    )


def test_propensity_presets():
    assert PROPENSITY_PRESETS == {"default": (0.55, 1.5), "amazon": (0.6, 2.6), "wikipedia": (0.5, 0.4)}


def test_inverse_propensity_rejects_1d():
    with pytest.raises(XmineError, match=r"\(3,\)"):
        inverse_propensity(np.array([1, 2, 3]))


# ---------------------------------------------------------------- against napkinXC


def random_case(seed: int = 0, n: int = 500, n_labels: int = 300, depth: int = 20):
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_labels + 1) ** 1.1  # power-law label frequencies
    popularity /= popularity.sum()
    perm = rng.permutation(n_labels)  # popular labels are not simply the low ids

    def draw_labels(count: int) -> np.ndarray:
        return perm[rng.choice(n_labels, size=count, replace=False, p=popularity)]

    train_rows = [set(draw_labels(int(rng.integers(1, 9))).tolist()) for _ in range(2000)]
    test_rows = [set(draw_labels(int(rng.integers(0, 9))).tolist()) for _ in range(n)]  # some empty
    pred_rows = []
    for labels in test_rows:
        # A realistic ranker: some true labels mixed with popular and uniform distractors.
        hits = [label for label in labels if rng.random() < 0.6]
        cands = list(dict.fromkeys([*hits, *draw_labels(10).tolist(), *rng.permutation(n_labels)[:depth]]))
        pred_rows.append({int(label): float(rng.random()) for label in cands[:depth]})
    return (
        truth(train_rows, n_labels),
        truth(test_rows, n_labels),
        csr_from_rows(pred_rows, n_labels),
        test_rows,
    )


def test_against_napkinxc():
    nxm = pytest.importorskip("napkinxc.metrics")
    train, true, pred, test_rows = random_case()
    q = inverse_propensity(train)
    np.testing.assert_allclose(q, nxm.Jain_et_al_inverse_propensity(train), rtol=1e-12)

    # napkinXC reads a 2-D ndarray as a dense score matrix, so give it ranked label lists.
    ranked = [[int(label) for label in row if label >= 0] for row in reference_topk(pred, 20)]
    y_true = [sorted(s) for s in test_rows]
    m = evaluate(pred, true, ks=(1, 3, 5), inv_propensity=q, recall_ks=(10, 20, 100))
    assert "R@100" not in m  # only 20 predictions per point

    ref = {
        "P": nxm.precision_at_k(y_true, ranked, k=5),
        "nDCG": nxm.ndcg_at_k(y_true, ranked, k=5),
        "PSP": nxm.psprecision_at_k(y_true, ranked, q, k=5, normalize=True),
        "PSnDCG": nxm.psndcg_at_k(y_true, ranked, q, k=5, normalize=True),
    }
    for name, values in ref.items():
        for k in (1, 3, 5):
            assert m[f"{name}@{k}"] == pytest.approx(100 * values[k - 1], rel=1e-6), f"{name}@{k}"
    assert 0 < m["PSP@5"] < 100 and m["P@1"] > 10

    # napkinXC's recall averages over all points (labelless ones add 0); ours only over labelled ones.
    n_pos = sum(1 for s in test_rows if s)
    assert n_pos < len(test_rows)
    recall = nxm.recall_at_k(y_true, ranked, k=20)
    for r in (10, 20):
        assert m[f"R@{r}"] == pytest.approx(100 * recall[r - 1] * len(test_rows) / n_pos, rel=1e-6)


def test_ps_normalisation_is_dataset_level_not_per_point():
    # The per-point mean of ratios would be (1/6 + 0 + 1 + 0) / 4 for PSP@1 here; the convention
    # (pyxclib / napkinXC normalize=True) is the ratio of sums, 6/17.
    m = evaluate(HAND_PRED, HAND_TRUE, ks=(1,), inv_propensity=HAND_Q, recall_ks=())
    assert m["PSP@1"] == pytest.approx(100 * 6 / 17)
    assert m["PSP@1"] != pytest.approx(100 * (1 / 6 + 1) / 4)


# ---------------------------------------------------------------- formatting


def test_format_metrics():
    text = format_metrics({"P@1": 50.0, "nDCG@3": 12.3456, "PSP@1": 35.294, "PSnDCG@1": 1.0, "R@10": 99.999})
    assert text == "P@1 50.00  nDCG@3 12.35  R@10 100.00\nPSP@1 35.29  PSnDCG@1 1.00"
    assert format_metrics({"P@1": 1.0}) == "P@1 1.00"
    assert format_metrics({}) == ""
