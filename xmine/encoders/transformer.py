"""Transformer encoder: a Hugging Face encoder (all-MiniLM-L6-v2 by default), mean-pooled over
the attention mask and L2-normalised, as in NGAME."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xmine.config import EncoderConfig
from xmine.encoders.base import Encoder, default_model_path, pick_device
from xmine.errors import XmineError


@dataclass
class TokenIds:
    """Token ids padded to max_length, with true lengths."""

    ids: np.ndarray  # (n, max_length) int64
    lengths: np.ndarray  # (n,)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def select(self, rows: np.ndarray) -> TokenIds:
        return TokenIds(self.ids[rows], self.lengths[rows])


def tokenize_padded(tokenizer: Any, texts: Sequence[str], max_length: int) -> TokenIds:
    if any(not isinstance(t, str) for t in texts):
        raise XmineError("encoder inputs must be strings")
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding="max_length",
                    return_tensors="np")
    return TokenIds(enc["input_ids"].astype(np.int64), enc["attention_mask"].sum(1).astype(np.int64))


def mean_pool(model: nn.Module, batch: TokenIds, device: torch.device) -> torch.Tensor:
    width = max(int(batch.lengths.max()), 1) if len(batch) else 1  # trim padding shared by the batch
    ids = torch.from_numpy(batch.ids[:, :width]).to(device)
    mask = (torch.arange(width).unsqueeze(0) < torch.from_numpy(batch.lengths).unsqueeze(1)).to(device)
    hidden = model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    mask_f = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask_f).sum(1) / mask_f.sum(1).clamp_min(1.0)


class TransformerEncoder(Encoder):
    kind = "transformer"

    def __init__(self, config: EncoderConfig, tokenizer: Any, model: nn.Module) -> None:
        super().__init__(config)
        self.tokenizer = tokenizer
        self.model = model

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @classmethod
    def from_pretrained(cls, config: EncoderConfig, path: str | None = None) -> TransformerEncoder:
        from transformers import AutoModel, AutoTokenizer

        path = path or default_model_path(config)
        encoder = cls(config, AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path))
        return encoder.to(pick_device(config))

    def prepare(self, texts: Sequence[str]) -> TokenIds:
        return tokenize_padded(self.tokenizer, texts, self.config.max_length)

    def forward(self, batch: TokenIds) -> torch.Tensor:
        return nn.functional.normalize(mean_pool(self.model, batch, self.device), dim=-1)

    def _save_extra(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(directory / "transformer")
        self.model.config.save_pretrained(directory / "transformer")

    @classmethod
    def from_saved(cls, config: EncoderConfig, directory: Path, extra: dict[str, Any]) -> TransformerEncoder:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = directory / "transformer"
        model = AutoModel.from_config(AutoConfig.from_pretrained(path))
        return cls(config, AutoTokenizer.from_pretrained(path), model)
