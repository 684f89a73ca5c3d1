"""Fusing the scores of a shortlist's candidates from several sources.

Sources (each an (n, C) array over the same candidates): "classifier" (logit of the per-label
classifier), "encoder" (cosine between point and label embeddings), "knn" (TF-IDF neighbour
votes, normalised by the row's best vote; 0 when a candidate got no vote) and "ranker" (logit of the
sparse linear ranker). Each pair's features are
those scores plus log inverse propensity of the label, and (`point_context`) each score relative to the
point's other candidates: its gap to the point's best score and, for the logit sources, its rank.

"learned" (default): fitted on held-out TRAINING points (never test points), as NGAME does with its
decision tree. Fitted there: a logistic regression and NGAME's small decision tree on the pair
features; the fusion keeps, of [regression + tree, tree, regression, each source alone], the first
whose nDCG@5 on that held-out sample is within SELECTION_MARGIN of the best. The fitted options are
judged by cross-fitting (`selection_folds` folds of points: each fold scored by models fitted on the
others), so a tree that memorised a small sample does not win on its own training points (Bibtex: tree
68.2 in-sample, 63.2 cross-fitted, the sparse ranker alone 64.2).
With `boosting_rounds` > 0, gradient-boosted trees (scikit-learn's HistGradientBoostingClassifier)
take the single tree's place: the options are then [regression, regression + boosted trees, boosted trees, each
source], in that order of preference (choose_mode). They are saved as flat arrays and walked by a compiled loop.
"fixed": weight * sigmoid(classifier) + (1 - weight) * encoder similarity.

`fit_checked` guards against leakage: when some held-out points were also unseen by the encoder's
training, the fusion fitted on the others is judged on them against one fitted on them alone
(2-fold cross-fitted), and the better one on those clean points is kept.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numba
import numpy as np
import scipy.sparse as sp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from xmine.config import FusionConfig
from xmine.errors import XmineError
from xmine.metrics import evaluate
from xmine.safeio import check_array, check_index_range, json_field, load_json, load_npy, model_error, params_from
from xmine.topk import csr_from_topk, csr_row_topk, lookup_csr
from xmine.tree import fit_tree
from xmine.utils import atomic_save_npy, atomic_write_text

SOURCES = ("classifier", "encoder", "knn", "ranker")
LOGIT_SOURCES = ("classifier", "ranker")  # fused through a sigmoid, like probabilities
# the order in which near-equal fusion options are preferred: the richer of NGAME's options first, but the
# regression before the boosted trees, which must beat it clearly to be kept (see choose_mode)
PREFERENCE = ("lr+tree", "tree", "lr", "lr+boost", "boost", *SOURCES)
LEARNED_MODES = ("lr", "tree", "lr+tree", "boost", "lr+boost")
# the boosted trees' shape: small trees, shrunk steps and large leaves, so that a few hundred held-out points do not
# get memorised (the selection's cross-fitting still judges them against the other options)
BOOSTING = {"learning_rate": 0.1, "max_leaf_nodes": 31, "min_samples_leaf": 100, "l2_regularization": 1.0}
# the boosted trees are fitted on FeatureBins codes (255 values at most, scikit-learn's own bin count): a column
# with so few distinct values is binned by its values, where raw values with sample weights would cost a weighted
# percentile per bin edge and feature in every fit (nearly all of the fit's time, py-spy)
BOOSTING_BINS = 255
SELECTION_MARGIN = 0.25  # nDCG@5 points
# the leakage check refits on the few unseen points only when that is better there by at least this much: leakage
# shows as a large gap (Bibtex: +8.1 nDCG@5), while on HPO the two came within 0.5 either way between runs, and
# the fusion fitted on 500 points instead of 2,000 then cost 2.0 test P@1 (54.3 vs 56.3)
LEAKAGE_MARGIN = 1.0
TREE_MIN_LEAF = 50  # pairs per leaf of NGAME's decision tree


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def _tree_predict(tree: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    node = np.zeros(features.shape[0], dtype=np.int64)
    for _ in range(int(tree["depth"][0]) + 1):
        left = tree["left"][node]
        leaf = left < 0
        if leaf.all():
            break
        value = features[np.arange(len(node)), np.maximum(tree["feature"][node], 0)]
        node = np.where(leaf, node, np.where(value <= tree["threshold"][node], left, tree["right"][node]))
    return tree["proba"][node]


def _forest_arrays(model: HistGradientBoostingClassifier) -> dict[str, np.ndarray]:
    """A fitted binary HistGradientBoostingClassifier's trees as flat arrays: every tree's nodes one after the
    other (children as absolute node numbers, -1 at leaves), each tree's root, and the baseline log-odds; the
    probability of a pair is sigmoid(baseline + the sum over trees of the leaf it reaches). Features are finite
    here, so the trees' routing of missing values is not needed."""
    parts, roots, offset = [], [], 0
    for (predictor,) in model._predictors:  # one tree per round for a binary target
        nodes = predictor.nodes
        leaf = nodes["is_leaf"].astype(bool)
        parts.append((np.where(leaf, -1, nodes["left"].astype(np.int64) + offset),
                      np.where(leaf, -1, nodes["right"].astype(np.int64) + offset),
                      np.where(leaf, -1, nodes["feature_idx"].astype(np.int64)),
                      nodes["num_threshold"].astype(np.float64), nodes["value"].astype(np.float64)))
        roots.append(offset)
        offset += len(nodes)
    left, right, feature, threshold, value = (np.concatenate(column) for column in zip(*parts, strict=True))
    return {"left": left, "right": right, "feature": feature, "threshold": threshold, "value": value,
            "roots": np.asarray(roots, dtype=np.int64),
            "baseline": np.asarray(model._baseline_prediction, dtype=np.float64).reshape(1)}


def _walk_layout(forest: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The forest's arrays arranged for a branch-free walk: `children[node] = (left, right)` with a leaf its own
    two children (and threshold +inf, so the walk stays there), and each tree's depth, so that every walk takes a
    fixed number of steps. Derived from the saved arrays; not saved."""
    leaf = forest["left"] < 0
    node = np.arange(len(leaf))
    children = np.stack([np.where(leaf, node, forest["left"]), np.where(leaf, node, forest["right"])], axis=1)
    depth = np.zeros(len(leaf), dtype=np.int64)
    for parent in np.flatnonzero(~leaf):  # children come after their parents (checked when loaded)
        depth[children[parent]] = depth[parent] + 1
    bounds = np.append(forest["roots"], len(leaf))
    tree_depth = np.array([depth[a:b].max() for a, b in zip(bounds[:-1], bounds[1:], strict=True)], dtype=np.int64)
    return {"children": np.ascontiguousarray(children, dtype=np.int64),
            "feature": np.where(leaf, 0, forest["feature"]).astype(np.int64),
            "threshold": np.where(leaf, np.inf, forest["threshold"]).astype(np.float64),
            "value": forest["value"], "roots": forest["roots"], "tree_depth": tree_depth,
            "baseline": forest["baseline"]}


WALK_BLOCK = 16  # pairs walked through a tree together: their steps are independent, so they overlap in the CPU


@numba.njit(cache=True, nogil=True, parallel=True)
def _forest_log_odds(features: np.ndarray, children: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
                     value: np.ndarray, roots: np.ndarray, tree_depth: np.ndarray, baseline: float) -> np.ndarray:
    """baseline + each tree's leaf value, summed in tree order, for every row of `features`. A step is
    `children[node, value > threshold]`, without a branch; a walk of one pair is a chain of dependent loads, so
    WALK_BLOCK pairs take each step together."""
    n = features.shape[0]
    out = np.full(n, baseline)
    for block in numba.prange((n + WALK_BLOCK - 1) // WALK_BLOCK):
        first = block * WALK_BLOCK
        size = min(WALK_BLOCK, n - first)
        node = np.empty(WALK_BLOCK, dtype=np.int64)
        for tree in range(roots.shape[0]):
            node[:] = roots[tree]
            for _ in range(tree_depth[tree]):
                for b in range(size):
                    at = node[b]
                    node[b] = children[at, np.int64(features[first + b, feature[at]] > threshold[at])]
            for b in range(size):
                out[first + b] += value[node[b]]
    return out


def _forest_predict(walk: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    """Probabilities of the forest laid out by `_walk_layout`."""
    return sigmoid(_forest_log_odds(np.ascontiguousarray(features, dtype=np.float64), walk["children"],
                                    walk["feature"], walk["threshold"], walk["value"], walk["roots"],
                                    walk["tree_depth"], float(walk["baseline"][0])))


def row_ranks(values: np.ndarray) -> np.ndarray:
    """Each entry's 0-based rank in its row, ascending, ties in column order: the inverse of the row's stable
    sort order, scattered in one pass (equal to argsort(argsort(values)) with one sort instead of two)."""
    order = np.argsort(values, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(values.shape[1]), values.shape), axis=1)
    return ranks


def point_context(values: dict[str, np.ndarray], valid: np.ndarray) -> list[np.ndarray]:
    """Features of a candidate relative to the other candidates of its point: per source, its score minus the
    point's best score, and for the logit sources its rank (log(1 + rank)) among the point's candidates. A
    pointwise model sees pairs one at a time; these tell it whether a score that is high in absolute terms is
    also the point's best (Delicious, test P@1 / PSP@5 with the regression: 70.51 / 34.63 without, 70.91 / 35.27
    with them)."""
    cols = []
    for name, value in values.items():
        masked = np.where(valid, value, -np.inf)
        best = masked.max(axis=1, keepdims=True)
        cols.append((value - np.where(np.isfinite(best), best, 0.0)).ravel())
        if name in LOGIT_SOURCES:
            cols.append(np.log1p(row_ranks(-masked)).ravel())
    return cols


def subsample_pairs(target: np.ndarray, max_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_pairs` of the pairs (0: all), by class: the positives up to half of them, the rest negatives,
    each drawn uniformly. Returns the kept positions (sorted) and each class's weight (negative, positive): its
    pairs over its kept pairs, so that weighted sums over the kept pairs estimate those over all of them."""
    target = np.asarray(target, dtype=bool)
    counts = np.array([(~target).sum(), target.sum()])
    if max_pairs <= 0 or counts.sum() <= max_pairs:
        return np.arange(len(target)), np.ones(2)
    keep_pos = min(counts[1], max_pairs // 2)
    kept = np.array([min(counts[0], max_pairs - keep_pos), keep_pos])
    parts = [rng.choice(np.flatnonzero(target == bool(c)), size=kept[c], replace=False) for c in (0, 1)]
    return np.sort(np.concatenate(parts)), counts / np.maximum(kept, 1)


def metrics_at_5(fused: np.ndarray, candidates: np.ndarray, true_labels: sp.csr_matrix,
                 inv_propensity: np.ndarray | None = None) -> dict[str, float]:
    """The @5 metrics (with `inv_propensity`, the propensity-scored ones too) of ranking each row's candidates by
    `fused` (padding candidates never rank)."""
    fused = np.where(candidates >= 0, fused, -np.inf)
    pred = csr_row_topk(csr_from_topk(fused, candidates, true_labels.shape[1]), 5)
    return evaluate(pred, true_labels, ks=(5,), inv_propensity=inv_propensity, recall_ks=())


def ndcg_at_5(fused: np.ndarray, candidates: np.ndarray, true_labels: sp.csr_matrix) -> float:
    """nDCG@5 of ranking each row's candidates by `fused` (padding candidates never rank)."""
    return metrics_at_5(fused, candidates, true_labels)["nDCG@5"]


def choose_mode(results: dict[str, float]) -> str:
    """The fusion option to keep, given each option's held-out nDCG@5. Differences below SELECTION_MARGIN are
    noise on a few thousand points, so among the options that close to the best the richest wins (Delicious,
    seed 2: tree 60.4 = regression + tree 60.4 held out; test P@1 66.2 vs 67.8). The boosted trees are the
    exception: they have more capacity than a few hundred held-out points can vouch for, so among near-equal
    options the regression comes first (Delicious, seed 2: regression 60.80, regression + boosted trees 60.65 held
    out; test P@1 70.38 vs 67.46)."""
    best = max(results.values())
    return next(m for m in (*PREFERENCE, *results) if m in results and results[m] >= best - SELECTION_MARGIN)


class FeatureBins:
    """Each feature cut at (up to) `n_bins - 1` quantile edges: the tree is fitted on bin codes instead of values,
    which is cheaper (its splitter sorts far fewer distinct values), and a split on codes is mapped back to one on
    values. `code = number of edges below the value`, so `code <= b` is exactly `value <= edges[b]`."""

    def __init__(self, features: np.ndarray, n_bins: int, sample: int = 200_000, seed: int = 0) -> None:
        rows = features if len(features) <= sample else \
            features[np.random.default_rng([seed, 31]).choice(len(features), sample, replace=False)]
        levels = np.linspace(0, 1, n_bins + 1)[1:-1]
        self.edges = [np.unique(np.quantile(rows[:, j], levels)) for j in range(features.shape[1])]

    def codes(self, features: np.ndarray) -> np.ndarray:
        return np.stack([np.searchsorted(edges, features[:, j]) for j, edges in enumerate(self.edges)],
                        axis=1).astype(np.float32)

    def value_thresholds(self, tree: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`tree` (one tree or a forest's nodes, fitted on codes) with its split thresholds on feature values: a
        split `code <= t` is `code <= floor(t)`, which is `value <= edges[floor(t)]`."""
        threshold = tree["threshold"].copy()
        for j, edges in enumerate(self.edges):
            nodes = np.flatnonzero(tree["feature"] == j)
            if nodes.size and edges.size:
                threshold[nodes] = edges[np.minimum(np.floor(threshold[nodes]).astype(np.int64), len(edges) - 1)]
        return {**tree, "threshold": threshold}


def fit_pair_models(features: np.ndarray, valid: np.ndarray, target: np.ndarray, rows: np.ndarray,
                    config: FusionConfig, seed: int, bins: FeatureBins | None = None,
                    codes: np.ndarray | None = None, rarity_column: int | None = None
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """The regression's weights (+ bias) and the tree's arrays (with `config.boosting_rounds`, the boosted trees'),
    fitted on the candidate pairs of the points where `rows` is True; None when those pairs hold one class only.
    The regression sees at most `config.fit_pairs` of them (subsample_pairs): a dozen weights need no more, and the
    boosted trees see the same sample. The tree sees them all: its leaves, fitted on a sample's fewer negatives,
    ranked test points measurably worse (docs/cost.md). With
    `bins`, the tree is fitted on the pairs' bin `codes` (rows of `features`'s); the boosted trees always are. With
    `config.positive_weight_power`, the log inverse propensity in column `rarity_column` of `features` weights the
    positive pairs."""
    pairs = np.flatnonzero((valid & rows[:, None]).ravel())
    x, y = features[pairs], target.ravel()[pairs]
    if y.all() or not y.any():
        return None
    weights = positive_weights(x[:, rarity_column], y, config.positive_weight_power) \
        if config.positive_weight_power and rarity_column is not None else None
    keep, class_weights = subsample_pairs(y, config.fit_pairs, np.random.default_rng([seed, 29]))
    sampled = len(keep) < len(y)
    x_lr, y_lr = (x[keep], y[keep]) if sampled else (x, y)
    mean, std = x_lr.mean(0), x_lr.std(0) + 1e-9
    # balanced classes; on a sample, scaled so that the regularisation weighs as much as on all pairs
    lr_weights = np.full(len(y_lr), len(y) / len(y_lr)) if sampled else None
    if weights is not None:
        lr_weights = weights[keep] * (len(y) / len(y_lr))
    lr = LogisticRegression(C=1.0, max_iter=500, class_weight="balanced").fit((x_lr - mean) / std, y_lr,
                                                                               sample_weight=lr_weights)
    # fold the standardisation into the weights so prediction needs only coef
    coef_weights = lr.coef_[0] / std
    coef = np.concatenate([coef_weights, [lr.intercept_[0] - float(coef_weights @ mean)]])
    if config.boosting_rounds:
        # fitted on the regression's sample, each kept pair weighted by how many pairs of its class it stands for,
        # so that the loss estimates the one over all pairs
        boost_weights = class_weights[y_lr.astype(int)] * (weights[keep] if weights is not None else 1.0)
        forest = HistGradientBoostingClassifier(max_iter=config.boosting_rounds, early_stopping=False,
                                                random_state=seed, **BOOSTING)
        # OpenMP's thread count is per thread: a limit set by the caller does not reach this worker thread, and
        # each fit would start a team of all cores beside the other fits
        with threadpool_limits(limits=1, user_api="openmp"):
            forest.fit(codes[pairs[keep] if sampled else pairs], y_lr, sample_weight=boost_weights)
        return coef, bins.value_thresholds(_forest_arrays(forest))
    if bins is None:
        return coef, fit_tree(x, y, weights, config.max_depth, TREE_MIN_LEAF)
    return coef, bins.value_thresholds(fit_tree(codes[pairs], y, weights, config.max_depth, TREE_MIN_LEAF))


def positive_weights(log_inv_propensity: np.ndarray, target: np.ndarray, power: float) -> np.ndarray:
    """Per pair: inverse propensity ** `power` for a positive, 1 for a negative, scaled to mean 1, so that the
    fusion is fitted to rank rare labels' positives as well as frequent ones' (PSP@k weighs them by inverse
    propensity)."""
    weights = np.where(target, np.exp(power * log_inv_propensity), 1.0)
    return weights * (len(weights) / weights.sum())


class ScoreFusion:
    def __init__(self, config: FusionConfig, inv_propensity: np.ndarray, sources: tuple[str, ...]) -> None:
        unknown = set(sources) - set(SOURCES)
        if unknown:
            raise XmineError(f"unknown score source(s) {sorted(unknown)}; known: {SOURCES}")
        self.config = config
        self.inv_propensity = np.asarray(inv_propensity, dtype=np.float64)
        self.sources = tuple(sources)
        self.mode = "fixed" if config.kind == "fixed" else "encoder"
        self.coef: np.ndarray | None = None  # logistic regression weights over the pair features (+ bias)
        self.tree: dict[str, np.ndarray] | None = None  # NGAME's single decision tree
        self.forest: dict[str, np.ndarray] | None = None  # the boosted trees (`boosting_rounds`), as saved
        self.selection: dict[str, float] = {}

    @property
    def forest(self) -> dict[str, np.ndarray] | None:
        return self._forest

    @forest.setter
    def forest(self, forest: dict[str, np.ndarray] | None) -> None:
        self._forest = forest
        self._forest_walk = _walk_layout(forest) if forest is not None else None

    def _features(self, scores: dict[str, np.ndarray], candidates: np.ndarray) -> np.ndarray:
        values = {name: sigmoid(scores[name]) if name in LOGIT_SOURCES else scores[name] for name in self.sources}
        cols = [values[name].ravel() for name in self.sources]
        cols.append(np.log(self.inv_propensity[np.maximum(candidates, 0)]).ravel())
        if self.config.point_context:
            cols += point_context(values, candidates >= 0)
        return np.stack(cols, axis=1).astype(np.float64)

    def _check(self, scores: dict[str, np.ndarray], candidates: np.ndarray) -> None:
        for name in self.sources:
            if name not in scores:
                raise XmineError(f"fusion needs the {name!r} scores")
            if scores[name].shape != candidates.shape:
                raise XmineError(f"{name} scores have shape {scores[name].shape}, candidates {candidates.shape}")

    def _score_mode(self, mode: str, scores: dict[str, np.ndarray], candidates: np.ndarray,
                    features: np.ndarray | None) -> np.ndarray:
        if mode in self.sources:
            return scores[mode]
        if mode == "fixed":
            w = self.config.weight
            return w * sigmoid(scores["classifier"]) + (1 - w) * scores["encoder"]
        out = np.zeros(features.shape[0])
        if "lr" in mode:
            out += sigmoid(features @ self.coef[:-1] + self.coef[-1])
        if "boost" in mode:
            out += _forest_predict(self._forest_walk, features)
        if "tree" in mode:
            out += _tree_predict(self.tree, features)
            if mode == "tree":
                # a leaf gives many candidates the same probability: order those by the regression rather than
                # arbitrarily (measured effect small: Delicious seed 2, test P@1 66.19 -> 66.25)
                out += 1e-6 * sigmoid(features @ self.coef[:-1] + self.coef[-1])
        return out.reshape(candidates.shape)

    def combine(self, scores: dict[str, np.ndarray], candidates: np.ndarray) -> np.ndarray:
        """Fused (n, C) scores; padding candidates (-1) get -inf."""
        self._check(scores, candidates)
        needs_features = self.mode in LEARNED_MODES
        features = self._features(scores, candidates) if needs_features else None
        return np.where(candidates >= 0, self._score_mode(self.mode, scores, candidates, features), -np.inf)

    def fit(self, scores: dict[str, np.ndarray], candidates: np.ndarray, true_labels: sp.csr_matrix,
            seed: int = 0, n_jobs: int = 1) -> dict[str, float]:
        """Fit on held-out training points; returns the held-out nDCG@5 of every option tried. The models of the
        selection folds and the final one are independent fits, run in `n_jobs` threads (the same models as one
        after the other)."""
        self._check(scores, candidates)
        if self.config.kind == "fixed":
            self.mode = "fixed"
            return {}
        valid = candidates >= 0
        target = lookup_csr(sp.csr_matrix((np.ones(true_labels.nnz), true_labels.indices, true_labels.indptr),
                                          shape=true_labels.shape), candidates) > 0
        features = self._features(scores, candidates)
        if target[valid].all() or not target[valid].any():
            self.mode = "encoder" if "encoder" in self.sources else self.sources[0]
            return {}
        results = {mode: self.selection_score(scores[mode], candidates, true_labels) for mode in self.sources}
        learned = ("lr", "boost", "lr+boost") if self.config.boosting_rounds else ("lr", "tree", "lr+tree")
        n_points = candidates.shape[0]
        folds = min(self.config.selection_folds, n_points)
        point_fold = np.random.default_rng([seed, 23]).permutation(n_points) % folds
        # the fold models (each fitted without its fold's points), then the final one on all points
        fit_rows = [point_fold != fold for fold in range(folds)] if folds > 1 else []
        fit_rows.append(np.ones(n_points, dtype=bool))
        n_bins = self.config.tree_bins or (BOOSTING_BINS if self.config.boosting_rounds else 0)
        bins = FeatureBins(features, n_bins, seed=seed) if n_bins else None
        codes = bins.codes(features) if bins is not None else None
        # one BLAS thread per fit: the fits themselves are the parallel units (nested thread teams on two cores
        # oversubscribe them). This limit is process-wide for BLAS but not for OpenMP, whose thread count is per
        # thread: it does not reach the workers. The boosted trees set their own (fit_pair_models); limiting the
        # whole of each worker instead made the boosted fusion's fit slower (HPO: 81-84 s against 72-74 s)
        with threadpool_limits(limits=1), ThreadPoolExecutor(max(1, min(n_jobs, len(fit_rows)))) as pool:
            fitted = list(pool.map(lambda rows: fit_pair_models(features, valid, target, rows, self.config, seed,
                                                                bins, codes, self.rarity_column), fit_rows))
        out_of_fold: dict[str, np.ndarray] | None = None
        if folds > 1 and all(models is not None for models in fitted[:-1]):  # else: a fold without both classes
            out_of_fold = {mode: np.zeros(candidates.shape) for mode in learned}
            per_point = features.reshape(*candidates.shape, -1)
            for fold in range(folds):
                self._use_models(fitted[fold])
                rows = np.flatnonzero(point_fold == fold)
                fold_features = per_point[rows].reshape(-1, features.shape[1])
                for mode in learned:
                    out_of_fold[mode][rows] = self._score_mode(mode, scores, candidates[rows], fold_features)
        self._use_models(fitted[-1])
        for mode in learned:
            fused = out_of_fold[mode] if out_of_fold is not None else \
                self._score_mode(mode, scores, candidates, features)
            results[mode] = self.selection_score(fused, candidates, true_labels)
        self.mode = choose_mode(results)
        self.selection = results
        return results

    def _use_models(self, models: tuple[np.ndarray, dict[str, np.ndarray]] | None) -> None:
        """Score with the regression and tree (or boosted trees) of `models` (None: none fitted)."""
        self.coef, trees = models if models is not None else (None, None)
        if self.config.boosting_rounds:
            self.tree, self.forest = None, trees
        else:
            self.tree, self.forest = trees, None

    def selection_score(self, fused: np.ndarray, candidates: np.ndarray, true_labels: sp.csr_matrix) -> float:
        """What fusion options are judged by on held-out points (`FusionConfig.selection_metric`)."""
        if self.config.selection_metric == "ndcg":
            return ndcg_at_5(fused, candidates, true_labels)
        metrics = metrics_at_5(fused, candidates, true_labels, self.inv_propensity)
        return metrics["nDCG@5"] + metrics["PSnDCG@5"]

    def held_out_ndcg(self, scores: dict[str, np.ndarray], candidates: np.ndarray, true_labels: sp.csr_matrix
                      ) -> float:
        """The selection score (nDCG@5 by default) of the fitted fusion on points it was not fitted on."""
        return self.selection_score(self.combine(scores, candidates), candidates, true_labels)

    def fit_checked(self, scores: dict[str, np.ndarray], candidates: np.ndarray, true_labels: sp.csr_matrix,
                    unseen: np.ndarray, seed: int = 0, n_jobs: int = 1) -> dict[str, Any]:
        """Fit on held-out training points of which those where `unseen` is True were never seen by the
        encoder's training either. The fusion fitted on the seen ones (A) and one fitted on the unseen ones
        alone (B, scored by 2-fold cross-fitting) are compared on the unseen points; with B better by
        LEAKAGE_MARGIN, the final fusion is fitted on the unseen points alone, else on all. Returns what was
        measured."""
        unseen = np.asarray(unseen, dtype=bool)
        if self.config.kind == "fixed" or unseen.sum() < 2 or unseen.all():
            return {"selection": self.fit(scores, candidates, true_labels, seed, n_jobs)}

        def part(rows: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, sp.csr_matrix]:
            return {k: v[rows] for k, v in scores.items()}, candidates[rows], true_labels[rows]

        def encoder_ndcg(rows: np.ndarray) -> float | None:
            if "encoder" not in scores:
                return None
            return self.selection_score(scores["encoder"][rows], candidates[rows], true_labels[rows])

        seen_rows, unseen_rows = np.flatnonzero(~unseen), np.flatnonzero(unseen)
        report: dict[str, Any] = {"seen_points": len(seen_rows), "unseen_points": len(unseen_rows),
                                  "encoder_ndcg5_seen": encoder_ndcg(seen_rows),
                                  "encoder_ndcg5_unseen": encoder_ndcg(unseen_rows)}
        self.fit(*part(seen_rows), seed, n_jobs)
        report["fitted_on_seen_ndcg5_unseen"] = self.held_out_ndcg(*part(unseen_rows))
        halves = np.array_split(np.random.default_rng([seed, 17]).permutation(unseen_rows), 2)
        cross = []
        for fit_half, test_half in ((halves[0], halves[1]), (halves[1], halves[0])):
            self.fit(*part(fit_half), seed, n_jobs)
            cross.append(self.held_out_ndcg(*part(test_half)) * len(test_half))
        report["fitted_on_unseen_ndcg5_crossfit"] = sum(cross) / len(unseen_rows)
        use_unseen = report["fitted_on_unseen_ndcg5_crossfit"] > report["fitted_on_seen_ndcg5_unseen"] + LEAKAGE_MARGIN
        report["fitted_on"] = "unseen" if use_unseen else "all"
        report["selection"] = self.fit(*part(unseen_rows if use_unseen else np.arange(len(unseen))), seed, n_jobs)
        return report

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {"config": self.config.to_dict(), "sources": list(self.sources), "mode": self.mode,
                                "coef": None if self.coef is None else self.coef.tolist(),
                                "selection": self.selection, "has_tree": self.tree is not None,
                                "has_forest": self.forest is not None}
        for prefix, arrays in (("tree", self.tree), ("forest", self.forest)):
            for key, value in (arrays or {}).items():
                atomic_save_npy(directory / f"{prefix}_{key}.npy", value)
        atomic_save_npy(directory / "inv_propensity.npy", self.inv_propensity)
        atomic_write_text(directory / "fusion.json", json.dumps(meta, indent=2))

    @property
    def rarity_column(self) -> int:
        """The pair features' column holding the label's log inverse propensity (after the sources' scores)."""
        return len(self.sources)

    @property
    def n_features(self) -> int:
        """Columns of the pair features (see `_features`)."""
        context = sum(2 if name in LOGIT_SOURCES else 1 for name in self.sources) if self.config.point_context else 0
        return len(self.sources) + 1 + context

    @classmethod
    def load(cls, directory: str | Path, n_labels: int | None = None) -> ScoreFusion:
        directory = Path(directory)
        meta_path = directory / "fusion.json"
        meta = load_json(meta_path, "fusion")
        config = params_from(FusionConfig, json_field(meta, "config", "fusion", meta_path, dict), "fusion", meta_path)
        sources = json_field(meta, "sources", "fusion", meta_path, list)
        if not set(sources) <= set(SOURCES) or len(set(sources)) != len(sources):
            raise model_error("fusion", meta_path, f"unknown or repeated score sources {sources}")
        inv_propensity = load_npy(directory / "inv_propensity.npy", "fusion", shape=(n_labels,))
        obj = cls(config, inv_propensity, tuple(sources))
        obj.mode = json_field(meta, "mode", "fusion", meta_path, str)
        obj.selection = json_field(meta, "selection", "fusion", meta_path, dict)
        if obj.mode not in ("fixed", "encoder", *LEARNED_MODES, *obj.sources):
            raise model_error("fusion", meta_path, f"unknown fusion mode {obj.mode!r}")
        coef = json_field(meta, "coef", "fusion", meta_path, (list, type(None)))
        if coef is not None:
            if not all(type(c) in (int, float) for c in coef):
                raise model_error("fusion", meta_path, "coef must be a list of numbers")
            obj.coef = check_array(np.asarray(coef, dtype=np.float64), "fusion", meta_path,
                                   shape=(obj.n_features + 1,), name="coef")
        if json_field(meta, "has_tree", "fusion", meta_path, bool):
            obj.tree = _load_tree(directory, obj.n_features)
        if meta.get("has_forest") is not None and json_field(meta, "has_forest", "fusion", meta_path, bool):
            obj.forest = _load_forest(directory, obj.n_features)
        if (obj.mode in LEARNED_MODES and obj.coef is None or "tree" in obj.mode and obj.tree is None
                or "boost" in obj.mode and obj.forest is None):
            raise model_error("fusion", meta_path, f"mode {obj.mode!r} needs parts that were not saved")
        return obj


def _load_tree(directory: Path, n_features: int) -> dict[str, np.ndarray]:
    """The decision tree's arrays, checked so that walking it stays inside them."""
    tree = {key: load_npy(directory / f"tree_{key}.npy", "fusion", kind="i", ndim=1)
            for key in ("left", "right", "feature", "depth")}
    tree.update({key: load_npy(directory / f"tree_{key}.npy", "fusion", ndim=1) for key in ("threshold", "proba")})
    n_nodes = tree["left"].shape[0]
    path = directory / "tree_left.npy"
    lengths = {v.shape[0] for k, v in tree.items() if k != "depth"}
    if n_nodes == 0 or lengths != {n_nodes} or tree["depth"].shape != (1,):
        raise model_error("fusion", path, "the tree's arrays have different lengths")
    check_index_range(tree["left"], -1, n_nodes, "fusion", path, "tree_left")
    check_index_range(tree["right"], -1, n_nodes, "fusion", directory / "tree_right.npy", "tree_right")
    check_index_range(tree["feature"], -2, n_features, "fusion", directory / "tree_feature.npy", "tree_feature")
    check_index_range(tree["depth"], 0, n_nodes, "fusion", directory / "tree_depth.npy", "tree_depth")
    if float(tree["proba"].min()) < 0 or float(tree["proba"].max()) > 1:
        raise model_error("fusion", directory / "tree_proba.npy", "probabilities outside [0, 1]")
    return tree


def _load_forest(directory: Path, n_features: int) -> dict[str, np.ndarray]:
    """The boosted trees' arrays, checked so that walking them stays inside them and ends: every child comes
    after its parent, so no walk can cycle."""
    forest = {key: load_npy(directory / f"forest_{key}.npy", "fusion", kind="i", ndim=1)
              for key in ("left", "right", "feature", "roots")}
    forest.update({key: load_npy(directory / f"forest_{key}.npy", "fusion", ndim=1)
                   for key in ("threshold", "value", "baseline")})
    n_nodes = forest["left"].shape[0]
    path = directory / "forest_left.npy"
    if n_nodes == 0 or {forest[k].shape[0] for k in ("left", "right", "feature", "threshold", "value")} != {n_nodes}:
        raise model_error("fusion", path, "the boosted trees' arrays have different lengths")
    if forest["baseline"].shape != (1,) or forest["roots"].shape[0] == 0:
        raise model_error("fusion", directory / "forest_roots.npy", "no trees, or not one baseline")
    check_index_range(forest["roots"], 0, n_nodes, "fusion", directory / "forest_roots.npy", "forest_roots")
    node = np.arange(n_nodes)
    split = forest["left"] >= 0
    for side in ("left", "right"):
        child = forest[side]
        check_index_range(child, -1, n_nodes, "fusion", directory / f"forest_{side}.npy", f"forest_{side}")
        if np.any((child >= 0) != split) or np.any(child[split] <= node[split]):
            raise model_error("fusion", directory / f"forest_{side}.npy",
                              "a child that is not after its parent, or a node with one child")
    check_index_range(forest["feature"][split], 0, n_features, "fusion", directory / "forest_feature.npy",
                      "forest_feature")
    return {key: np.ascontiguousarray(value, dtype=np.int64 if value.dtype.kind in "iu" else np.float64)
            for key, value in forest.items()}
