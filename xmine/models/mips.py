"""MIPS negative sampling (Qaraei & Babbar, Machine Learning 2023, "Meta-classifier free negative
sampling for extreme multilabel classification").

An encoder feeds one linear classifier per label (one-vs-all), trained with binary cross-entropy on
each point's positives, a few hard negatives from a maximum-inner-product search over the current
classifier vectors, and uniformly sampled labels. The MIPS index is rebuilt every `reindex_every`
steps and at every epoch start; before `warmup_epochs` only uniform negatives are used.
With sparse features, the MIPS search runs over the dense part of the classifiers.

Model directory: config.json, encoder/, classifiers/ (+ classifiers/index), tfidf/, history.json.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from xmine.classifiers import LabelClassifiers
from xmine.config import KNNConfig, MIPSMethodConfig, PredictConfig
from xmine.encoders import Encoder, build_encoder, load_encoder
from xmine.errors import ModelError, XmineError
from xmine.index import LabelIndex
from xmine.mining.mips import MIPSNegativeSampler
from xmine.models.base import Inputs, XMCModel
from xmine.models.knn import TfidfKNN
from xmine.safeio import load_json, params_from
from xmine.topk import csr_from_topk, csr_row_topk, csr_rows_to_ids, stack_rows, union_candidates
from xmine.training.checkpoint import config_fingerprint, remove_checkpoints
from xmine.training.classifiers import train_classifiers
from xmine.utils import atomic_write_text, seed_everything, set_threads

log = logging.getLogger(__name__)


class MIPSClassifier(XMCModel):
    method = "mips"
    summary = ("Per-label classifiers trained on each point's positives plus hard negatives: the labels that "
               "score highest for it, searched by maximum inner product in an index of the classifier vectors.")
    data_parallel = True

    def __init__(self, config: MIPSMethodConfig, encoder: Encoder, classifiers: LabelClassifiers,
                 index: LabelIndex | None, knn: TfidfKNN | None, history: dict[str, Any] | None = None) -> None:
        self.config, self.encoder, self.classifiers, self.index, self.knn = config, encoder, classifiers, index, knn
        self.history = history or {}
        self.n_labels = classifiers.n_labels

    @classmethod
    def train(cls, dataset: Any, config: MIPSMethodConfig | None = None, out_dir: str | Path | None = None,
              resume: bool = False, init_from: str | Path | None = None, progress: bool = True,
              keep_checkpoints: bool = False) -> MIPSClassifier:
        cls.check_train_options(init_from)
        config = config or MIPSMethodConfig()
        set_threads(config.encoder.num_threads)
        seed_everything(config.classifier.seed)
        split = dataset.train
        if split.texts is None:
            raise XmineError("the MIPS method encodes point texts; the dataset has none")
        start = time.perf_counter()
        encoder = build_encoder(config.encoder)
        point_inputs = encoder.prepare(split.texts)
        label_inputs = encoder.prepare(dataset.label_texts) if dataset.label_texts is not None else None
        encoder.fit_inputs(*(inputs for inputs in (point_inputs, label_inputs) if inputs is not None))
        uses_sparse = config.classifier.features != "dense"
        knn = TfidfKNN.train(dataset, KNNConfig(tfidf=config.tfidf)) if uses_sparse else None
        if knn is not None:
            knn.label_texts = None  # stored once, at the model's top level
        classifiers = LabelClassifiers(dataset.n_labels, encoder.dim, config.classifier.features,
                                       config.classifier.hash_buckets,
                                       config.classifier.max_sparse_features,
                                       pair_kernel=config.classifier.pair_kernel)
        if dataset.label_texts is not None and classifiers.weight is not None:
            classifiers.init_dense(encoder.encode(label_inputs, progress=progress, desc="encode labels"))
        elif classifiers.weight is not None:
            with torch.no_grad():
                classifiers.weight.normal_(0, 0.01)
        sampler = MIPSNegativeSampler(dataset.n_labels, config.mips.mips_negatives, config.mips.uniform_negatives,
                                      config.mips.index, seed=config.classifier.seed)
        rebuild_steps: list[int] = []
        uses_mips = config.mips.mips_negatives > 0

        def rebuild(step: int) -> None:
            if uses_mips:
                sampler.rebuild(classifiers.weight.detach().cpu().numpy())
                rebuild_steps.append(step)

        epoch_start = {"step": -1}

        def on_epoch_start(epoch: int, step: int) -> None:
            if epoch >= config.mips.warmup_epochs:
                epoch_start["step"] = step
                rebuild(step)

        def on_step(step: int) -> None:
            # rebuilt at each epoch start (above) and every `reindex_every` steps once hard negatives are on
            if (step % config.mips.reindex_every == 0 and step != epoch_start["step"]
                    and sampler.index is not None):
                rebuild(step)

        def negatives(rows: np.ndarray, emb: np.ndarray | None, batch_pos: sp.csr_matrix, epoch: int,
                      step: int) -> np.ndarray:
            hard = uses_mips and epoch >= config.mips.warmup_epochs and emb is not None
            return sampler.sample(emb, batch_pos, use_mips=hard)

        frozen_emb = None if config.classifier.finetune_encoder else encoder.encode(point_inputs, progress=progress)
        ckpt = Path(out_dir) / "checkpoints" / "mips.pt" if out_dir is not None else None
        hist = train_classifiers(classifiers, split.labels, config.classifier, negatives, embeddings=frozen_emb,
                                 sparse_features=knn.train_features if knn is not None else None, encoder=encoder,
                                 point_inputs=point_inputs, checkpoint_path=ckpt, resume=resume, progress=progress,
                                 on_step=on_step, on_epoch_start=on_epoch_start,
                                 config_fingerprint=config_fingerprint(config.to_dict()),
                                 generators={"uniform_negatives": sampler.rng})
        index = LabelIndex.build(classifiers.weight.detach().numpy(), config.mips.index) \
            if classifiers.weight is not None else None
        history = {"epochs": hist.to_list(), "train_seconds": time.perf_counter() - start,
                   "reindex_seconds": sampler.rebuild_seconds, "reindex_count": sampler.rebuilds,
                   "rebuild_steps": rebuild_steps}
        if not keep_checkpoints and ckpt is not None:
            remove_checkpoints(ckpt.parent)
        model = cls(config, encoder, classifiers, index, knn, history)
        model.label_texts = dataset.label_texts
        return model

    @torch.no_grad()
    def predict(self, inputs: Any, k: int = 100, config: PredictConfig | None = None, progress: bool = False,
                batch_size: int = 512) -> sp.csr_matrix:
        """Candidates from the MIPS index over the classifier vectors (plus TF-IDF neighbours' labels
        when the classifiers use sparse features), scored exactly by the classifiers."""
        self.check_predict_config(config)
        inputs = Inputs.of(inputs)
        if inputs.texts is None:
            raise XmineError("the MIPS model predicts from texts; the input has none")
        if k < 1:
            raise XmineError(f"k must be >= 1, got {k}")
        self.encoder.eval()
        self.classifiers.eval()
        width = min(max(self.config.classifier.shortlist_size, k), self.n_labels)
        out = []
        for start in tqdm(range(0, inputs.n_points, batch_size), desc="predict", disable=not progress):
            part = inputs.select(slice(start, start + batch_size))
            emb = self.encoder.encode(part.texts)
            parts = []
            if self.index is not None:
                parts.append(self.index.search(emb, width)[1])
            sparse_x = None
            if self.knn is not None:
                sparse_x = self.knn.featurizer.transform(part.texts, part.features)
                parts.append(csr_rows_to_ids(self.knn.predict_features(sparse_x, width), width))
            cand = union_candidates(*parts)
            scores = self.classifiers.score(torch.from_numpy(emb), sparse_x, cand).numpy()
            scores = np.where(cand >= 0, scores, -np.inf)
            out.append(csr_row_topk(csr_from_topk(scores, cand, self.n_labels), k))
        return stack_rows(out, self.n_labels)

    def score_scale(self) -> str:
        return "per-label classifier logit, unbounded (sigmoid gives a probability-like score)"

    def _components(self) -> list[tuple[str, Callable[[Path], None]]]:
        parts: list[tuple[str, Callable[[Path], None]]] = [("encoder", self.encoder.save),
                                                           ("classifiers", self._save_classifiers)]
        if self.knn is not None:
            parts.append(("tfidf", self.knn._write_components))
        parts.append(("history.json", lambda path: atomic_write_text(path, json.dumps(self.history, indent=2,
                                                                                      default=float))))
        return parts

    def _save_classifiers(self, directory: Path) -> None:
        self.classifiers.save(directory)
        if self.index is not None:
            self.index.save(directory / "index")

    @classmethod
    def _load_components(cls, directory: Path, meta: dict[str, Any], device: str | None = None, **options: Any
                         ) -> MIPSClassifier:
        config = params_from(MIPSMethodConfig, meta["config"], "model", directory / "config.json")
        n_labels = meta["n_labels"]
        encoder = load_encoder(directory / "encoder", device=device or "cpu")
        classifiers = LabelClassifiers.load(directory / "classifiers", n_labels, encoder.dim)
        index = LabelIndex.load(directory / "classifiers" / "index", encoder.dim, n_labels, component="classifiers") \
            if classifiers.weight is not None else None
        knn = None
        if config.classifier.features != "dense":
            knn = TfidfKNN._read_components(directory / "tfidf")
            if knn.n_labels != n_labels:
                raise ModelError(f"tfidf: {directory / 'tfidf'}: {knn.n_labels} labels, the model has {n_labels}")
        history = load_json(directory / "history.json", "model")
        return cls(config, encoder, classifiers, index, knn, history)
