"""A CART decision tree (Gini, best split) fitted in compiled code, level by level: NGAME's fusion tree.

It grows the tree scikit-learn's `DecisionTreeClassifier(max_depth, min_samples_leaf)` grows on binary targets with
sample weights: the same candidate splits (between consecutive distinct float32 values, scikit-learn's 1e-7 float32
tolerance included), the same leaf-size rule on sample counts, the same Gini proxy to rank splits, the same
mid-point thresholds and the same depth-first node numbering, so the fusion's tree keeps its meaning. Two things
are not reproduced, and both only decide between splits that are equally good: scikit-learn visits the features in
a random order and keeps the first of tied splits, and it sums the weights in another order, which can move a
proxy in its last bit. A node with one class only is a leaf by its counts (scikit-learn: by an impurity at most
float64 epsilon, which rounding can miss). tests/test_tree.py asserts the same tree where no two splits tie.

Why not scikit-learn's: it sorts each node's samples again for every feature it tries, so a tree of depth 7 over
the fusion's half a million candidate pairs takes seconds, and the fusion fits sixteen of them. Here each feature
is sorted once per tree (a radix sort of its float32 bits), and each level is one pass per feature over that order.
"""

from __future__ import annotations

import numba
import numpy as np

LEAF = -1  # scikit-learn's children of a leaf
UNDEFINED = -2  # scikit-learn's feature and threshold of a leaf
FEATURE_TOLERANCE = np.float32(1e-7)  # values closer than this (in float32) are one value: scikit-learn's


def fit_tree(features: np.ndarray, target: np.ndarray, weights: np.ndarray | None, max_depth: int,
             min_samples_leaf: int) -> dict[str, np.ndarray]:
    """The fitted tree as arrays, node 0 the root, numbered depth-first (left subtree first): `left`, `right`
    (LEAF at leaves), `feature`, `threshold` (UNDEFINED at leaves; a sample goes left when its value <= the
    threshold), `proba` (the weighted share of positive samples in the node) and `depth` (one value: the deepest
    node's depth). `features` (n, F) are split as float32, as scikit-learn does."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    y = np.ascontiguousarray(target, dtype=np.bool_)
    w = np.ones(len(y)) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(y) or len(w) != len(y):
        raise ValueError(f"features {x.shape}, target {y.shape} and weights {w.shape} do not match")
    if not np.isfinite(x).all():
        raise ValueError("the tree's features must be finite")
    if max_depth < 0 or min_samples_leaf < 1:
        raise ValueError(f"max_depth must be >= 0 and min_samples_leaf >= 1, got {max_depth}, {min_samples_leaf}")
    order = sorted_order(x)
    # a level's node number per sample, small so that the random reads of it stay in cache
    level_node = np.zeros(len(y), dtype=np.int16 if max_depth < 15 else np.int32)
    # a full tree of max_depth, or at most 2n - 1 nodes; in Python, where 2 ** (max_depth + 1) cannot overflow
    max_nodes = min(2 ** (max_depth + 1) - 1, 2 * len(y) + 1)
    left, right, feature, threshold, proba, depth = _grow(x, y, w, order, level_node, max_depth, min_samples_leaf,
                                                          max_nodes)
    return {"left": left, "right": right, "feature": feature, "threshold": threshold, "proba": proba,
            "depth": np.array([depth])}


def sorted_order(features: np.ndarray) -> np.ndarray:
    """(F, n): each feature's rows in ascending order of their float32 value (stable)."""
    return _sorted_order(np.ascontiguousarray(features, dtype=np.float32))


RADIX_BITS = 11  # three passes over a float32's 32 bits


@numba.njit(cache=True, nogil=True)
def _sorted_order(x: np.ndarray) -> np.ndarray:
    """A stable least-significant-digit radix sort of each column's float32 bits, mapped to unsigned keys that sort
    as the floats do: a few linear passes instead of a comparison sort."""
    n, n_features = x.shape
    order = np.empty((n_features, n), dtype=np.int32)
    keys = np.empty(n, dtype=np.uint32)
    next_keys = np.empty(n, dtype=np.uint32)
    next_rows = np.empty(n, dtype=np.int32)
    counts = np.empty(2 ** RADIX_BITS + 1, dtype=np.int64)
    mask = np.uint32(2 ** RADIX_BITS - 1)
    for f in range(n_features):
        bits = x[:, f].copy().view(np.uint32)
        rows = order[f]
        for i in range(n):
            b = bits[i] if bits[i] != np.uint32(0x80000000) else np.uint32(0)  # -0.0 is 0.0
            # negative floats: all bits flipped (larger magnitude first); others: the sign bit set
            keys[i] = ~b if b >> np.uint32(31) else b | np.uint32(0x80000000)
            rows[i] = i
        for shift in range(0, 32, RADIX_BITS):
            counts[:] = 0
            for i in range(n):
                counts[((keys[i] >> np.uint32(shift)) & mask) + 1] += 1
            for d in range(1, len(counts)):
                counts[d] += counts[d - 1]
            for i in range(n):
                digit = (keys[i] >> np.uint32(shift)) & mask
                at = counts[digit]
                counts[digit] = at + 1
                next_keys[at] = keys[i]
                next_rows[at] = rows[i]
            for i in range(n):  # element by element: an array assignment is slow to compile (xmine.sorting)
                keys[i] = next_keys[i]
                rows[i] = next_rows[i]
    return order


@numba.njit(cache=True, nogil=True)
def _gini_proxy(left_w: float, left_pos: float, left_neg: float, node_w: float, node_pos: float,
                node_neg: float) -> float:
    """scikit-learn's Gini proxy of a split (larger is better): minus the children's weighted impurities."""
    right_w = node_w - left_w
    right_pos = node_pos - left_pos
    right_neg = node_neg - left_neg
    gini_left = 1.0 - (left_neg * left_neg + left_pos * left_pos) / (left_w * left_w)
    gini_right = 1.0 - (right_neg * right_neg + right_pos * right_pos) / (right_w * right_w)
    return -right_w * gini_right - left_w * gini_left


@numba.njit(cache=True, nogil=True)
def _grow(x: np.ndarray, y: np.ndarray, w: np.ndarray, order: np.ndarray, level_node: np.ndarray, max_depth: int,
          min_leaf: int, max_nodes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Grows the tree a level at a time: per level, one pass per feature over its sorted samples finds every
    open node's best split on it. `level_node[i]`: sample i's node among the level's nodes, -1 once in a leaf."""
    n, n_features = x.shape
    # each feature's values, weights and targets in its sorted order, read sequentially in every level's pass
    values = np.empty((n_features, n), dtype=np.float32)
    sorted_w = np.empty((n_features, n))
    sorted_y = np.empty((n_features, n), dtype=np.bool_)
    for f in range(n_features):
        for p in range(n):
            i = order[f, p]
            values[f, p] = x[i, f]
            sorted_w[f, p] = w[i]
            sorted_y[f, p] = y[i]
    # nodes in the order they are created (level by level); renumbered depth-first at the end
    node_left = np.full(max_nodes, LEAF, dtype=np.int64)
    node_right = np.full(max_nodes, LEAF, dtype=np.int64)
    node_feature = np.full(max_nodes, UNDEFINED, dtype=np.int64)
    node_threshold = np.full(max_nodes, float(UNDEFINED))
    node_count = np.zeros(max_nodes, dtype=np.int64)
    node_w = np.zeros(max_nodes)
    node_pos = np.zeros(max_nodes)
    node_neg = np.zeros(max_nodes)
    node_positives = np.zeros(max_nodes, dtype=np.int64)  # counted: a node with one class only is a leaf
    node_depth = np.zeros(max_nodes, dtype=np.int64)
    level_node[:] = 0
    for i in range(n):
        node_count[0] += 1
        node_w[0] += w[i]
        if y[i]:
            node_pos[0] += w[i]
            node_positives[0] += 1
        else:
            node_neg[0] += w[i]
    n_nodes = 1
    level_start, level_end = 0, 1
    depth = 0
    while level_start < level_end:
        n_level = level_end - level_start
        # which of this level's nodes may split (scikit-learn's leaf rules before the split search)
        open_node = np.zeros(n_level, dtype=np.bool_)
        any_open = False
        for k in range(n_level):
            node = level_start + k
            open_node[k] = (depth < max_depth and node_count[node] >= 2 * min_leaf
                            and 0 < node_positives[node] < node_count[node])
            any_open = any_open or open_node[k]
        best_proxy = np.full(n_level, -np.inf)
        best_feature = np.full(n_level, -1, dtype=np.int64)
        best_threshold = np.zeros(n_level)
        left_count = np.zeros(n_level, dtype=np.int64)
        left_w = np.zeros(n_level)
        left_pos = np.zeros(n_level)
        left_neg = np.zeros(n_level)
        last_value = np.zeros(n_level, dtype=np.float32)
        for f in range(n_features if any_open else 0):
            left_count[:] = 0
            left_w[:] = 0.0
            left_pos[:] = 0.0
            left_neg[:] = 0.0
            for p in range(n):
                k = level_node[order[f, p]]
                if k < 0 or not open_node[k]:
                    continue
                node = level_start + k
                value = values[f, p]
                count = left_count[k]
                # a split between the previous value and this one, when they are distinct and both sides big enough
                if count >= min_leaf and node_count[node] - count >= min_leaf \
                        and value > last_value[k] + FEATURE_TOLERANCE:
                    proxy = _gini_proxy(left_w[k], left_pos[k], left_neg[k], node_w[node], node_pos[node],
                                        node_neg[node])
                    if proxy > best_proxy[k]:
                        best_proxy[k] = proxy
                        best_feature[k] = f
                        threshold = np.float64(last_value[k]) / 2.0 + np.float64(value) / 2.0
                        if threshold == np.float64(value) or threshold == np.inf or threshold == -np.inf:
                            threshold = np.float64(last_value[k])
                        best_threshold[k] = threshold
                left_count[k] = count + 1
                left_w[k] += sorted_w[f, p]
                if sorted_y[f, p]:
                    left_pos[k] += sorted_w[f, p]
                else:
                    left_neg[k] += sorted_w[f, p]
                last_value[k] = value
        # this level's splits, and the next level's nodes
        child = np.full(n_level, -1, dtype=np.int64)
        for k in range(n_level):
            if best_feature[k] < 0:
                continue
            node = level_start + k
            node_feature[node] = best_feature[k]
            node_threshold[node] = best_threshold[k]
            node_left[node], node_right[node] = n_nodes, n_nodes + 1
            node_depth[n_nodes] = node_depth[n_nodes + 1] = depth + 1
            child[k] = n_nodes
            n_nodes += 2
        for i in range(n):
            k = level_node[i]
            if k < 0:
                continue
            if child[k] < 0:
                level_node[i] = -1
                continue
            node = level_start + k
            new_node = child[k] + (np.float64(x[i, node_feature[node]]) > node_threshold[node])
            level_node[i] = new_node - level_end
            node_count[new_node] += 1
            node_w[new_node] += w[i]
            if y[i]:
                node_pos[new_node] += w[i]
                node_positives[new_node] += 1
            else:
                node_neg[new_node] += w[i]
        level_start, level_end = level_end, n_nodes
        depth += 1
    # depth-first numbering, left subtree first (scikit-learn's)
    new_id = np.empty(n_nodes, dtype=np.int64)
    stack = np.empty(n_nodes, dtype=np.int64)
    stack[0] = 0
    top, next_id = 1, 0
    while top > 0:
        top -= 1
        node = stack[top]
        new_id[node] = next_id
        next_id += 1
        if node_left[node] != LEAF:
            stack[top] = node_right[node]
            stack[top + 1] = node_left[node]
            top += 2
    left = np.full(n_nodes, LEAF, dtype=np.int64)
    right = np.full(n_nodes, LEAF, dtype=np.int64)
    feature = np.full(n_nodes, UNDEFINED, dtype=np.int64)
    threshold = np.full(n_nodes, float(UNDEFINED))
    proba = np.zeros(n_nodes)
    deepest = 0
    for node in range(n_nodes):
        j = new_id[node]
        if node_left[node] != LEAF:
            left[j] = new_id[node_left[node]]
            right[j] = new_id[node_right[node]]
            feature[j] = node_feature[node]
            threshold[j] = node_threshold[node]
        proba[j] = node_pos[node] / node_w[node] if node_w[node] > 0 else 0.0
        deepest = max(deepest, node_depth[node])
    return left, right, feature, threshold, proba, deepest
