"""The reference baseline: TF-IDF features, exact nearest training points, label voting.

score(x, l) = sum over the `neighbours` most cosine-similar training points j of sim(x, j)**power * Y[j, l].
Every later method must beat it; it stays in the benchmarks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from functools import cached_property
from pathlib import Path
from typing import Any

import numba
import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from xmine.config import KNNConfig, PredictConfig
from xmine.errors import XmineError
from xmine.features import TfidfFeaturizer
from xmine.models.base import Inputs, XMCModel
from xmine.safeio import csr_from_arrays, load_npz, model_error, params_from
from xmine.topk import csr_product_dense, dense_topk, stack_rows, vote_topk
from xmine.utils import atomic_write

log = logging.getLogger(__name__)

# rows per neighbour-search block: each is a dense (rows, training points) similarity matrix, one per thread;
# small blocks bound its memory at no cost in speed
NEIGHBOUR_BLOCK = 256


class TfidfKNN(XMCModel):
    method = "knn"
    summary = ("TF-IDF features of the training texts; a text's labels are voted for by its most similar training "
               "texts (no training loop: nothing to checkpoint or resume).")

    def __init__(self, config: KNNConfig, featurizer: TfidfFeaturizer, train_features: sp.csr_matrix,
                 train_labels: sp.csr_matrix) -> None:
        self.config = config
        self.featurizer = featurizer
        self.train_features = train_features
        self.train_labels = train_labels
        self.n_labels = train_labels.shape[1]

    @cached_property
    def train_features_t(self) -> sp.csr_matrix:
        """The training features transposed (features x points), built once: transposing per batch took
        about a third of a shortlist over a long-text training set."""
        return self.train_features.T.tocsr()

    @classmethod
    def train(cls, dataset: Any, config: KNNConfig | None = None, out_dir: str | Path | None = None,
              resume: bool = False, init_from: str | Path | None = None, progress: bool = True,
              keep_checkpoints: bool = False) -> TfidfKNN:
        """Fit the TF-IDF featurizer and keep the training points' features and labels. The options of the
        common signature (`XMCModel.train`) are accepted; there are no checkpoints to write or resume from."""
        cls.check_train_options(init_from)
        config = config or KNNConfig()
        start = time.perf_counter()
        split = dataset.train
        featurizer = TfidfFeaturizer(config.tfidf).fit(split.texts, split.features)
        features = featurizer.transform(split.texts, split.features)
        labels = sp.csr_matrix(split.labels).astype(np.float32, copy=True)
        labels.data[:] = 1.0  # votes count each relevant label once, whatever its relevance value
        lead = f", lead channel of {featurizer.lead_words} words" if featurizer.lead_words else ""
        log.info("knn: %d training points, %d TF-IDF features (%s%s), fitted in %.1fs", features.shape[0],
                 featurizer.n_features, featurizer.source, lead, time.perf_counter() - start)
        model = cls(config, featurizer, features, labels)
        model.label_texts = dataset.label_texts
        return model

    def neighbours(self, features: sp.csr_matrix, k: int, batch_size: int = NEIGHBOUR_BLOCK
                   ) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar training points of each row: (similarities, training indices), `batch_size` rows
        at a time."""
        k = min(k, self.train_features.shape[0])
        sims = np.empty((features.shape[0], k), dtype=np.float32)
        ids = np.empty((features.shape[0], k), dtype=np.int64)
        train_t = self.train_features_t
        for start in range(0, features.shape[0], batch_size):
            block = csr_product_dense(features[start:start + batch_size], train_t)
            sims[start:start + batch_size], ids[start:start + batch_size] = dense_topk(block, k)
        return sims, ids

    def predict(self, inputs: Any, k: int = 100, config: PredictConfig | None = None, progress: bool = False,
                batch_size: int = NEIGHBOUR_BLOCK) -> sp.csr_matrix:
        self.check_predict_config(config)
        inputs = Inputs.of(inputs)
        return self.predict_features(self.featurizer.transform(inputs.texts, inputs.features), k, batch_size,
                                     progress=progress)

    def predict_features(self, features: sp.csr_matrix, k: int, batch_size: int = NEIGHBOUR_BLOCK,
                         exclude_rows: np.ndarray | None = None, progress: bool = False) -> sp.csr_matrix:
        """Label votes from TF-IDF `features`. `exclude_rows[i]` (a training row index) is left out of
        row i's neighbours: a training point must not vote for itself when shortlisting its own labels."""
        if k < 1:
            raise XmineError(f"k must be >= 1, got {k}")
        extra = 0 if exclude_rows is None else 1

        def votes(start: int) -> sp.csr_matrix:
            block = features if features.shape[0] <= batch_size else features[start:start + batch_size]
            sims, ids = self.neighbours(block, self.config.neighbours + extra, batch_size)
            if exclude_rows is not None:
                sims = np.where(ids == exclude_rows[start:start + batch_size, None], 0.0, sims)
            return vote_topk(np.maximum(sims, 0) ** self.config.power, ids, self.train_labels, k)

        # batches are independent and their neighbour search and compiled votes release the GIL: several batches run in
        # numba's thread count (set with the model's threads), kept in order; one batch runs on the caller's thread
        starts = range(0, features.shape[0], batch_size)
        out = []
        bar = tqdm(total=features.shape[0], desc="knn predict", unit="pt", disable=not progress)
        with ThreadPoolExecutor(max(1, min(numba.get_num_threads(), len(starts)))) if len(starts) > 1 else \
                nullcontext() as pool:
            for block in (pool.map(votes, starts) if pool is not None else map(votes, starts)):
                out.append(block)
                bar.update(block.shape[0])
        bar.close()
        return stack_rows(out, self.n_labels)

    def score_scale(self) -> str:
        return (f"sum over the {self.config.neighbours} nearest training texts of similarity**{self.config.power:g} "
                "for each label they carry, in [0, neighbours]")

    def _components(self) -> list[tuple[str, Callable[[Path], None]]]:
        return [("tfidf", self.featurizer.save),
                ("train.npz", lambda path: atomic_write(path, lambda tmp: _save_npz(tmp, self.train_features,
                                                                                  self.train_labels)))]

    @classmethod
    def _load_components(cls, directory: Path, meta: dict[str, Any], component: str = "model", **options: Any
                         ) -> TfidfKNN:
        config = params_from(KNNConfig, meta["config"], component, directory / "config.json")
        featurizer = TfidfFeaturizer.load(directory / "tfidf")
        path = directory / "train.npz"
        keys = [f"{m}_{part}" for m in "xy" for part in ("data", "indices", "indptr", "shape")]
        data = load_npz(path, component, keys)
        features = csr_from_arrays(data["x_data"], data["x_indices"], data["x_indptr"], data["x_shape"], component,
                                   path, name="training features")
        labels = csr_from_arrays(data["y_data"], data["y_indices"], data["y_indptr"], data["y_shape"], component,
                                 path, name="training labels")
        if labels.shape != (features.shape[0], meta["n_labels"]) or features.shape[1] != featurizer.n_features:
            raise model_error(component, path, f"training features {features.shape} and labels {labels.shape} do "
                              f"not fit {meta['n_labels']} labels and {featurizer.n_features} TF-IDF features")
        return cls(config, featurizer, features, labels)


def _save_npz(path: str, features: sp.csr_matrix, labels: sp.csr_matrix) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, x_data=features.data, x_indices=features.indices, x_indptr=features.indptr,
                 x_shape=np.array(features.shape), y_data=labels.data, y_indices=labels.indices,
                 y_indptr=labels.indptr, y_shape=np.array(labels.shape))
