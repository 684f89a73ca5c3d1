"""The model interface and the self-describing model directory.

A model directory holds `config.json` ({"method", "xmine_version", "n_labels", "config"}) and one
subfolder per component; `load_model(dir)` needs nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import scipy.sparse as sp

from xmine.errors import ModelError, XmineError
from xmine.utils import atomic_write_text

MODEL_CONFIG_FILE = "config.json"
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
