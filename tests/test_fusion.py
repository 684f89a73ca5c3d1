from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from xmine.config import FusionConfig
from xmine.fusion import LEAKAGE_MARGIN, LEARNED_MODES, SELECTION_MARGIN, ScoreFusion, choose_mode
from xmine.metrics import evaluate
from xmine.topk import csr_from_topk, csr_row_topk, lookup_csr


def _problem(seed: int = 0, n: int = 400, c: int = 30, n_labels: int = 500):
    rng = np.random.default_rng(seed)
    cand = np.stack([rng.choice(n_labels, c, replace=False) for _ in range(n)])
    relevant = rng.random((n, c)) < 0.1
    # two noisy views of relevance: neither alone is perfect
    clf = relevant * 1.5 + rng.normal(0, 1.0, (n, c))
    sim = relevant * 0.3 + rng.normal(0, 0.3, (n, c))
    rows, cols = np.nonzero(relevant)
    truth = sp.csr_matrix((np.ones(len(rows)), (rows, cand[rows, cols])), shape=(n, n_labels))
    inv_p = 1 + rng.random(n_labels)
    return cand, {"classifier": clf, "encoder": sim}, truth, inv_p


def _ndcg5(scores, cand, truth):
    pred = csr_row_topk(csr_from_topk(scores, cand, truth.shape[1]), 5)
    return evaluate(pred, truth, ks=(5,), recall_ks=())["nDCG@5"]


def test_learned_fusion_is_never_worse_than_its_inputs_on_its_fitting_sample():
    cand, scores, truth, inv_p = _problem()
    fusion = ScoreFusion(FusionConfig(), inv_p, ("classifier", "encoder"))
    results = fusion.fit(scores, cand, truth)
    fused = _ndcg5(fusion.combine(scores, cand), cand, truth)
    assert fused >= _ndcg5(scores["classifier"], cand, truth) - SELECTION_MARGIN
    assert fused >= _ndcg5(scores["encoder"], cand, truth) - SELECTION_MARGIN
    assert fused >= max(results.values()) - SELECTION_MARGIN
    # two independent noisy views: combining them should help here
    assert fusion.mode in LEARNED_MODES


def test_fixed_fusion_is_the_weighted_sum():
    cand, scores, truth, inv_p = _problem(1)
    fusion = ScoreFusion(FusionConfig(kind="fixed", weight=0.25), inv_p, ("classifier", "encoder"))
    fusion.fit(scores, cand, truth)
    expected = 0.25 / (1 + np.exp(-scores["classifier"])) + 0.75 * scores["encoder"]
    assert np.allclose(fusion.combine(scores, cand), expected)


@pytest.mark.parametrize("rounds", [0, 10])  # NGAME's single tree, boosted trees
def test_save_load_gives_identical_scores(tmp_path, rounds):
    cand, scores, truth, inv_p = _problem(2)
    fusion = ScoreFusion(FusionConfig(boosting_rounds=rounds), inv_p, ("classifier", "encoder"))
    fusion.fit(scores, cand, truth)
    fusion.save(tmp_path)
    loaded = ScoreFusion.load(tmp_path)
    for mode in ("lr", "tree", "lr+tree") if rounds == 0 else ("lr", "boost", "lr+boost"):
        fusion.mode = loaded.mode = mode
        assert np.allclose(fusion.combine(scores, cand), loaded.combine(scores, cand))


def test_leakage_check_refits_on_unseen_points_when_the_encoder_memorised_the_others():
    cand, scores, truth, inv_p = _problem(3, n=800)
    relevant = lookup_csr(truth, cand) > 0
    unseen = np.zeros(len(cand), dtype=bool)
    unseen[600:] = True
    # on the points its training saw, the encoder "knows" the answer; on the unseen ones it is pure noise
    leaky = scores["encoder"].copy()
    leaky[~unseen] = relevant[~unseen] * 5.0
    leaky[unseen] = np.random.default_rng(9).normal(0, 0.3, leaky[unseen].shape)
    leaky_scores = {"classifier": scores["classifier"], "encoder": leaky}
    fusion = ScoreFusion(FusionConfig(), inv_p, ("classifier", "encoder"))
    report = fusion.fit_checked(leaky_scores, cand, truth, unseen)
    assert report["encoder_ndcg5_seen"] > 90 > report["encoder_ndcg5_unseen"]
    assert report["fitted_on"] == "unseen"
    assert report["fitted_on_unseen_ndcg5_crossfit"] > report["fitted_on_seen_ndcg5_unseen"]
    # the chosen fusion ranks the unseen points at least as well as the classifier alone
    rows = np.flatnonzero(unseen)
    sub = {k: v[rows] for k, v in leaky_scores.items()}
    assert fusion.held_out_ndcg(sub, cand[rows], truth[rows]) >= _ndcg5(sub["classifier"], cand[rows],
                                                                         truth[rows]) - 1.0


def test_leakage_check_keeps_all_points_when_seen_and_unseen_agree():
    cand, scores, truth, inv_p = _problem(4, n=800)
    unseen = np.zeros(len(cand), dtype=bool)
    unseen[600:] = True
    fusion = ScoreFusion(FusionConfig(), inv_p, ("classifier", "encoder"))
    report = fusion.fit_checked(scores, cand, truth, unseen)
    assert report["fitted_on"] == "all"
    assert report["selection"][fusion.mode] >= max(report["selection"].values()) - SELECTION_MARGIN


def test_leakage_check_refits_on_unseen_points_only_beyond_its_margin(monkeypatch):
    cand, scores, truth, inv_p = _problem(5, n=400)
    unseen = np.zeros(len(cand), dtype=bool)
    unseen[300:] = True
    for crossfit_gain, expected in ((LEAKAGE_MARGIN / 2, "all"), (LEAKAGE_MARGIN * 2, "unseen")):
        fusion = ScoreFusion(FusionConfig(), inv_p, ("classifier", "encoder"))
        # held-out nDCG@5: first of the fusion fitted on the seen points, then of the two cross-fitted halves
        measured = iter([50.0, 50.0 + crossfit_gain, 50.0 + crossfit_gain])
        monkeypatch.setattr(fusion, "held_out_ndcg", lambda *args, measured=measured: next(measured))
        report = fusion.fit_checked(scores, cand, truth, unseen)
        assert report["fitted_on_unseen_ndcg5_crossfit"] == pytest.approx(50.0 + crossfit_gain)
        assert report["fitted_on"] == expected


def test_near_equal_fusion_options_go_to_the_richest_and_clear_winners_win():
    assert choose_mode({"encoder": 40.0, "tree": 60.4, "lr": 59.0, "lr+tree": 60.4 - SELECTION_MARGIN / 2}) == "lr+tree"
    assert choose_mode({"encoder": 40.0, "tree": 61.0, "lr": 59.0, "lr+tree": 60.0}) == "tree"
    assert choose_mode({"classifier": 70.0, "encoder": 40.0, "knn": 50.0, "lr": 60.0}) == "classifier"
    # the boosted trees are kept only when they beat the regression by more than the margin
    assert choose_mode({"lr": 60.8, "lr+boost": 60.8 - SELECTION_MARGIN / 2, "boost": 60.0}) == "lr"
    assert choose_mode({"lr": 60.8, "lr+boost": 60.8 + SELECTION_MARGIN / 2, "boost": 60.0}) == "lr"
    assert choose_mode({"lr": 60.8, "lr+boost": 60.8 + 2 * SELECTION_MARGIN, "boost": 61.5}) == "lr+boost"


def test_fitted_options_are_judged_out_of_fold():
    # a small sample where the sources carry little signal: a depth-7 tree scores its own training points far
    # better than points it has not seen, and the selection must see the latter
    cand, scores, truth, inv_p = _problem(3, n=150)
    scores = {name: value + np.random.default_rng(9).normal(0, 2.0, value.shape) for name, value in scores.items()}
    in_sample = ScoreFusion(FusionConfig(selection_folds=1, max_depth=7, boosting_rounds=0), inv_p,
                            ("classifier", "encoder"))
    cross_fitted = ScoreFusion(FusionConfig(selection_folds=3, max_depth=7, boosting_rounds=0), inv_p,
                               ("classifier", "encoder"))
    a, b = in_sample.fit(scores, cand, truth), cross_fitted.fit(scores, cand, truth)
    assert b["tree"] < a["tree"] - 1.0
    assert b["classifier"] == a["classifier"]  # the sources need no fitting: scored as they are
    # the final models are fitted on all points either way
    in_sample.mode = cross_fitted.mode = "lr+tree"
    assert np.allclose(in_sample.combine(scores, cand), cross_fitted.combine(scores, cand))


def _offset_problem(seed: int):
    """As _problem, but each point's classifier scores are shifted by a random per-point offset: a calibrated
    score for one point is not for another, and only a score relative to the point's others is comparable."""
    cand, scores, truth, inv_p = _problem(seed)
    scores["classifier"] = scores["classifier"] + np.random.default_rng([seed, 1]).normal(0, 4, (len(cand), 1))
    return cand, scores, truth, inv_p


def test_point_context_features_let_the_fusion_use_scores_that_are_only_comparable_within_a_point():
    fit_cand, fit_scores, fit_truth, inv_p = _offset_problem(0)
    cand, scores, truth, _ = _offset_problem(1)
    held_out = {}
    for context in (False, True):
        fusion = ScoreFusion(FusionConfig(point_context=context), inv_p, ("classifier", "encoder"))
        fusion.fit(fit_scores, fit_cand, fit_truth)
        held_out[context] = _ndcg5(fusion.combine(scores, cand), cand, truth)
    best_source = max(_ndcg5(scores[s], cand, truth) for s in scores)
    assert held_out[False] <= best_source + 1  # absolute scores: the offsets hide what the classifier knows
    assert held_out[True] > best_source + 5


def test_point_context_features_are_gaps_to_the_best_and_ranks_and_ignore_padding():
    cand = np.array([[3, 1, -1], [0, 2, 4]])
    scores = {"classifier": np.array([[0.0, 2.0, 9.0], [1.0, -1.0, 0.0]]),
              "encoder": np.array([[0.5, 0.1, 7.0], [0.2, 0.3, 0.1]])}
    fusion = ScoreFusion(FusionConfig(), np.ones(5), ("classifier", "encoder"))
    features = fusion._features(scores, cand).reshape(2, 3, -1)
    # columns: classifier, encoder, log inverse propensity, classifier gap, classifier log(1 + rank), encoder gap
    sig = 1 / (1 + np.exp(-scores["classifier"]))
    assert np.allclose(features[0, :2, 3], sig[0, :2] - sig[0, 1])  # the padded candidate is not the best
    assert np.allclose(features[1, :, 4], np.log1p([0, 2, 1]))
    assert np.allclose(features[0, :2, 5], [0.0, -0.4])


def test_fusions_saved_before_point_context_are_refused_not_misread(tmp_path):
    """Older fusions (fitted without the point-context features) are not loaded with today's default: the saved
    regression does not fit today's features, which loading checks (the model's format version says retrain)."""
    import json

    from xmine.errors import ModelError

    cand, scores, truth, inv_p = _problem(3)
    fusion = ScoreFusion(FusionConfig(point_context=False), inv_p, ("classifier", "encoder"))
    fusion.fit(scores, cand, truth)
    fusion.save(tmp_path)
    meta = json.loads((tmp_path / "fusion.json").read_text())
    del meta["config"]["point_context"]  # as written by earlier versions
    (tmp_path / "fusion.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="coef has shape"):
        ScoreFusion.load(tmp_path)


def test_row_ranks_equal_the_double_argsort():
    """The fusion's candidate ranks: one sort and a scatter equal the plain argsort of argsort, ties included."""
    from xmine.fusion import row_ranks

    rng = np.random.default_rng(0)
    values = rng.integers(0, 5, size=(40, 30)).astype(np.float32)  # many ties
    values[0] = -np.inf  # a row of padding only
    plain = np.argsort(np.argsort(values, axis=1, kind="stable"), axis=1, kind="stable")
    assert np.array_equal(row_ranks(values), plain)



def test_unsampled_unbinned_fit_gives_the_plain_models_on_every_pair():
    from sklearn.linear_model import LogisticRegression

    from xmine.tree import fit_tree

    cand, scores, truth, inv_p = _problem(6)
    fits = {}
    for cap in (0, cand.size):
        fusion = ScoreFusion(FusionConfig(selection_folds=1, fit_pairs=cap, tree_bins=0, boosting_rounds=0), inv_p,
                             ("classifier", "encoder"))
        fusion.fit(scores, cand, truth)
        fits[cap] = fusion
    x = fits[0]._features(scores, cand)
    y = lookup_csr(truth, cand).ravel() > 0
    # the default weighting of positive pairs (FusionConfig.positive_weight_power), written out
    power = FusionConfig().positive_weight_power
    weights = np.where(y, np.exp(power * np.log(inv_p[cand.ravel()])), 1.0)
    weights *= len(weights) / weights.sum()
    mean, std = x.mean(0), x.std(0) + 1e-9
    lr = LogisticRegression(C=1.0, max_iter=500, class_weight="balanced").fit((x - mean) / std, y,
                                                                               sample_weight=weights)
    tree = fit_tree(x, y, weights, 7, 50)
    for fusion in fits.values():
        assert np.array_equal(fusion.coef[:-1], lr.coef_[0] / std)
        assert all(np.array_equal(fusion.tree[key], value) for key, value in tree.items())


def test_the_regression_fitted_on_a_sample_of_pairs_ranks_like_the_one_fitted_on_all():
    # tolerance: on a quarter of the pairs (all positives), the regression's held-out nDCG@5 moves by < 0.5 points;
    # the tree is fitted on every pair either way
    fit_cand, fit_scores, fit_truth, inv_p = _problem(7, n=1000)
    cand, scores, truth, _ = _problem(8, n=1000)
    fitted = {}
    for cap in (0, fit_cand.size // 4):
        fusion = ScoreFusion(FusionConfig(selection_folds=1, fit_pairs=cap, boosting_rounds=0), inv_p,
                             ("classifier", "encoder"))
        fusion.fit(fit_scores, fit_cand, fit_truth)
        fusion.mode = "lr"
        fitted[cap] = fusion
    full, sampled = fitted[0], fitted[fit_cand.size // 4]
    assert not np.array_equal(full.coef, sampled.coef)  # the sample was used
    assert all(np.array_equal(full.tree[key], sampled.tree[key]) for key in full.tree)
    assert abs(_ndcg5(full.combine(scores, cand), cand, truth) - _ndcg5(sampled.combine(scores, cand), cand, truth)) \
        < 0.5


@pytest.mark.parametrize("rounds", [0, 5])  # few boosting rounds: the test is about threads, not the trees
def test_fusion_fitted_in_threads_equals_the_one_fitted_in_one(rounds):
    cand, scores, truth, inv_p = _problem(9, n=300)
    unseen = np.zeros(len(cand), dtype=bool)
    unseen[200:] = True
    fusions = {n_jobs: ScoreFusion(FusionConfig(boosting_rounds=rounds), inv_p, ("classifier", "encoder"))
               for n_jobs in (1, 3)}
    reports = {n_jobs: fusion.fit_checked(scores, cand, truth, unseen, seed=1, n_jobs=n_jobs)
               for n_jobs, fusion in fusions.items()}
    assert reports[1] == reports[3]
    assert fusions[1].mode == fusions[3].mode and np.array_equal(fusions[1].coef, fusions[3].coef)
    trees = [fusion.tree if rounds == 0 else fusion.forest for fusion in (fusions[1], fusions[3])]
    assert all(np.array_equal(trees[0][key], trees[1][key]) for key in trees[0])


def test_subsample_pairs_keeps_every_positive_up_to_half_and_weights_back_to_the_full_counts():
    from xmine.fusion import subsample_pairs

    target = np.random.default_rng(0).random(10_000) < 0.05
    keep, weight = subsample_pairs(target, 2_000, np.random.default_rng(1))
    assert len(keep) == 2_000 and np.array_equal(keep, np.unique(keep))
    assert target[keep].sum() == target.sum()  # the ~500 positives fit in half of 2,000
    for cls in (0, 1):
        assert (target[keep] == cls).sum() * weight[cls] == pytest.approx((target == cls).sum())
    keep, weight = subsample_pairs(target, 400, np.random.default_rng(1))
    assert target[keep].sum() == 200 and len(keep) == 400  # positives capped at half
    assert weight[1] == pytest.approx(target.sum() / 200)
    keep, weight = subsample_pairs(target, 0, np.random.default_rng(1))
    assert np.array_equal(keep, np.arange(len(target))) and np.array_equal(weight, [1, 1])


def test_a_tree_fitted_on_bin_codes_splits_the_values_exactly_where_it_split_the_codes():
    from xmine.fusion import FeatureBins, _tree_predict
    from xmine.tree import fit_tree

    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(size=(3000, 2)), rng.integers(0, 5, (3000, 1))], axis=1)  # a few distinct values
    y = rng.random(3000) < 1 / (1 + np.exp(-2 * x[:, 0] - x[:, 2]))
    bins = FeatureBins(x, 16, sample=1000)
    codes = bins.codes(x)
    assert codes.max() <= 15 and len(bins.edges[2]) <= 5
    tree = fit_tree(codes, y, None, 5, 20)
    on_values = bins.value_thresholds(tree)
    assert np.array_equal(_tree_predict(on_values, x), _tree_predict(tree, codes))
    assert not np.array_equal(on_values["threshold"], tree["threshold"])


def test_binned_tree_ranks_held_out_points_about_as_well_as_the_exact_one():
    # tolerance: with 255 bins the tree's held-out nDCG@5 moves by < 0.5 points (splits fall between bin edges)
    fit_cand, fit_scores, fit_truth, inv_p = _problem(10, n=1000)
    cand, scores, truth, _ = _problem(11, n=1000)
    held_out = []
    for bins in (0, 255):
        fusion = ScoreFusion(FusionConfig(selection_folds=1, tree_bins=bins, boosting_rounds=0), inv_p,
                             ("classifier", "encoder"))
        fusion.fit(fit_scores, fit_cand, fit_truth)
        fusion.mode = "tree"
        held_out.append(_ndcg5(fusion.combine(scores, cand), cand, truth))
    assert abs(held_out[0] - held_out[1]) < 0.5, held_out


@pytest.mark.parametrize("metric", ["ndcg", "ndcg+psndcg"])
def test_fusion_options_are_judged_by_the_configured_selection_metric(metric):
    cand, scores, truth, inv_p = _problem(7)
    inv_p = np.where(np.arange(len(inv_p)) % 5 == 0, 20.0, 1.0)  # a fifth of the labels rare: PSnDCG weighs them
    fusion = ScoreFusion(FusionConfig(selection_metric=metric), inv_p, ("classifier", "encoder"))
    results = fusion.fit(scores, cand, truth)
    for source in ("classifier", "encoder"):
        pred = csr_row_topk(csr_from_topk(scores[source], cand, truth.shape[1]), 5)
        measured = evaluate(pred, truth, ks=(5,), inv_propensity=inv_p, recall_ks=())
        expected = measured["nDCG@5"] + (measured["PSnDCG@5"] if metric == "ndcg+psndcg" else 0.0)
        assert results[source] == pytest.approx(expected)


def test_an_unknown_selection_metric_is_refused():
    from xmine.errors import ConfigError

    with pytest.raises(ConfigError, match="selection_metric"):
        FusionConfig.from_dict({"selection_metric": "psp"})


def test_weighting_rare_labels_positives_raises_the_fusions_weight_on_rarity():
    from xmine.fusion import positive_weights

    cand, scores, truth, _ = _problem(8)
    inv_p = np.where(np.arange(500) % 5 == 0, 20.0, 1.0)
    weights = positive_weights(np.log(np.array([20.0, 1.0, 20.0])), np.array([True, True, False]), 0.5)
    assert weights.mean() == pytest.approx(1.0) and weights[0] / weights[1] == pytest.approx(20.0 ** 0.5)
    assert weights[1] == weights[2]  # a negative weighs what an unweighted positive does
    rarity = {}
    for power in (0.0, 1.0):
        fusion = ScoreFusion(FusionConfig(positive_weight_power=power, point_context=False), inv_p,
                             ("classifier", "encoder"))
        fusion.fit(scores, cand, truth)
        rarity[power] = fusion.coef[fusion.rarity_column]  # the regression's weight on log inverse propensity
    assert rarity[1.0] > rarity[0.0] + 0.1


def test_boosted_tree_arrays_reproduce_sklearn_predictions():
    from sklearn.ensemble import HistGradientBoostingClassifier

    from xmine.fusion import BOOSTING, _forest_arrays, _forest_predict, _walk_layout

    rng = np.random.default_rng(4)
    x = rng.normal(size=(3000, 4))
    y = x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(size=3000) > 0.5
    model = HistGradientBoostingClassifier(max_iter=20, early_stopping=False, random_state=0, **BOOSTING).fit(x, y)
    forest = _forest_arrays(model)
    assert len(forest["roots"]) == 20
    test = rng.normal(size=(1000, 4))
    np.testing.assert_allclose(_forest_predict(_walk_layout(forest), test), model.predict_proba(test)[:, 1],
                               rtol=0, atol=1e-12)


def test_boosted_trees_fitted_on_bin_codes_give_the_same_probabilities_walked_on_values():
    # the fusion fits the boosted trees on FeatureBins codes (cheap to bin) and walks them on values
    from sklearn.ensemble import HistGradientBoostingClassifier

    from xmine.fusion import BOOSTING, BOOSTING_BINS, FeatureBins, _forest_arrays, _forest_predict, _walk_layout

    rng = np.random.default_rng(6)
    x = np.column_stack([rng.normal(size=4000), rng.exponential(size=4000), rng.integers(0, 4, 4000)])
    y = x[:, 0] * x[:, 1] + x[:, 2] + rng.normal(size=4000) > 1.5
    bins = FeatureBins(x[:3000], BOOSTING_BINS)
    model = HistGradientBoostingClassifier(max_iter=15, early_stopping=False, random_state=0, **BOOSTING)
    model.fit(bins.codes(x[:3000]), y[:3000], sample_weight=1 + rng.random(3000))
    on_values = bins.value_thresholds(_forest_arrays(model))
    test = x[3000:]  # values the edges were not computed from, as at prediction
    expected = model.predict_proba(bins.codes(test))[:, 1]
    np.testing.assert_allclose(_forest_predict(_walk_layout(on_values), test), expected, rtol=0, atol=1e-12)


def test_boosted_fusion_is_chosen_among_its_own_options_and_survives_save_load(tmp_path):
    cand, scores, truth, inv_p = _problem(5, n=800)
    fusion = ScoreFusion(FusionConfig(boosting_rounds=20), inv_p, ("classifier", "encoder"))
    results = fusion.fit(scores, cand, truth)
    assert {"lr", "boost", "lr+boost"} <= set(results) and "tree" not in results
    assert fusion.tree is None and fusion.forest is not None
    fusion.save(tmp_path)
    loaded = ScoreFusion.load(tmp_path)
    for mode in ("lr", "boost", "lr+boost"):
        fusion.mode = loaded.mode = mode
        np.testing.assert_array_equal(fusion.combine(scores, cand), loaded.combine(scores, cand))


def test_boosted_trees_that_would_loop_or_read_outside_the_features_are_refused(tmp_path):
    from xmine.errors import ModelError

    cand, scores, truth, inv_p = _problem(5, n=800)
    fusion = ScoreFusion(FusionConfig(boosting_rounds=5), inv_p, ("classifier", "encoder"))
    fusion.fit(scores, cand, truth)
    fusion.save(tmp_path)
    left = np.load(tmp_path / "forest_left.npy")
    split = np.flatnonzero(left >= 0)
    looping = left.copy()
    looping[split[-1]] = split[-1]  # a node that is its own child
    np.save(tmp_path / "forest_left.npy", looping)
    with pytest.raises(ModelError, match="forest_left.npy.*not after its parent"):
        ScoreFusion.load(tmp_path)
    np.save(tmp_path / "forest_left.npy", left)
    feature = np.load(tmp_path / "forest_feature.npy")
    feature[split[0]] = fusion.n_features
    np.save(tmp_path / "forest_feature.npy", feature)
    with pytest.raises(ModelError, match="forest_feature"):
        ScoreFusion.load(tmp_path)


def test_a_negative_number_of_boosting_rounds_is_refused():
    from xmine.errors import ConfigError

    with pytest.raises(ConfigError, match="boosting_rounds must be >= 0"):
        FusionConfig.from_dict({"boosting_rounds": -1})
