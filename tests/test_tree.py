from __future__ import annotations

import numpy as np
import pytest
from sklearn.tree import DecisionTreeClassifier

from xmine.fusion import _tree_predict
from xmine.tree import LEAF, fit_tree, sorted_order


def _sklearn_tree(x, y, w, max_depth, min_leaf):
    tree = DecisionTreeClassifier(max_depth=max_depth, min_samples_leaf=min_leaf, random_state=0).fit(
        x, y, sample_weight=w)
    return tree, tree.tree_


def _data(seed, n, n_features, rounded=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features))
    if rounded:  # many equal values, so that splits fall only between distinct ones
        x[:, 1:] = np.round(x[:, 1:], 1)
    y = rng.random(n) < 1 / (1 + np.exp(-2 * x[:, 0] + x[:, -1] - 2))
    w = np.where(y, rng.uniform(1, 4, n), 1.0)
    return x, y, w


@pytest.mark.parametrize(("seed", "n", "n_features", "depth", "min_leaf", "rounded"), [
    (0, 5000, 3, 7, 50, False), (1, 20000, 6, 7, 50, True), (2, 3000, 4, 4, 1, False), (3, 6000, 2, 10, 40, False)])
def test_the_compiled_tree_is_scikit_learns_tree_where_no_two_splits_tie(seed, n, n_features, depth, min_leaf,
                                                                          rounded):
    # exact equality: on continuous weights two different splits are never equally good to the last bit, so the
    # only freedom the two fitters have (which of two tied splits; the order of float sums) does not arise
    x, y, w = _data(seed, n, n_features, rounded)
    sk, raw = _sklearn_tree(x, y, w, depth, min_leaf)
    tree = fit_tree(x, y, w, depth, min_leaf)
    assert np.array_equal(tree["left"], raw.children_left) and np.array_equal(tree["right"], raw.children_right)
    assert np.array_equal(tree["feature"], raw.feature)
    assert np.array_equal(tree["threshold"], raw.threshold)
    assert tree["depth"][0] == raw.max_depth
    assert np.allclose(_tree_predict(tree, x), sk.predict_proba(x)[:, 1], rtol=0, atol=1e-12)


def test_every_leaf_holds_at_least_min_samples_leaf_and_pure_nodes_are_not_split():
    x, y, w = _data(4, 4000, 3)
    y[x[:, 0] > 1.0] = True  # a pure region
    tree = fit_tree(x, y, w, 10, 30)
    node = np.zeros(len(x), dtype=np.int64)
    for _ in range(11):
        inner = tree["left"][node] != LEAF
        value = x[np.arange(len(x)), np.maximum(tree["feature"][node], 0)].astype(np.float32)
        go_left = value <= tree["threshold"][node]
        node = np.where(inner, np.where(go_left, tree["left"][node], tree["right"][node]), node)
    leaves, counts = np.unique(node, return_counts=True)
    assert counts.min() >= 30
    for leaf in leaves:
        assert np.isclose(tree["proba"][leaf], w[node == leaf][y[node == leaf]].sum() / w[node == leaf].sum())
    inner = np.flatnonzero(tree["left"] != LEAF)
    assert tree["proba"][inner].min() > 0.0 and tree["proba"][inner].max() < 1.0


def test_values_closer_than_the_float32_tolerance_are_one_value():
    # scikit-learn's rule: a split needs consecutive values more than 1e-7 apart (in float32)
    x = np.concatenate([np.full(50, 0.5), np.full(50, np.nextafter(np.float32(0.5), np.float32(1)))])[:, None]
    y = np.arange(100) >= 50
    assert fit_tree(x, y, None, 3, 1)["left"][0] == LEAF
    x[50:] = 0.5 + 1e-6
    split = fit_tree(x, y, None, 3, 1)
    assert split["feature"][0] == 0 and 0.5 <= split["threshold"][0] < 0.5 + 1e-6


def test_depth_zero_and_one_class_give_a_single_leaf():
    x, y, w = _data(5, 500, 2)
    for tree in (fit_tree(x, y, w, 0, 1), fit_tree(x, np.zeros(500, dtype=bool), w, 5, 1)):
        assert len(tree["left"]) == 1 and tree["left"][0] == LEAF and tree["depth"][0] == 0
    assert np.isclose(fit_tree(x, y, w, 0, 1)["proba"][0], w[y].sum() / w.sum())


def test_a_depth_bound_beyond_any_reachable_depth_grows_the_unbounded_tree():
    # the node budget of a full tree of depth 70 does not fit in 64 bits: it must not overflow into a bad size
    x, y, w = _data(8, 300, 2)
    deep, deeper = fit_tree(x, y, w, 40, 1), fit_tree(x, y, w, 70, 1)
    assert deep["depth"][0] < 40
    assert all(np.array_equal(deep[key], deeper[key]) for key in deep)


def test_radix_order_sorts_like_a_stable_argsort():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(20000, 4)).astype(np.float32) * np.array([1, 1e-30, 1e30, 1], dtype=np.float32)
    x[::7, 0] = 0.0
    x[::5, 3] = np.round(x[::5, 3])
    x[1, 1], x[2, 1] = np.inf, -np.inf
    order = sorted_order(x)
    reference = np.argsort(x, axis=0, kind="stable").T
    assert np.array_equal(order, reference)


def test_non_finite_features_and_mismatched_shapes_are_refused():
    x, y, w = _data(7, 100, 2)
    with pytest.raises(ValueError, match="match"):
        fit_tree(x, y[:-1], w, 3, 1)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        fit_tree(x, y, w, 3, 1)
