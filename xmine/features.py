"""Sparse TF-IDF features: the representation the sparse peers use, and the sparse half of
xmine's [dense (+) sparse] classifiers, of the sparse ranker and of the kNN baseline.

A row is [full-text channel | lead channel], each part L2-normalised; the lead channel (TF-IDF of the
text's first `lead_words` words) is present only when `TfidfConfig.lead_channel` asks for it or, on
"auto", when the training texts are long (see TfidfConfig)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import sklearn
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer, TfidfVectorizer

from xmine.config import LEAD_AUTO_MIN_RATIO, TfidfConfig
from xmine.errors import XmineError
from xmine.safeio import json_field, load_json, load_npy, model_error, params_from
from xmine.topk import csr_row_ids
from xmine.utils import atomic_save_npy, atomic_write_text


def lead_texts(texts: Sequence[str], n_words: int) -> list[str]:
    """Each text's first `n_words` whitespace-separated words."""
    return [" ".join(text.split(maxsplit=n_words)[:n_words]) for text in texts]


class TfidfFeaturizer:
    """Fits on training texts (word n-grams) or, for datasets that come with sparse features,
    on those features (idf re-weighting only). Output rows are CSR float32, each channel L2-normalised."""

    def __init__(self, config: TfidfConfig | None = None) -> None:
        self.config = config or TfidfConfig()
        self.source: str | None = None  # "text" or "given"
        self.lead_words = 0  # words in the lead channel; 0 = no lead channel (decided at fit)
        self._vectorizer: TfidfVectorizer | None = None
        self._lead_vectorizer: TfidfVectorizer | None = None
        self._transformer: TfidfTransformer | None = None

    @property
    def n_features(self) -> int:
        if self._vectorizer is not None:
            lead = len(self._lead_vectorizer.vocabulary_) if self._lead_vectorizer is not None else 0
            return len(self._vectorizer.vocabulary_) + lead
        if self._transformer is not None:
            return int(self._transformer.idf_.shape[0])
        raise XmineError("TfidfFeaturizer is not fitted")

    def fit(self, texts: Sequence[str] | None = None, features: sp.csr_matrix | None = None) -> TfidfFeaturizer:
        if features is not None and (self.config.use_given_features or texts is None):
            self.source = "given"
            self._transformer = TfidfTransformer(sublinear_tf=self.config.sublinear_tf).fit(features)
        elif texts is not None:
            self.source = "text"
            self._vectorizer = self._fit_vectorizer(texts, "training texts")
            self.lead_words = self._lead_words_for(texts)
            if self.lead_words:
                self._lead_vectorizer = self._fit_vectorizer(lead_texts(texts, self.lead_words),
                                                             f"first {self.lead_words} words of the training texts")
        else:
            raise XmineError("TF-IDF needs texts or sparse features to fit on")
        return self

    def transform(self, texts: Sequence[str] | None = None, features: sp.csr_matrix | None = None) -> sp.csr_matrix:
        # scikit-learn re-validates its own parameters on every call, and checks arrays for NaN and infinity that
        # counts of words cannot hold; for one text those checks cost more than the transform
        with sklearn.config_context(skip_parameter_validation=True, assume_finite=self.source == "text"):
            return self._transform(texts, features)

    def _transform(self, texts: Sequence[str] | None, features: sp.csr_matrix | None) -> sp.csr_matrix:
        if self.source == "given":
            if features is None:
                raise XmineError("this model was trained on given sparse features; the input has none")
            if features.shape[1] != self.n_features:
                raise XmineError(f"input has {features.shape[1]} features, the model expects {self.n_features}")
            out = _l2(self._transformer.transform(features))
        elif self.source == "text":
            if texts is None:
                raise XmineError("this model was trained on texts; the input has none")
            out = _tfidf_rows(self._vectorizer, texts)
            if self._lead_vectorizer is not None:
                lead = _tfidf_rows(self._lead_vectorizer, lead_texts(texts, self.lead_words))
                out = sp.hstack([out, lead], format="csr", dtype=np.float32)
        else:
            raise XmineError("TfidfFeaturizer is not fitted")
        out.sort_indices()
        return out

    def _lead_words_for(self, texts: Sequence[str]) -> int:
        mode, n = self.config.lead_channel, self.config.lead_words
        if mode == "off":
            return 0
        if mode == "on":
            return n
        median_words = float(np.median([len(text.split()) for text in texts])) if len(texts) else 0.0
        return n if median_words > LEAD_AUTO_MIN_RATIO * n else 0

    def _fit_vectorizer(self, texts: Sequence[str], what: str) -> TfidfVectorizer:
        vectorizer = self._make_vectorizer()
        try:
            vectorizer.fit(texts)
        except ValueError as exc:  # e.g. empty vocabulary
            raise XmineError(f"TF-IDF could not be fitted on the {what}: {exc}") from exc
        return vectorizer

    def _make_vectorizer(self) -> TfidfVectorizer:
        return TfidfVectorizer(ngram_range=(1, self.config.ngram_max), min_df=self.config.min_df,
                               max_features=self.config.max_features, sublinear_tf=self.config.sublinear_tf,
                               dtype=np.float32)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"config": self.config.to_dict(), "source": self.source, "lead_words": self.lead_words}
        if self.source == "text":
            _save_vectorizer(self._vectorizer, directory, "")
            if self._lead_vectorizer is not None:
                _save_vectorizer(self._lead_vectorizer, directory, "_lead")
        else:
            atomic_save_npy(directory / "idf.npy", self._transformer.idf_)
        atomic_write_text(directory / "tfidf.json", json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> TfidfFeaturizer:
        directory = Path(directory)
        meta_path = directory / "tfidf.json"
        meta = load_json(meta_path, "tfidf")
        obj = cls(params_from(TfidfConfig, json_field(meta, "config", "tfidf", meta_path, dict), "tfidf", meta_path))
        obj.source = json_field(meta, "source", "tfidf", meta_path, str)
        obj.lead_words = json_field(meta, "lead_words", "tfidf", meta_path, int)
        if obj.source not in ("text", "given") or obj.lead_words < 0:
            raise model_error("tfidf", meta_path, f"bad source {obj.source!r} or lead_words {obj.lead_words}")
        if obj.source == "text":
            obj._vectorizer = obj._load_vectorizer(directory, "")
            if obj.lead_words:
                obj._lead_vectorizer = obj._load_vectorizer(directory, "_lead")
        else:
            idf = _load_idf(directory / "idf.npy", None)
            obj._transformer = TfidfTransformer(sublinear_tf=obj.config.sublinear_tf)
            obj._transformer.fit(sp.csr_matrix((1, idf.shape[0]), dtype=np.float32))
            obj._transformer.idf_ = idf
        return obj

    def _load_vectorizer(self, directory: Path, suffix: str) -> TfidfVectorizer:
        """The vectorizer saved with `suffix` ("" full text, "_lead" lead channel)."""
        vocab_path = directory / f"vocabulary{suffix}.json"
        vocab = load_json(vocab_path, "tfidf")
        columns = list(vocab.values())
        if not columns or not all(type(c) is int for c in columns) or sorted(columns) != list(range(len(columns))):
            raise model_error("tfidf", vocab_path, "vocabulary must map terms to the columns 0..n-1, each once")
        idf = _load_idf(directory / f"idf{suffix}.npy", len(vocab))
        vectorizer = self._make_vectorizer()
        vectorizer.vocabulary = vocab
        vectorizer.fit(["x"])  # sets up the analyzer with the fixed vocabulary
        vectorizer.idf_ = idf
        return vectorizer


def _load_idf(path: Path, n_terms: int | None) -> np.ndarray:
    idf = load_npy(path, "tfidf", shape=(n_terms,))
    if idf.size == 0 or float(idf.min()) <= 0:
        raise model_error("tfidf", path, "idf weights must be positive (and at least one)")
    return idf


def _l2(x: sp.spmatrix) -> sp.csr_matrix:
    return _unit_rows(sp.csr_matrix(x, dtype=np.float32))


def _tfidf_rows(vectorizer: TfidfVectorizer, texts: Sequence[str]) -> sp.csr_matrix:
    """`_l2(vectorizer.transform(texts))`: the fitted vectorizer's word counts, weighted as its transform weights
    them (1 + log of the count with sublinear_tf, times the idf) and each row scaled to unit L2 norm. Done here
    on the counts' arrays because scikit-learn re-checks the count matrix twice per call (in the idf weighting and
    in `normalize`), which for one text took longer than counting its words."""
    counts = CountVectorizer.transform(vectorizer, texts)
    x = sp.csr_matrix(counts, dtype=np.float32)
    if vectorizer.sublinear_tf:
        np.log(x.data, out=x.data)
        x.data += 1.0
    x.data *= vectorizer.idf_[x.indices]  # float64 idf into float32 data, as scikit-learn multiplies
    return _unit_rows(x)


def _unit_rows(x: sp.csr_matrix) -> sp.csr_matrix:
    """`x`'s rows scaled in place to unit L2 norm (all-zero rows stay zero): sklearn's `normalize` without its
    re-check of the matrix on every call."""
    rows = csr_row_ids(x)
    norms = np.sqrt(np.bincount(rows, weights=np.square(x.data, dtype=np.float64), minlength=x.shape[0]))
    x.data /= np.where(norms > 0, norms, 1.0)[rows].astype(np.float32)
    return x


def _save_vectorizer(vectorizer: TfidfVectorizer, directory: Path, suffix: str) -> None:
    vocab = {term: int(i) for term, i in vectorizer.vocabulary_.items()}
    atomic_write_text(directory / f"vocabulary{suffix}.json", json.dumps(vocab))
    atomic_save_npy(directory / f"idf{suffix}.npy", vectorizer.idf_)
