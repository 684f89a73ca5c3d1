"""The model interface and the self-describing model directory.

A model directory holds `config.json` ({"method", "xmine_version", "n_labels", "config"}), one
subfolder per component and, when the training data named its labels, `labels.jsonl` (label i's text as
a JSON string on line i+1); `load_model(dir)` needs nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from xmine.errors import DataFormatError, ModelError, XmineError
from xmine.utils import atomic_write_text

MODEL_CONFIG_FILE = "config.json"
LABEL_TEXTS_FILE = "labels.jsonl"
# one predicted label: (label id, label text or None when the model has no label texts, score)
LabelPrediction = tuple[int, "str | None", float]
_REGISTRY: dict[str, type[XMCModel]] = {}


@dataclass
class Inputs:
    """What a model predicts from: point texts and/or given sparse features."""

    texts: list[str] | None = None
    features: sp.csr_matrix | None = None

    @classmethod
    def of(cls, data: Any) -> Inputs:
        if isinstance(data, Inputs):
            return data
        if hasattr(data, "texts") and hasattr(data, "features"):  # a data.Split
            return cls(texts=data.texts, features=data.features)
        if isinstance(data, str):
            return cls(texts=[data])
        if isinstance(data, Sequence):
            return cls(texts=list(data))
        if sp.issparse(data):
            return cls(features=sp.csr_matrix(data))
        raise XmineError(f"cannot predict from a {type(data).__name__}: pass texts, a sparse matrix or a Split")

    @property
    def n_points(self) -> int:
        if self.texts is not None:
            return len(self.texts)
        if self.features is not None:
            return self.features.shape[0]
        return 0

    def select(self, rows: Sequence[int] | slice) -> Inputs:
        texts = None
        if self.texts is not None:
            texts = self.texts[rows] if isinstance(rows, slice) else [self.texts[i] for i in rows]
        features = self.features[rows] if self.features is not None else None
        return Inputs(texts=texts, features=features)


class XMCModel:
    """Base class of xmine's models."""

    method: ClassVar[str] = ""
    n_labels: int
    label_texts: list[str] | None = None  # label i's text (name), stored in the model directory

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.method:
            _REGISTRY[cls.method] = cls

    def predict(self, inputs: Any, k: int = 100) -> sp.csr_matrix:  # pragma: no cover - interface
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def load(cls, directory: str | Path) -> XMCModel:  # pragma: no cover - interface
        raise NotImplementedError

    def predict_labels(self, texts: str | Sequence[str], k: int = 10, **predict_options: Any
                       ) -> list[list[LabelPrediction]]:
        """Per text, its top-k labels as (label id, label text, score), best first (ties: lower id first).
        Label texts are None when the model was trained without them. `predict_options` go to `predict`
        (e.g. NGAME's `scores=`); what a score means depends on the method (see `score_scale`)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise XmineError("predict_labels expects a list of strings")
        if not texts:
            return []
        if k < 1:
            raise XmineError(f"k must be >= 1, got {k}")
        pred = sp.csr_matrix(self.predict(texts, k=min(k, self.n_labels), **predict_options))
        return ranked_labels(pred, self.label_texts)

    def score_scale(self) -> str:
        """What the scores of `predict` / `predict_labels` mean, in one sentence."""
        return "higher is better; scores are comparable within one model only"

    def save_label_texts(self, directory: str | Path) -> None:
        """Write `labels.jsonl` when the model knows its label texts (called by each model's `save`)."""
        if self.label_texts is not None:
            write_label_texts(directory, self.label_texts, self.n_labels)

    def load_label_texts(self, directory: str | Path) -> None:
        """Read `labels.jsonl` if present (called by each model's `load`); older directories have none."""
        self.label_texts = read_label_texts(directory, self.n_labels)


def ranked_labels(pred: sp.csr_matrix, label_texts: list[str] | None) -> list[list[LabelPrediction]]:
    """The rows of a top-k CSR score matrix as lists of (id, text, score), each sorted by score."""
    rows = np.repeat(np.arange(pred.shape[0]), np.diff(pred.indptr))
    # sort all entries at once: by row, then score descending, then label id
    order = np.lexsort((pred.indices, -pred.data.astype(np.float64), rows))
    ids = pred.indices[order].tolist()
    scores = pred.data[order].astype(np.float64).tolist()
    names = [label_texts[i] for i in ids] if label_texts is not None else [None] * len(ids)
    bounds = pred.indptr.tolist()
    return [list(zip(ids[a:b], names[a:b], scores[a:b], strict=True)) for a, b in zip(bounds, bounds[1:], strict=False)]


def write_label_texts(directory: str | Path, label_texts: Sequence[str], n_labels: int) -> None:
    """Store label texts as JSON lines (a name may hold any character, tabs included)."""
    if len(label_texts) != n_labels:
        raise XmineError(f"{len(label_texts)} label texts for a model of {n_labels} labels")
    Path(directory).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(directory) / LABEL_TEXTS_FILE,
                      "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in label_texts))


def read_label_texts(directory: str | Path, n_labels: int) -> list[str] | None:
    """The label texts of a model directory, None when it stores none; checked line by line."""
    path = Path(directory) / LABEL_TEXTS_FILE
    if not path.exists():
        return None
    texts: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            try:
                text = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(path, f"not a JSON string ({exc.msg})", line_no) from exc
            if not isinstance(text, str):
                raise DataFormatError(path, f"expected a JSON string, got {type(text).__name__}", line_no)
            texts.append(text)
    if len(texts) != n_labels:
        raise ModelError(f"{path}: has {len(texts)} label texts but the model has {n_labels} labels")
    return texts


def write_model_config(directory: str | Path, method: str, config: dict[str, Any], n_labels: int,
                       extra: dict[str, Any] | None = None) -> None:
    from xmine import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"method": method, "xmine_version": __version__, "n_labels": int(n_labels), "config": config}
    meta.update(extra or {})
    atomic_write_text(directory / MODEL_CONFIG_FILE, json.dumps(meta, indent=2) + "\n")


def read_model_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MODEL_CONFIG_FILE
    if not path.exists():
        raise ModelError(f"{directory}: not a model directory (no {MODEL_CONFIG_FILE})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: corrupt model config ({exc.msg}, line {exc.lineno})") from exc


def load_model(directory: str | Path) -> XMCModel:
    """Open any saved xmine model."""
    meta = read_model_config(directory)
    method = meta.get("method")
    # importing the package registers every model class
    import xmine.models  # noqa: F401

    if method not in _REGISTRY:
        raise ModelError(f"{directory}: unknown model method {method!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[method].load(directory)
