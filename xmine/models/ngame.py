"""NGAME (Dahiya et al., WSDM 2023): Siamese encoder trained with negative-mining-aware batches
(stage 1), per-label classifiers on an ANN shortlist (stage 2), and score fusion.

Model directory layout:
  config.json        method, version, full NGAMEConfig, number of labels
  encoder/           the Siamese encoder (weights, tokenizer)
  label_embeddings/  embeddings.npy (L, d) and the ANN index over them
  tfidf/             TF-IDF featurizer + training matrix (sparse features and neighbour shortlist)
  classifiers/       per-label classifiers and the ANN index over their dense vectors
  ranker/            the sparse linear ranker (per-label TF-IDF weights fitted on shortlist negatives)
  fusion/            the fitted score fusion
  history.json       per-epoch training records
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from xmine.classifiers import LabelClassifiers
from xmine.config import ClassifierConfig, KNNConfig, NGAMEConfig, PredictConfig
from xmine.encoders import Encoder, build_encoder, load_encoder
from xmine.errors import ModelError, XmineError
from xmine.fusion import ScoreFusion
from xmine.index import LabelIndex
from xmine.labels import (
    fuse,
    labels_api,
    load_label_state,
    prepare_candidates,
    reads_labels,
    save_label_state,
    top_k_enabled,
)
from xmine.metrics import inverse_propensity, label_counts
from xmine.mining.mips import MIPSNegativeSampler
from xmine.models.base import Inputs, XMCModel, read_model_config
from xmine.models.knn import TfidfKNN
from xmine.ranker import SparseRanker
from xmine.safeio import json_field, load_json, load_npy, params_from
from xmine.shortlist import recall_of_shortlist
from xmine.topk import (
    csr_from_topk,
    csr_row_topk,
    csr_rows_to_ids,
    lookup_csr,
    pair_dots,
    stack_rows,
    union_candidates,
)
from xmine.training.checkpoint import config_fingerprint, remove_checkpoints
from xmine.training.classifiers import train_classifiers
from xmine.training.heldout import EncoderHeldOut
from xmine.training.siamese import sample_one_positive, train_siamese
from xmine.utils import atomic_save_npy, atomic_write_text, seed_everything, set_threads

log = logging.getLogger(__name__)

ScoreKind = Literal["fused", "encoder", "classifier", "ranker"]

# what a fused score means, per fusion mode (the mode chosen at training is in fusion/fusion.json)
FUSED_SCORE_SCALES = {
    "lr+tree": "sum of two relevance probabilities (logistic regression + decision tree), in [0, 2]; "
               "half of it is a probability-like score",
    "lr": "relevance probability of a logistic regression on the score sources, in [0, 1]",
    "tree": "relevance probability of a decision-tree leaf, in [0, 1]",
    "lr+boost": "sum of two relevance probabilities (logistic regression + gradient-boosted trees), in [0, 2]; "
                "half of it is a probability-like score",
    "boost": "relevance probability of gradient-boosted trees, in [0, 1]",
    "fixed": "weight * sigmoid(classifier logit) + (1 - weight) * cosine similarity, in [-1, 1]",
    "classifier": "per-label classifier logit, unbounded (sigmoid gives a probability-like score)",
    "ranker": "sparse ranker logit, unbounded (sigmoid gives a probability-like score)",
    "encoder": "cosine similarity of text and label embeddings, in [-1, 1]",
    "knn": "TF-IDF neighbour votes relative to the text's best-voted label, in [0, 1]",
}


class ShortlistScorer:
    """Shortlist + exact scoring, shared by NGAME's prediction and its held-out fusion fitting: `candidates`
    (the candidate sources) then `score` (each source's score of each candidate). `timings` accumulates the
    seconds of each ("search", "score")."""

    def __init__(self, label_embeddings: np.ndarray, label_index: LabelIndex, knn: TfidfKNN | None,
                 classifiers: LabelClassifiers | None, classifier_index: LabelIndex | None, shortlist_size: int,
                 knn_shortlist: int, ranker: SparseRanker | None = None, ef_search: int | None = None,
                 nprobe: int | None = None, knn_votes: int | None = None) -> None:
        self.label_embeddings, self.label_index = label_embeddings, label_index
        self.search_params = {"ef_search": ef_search, "nprobe": nprobe}  # the ANN indexes' breadth (None: built)
        self.knn, self.classifiers, self.classifier_index = knn, classifiers, classifier_index
        self.ranker = ranker
        self.shortlist_size, self.knn_shortlist = shortlist_size, knn_shortlist
        # labels scored by the neighbours' votes (the "knn" score), of which the best `knn_shortlist` are candidates
        self.knn_votes = knn_shortlist if knn_votes is None else max(knn_votes, knn_shortlist)
        self.timings = {"search": 0.0, "score": 0.0}

    def candidates(self, emb: np.ndarray, sparse_x: sp.csr_matrix | None, use_classifier_index: bool,
                   exclude_rows: np.ndarray | None = None) -> tuple[np.ndarray, sp.csr_matrix | None]:
        """Candidates (n, C), -1 padded: the union of the label-embedding ANN's top labels, the classifier ANN's
        (with `use_classifier_index`) and the TF-IDF neighbours' labels (whose votes are returned too)."""
        t0 = time.perf_counter()
        k = min(self.shortlist_size, self.label_embeddings.shape[0])
        parts = [self.label_index.search(emb, k, **self.search_params)[1]]
        if use_classifier_index and self.classifier_index is not None:
            parts.append(self.classifier_index.search(emb, k, **self.search_params)[1])
        votes = None
        if self.knn is not None and sparse_x is not None and self.knn_votes > 0:
            votes = self.knn.predict_features(sparse_x, self.knn_votes, exclude_rows=exclude_rows)
            if self.knn_shortlist > 0:
                best = votes if self.knn_shortlist >= self.knn_votes else csr_row_topk(votes, self.knn_shortlist)
                parts.append(csr_rows_to_ids(best, self.knn_shortlist))
        cand = union_candidates(*parts)
        self.timings["search"] += time.perf_counter() - t0
        return cand, votes

    @torch.no_grad()
    def score(self, emb: np.ndarray, sparse_x: sp.csr_matrix | None, cand: np.ndarray, votes: sp.csr_matrix | None,
              classifier_sparse: bool, sources: tuple[str, ...] | None = None, chunk: int = 256
              ) -> dict[str, np.ndarray]:
        """Each candidate's scores per source: "encoder", "knn" (with votes), and "classifier" and "ranker"
        where trained; `sources` limits them. Computed `chunk` rows at a time, which bounds the memory of the
        gathered label vectors."""
        t0 = time.perf_counter()
        wanted = set(sources) if sources is not None else {"encoder", "classifier", "ranker", "knn"}
        scores = {"encoder": np.empty(cand.shape, dtype=np.float32)} if "encoder" in wanted else {}
        if self.classifiers is not None and "classifier" in wanted:
            scores["classifier"] = np.empty(cand.shape, dtype=np.float32)
        for start in range(0, cand.shape[0], chunk):
            rows = slice(start, start + chunk)
            block = np.maximum(cand[rows], 0)
            if "encoder" in scores:
                scores["encoder"][rows] = pair_dots(emb[rows], self.label_embeddings, block)
            if "classifier" in scores:
                x = sparse_x[rows] if classifier_sparse else None
                scores["classifier"][rows] = self.classifiers.score(torch.from_numpy(emb[rows]), x, cand[rows]).numpy()
        if self.ranker is not None and sparse_x is not None and "ranker" in wanted:
            scores["ranker"] = self.ranker.score(sparse_x, cand)
        if votes is not None and "knn" in wanted:
            best = np.maximum(votes.max(axis=1).toarray().ravel(), 1e-12)
            scores["knn"] = lookup_csr(votes, cand) / best[:, None].astype(np.float32)
        self.timings["score"] += time.perf_counter() - t0
        return scores

    def __call__(self, emb: np.ndarray, sparse_x: sp.csr_matrix | None, use_classifier_index: bool,
                 classifier_sparse: bool, exclude_rows: np.ndarray | None = None, with_scores: bool = True
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """`candidates`, then (`with_scores`) all sources' `score`."""
        cand, votes = self.candidates(emb, sparse_x, use_classifier_index, exclude_rows)
        if not with_scores:
            return cand, {}
        return cand, self.score(emb, sparse_x, cand, votes, classifier_sparse)


def fusion_holdout(n_points: int, config: NGAMEConfig) -> np.ndarray:
    """The training points held out for fitting the fusion; the classifiers never train on them."""
    rng = np.random.default_rng([config.classifier.seed, 11])
    n_holdout = min(config.fusion.holdout_points, n_points // 5)
    return np.sort(rng.choice(n_points, size=n_holdout, replace=False))


def stage1_unseen(n_points: int, config: NGAMEConfig) -> np.ndarray:
    """The held-out points that stage 1 does not train on either: clean points for the fusion's leakage check."""
    holdout = fusion_holdout(n_points, config)
    rng = np.random.default_rng([config.classifier.seed, 19])
    return np.sort(rng.permutation(holdout)[:config.fusion.stage1_unseen_points])


def stage1_heldout(point_inputs: Any, label_inputs: Any, labels: sp.csr_matrix, unseen: np.ndarray,
                   config: NGAMEConfig) -> EncoderHeldOut | None:
    """Stage 1's per-epoch measure: the stage-1-unseen points, and as many of the fusion's other held-out points
    (which stage 1 trains on) for the memorisation gap; None when switched off or no point is kept unseen."""
    if not config.siamese.heldout_curve or len(unseen) == 0:
        return None
    seen = np.setdiff1d(fusion_holdout(labels.shape[0], config), unseen)[:len(unseen)]
    return EncoderHeldOut(point_inputs, label_inputs, labels, unseen, seen)


def without_rows(labels: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """`labels` with the given rows emptied (training loops skip points without labels)."""
    keep = np.ones(labels.shape[0], dtype=np.float32)
    keep[rows] = 0
    out = sp.diags(keep) @ sp.csr_matrix(labels)
    out.eliminate_zeros()
    return out.tocsr()


def _same_unseen_points(init_from: str | Path | None, config: NGAMEConfig) -> bool:
    """Whether the stage-1 model in `init_from` kept out the same points as this config would."""
    if init_from is None:
        return False
    meta = read_model_config(init_from)
    history_path = Path(init_from) / "history.json"
    history = json.loads(history_path.read_text()) if history_path.exists() else {}
    stage1 = NGAMEConfig.from_dict(meta["config"])
    same = (history.get("stage1_unseen_points", 0) == config.fusion.stage1_unseen_points
            and stage1.fusion.holdout_points == config.fusion.holdout_points
            and stage1.classifier.seed == config.classifier.seed)
    if not same:
        log.warning("%s kept other points out of stage 1: the fusion is fitted without its leakage check", init_from)
    return same


@contextmanager
def timed(history: dict[str, Any], key: str) -> Iterator[None]:
    """Add the seconds of the block to history[key]."""
    t0 = time.perf_counter()
    yield
    history[key] = history.get(key, 0.0) + time.perf_counter() - t0


@dataclass
class Stage2Data:
    """What stage 2's steps share: the training labels (all rows, and with the fusion's held-out rows emptied),
    those held-out rows, the TF-IDF features and the point embeddings."""

    labels: sp.csr_matrix
    train_labels: sp.csr_matrix
    holdout: np.ndarray
    features: sp.csr_matrix
    emb: np.ndarray


@dataclass
class RankerRows:
    """Training rows for the sparse ranker beyond the points': features, labels and candidates, row by row."""

    features: sp.csr_matrix
    labels: sp.csr_matrix
    candidates: np.ndarray


def with_extra_rows(features: sp.csr_matrix, labels: sp.csr_matrix, candidates: np.ndarray,
                    extra: RankerRows | None) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    """The points' ranker rows followed by `extra`'s (candidate lists padded with -1 to one width). The extra rows
    come last, so a refit's row numbers are the first fit's and its warm start applies."""
    if extra is None:
        return features, labels, candidates
    width = max(candidates.shape[1], extra.candidates.shape[1])
    pad = [np.pad(c, ((0, 0), (0, width - c.shape[1])), constant_values=-1) for c in (candidates, extra.candidates)]
    return (sp.vstack([features, extra.features], format="csr", dtype=np.float32),
            sp.vstack([labels, extra.labels], format="csr", dtype=labels.dtype), np.concatenate(pad).astype(
                candidates.dtype, copy=False))


class ClassifierNegatives:
    """Stage 2's negatives of a batch: each point's shortlist + one positive of every other point in the batch
    (in-batch negatives) + the top labels of the current classifier vectors (what the classifier index will
    propose), searched in an index rebuilt at every epoch's start (`refresh`).

    Not at the first epoch's start: the classifiers then are the label embeddings (normalised; they are unit
    vectors already) that the shortlist's label-index search used, with the same point embeddings as queries, so
    the index's top labels are the shortlist's own and are dropped as duplicates (on an exact index all of them, up
    to ties; an HNSW index can propose a rare label beyond the shortlist: docs/cost.md). Until the first rebuild
    the classifier-index columns are padding, which is what the dropped duplicates became. A fine-tuned encoder
    moves the queries within the epoch, so with it the index is built at the start as well."""

    def __init__(self, shortlist: np.ndarray, classifiers: LabelClassifiers, config: ClassifierConfig,
                 n_labels: int) -> None:
        self.shortlist, self.classifiers = shortlist, classifiers
        self.rng = np.random.default_rng([config.seed, 13])
        self.mips = None
        self.build_at_start = config.finetune_encoder
        if config.classifier_index_negatives > 0 and classifiers.weight is not None:
            self.mips = MIPSNegativeSampler(n_labels, config.classifier_index_negatives, 0, config.negatives_index)

    def refresh(self, epoch: int, step: int) -> None:
        if self.mips is not None and (step > 0 or self.build_at_start):
            self.mips.rebuild(self.classifiers.weight.detach().cpu().numpy())

    def __call__(self, rows: np.ndarray, batch_emb: Any, batch_pos: sp.csr_matrix, epoch: int, step: int
                 ) -> np.ndarray:
        in_batch = sample_one_positive(batch_pos, self.rng)
        parts = [self.shortlist[rows], np.broadcast_to(in_batch, (len(rows), len(in_batch)))]
        if self.mips is not None:
            parts.append(self.mips.hard_negatives(batch_emb, batch_pos) if self.mips.index is not None else
                         np.full((len(rows), self.mips.mips_negatives), -1, dtype=np.int64))
        return np.concatenate(parts, axis=1)


@labels_api
class NGAME(XMCModel):
    method = "ngame"
    summary = ("Stage 1 trains a text encoder that embeds texts near their labels' texts; stage 2 shortlists "
               "candidate labels, trains per-label classifiers and a sparse ranker on them, and fits a fusion of "
               "their scores.")
    data_parallel = True
    predict_settings = frozenset(f.name for f in dataclasses.fields(PredictConfig))

    def __init__(self, config: NGAMEConfig, encoder: Encoder, label_embeddings: np.ndarray, label_index: LabelIndex,
                 knn: TfidfKNN | None = None, classifiers: LabelClassifiers | None = None,
                 classifier_index: LabelIndex | None = None, fusion: ScoreFusion | None = None,
                 history: dict[str, Any] | None = None, ranker: SparseRanker | None = None) -> None:
        self.config = config
        self.encoder = encoder
        self.label_embeddings = label_embeddings
        self.label_index = label_index
        self.knn = knn
        self.classifiers = classifiers
        self.classifier_index = classifier_index
        self.fusion = fusion
        self.ranker = ranker
        self.history = history or {}
        self.n_labels = label_embeddings.shape[0]
        self.last_predict_seconds: dict[str, float] = {}  # per step of the last `predict` call

    # ------------------------------------------------------------------ training
    @classmethod
    def train(cls, dataset: Any, config: NGAMEConfig | None = None, out_dir: str | Path | None = None,
              resume: bool = False, init_from: str | Path | None = None, progress: bool = True,
              keep_checkpoints: bool = False) -> NGAME:
        """Train the stages in `config.stages` on `dataset.train`. Stage 2 alone needs `init_from`, a saved
        stage-1 (or full) NGAME model directory. With `out_dir`, checkpoints go to out_dir/checkpoints and
        `resume=True` continues from them; they are deleted once training has finished, unless
        `keep_checkpoints`."""
        config = config or NGAMEConfig()
        set_threads(config.encoder.num_threads)
        seed_everything(config.siamese.seed)
        split = dataset.train
        if dataset.label_texts is None or split.texts is None:
            raise XmineError("NGAME needs point texts and label texts (the dataset has "
                             f"{'no point texts' if split.texts is None else 'no label texts'})")
        empty = [i for i, t in enumerate(dataset.label_texts) if not t.strip()]
        if empty:
            raise XmineError(f"{len(empty)} label text(s) are empty (first: label {empty[0]}); the Siamese "
                             "encoder needs a text for every label")
        ckpt_dir = Path(out_dir) / "checkpoints" if out_dir is not None else None
        unseen = stage1_unseen(split.n_points, config)
        history: dict[str, Any] = {}
        timings: dict[str, float] = {}
        if 1 in config.stages:
            t0 = time.perf_counter()
            log.info("stage 1: training the %s encoder on %d points and %d label texts, %d epochs (batches of "
                     "points clustered by their current embeddings, so batch-mates' labels are hard negatives)",
                     config.encoder.kind, split.n_points, len(dataset.label_texts), config.siamese.epochs)
            encoder = build_encoder(config.encoder)
            point_inputs = encoder.prepare(split.texts)
            label_inputs = encoder.prepare(dataset.label_texts)
            encoder.fit_inputs(point_inputs, label_inputs)
            # a few of the fusion's held-out points are kept out of stage 1 too (see FusionConfig)
            stage1_labels = without_rows(split.labels, unseen)
            hist = train_siamese(encoder, point_inputs, label_inputs, stage1_labels, config.siamese,
                                 checkpoint_path=ckpt_dir / "stage1.pt" if ckpt_dir else None, resume=resume,
                                 progress=progress, config_fingerprint=config_fingerprint(config.to_dict()),
                                 heldout=stage1_heldout(point_inputs, label_inputs, split.labels, unseen, config))
            history["stage1"] = hist.to_list()
            history["stage1_unseen_points"] = config.fusion.stage1_unseen_points
            timings["stage1_seconds"] = time.perf_counter() - t0
            log.info("stage 1 done in %.0fs", timings["stage1_seconds"])
        else:
            if init_from is None:
                raise XmineError("stage 2 alone needs a trained stage-1 model: pass init_from / --init-from")
            encoder = load_encoder(Path(init_from) / "encoder", device=config.encoder.device)
            point_inputs = encoder.prepare(split.texts)
            label_inputs = encoder.prepare(dataset.label_texts)
        t0 = time.perf_counter()
        log.info("embedding the %d label texts and indexing them (%s index)", len(dataset.label_texts),
                 config.index.kind)
        label_embeddings = encoder.encode(label_inputs, progress=progress, desc="encode labels")
        label_index = LabelIndex.build(label_embeddings, config.index)
        timings["label_index_seconds"] = time.perf_counter() - t0
        model = cls(config, encoder, label_embeddings, label_index, history=history)
        model.label_texts = list(dataset.label_texts)
        if 2 in config.stages:
            if 1 not in config.stages and not _same_unseen_points(init_from, config):
                unseen = np.empty(0, dtype=np.int64)
            t0 = time.perf_counter()
            model._train_stage2(dataset, point_inputs, unseen, ckpt_dir, resume, progress)
            timings["stage2_seconds"] = time.perf_counter() - t0
        model.history.update(timings)
        if not keep_checkpoints:
            remove_checkpoints(ckpt_dir)
        return model

    def _train_stage2(self, dataset: Any, point_inputs: Any, stage1_unseen_rows: np.ndarray, ckpt_dir: Path | None,
                      resume: bool, progress: bool) -> None:
        """Stage 2 as a recipe: TF-IDF features, point embeddings, the training shortlist, the classifiers, the
        sparse ranker, the fusion (on held-out training points), the ranker's refit on all points. Each step's
        seconds go to the history."""
        cfg, history = self.config, self.history
        labels = sp.csr_matrix(dataset.train.labels)
        holdout = fusion_holdout(labels.shape[0], cfg)
        with timed(history, "tfidf_seconds"):
            self.knn = self._fit_tfidf(dataset)
        with timed(history, "encode_points_seconds"):
            emb = self.encoder.encode(point_inputs, progress=progress, desc="encode points")
        # held-out rows have no positives in `train_labels`: the classifiers and the first ranker skip them
        data = Stage2Data(labels, without_rows(labels, holdout), holdout, self.knn.train_features, emb)
        with timed(history, "shortlist_seconds"):
            shortlist = self._training_shortlist(data)
        with timed(history, "classifiers_seconds"):
            self._train_classifiers(data, shortlist, point_inputs, ckpt_dir, resume, progress)
        if cfg.classifier.finetune_encoder:  # embeddings moved: refresh them and their index
            data.emb = self._refresh_embeddings(dataset, point_inputs)
        ranker_shortlist, text_rows = shortlist, None
        if cfg.ranker.enabled:
            with timed(history, "shortlist_seconds"):
                ranker_shortlist = self._ranker_shortlist(data, shortlist)
                text_rows = self._label_text_rows(dataset, labels)
            with timed(history, "ranker_fit_seconds"):
                self.ranker = self._fit_ranker(*with_extra_rows(data.features, data.train_labels, ranker_shortlist,
                                                                text_rows), progress)
        with timed(history, "fusion_seconds"):
            self._fit_fusion(data, stage1_unseen_rows)
        if self.ranker is not None and cfg.ranker.refit_on_all and len(holdout):
            with timed(history, "ranker_refit_seconds"):
                self.ranker = self._fit_ranker(*with_extra_rows(data.features, labels, ranker_shortlist, text_rows),
                                               progress)
        if self.ranker is not None:
            history["ranker_seconds"] = history["ranker_fit_seconds"] + history.get("ranker_refit_seconds", 0.0)
            history["ranker_weights"] = int(self.ranker.weights.nnz)

    def _fit_tfidf(self, dataset: Any) -> TfidfKNN:
        """The TF-IDF featurizer and neighbour index over the training points (the classifiers' sparse
        features, the ranker's features and the neighbour candidate source)."""
        log.info("stage 2: TF-IDF features of the training texts")
        knn = TfidfKNN.train(dataset, KNNConfig(tfidf=self.config.tfidf))
        knn.label_texts = None  # stored once, at the model's top level
        return knn

    def _training_shortlist(self, data: Stage2Data) -> np.ndarray:
        """Candidates (n, C) of every training point from the label-embedding ANN and the TF-IDF neighbours
        (a point is never its own neighbour): the classifiers' hard negatives."""
        n = data.labels.shape[0]
        log.info("stage 2: shortlisting candidate labels for %d training points (label-embedding index + the "
                 "labels of their TF-IDF nearest neighbours)", n)
        shortlist, _ = self._scorer()(data.emb, data.features, use_classifier_index=False, classifier_sparse=False,
                                      exclude_rows=np.arange(n), with_scores=False)
        self.history["shortlist_recall_train"] = recall_of_shortlist(shortlist, data.labels)
        log.info("stage 2 shortlist: %d candidates/point, recall %.1f%% on training points", shortlist.shape[1],
                 self.history["shortlist_recall_train"])
        return shortlist

    def _train_classifiers(self, data: Stage2Data, shortlist: np.ndarray, point_inputs: Any, ckpt_dir: Path | None,
                           resume: bool, progress: bool) -> None:
        """The per-label classifiers on the training rows (shortlist + in-batch + classifier-index negatives),
        and the ANN index over their dense vectors."""
        cfg = self.config
        classifiers = LabelClassifiers(self.n_labels, self.encoder.dim, cfg.classifier.features,
                                       cfg.classifier.hash_buckets, cfg.classifier.max_sparse_features,
                                       sparse_grad=cfg.classifier.row_sparse_updates,
                                       pair_kernel=cfg.classifier.pair_kernel)
        classifiers.init_dense(self.label_embeddings)
        negatives = ClassifierNegatives(shortlist, classifiers, cfg.classifier, self.n_labels)
        sparse_x = data.features if cfg.classifier.features != "dense" else None
        log.info("stage 2: training %d per-label classifiers on the shortlists, %d epochs", self.n_labels,
                 cfg.classifier.epochs)
        hist = train_classifiers(classifiers, data.train_labels, cfg.classifier, negatives, embeddings=data.emb,
                                 sparse_features=sparse_x, encoder=self.encoder if cfg.classifier.finetune_encoder
                                 else None, point_inputs=point_inputs,
                                 checkpoint_path=ckpt_dir / "stage2.pt" if ckpt_dir else None, resume=resume,
                                 progress=progress, on_epoch_start=negatives.refresh,
                                 config_fingerprint=config_fingerprint(cfg.to_dict()),
                                 generators={"in_batch_positives": negatives.rng})
        self.history["stage2"] = hist.to_list()
        self.classifiers = classifiers
        if classifiers.weight is not None:
            self.classifier_index = LabelIndex.build(classifiers.weight.detach().numpy(),
                                                     cfg.classifier_index_config())

    def _refresh_embeddings(self, dataset: Any, point_inputs: Any) -> np.ndarray:
        """After fine-tuning the encoder: the label embeddings and their index again; returns the points'."""
        self.label_embeddings = self.encoder.encode(dataset.label_texts)
        self.label_index = LabelIndex.build(self.label_embeddings, self.config.index)
        return self.encoder.encode(point_inputs)

    def _ranker_shortlist(self, data: Stage2Data, shortlist: np.ndarray) -> np.ndarray:
        """The ranker's training candidates: what every candidate source proposes at prediction time, so that
        it learns to reject them -- the training shortlist plus the classifier index's candidates."""
        cfg = self.config
        ranker_shortlist = shortlist
        if cfg.classifier.finetune_encoder:  # the embeddings moved: the whole shortlist is searched again
            ranker_shortlist, _ = self._scorer()(
                data.emb, data.features, classifier_sparse=False, exclude_rows=np.arange(data.labels.shape[0]),
                use_classifier_index=cfg.ranker.shortlist_with_classifier_index, with_scores=False)
        elif cfg.ranker.shortlist_with_classifier_index and self.classifier_index is not None:
            # `shortlist` already holds the label-embedding ANN's and the neighbours' candidates
            k = min(cfg.classifier.shortlist_size, self.n_labels)
            ranker_shortlist = union_candidates(shortlist, self.classifier_index.search(data.emb, k)[1])
        log.info("stage 2 ranker shortlist: %d candidates/point", ranker_shortlist.shape[1])
        return ranker_shortlist

    def _label_text_rows(self, dataset: Any, labels: sp.csr_matrix) -> RankerRows | None:
        """The ranker's extra rows for labels with fewer than `ranker.label_text_rows_below` training positives:
        each label's text as a point of its own, positive for that label only, with the candidates every source
        proposes for it (so the label learns to beat the labels its text resembles). None where off, or where
        the TF-IDF features are given rather than computed from text."""
        below = self.config.ranker.label_text_rows_below
        if below == 0 or self.knn is None or self.knn.featurizer.source != "text":
            return None
        rare = np.flatnonzero(label_counts(labels) < below)
        features = self.knn.featurizer.transform([dataset.label_texts[j] for j in rare])
        # a text without a word of the training vocabulary would teach the label a bias alone: the same score for
        # every point
        has_words = np.diff(features.indptr) > 0
        rare, features = rare[has_words], features[has_words]
        if len(rare) == 0:
            return None
        emb = np.asarray(self.label_embeddings[rare], dtype=np.float32)
        with_classifier_index = self.config.ranker.shortlist_with_classifier_index
        candidates, _ = self._scorer()(emb, features, use_classifier_index=with_classifier_index,
                                       classifier_sparse=False, with_scores=False)
        own = sp.csr_matrix((np.ones(len(rare), dtype=np.float32), (np.arange(len(rare)), rare)),
                            shape=(len(rare), self.n_labels))
        log.info("stage 2 ranker: %d labels with fewer than %d training positives also train on their own text",
                 len(rare), below)
        self.history["ranker_label_text_rows"] = len(rare)
        return RankerRows(features, own, candidates)

    def _fit_ranker(self, features: sp.csr_matrix, labels: sp.csr_matrix, shortlist: np.ndarray, progress: bool
                    ) -> SparseRanker:
        """The sparse ranker on the rows of `labels` that have labels; a refit starts from the current ranker's
        solution (its dual variables)."""
        t0 = time.perf_counter()
        log.info("stage 2: fitting the sparse ranker, a %s model per label over TF-IDF features, on %d points",
                 self.config.ranker.loss, int((labels.getnnz(1) > 0).sum()))
        ranker = SparseRanker.train(features, labels, shortlist, self.config.ranker, n_jobs=torch.get_num_threads(),
                                    progress=progress, warm_start=self.ranker)
        log.info("stage 2 sparse ranker on %d points: %d weights kept, %.0fs", int((labels.getnnz(1) > 0).sum()),
                 ranker.weights.nnz, time.perf_counter() - t0)
        return ranker

    def _fit_fusion(self, data: Stage2Data, stage1_unseen_rows: np.ndarray) -> None:
        """The score fusion, fitted on the held-out training points' candidates and scores (with the leakage
        check on those stage 1 did not see either)."""
        cfg, holdout = self.config, data.holdout
        fit_rows = np.setdiff1d(np.arange(data.labels.shape[0]), holdout)
        log.info("stage 2: scoring %d held-out training points with every source and fitting the score fusion",
                 len(holdout))
        self.fusion = ScoreFusion(cfg.fusion, inverse_propensity(data.labels[fit_rows], cfg.fusion.propensity_A,
                                                                 cfg.fusion.propensity_B), self.score_sources)
        cand, scores = self._scorer()(data.emb[holdout], data.features[holdout], use_classifier_index=True,
                                      classifier_sparse=cfg.classifier.features != "dense", exclude_rows=holdout)
        check = self.fusion.fit_checked(scores, cand, data.labels[holdout], np.isin(holdout, stage1_unseen_rows),
                                        seed=cfg.classifier.seed, n_jobs=torch.get_num_threads())
        self.history["fusion_selection"] = check.pop("selection")
        self.history["fusion_check"] = check
        self.history["fusion_mode"] = self.fusion.mode
        if check:
            log.info("fusion: encoder held-out nDCG@5 %.1f on points stage 1 saw vs %.1f on unseen ones; fitted on "
                     "the seen points it scores %.1f on the unseen ones, fitted on those alone %.1f (cross-fit): "
                     "fitted on %s held-out points", check["encoder_ndcg5_seen"] or 0, check["encoder_ndcg5_unseen"]
                     or 0, check["fitted_on_seen_ndcg5_unseen"], check["fitted_on_unseen_ndcg5_crossfit"],
                     check["fitted_on"])
        self.history["shortlist_recall_holdout"] = recall_of_shortlist(cand, data.labels[holdout])

    @property
    def score_sources(self) -> tuple[str, ...]:
        return ("classifier", "encoder") + (("knn",) if self.knn is not None else ()) + \
            (("ranker",) if self.ranker is not None else ())

    def _scorer(self, predict: PredictConfig | None = None) -> ShortlistScorer:
        """The scorer with the training shortlist sizes, or those of `predict` where it sets them."""
        predict = predict or PredictConfig()
        size = predict.shortlist_size or self.config.classifier.shortlist_size
        knn_size = predict.knn_shortlist if predict.knn_shortlist is not None else size
        # the fusion was fitted on vote scores over the training shortlist size's best-voted labels: keep scoring those
        votes = max(self.config.classifier.shortlist_size, knn_size)
        return ShortlistScorer(self.label_embeddings, self.label_index, self.knn, self.classifiers,
                               self.classifier_index, size, knn_size if self.knn is not None else 0, self.ranker,
                               ef_search=predict.ef_search, nprobe=predict.nprobe,
                               knn_votes=votes if self.knn is not None else 0)

    # ---------------------------------------------------------------- prediction
    def encode(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode(texts)

    @torch.no_grad()
    @reads_labels
    def predict(self, inputs: Any, k: int = 100, scores: ScoreKind | None = None, batch_size: int | None = None,
                progress: bool = False, config: PredictConfig | None = None) -> sp.csr_matrix:
        """Top-k labels per point as an (n, L) CSR score matrix, in batches of bounded memory.
        `config`: the prediction-time settings (PredictConfig; default: the trained model's); `scores` and
        `batch_size`, when given, override it. scores: "fused" (default when classifiers exist), "encoder"
        (label-embedding similarity), "classifier" or "ranker" (the sparse linear ranker)."""
        config = (config or PredictConfig()).replace(**{key: value for key, value in
                                                       (("scores", scores), ("batch_size", batch_size))
                                                       if value is not None})
        scores, batch_size = config.scores, config.batch_size
        inputs = Inputs.of(inputs)
        if k < 1:
            raise XmineError(f"k must be >= 1, got {k}")
        if inputs.texts is None:
            raise XmineError("NGAME predicts from texts; the input has none")
        if scores != "encoder" and self.classifiers is None:
            if scores == "classifier":
                raise XmineError("this model has no classifiers (stage 2 was not trained); use scores='encoder'")
            scores = "encoder"
        if scores == "ranker" and self.ranker is None:
            raise XmineError("this model has no sparse ranker (ranker.enabled was false or stage 2 not trained)")
        self.encoder.eval()
        if self.classifiers is not None:
            self.classifiers.eval()
        scorer = self._scorer(config)
        uses_sparse = self.config.classifier.features != "dense"
        timings = {"encode": 0.0, "featurize": 0.0, "search": 0.0, "score": 0.0, "fuse": 0.0}
        out = []
        for start in tqdm(range(0, inputs.n_points, batch_size), desc="predict", disable=not progress):
            part = inputs.select(slice(start, start + batch_size))
            t0 = time.perf_counter()
            emb = self.encoder.encode(part.texts)
            timings["encode"] += time.perf_counter() - t0
            if scores == "encoder":
                t0 = time.perf_counter()
                top_scores, top_ids = top_k_enabled(self, emb, min(k, self.n_labels), ef_search=config.ef_search,
                                                    nprobe=config.nprobe)
                out.append(csr_from_topk(top_scores, top_ids, self.n_labels))
                timings["search"] += time.perf_counter() - t0
                continue
            t0 = time.perf_counter()
            sparse_x = self.knn.featurizer.transform(part.texts, part.features) if self.knn is not None else None
            timings["featurize"] += time.perf_counter() - t0
            cand, votes = scorer.candidates(emb, sparse_x, use_classifier_index=config.classifier_index)
            # every source, also for one source's scores: imputing added labels' scores reads the others
            source_scores = scorer.score(emb, sparse_x, cand, votes, classifier_sparse=uses_sparse)
            t0 = time.perf_counter()
            cand, source_scores = prepare_candidates(self, cand, source_scores)
            if scores in ("classifier", "ranker"):
                final = np.where(cand >= 0, source_scores[scores], -np.inf)
            else:
                final = fuse(self, source_scores, cand)
            out.append(csr_row_topk(csr_from_topk(final, cand, self.n_labels), k))
            timings["fuse"] += time.perf_counter() - t0
        if scores != "encoder":
            timings.update(scorer.timings)
        self.last_predict_seconds = timings
        return stack_rows(out, self.n_labels)

    def score_scale(self) -> str:
        mode = "encoder" if self.fusion is None else self.fusion.mode
        return FUSED_SCORE_SCALES.get(mode, "higher is better")

    # ------------------------------------------------------------------ storage
    @reads_labels
    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
        super().save(directory, extra)

    def _write_components(self, directory: Path, extra: dict[str, Any] | None = None) -> None:
        # labels added or disabled after training (xmine.labels): labels/state.json and its config.json summary
        super()._write_components(directory, {**(extra or {}), **save_label_state(self, directory)})

    def _components(self) -> list[tuple[str, Callable[[Path], None]]]:
        parts: list[tuple[str, Callable[[Path], None]]] = [("encoder", self.encoder.save),
                                                           ("label_embeddings", self._save_label_embeddings)]
        if self.knn is not None:
            parts.append(("tfidf", self.knn._write_components))
        if self.classifiers is not None:
            parts.append(("classifiers", self._save_classifiers))
        if self.ranker is not None:
            parts.append(("ranker", self.ranker.save))
        if self.fusion is not None:
            parts.append(("fusion", self.fusion.save))
        parts.append(("history.json", lambda path: atomic_write_text(path, json.dumps(self.history, indent=2,
                                                                                      default=float))))
        return parts

    def _save_label_embeddings(self, directory: Path) -> None:
        atomic_save_npy(directory / "embeddings.npy", self.label_embeddings)
        self.label_index.save(directory / "index", vectors_saved_by_owner=True)

    def _save_classifiers(self, directory: Path) -> None:
        self.classifiers.save(directory)
        if self.classifier_index is not None:  # built from the dense classifier weights saved just above
            self.classifier_index.save(directory / "index", vectors_saved_by_owner=True)

    def _model_meta(self) -> dict[str, Any]:
        return {"stages_trained": [1] + ([2] if self.classifiers is not None else [])}

    @classmethod
    def _load_components(cls, directory: Path, meta: dict[str, Any], device: str | None = None, **options: Any
                         ) -> NGAME:
        config = params_from(NGAMEConfig, meta["config"], "model", directory / "config.json")
        n_labels = meta["n_labels"]
        stages = json_field(meta, "stages_trained", "model", directory / "config.json", list)
        encoder = load_encoder(directory / "encoder", device=device or "cpu")
        # memory-mapped: prediction reads only the candidates' rows, so millions of labels need not be resident
        label_embeddings = load_npy(directory / "label_embeddings" / "embeddings.npy", "label_embeddings",
                                    shape=(n_labels, encoder.dim), mmap=True)
        label_index = LabelIndex.load(directory / "label_embeddings" / "index", encoder.dim, n_labels,
                                      component="label_embeddings", vectors=label_embeddings)
        knn = classifiers = classifier_index = fusion = ranker = None
        if 2 in stages:
            knn = TfidfKNN._read_components(directory / "tfidf")
            if knn.n_labels != n_labels:
                raise ModelError(f"tfidf: {directory / 'tfidf'}: {knn.n_labels} labels, the model has {n_labels}")
            classifiers = LabelClassifiers.load(directory / "classifiers", n_labels, encoder.dim)
            if classifiers.weight is not None:
                classifier_index = LabelIndex.load(directory / "classifiers" / "index", encoder.dim, n_labels,
                                                   component="classifiers",
                                                   vectors=classifiers.weight.detach().numpy())
            fusion = ScoreFusion.load(directory / "fusion", n_labels)
            if config.ranker.enabled:
                ranker = SparseRanker.load(directory / "ranker", n_labels)
                if ranker.n_features != knn.featurizer.n_features:
                    raise ModelError(f"ranker: {directory / 'ranker'}: weights over {ranker.n_features} features, "
                                     f"the TF-IDF featurizer gives {knn.featurizer.n_features}")
        history = load_json(directory / "history.json", "model")
        model = cls(config, encoder, label_embeddings, label_index, knn, classifiers, classifier_index, fusion,
                    history, ranker)
        load_label_state(model, directory)
        return model

