"""Sparse TF-IDF features: the representation the sparse peers use, and the sparse half of
xmine's [dense (+) sparse] classifiers and of the kNN baseline."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfTransformer, TfidfVectorizer
from sklearn.preprocessing import normalize

from xmine.config import TfidfConfig
from xmine.errors import ModelError, XmineError
from xmine.utils import atomic_save_npy, atomic_write_text


class TfidfFeaturizer:
    """Fits on training texts (word n-grams) or, for datasets that come with sparse features,
    on those features (idf re-weighting only). Output rows are L2-normalised CSR float32."""

    def __init__(self, config: TfidfConfig | None = None) -> None:
        self.config = config or TfidfConfig()
        self.source: str | None = None  # "text" or "given"
        self._vectorizer: TfidfVectorizer | None = None
        self._transformer: TfidfTransformer | None = None

    @property
    def n_features(self) -> int:
        if self._vectorizer is not None:
            return len(self._vectorizer.vocabulary_)
        if self._transformer is not None:
            return int(self._transformer.idf_.shape[0])
        raise XmineError("TfidfFeaturizer is not fitted")

    def fit(self, texts: Sequence[str] | None = None, features: sp.csr_matrix | None = None) -> TfidfFeaturizer:
        if features is not None and (self.config.use_given_features or texts is None):
            self.source = "given"
            self._transformer = TfidfTransformer(sublinear_tf=self.config.sublinear_tf).fit(features)
        elif texts is not None:
            self.source = "text"
            self._vectorizer = self._make_vectorizer()
            try:
                self._vectorizer.fit(texts)
            except ValueError as exc:  # e.g. empty vocabulary
                raise XmineError(f"TF-IDF could not be fitted on the training texts: {exc}") from exc
        else:
            raise XmineError("TF-IDF needs texts or sparse features to fit on")
        return self

    def transform(self, texts: Sequence[str] | None = None, features: sp.csr_matrix | None = None) -> sp.csr_matrix:
        if self.source == "given":
            if features is None:
                raise XmineError("this model was trained on given sparse features; the input has none")
            if features.shape[1] != self.n_features:
                raise XmineError(f"input has {features.shape[1]} features, the model expects {self.n_features}")
            out = self._transformer.transform(features)
        elif self.source == "text":
            if texts is None:
                raise XmineError("this model was trained on texts; the input has none")
            out = self._vectorizer.transform(texts)
        else:
            raise XmineError("TfidfFeaturizer is not fitted")
        out = normalize(sp.csr_matrix(out, dtype=np.float32), norm="l2", copy=False)
        out.sort_indices()
        return out

    def _make_vectorizer(self) -> TfidfVectorizer:
        return TfidfVectorizer(ngram_range=(1, self.config.ngram_max), min_df=self.config.min_df,
                               max_features=self.config.max_features, sublinear_tf=self.config.sublinear_tf,
                               dtype=np.float32)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"config": self.config.to_dict(), "source": self.source}
        if self.source == "text":
            vocab = {term: int(i) for term, i in self._vectorizer.vocabulary_.items()}
            atomic_write_text(directory / "vocabulary.json", json.dumps(vocab))
            atomic_save_npy(directory / "idf.npy", self._vectorizer.idf_)
        else:
            atomic_save_npy(directory / "idf.npy", self._transformer.idf_)
        atomic_write_text(directory / "tfidf.json", json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> TfidfFeaturizer:
        directory = Path(directory)
        try:
            meta = json.loads((directory / "tfidf.json").read_text())
            idf = np.load(directory / "idf.npy")
        except FileNotFoundError as exc:
            raise ModelError(f"{directory}: TF-IDF files missing ({exc.filename})") from exc
        obj = cls(TfidfConfig.from_dict(meta["config"]))
        obj.source = meta["source"]
        if obj.source == "text":
            vocab = json.loads((directory / "vocabulary.json").read_text())
            obj._vectorizer = obj._make_vectorizer()
            obj._vectorizer.vocabulary = vocab
            obj._vectorizer.fit(["x"])  # sets up the analyzer with the fixed vocabulary
            obj._vectorizer.idf_ = idf
        else:
            obj._transformer = TfidfTransformer(sublinear_tf=obj.config.sublinear_tf)
            obj._transformer.fit(sp.csr_matrix((1, idf.shape[0]), dtype=np.float32))
            obj._transformer.idf_ = idf
        return obj
