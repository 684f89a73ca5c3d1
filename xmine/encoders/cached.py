"""Frozen transformer features computed once and cached on disk, with a trainable residual head:
the cheapest way to use a transformer on a CPU (the transformer runs once per text, not per step)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xmine.config import EncoderConfig
from xmine.encoders.base import Encoder, ResidualHead, pick_device
from xmine.encoders.transformer import TransformerEncoder
from xmine.utils import atomic_save_npy


@dataclass
class CachedVectors:
    vectors: np.ndarray  # (n, d) float32, frozen transformer embeddings (normalised)

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def select(self, rows: np.ndarray) -> CachedVectors:
        return CachedVectors(self.vectors[rows])


def cache_dir() -> Path:
    return Path(os.environ.get("XMINE_CACHE", Path.home() / ".cache" / "xmine"))


class CachedTransformerEncoder(Encoder):
    kind = "cached"

    def __init__(self, config: EncoderConfig, backbone: TransformerEncoder) -> None:
        super().__init__(config)
        # the backbone is frozen: a plain attribute keeps it out of parameters() and state_dict()
        object.__setattr__(self, "backbone", backbone.eval().requires_grad_(False))
        self.head = ResidualHead(backbone.dim, config.head_hidden) if config.residual_head else nn.Identity()
        self._anchor = nn.Parameter(torch.zeros(0))  # gives the module a device even without a head

    @property
    def dim(self) -> int:
        return self.backbone.dim

    @classmethod
    def from_pretrained(cls, config: EncoderConfig) -> CachedTransformerEncoder:
        backbone = TransformerEncoder.from_pretrained(config)
        return cls(config, backbone).to(pick_device(config))

    def to(self, *args: Any, **kwargs: Any) -> CachedTransformerEncoder:
        self.backbone.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def prepare(self, texts: Sequence[str]) -> CachedVectors:
        key = hashlib.sha1()
        key.update(str(self.backbone.model.config.name_or_path).encode())
        key.update(str(self.config.max_length).encode())
        for text in texts:
            key.update(text.encode("utf-8", "replace") + b"\0")
        path = cache_dir() / f"features-{key.hexdigest()}.npy"
        if path.exists():
            try:  # a damaged or foreign cache file is recomputed, never unpickled
                cached = np.load(path, mmap_mode="r", allow_pickle=False)
                if cached.dtype == np.float32 and cached.shape == (len(texts), self.backbone.dim):
                    return CachedVectors(cached)
            except (ValueError, OSError, EOFError):
                pass
        vectors = self.backbone.encode(list(texts), progress=len(texts) > 5000, desc="cache transformer features")
        # a read-only cache directory is not fatal: the features are simply not cached
        with contextlib.suppress(OSError):
            atomic_save_npy(path, vectors)
        return CachedVectors(vectors)

    def forward(self, batch: CachedVectors) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(batch.vectors, dtype=np.float32)).to(self._anchor.device)
        return nn.functional.normalize(self.head(x), dim=-1)

    def _save_extra(self, directory: Path) -> None:
        self.backbone.save(directory / "backbone")

    @classmethod
    def from_saved(cls, config: EncoderConfig, directory: Path, extra: dict[str, Any]) -> CachedTransformerEncoder:
        from xmine.encoders import load_encoder

        return cls(config, load_encoder(directory / "backbone"))  # type: ignore[arg-type]
