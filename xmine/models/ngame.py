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

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from xmine.classifiers import LabelClassifiers
from xmine.config import KNNConfig, NGAMEConfig
from xmine.encoders import Encoder, build_encoder, load_encoder
from xmine.errors import ModelError, XmineError
from xmine.fusion import ScoreFusion, lookup_csr
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
from xmine.metrics import inverse_propensity
from xmine.mining.mips import MIPSNegativeSampler
from xmine.models.base import Inputs, XMCModel, read_model_config
from xmine.models.knn import TfidfKNN
from xmine.ranker import SparseRanker
from xmine.safeio import json_field, load_json, load_npy, params_from
from xmine.shortlist import csr_rows_to_ids, recall_of_shortlist, union_candidates
from xmine.topk import csr_from_topk, csr_row_topk, stack_rows
from xmine.training.checkpoint import config_fingerprint, remove_checkpoints
from xmine.training.classifiers import train_classifiers
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
    "fixed": "weight * sigmoid(classifier logit) + (1 - weight) * cosine similarity, in [-1, 1]",
    "classifier": "per-label classifier logit, unbounded (sigmoid gives a probability-like score)",
    "ranker": "sparse ranker logit, unbounded (sigmoid gives a probability-like score)",
    "encoder": "cosine similarity of text and label embeddings, in [-1, 1]",
    "knn": "TF-IDF neighbour votes relative to the text's best-voted label, in [0, 1]",
}


class ShortlistScorer:
    """Shortlist + exact scoring, shared by NGAME's prediction and its held-out fusion fitting."""

    def __init__(self, label_embeddings: np.ndarray, label_index: LabelIndex, knn: TfidfKNN | None,
                 classifiers: LabelClassifiers | None, classifier_index: LabelIndex | None, shortlist_size: int,
                 knn_shortlist: int, ranker: SparseRanker | None = None) -> None:
        self.label_embeddings, self.label_index = label_embeddings, label_index
        self.knn, self.classifiers, self.classifier_index = knn, classifiers, classifier_index
        self.ranker = ranker
        self.shortlist_size, self.knn_shortlist = shortlist_size, knn_shortlist

    @torch.no_grad()
    def __call__(self, emb: np.ndarray, sparse_x: sp.csr_matrix | None, use_classifier_index: bool,
                 classifier_sparse: bool, exclude_rows: np.ndarray | None = None, with_scores: bool = True,
                 chunk: int = 256) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Candidates (n, C) from the label-embedding ANN (+ classifier ANN, + TF-IDF neighbours' labels)
        and each candidate's scores per source: "encoder", "knn", and "classifier" and "ranker" where trained.
        Scores are computed `chunk` rows at a time, which bounds the memory of the gathered label vectors."""
        k = min(self.shortlist_size, self.label_embeddings.shape[0])
        parts = [self.label_index.search(emb, k)[1]]
        if use_classifier_index and self.classifier_index is not None:
            parts.append(self.classifier_index.search(emb, k)[1])
        votes = None
        if self.knn is not None and sparse_x is not None and self.knn_shortlist > 0:
            votes = self.knn.predict_features(sparse_x, self.knn_shortlist, exclude_rows=exclude_rows)
            parts.append(csr_rows_to_ids(votes, self.knn_shortlist))
        cand = union_candidates(*parts)
        if not with_scores:
            return cand, {}
        scores = {"encoder": np.empty(cand.shape, dtype=np.float32)}
        if self.classifiers is not None:
            scores["classifier"] = np.empty(cand.shape, dtype=np.float32)
        for start in range(0, cand.shape[0], chunk):
            rows = slice(start, start + chunk)
            block = np.maximum(cand[rows], 0)
            scores["encoder"][rows] = np.einsum("nd,ncd->nc", emb[rows], self.label_embeddings[block])
            if self.classifiers is not None:
                x = sparse_x[rows] if classifier_sparse else None
                scores["classifier"][rows] = self.classifiers.score(torch.from_numpy(emb[rows]), x, cand[rows]).numpy()
        if self.ranker is not None and sparse_x is not None:
            scores["ranker"] = self.ranker.score(sparse_x, cand)
        if votes is not None:
            best = np.maximum(votes.max(axis=1).toarray().ravel(), 1e-12)
            scores["knn"] = lookup_csr(votes, cand) / best[:, None].astype(np.float32)
        return cand, scores


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


@labels_api
class NGAME(XMCModel):
    method = "ngame"

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
            encoder = build_encoder(config.encoder, list(split.texts) + list(dataset.label_texts))
            point_inputs = encoder.prepare(split.texts)
            label_inputs = encoder.prepare(dataset.label_texts)
            # a few of the fusion's held-out points are kept out of stage 1 too (see FusionConfig)
            stage1_labels = without_rows(split.labels, unseen)
            hist = train_siamese(encoder, point_inputs, label_inputs, stage1_labels, config.siamese,
                                 checkpoint_path=ckpt_dir / "stage1.pt" if ckpt_dir else None, resume=resume,
                                 progress=progress, config_fingerprint=config_fingerprint(config.to_dict()))
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
        cfg = self.config
        split = dataset.train
        labels = sp.csr_matrix(split.labels)
        n = labels.shape[0]
        holdout = fusion_holdout(n, cfg)
        fit_rows = np.setdiff1d(np.arange(n), holdout)
        uses_sparse = cfg.classifier.features != "dense"
        log.info("stage 2: TF-IDF features of the training texts")
        self.knn = TfidfKNN.train(dataset, KNNConfig(tfidf=cfg.tfidf))
        self.knn.label_texts = None  # stored once, at the model's top level
        sparse_x = self.knn.train_features if uses_sparse else None
        # the shortlist's neighbour source only sees the classifier-training rows
        emb = self.encoder.encode(point_inputs, progress=progress, desc="encode points")
        t0 = time.perf_counter()
        log.info("stage 2: shortlisting candidate labels for %d training points (label-embedding index + the "
                 "labels of their TF-IDF nearest neighbours)", n)
        shortlist, _ = self._scorer()(emb, self.knn.train_features, use_classifier_index=False,
                                      classifier_sparse=False, exclude_rows=np.arange(n), with_scores=False)
        self.history["shortlist_recall_train"] = recall_of_shortlist(shortlist, labels)
        self.history["shortlist_seconds"] = time.perf_counter() - t0
        log.info("stage 2 shortlist: %d candidates/point, recall %.1f%% on training points", shortlist.shape[1],
                 self.history["shortlist_recall_train"])
        train_labels = without_rows(labels, holdout)  # held-out rows have no positives -> skipped

        def train_ranker(on_labels: sp.csr_matrix, ranker_shortlist: np.ndarray) -> None:
            t0 = time.perf_counter()
            log.info("stage 2: fitting the sparse ranker, a logistic regression per label over TF-IDF features, "
                     "on %d points", int((on_labels.getnnz(1) > 0).sum()))
            self.ranker = SparseRanker.train(self.knn.train_features, on_labels, ranker_shortlist, cfg.ranker,
                                             n_jobs=torch.get_num_threads(), progress=progress)
            seconds = time.perf_counter() - t0
            self.history["ranker_seconds"] = self.history.get("ranker_seconds", 0.0) + seconds
            self.history["ranker_weights"] = int(self.ranker.weights.nnz)
            log.info("stage 2 sparse ranker on %d points: %d weights kept, %.0fs", int((on_labels.getnnz(1) > 0)
                     .sum()), self.ranker.weights.nnz, seconds)

        classifiers = LabelClassifiers(self.n_labels, self.encoder.dim, cfg.classifier.features,
                                       cfg.classifier.hash_buckets,
                                       cfg.classifier.max_sparse_features)
        classifiers.init_dense(self.label_embeddings)
        batch_rng = np.random.default_rng([cfg.classifier.seed, 13])
        mips = None
        if cfg.classifier.classifier_index_negatives > 0 and classifiers.weight is not None:
            mips = MIPSNegativeSampler(self.n_labels, cfg.classifier.classifier_index_negatives, 0,
                                       cfg.classifier.negatives_index)

        def refresh_classifier_index(epoch: int, step: int) -> None:
            if mips is not None:
                mips.rebuild(classifiers.weight.detach().cpu().numpy())

        def negatives(rows: np.ndarray, batch_emb: Any, batch_pos: sp.csr_matrix, epoch: int, step: int) -> np.ndarray:
            # ANN shortlist of each point + one positive of every other point in the batch (in-batch negatives)
            # + the top labels of the current classifier vectors (what the classifier index will propose)
            in_batch = sample_one_positive(batch_pos, batch_rng)
            parts = [shortlist[rows], np.broadcast_to(in_batch, (len(rows), len(in_batch)))]
            if mips is not None:
                parts.append(mips.hard_negatives(batch_emb, batch_pos))
            return np.concatenate(parts, axis=1)

        log.info("stage 2: training %d per-label classifiers on the shortlists, %d epochs", self.n_labels,
                 cfg.classifier.epochs)
        hist = train_classifiers(classifiers, train_labels, cfg.classifier, negatives, embeddings=emb,
                                 sparse_features=sparse_x, encoder=self.encoder if cfg.classifier.finetune_encoder
                                 else None, point_inputs=point_inputs,
                                 checkpoint_path=ckpt_dir / "stage2.pt" if ckpt_dir else None, resume=resume,
                                 progress=progress, on_epoch_start=refresh_classifier_index,
                                 config_fingerprint=config_fingerprint(cfg.to_dict()),
                                 generators={"in_batch_positives": batch_rng})
        self.history["stage2"] = hist.to_list()
        self.classifiers = classifiers
        if classifiers.weight is not None:
            self.classifier_index = LabelIndex.build(classifiers.weight.detach().numpy(), cfg.index)
        if cfg.classifier.finetune_encoder:  # embeddings moved: refresh them and their index
            self.label_embeddings = self.encoder.encode(dataset.label_texts)
            self.label_index = LabelIndex.build(self.label_embeddings, cfg.index)
            emb = self.encoder.encode(point_inputs)
        ranker_shortlist = shortlist
        if cfg.ranker.enabled:
            # the ranker learns to reject what every candidate source proposes at prediction time
            t0 = time.perf_counter()
            if cfg.classifier.finetune_encoder:  # the embeddings moved: the whole shortlist is searched again
                ranker_shortlist, _ = self._scorer()(
                    emb, self.knn.train_features, classifier_sparse=False, exclude_rows=np.arange(n),
                    use_classifier_index=cfg.ranker.shortlist_with_classifier_index, with_scores=False)
            elif cfg.ranker.shortlist_with_classifier_index and self.classifier_index is not None:
                # `shortlist` already holds the label-embedding ANN's and the neighbours' candidates
                k = min(cfg.classifier.shortlist_size, self.n_labels)
                ranker_shortlist = union_candidates(shortlist, self.classifier_index.search(emb, k)[1])
            self.history["shortlist_seconds"] += time.perf_counter() - t0
            log.info("stage 2 ranker shortlist: %d candidates/point", ranker_shortlist.shape[1])
            train_ranker(train_labels, ranker_shortlist)
        # fusion on the held-out training points
        log.info("stage 2: scoring %d held-out training points with every source and fitting the score fusion",
                 len(holdout))
        self.fusion = ScoreFusion(cfg.fusion, inverse_propensity(labels[fit_rows], cfg.fusion.propensity_A,
                                                                 cfg.fusion.propensity_B), self.score_sources)
        cand, scores = self._scorer()(emb[holdout], self.knn.train_features[holdout], use_classifier_index=True,
                                      classifier_sparse=uses_sparse, exclude_rows=holdout)
        check = self.fusion.fit_checked(scores, cand, labels[holdout], np.isin(holdout, stage1_unseen_rows),
                                        seed=cfg.classifier.seed)
        self.history["fusion_selection"] = check.pop("selection")
        self.history["fusion_check"] = check
        self.history["fusion_mode"] = self.fusion.mode
        if check:
            log.info("fusion: encoder held-out nDCG@5 %.1f on points stage 1 saw vs %.1f on unseen ones; fitted on "
                     "the seen points it scores %.1f on the unseen ones, fitted on those alone %.1f (cross-fit): "
                     "fitted on %s held-out points", check["encoder_ndcg5_seen"] or 0, check["encoder_ndcg5_unseen"]
                     or 0, check["fitted_on_seen_ndcg5_unseen"], check["fitted_on_unseen_ndcg5_crossfit"],
                     check["fitted_on"])
        self.history["shortlist_recall_holdout"] = recall_of_shortlist(cand, labels[holdout])
        if self.ranker is not None and cfg.ranker.refit_on_all and len(holdout):
            train_ranker(labels, ranker_shortlist)

    @property
    def score_sources(self) -> tuple[str, ...]:
        return ("classifier", "encoder") + (("knn",) if self.knn is not None else ()) + \
            (("ranker",) if self.ranker is not None else ())

    def _scorer(self) -> ShortlistScorer:
        return ShortlistScorer(self.label_embeddings, self.label_index, self.knn, self.classifiers,
                               self.classifier_index, self.config.classifier.shortlist_size,
                               self.config.classifier.shortlist_size if self.knn is not None else 0, self.ranker)

    # ---------------------------------------------------------------- prediction
    def encode(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode(texts)

    @torch.no_grad()
    @reads_labels
    def predict(self, inputs: Any, k: int = 100, scores: ScoreKind = "fused", batch_size: int = 1024,
                progress: bool = False) -> sp.csr_matrix:
        """Top-k labels per point as an (n, L) CSR score matrix, in batches of bounded memory.
        scores: "fused" (default when classifiers exist), "encoder" (label-embedding similarity),
        "classifier" or "ranker" (the sparse linear ranker)."""
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
        scorer = self._scorer()
        uses_sparse = self.config.classifier.features != "dense"
        out = []
        for start in tqdm(range(0, inputs.n_points, batch_size), desc="predict", disable=not progress):
            part = inputs.select(slice(start, start + batch_size))
            emb = self.encoder.encode(part.texts)
            if scores == "encoder":
                top_scores, top_ids = top_k_enabled(self, emb, min(k, self.n_labels))
                out.append(csr_from_topk(top_scores, top_ids, self.n_labels))
                continue
            sparse_x = self.knn.featurizer.transform(part.texts, part.features) if self.knn is not None else None
            cand, source_scores = scorer(emb, sparse_x, use_classifier_index=True, classifier_sparse=uses_sparse)
            cand, source_scores = prepare_candidates(self, cand, source_scores)
            if scores in ("classifier", "ranker"):
                final = np.where(cand >= 0, source_scores[scores], -np.inf)
            else:
                final = fuse(self, source_scores, cand)
            out.append(csr_row_topk(csr_from_topk(final, cand, self.n_labels), k))
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
        self.label_index.save(directory / "index")

    def _save_classifiers(self, directory: Path) -> None:
        self.classifiers.save(directory)
        if self.classifier_index is not None:
            self.classifier_index.save(directory / "index")

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
                                      component="label_embeddings")
        knn = classifiers = classifier_index = fusion = ranker = None
        if 2 in stages:
            knn = TfidfKNN._read_components(directory / "tfidf")
            if knn.n_labels != n_labels:
                raise ModelError(f"tfidf: {directory / 'tfidf'}: {knn.n_labels} labels, the model has {n_labels}")
            classifiers = LabelClassifiers.load(directory / "classifiers", n_labels, encoder.dim)
            if classifiers.weight is not None:
                classifier_index = LabelIndex.load(directory / "classifiers" / "index", encoder.dim, n_labels,
                                                   component="classifiers")
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
