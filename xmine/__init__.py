"""xmine: extreme multi-label classification with Siamese encoders and mined hard negatives."""

from __future__ import annotations

__version__ = "0.1.0"

from xmine.errors import ConfigError, DataFormatError, ModelError, XmineError  # noqa: E402

__all__ = ["__version__", "XmineError", "DataFormatError", "ConfigError", "ModelError"]
