"""Bag-of-embeddings encoder (as in DeepXML/Astec/SiameseXML): WordPiece token ids -> an
EmbeddingBag initialised from MiniLM's input embeddings, weighted by IDF, mean-centred, plus a
residual head. ~100x faster than a transformer on CPU."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from xmine.config import EncoderConfig
from xmine.encoders.bag_gradients import PairedBagSums
from xmine.encoders.base import Encoder, ResidualHead, default_model_path, pick_device
from xmine.errors import ModelError, XmineError
from xmine.safeio import json_field


@dataclass
class BagEntries:
    """A batch of token bags as the embedding bag takes them: entry e is token `tokens[e]` of text
    `bag_of_entry[e]` with weight `weights[e]`; `total` is each text's weight sum."""

    tokens: torch.Tensor
    weights: torch.Tensor
    bag_of_entry: torch.Tensor
    offsets: torch.Tensor
    total: torch.Tensor


@dataclass
class TokenBags:
    """One row per text: token id -> count (CSR)."""

    counts: sp.csr_matrix

    def __len__(self) -> int:
        return self.counts.shape[0]

    def select(self, rows: np.ndarray) -> TokenBags:
        return TokenBags(self.counts[rows])


class TokenIdReader:
    """Each text's WordPiece ids without special tokens, the first `max_length` of them: what the tokenizer's
    `__call__(texts, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]` returns. A
    fast tokenizer's Rust backend is called directly, through a private copy that truncates at `max_length` and
    does not pad (the wrapper sets those on its own backend per call): the wrapper's conversion of every encoding
    into Python lists and masks costs about as much as the tokenizing (docs/cost.md). Slow (Python) tokenizers go
    through the wrapper."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length
        self.backend = None
        if getattr(tokenizer, "is_fast", False):
            from tokenizers import Tokenizer

            self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
            self.backend.enable_truncation(max_length)  # the wrapper's truncation=True: the first max_length ids
            self.backend.no_padding()

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if self.backend is None:
            return self.tokenizer(texts, add_special_tokens=False, truncation=True,
                                  max_length=self.max_length)["input_ids"]
        return [encoding.ids for encoding in self.backend.encode_batch(texts, add_special_tokens=False)]


def pretrained_token_table(model_dir: str | Path) -> torch.Tensor:
    """The (vocabulary, dim) float32 input embeddings of the transformer in `model_dir`. Read alone from its
    model.safetensors when that holds exactly one word-embedding table (building the whole model for one of its
    tensors takes seconds); otherwise from the model transformers builds."""
    from safetensors import safe_open

    weights = Path(model_dir) / "model.safetensors"
    if weights.is_file():
        with safe_open(str(weights), framework="pt") as tensors:
            names = [n for n in tensors.keys() if n.endswith("embeddings.word_embeddings.weight")]  # noqa: SIM118
            if len(names) == 1:
                return tensors.get_tensor(names[0]).float()
    from transformers import AutoModel

    return AutoModel.from_pretrained(model_dir).get_input_embeddings().weight.detach().float().clone()


class BowEncoder(Encoder):
    kind = "bow"

    def __init__(self, config: EncoderConfig, tokenizer: Any, vocab_size: int, dim: int) -> None:
        super().__init__(config)
        self.tokenizer = tokenizer
        self._token_ids = TokenIdReader(tokenizer, max(config.max_length, 128))
        self.embeddings = nn.EmbeddingBag(vocab_size, dim, mode="sum", sparse=True)
        self.register_buffer("token_weights", torch.ones(vocab_size))
        self.register_buffer("center_vector", torch.zeros(dim))
        self.head = ResidualHead(dim, config.head_hidden) if config.residual_head else nn.Identity()
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    @classmethod
    def from_pretrained(cls, config: EncoderConfig, fit_texts: Sequence[str] | None = None) -> BowEncoder:
        """Token table from the pretrained transformer's input embeddings; IDF and the centring
        vector from `fit_texts` (training point and label texts)."""
        from transformers import AutoTokenizer

        path = default_model_path(config)
        tokenizer = AutoTokenizer.from_pretrained(path)
        table = pretrained_token_table(path)
        encoder = cls(config, tokenizer, table.shape[0], table.shape[1])
        encoder.embeddings.weight.data.copy_(table)
        if fit_texts is not None:
            encoder.fit_inputs(encoder.prepare(fit_texts))
        return encoder.to(pick_device(config))

    def fit_inputs(self, *inputs: TokenBags) -> None:
        """IDF weights and the centring vector over the texts of all `inputs`, in their order."""
        if not inputs:
            raise XmineError("fit_inputs needs at least one prepared input (the training texts)")
        self.fit_statistics(inputs[0] if len(inputs) == 1 else
                            TokenBags(sp.vstack([bags.counts for bags in inputs], format="csr")))

    def fit_statistics(self, bags: TokenBags) -> None:
        """IDF weights over the given texts, then the mean bag vector (for centring)."""
        if len(bags) == 0:
            raise XmineError("cannot fit the bag-of-embeddings encoder on 0 texts")
        if self.config.token_weighting == "idf":
            doc_freq = np.bincount(bags.counts.indices, minlength=bags.counts.shape[1])
            idf = np.log((1 + len(bags)) / (1 + doc_freq)) + 1.0
            self.token_weights.copy_(torch.from_numpy(idf.astype(np.float32)))
        if self.config.center:
            self.center_vector.zero_()
            with torch.no_grad():
                sample = np.arange(min(len(bags), 20000))
                self.center_vector.copy_(self._bag_mean(bags.select(sample)).mean(0))

    def prepare(self, texts: Sequence[str]) -> TokenBags:
        texts = list(texts)
        if any(not isinstance(t, str) for t in texts):
            raise XmineError("encoder inputs must be strings")
        ids = self._token_ids(texts)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        indptr = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(indptr[-1]))
        counts = sp.csr_matrix((np.ones(flat.shape[0], dtype=np.float32), flat, indptr),
                               shape=(len(ids), self.embeddings.num_embeddings))
        counts.sum_duplicates()
        return TokenBags(counts)

    def _bag_entries(self, bags: TokenBags) -> BagEntries:
        """The bags' (text, token) entries as tensors on the encoder's device."""
        counts = bags.counts
        device = self.embeddings.weight.device
        tokens = torch.from_numpy(counts.indices.astype(np.int64)).to(device)
        weights = torch.from_numpy(counts.data.astype(np.float32)).to(device) * self.token_weights[tokens]
        bag_of_entry = torch.from_numpy(np.repeat(np.arange(len(bags), dtype=np.int64),
                                                  np.diff(counts.indptr))).to(device)
        offsets = torch.from_numpy(counts.indptr[:-1].astype(np.int64)).to(device)
        # empty texts (no known token) embed as the zero bag and, after centring, as -mean
        total = torch.zeros(len(bags), device=device).index_add_(0, bag_of_entry, weights).clamp_min(1e-6)
        return BagEntries(tokens, weights, bag_of_entry, offsets, total)

    def _bag_mean(self, bags: TokenBags) -> torch.Tensor:
        """Each text's weighted mean token vector (weights: count x token weight)."""
        entries = self._bag_entries(bags)
        summed = self.embeddings(entries.tokens, entries.offsets, per_sample_weights=entries.weights)
        return summed / entries.total.unsqueeze(1)

    def _embed_mean(self, mean: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.head(mean - self.center_vector), dim=-1)

    def forward(self, batch: TokenBags) -> torch.Tensor:
        return self._embed_mean(self._bag_mean(batch))

    def forward_pair(self, points: TokenBags, labels: TokenBags) -> tuple[torch.Tensor, torch.Tensor]:
        """Training on CPU with the sparse table: the two batches' bag sums come from `PairedBagSums`, whose
        compiled backward gives the optimiser the table gradient the two embedding-bag calls would give, bit for
        bit, without their per-entry gradient rows (xmine.encoders.bag_gradients)."""
        table = self.embeddings.weight
        if not (torch.is_grad_enabled() and table.requires_grad and self.embeddings.sparse
                and table.device.type == "cpu" and table.dtype == torch.float32):
            return super().forward_pair(points, labels)
        a, b = self._bag_entries(points), self._bag_entries(labels)
        sums_a, sums_b = PairedBagSums.apply(table, a.tokens, a.offsets, a.weights, a.bag_of_entry,
                                             b.tokens, b.offsets, b.weights, b.bag_of_entry)
        return (self._embed_mean(sums_a / a.total.unsqueeze(1)), self._embed_mean(sums_b / b.total.unsqueeze(1)))

    def parameter_groups(self, lr: float, lr_embeddings: float) -> list[dict[str, Any]]:
        groups = [{"params": [p for n, p in self.named_parameters() if not n.startswith("embeddings.")], "lr": lr}]
        if not self.embeddings.sparse:
            groups.append({"params": [self.embeddings.weight], "lr": lr_embeddings})
        return groups

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.embeddings.weight] if self.embeddings.sparse else []

    def use_dense_gradients(self) -> None:
        # slower on CPU (the whole table's gradient every step) but all-reducible by NCCL on GPUs
        self.embeddings.sparse = False

    def _save_extra(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(directory / "tokenizer")

    def _extra_meta(self) -> dict[str, Any]:
        return {"vocab_size": self.embeddings.num_embeddings, "dim": self._dim}

    @classmethod
    def from_saved(cls, config: EncoderConfig, directory: Path, extra: dict[str, Any]) -> BowEncoder:
        from transformers import AutoTokenizer

        path = directory / "encoder.json"
        vocab_size = json_field(extra, "vocab_size", "encoder", path, int)
        dim = json_field(extra, "dim", "encoder", path, int)
        weights_bytes = (directory / "weights.pt").stat().st_size if (directory / "weights.pt").is_file() else 0
        # the token table is stored in weights.pt: sizes it cannot hold are refused before allocating them
        if vocab_size < 1 or dim < 1 or vocab_size * dim * 4 > weights_bytes:
            raise ModelError(f"encoder: {path}: vocab_size {vocab_size} x dim {dim} does not match weights.pt "
                             f"({weights_bytes} bytes)")
        tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
        return cls(config, tokenizer, vocab_size, dim)
