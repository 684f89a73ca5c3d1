"""xmine: extreme multi-label classification with Siamese encoders and mined hard negatives.

    from xmine import NGAME, MIPSClassifier, TfidfKNN, load_model, load_dataset, evaluate
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from xmine.errors import ConfigError, DataFormatError, ModelError, XmineError  # noqa: E402

# the heavy parts (torch, faiss, transformers) load on first use, so `import xmine` and the CLI start fast
_LAZY = {
    "NGAME": "xmine.models", "MIPSClassifier": "xmine.models", "TfidfKNN": "xmine.models",
    "load_model": "xmine.models", "load_dataset": "xmine.data", "evaluate": "xmine.metrics",
    "NGAMEConfig": "xmine.config", "MIPSMethodConfig": "xmine.config", "KNNConfig": "xmine.config",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xmine' has no attribute {name!r}")


__all__ = ["__version__", "XmineError", "DataFormatError", "ConfigError", "ModelError", *_LAZY]
