"""The shortlist classifier loop, shared by NGAME stage 2 and MIPS negative sampling.

Per batch: candidates = the points' positives + negatives from a pluggable `negatives(batch, step)`
function (ANN shortlist + in-batch labels for NGAME; MIPS + uniform for the MIPS method);
positives are never negatives; scores for the candidate pairs only; BCE or NGAME's triplet loss.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from tqdm.auto import tqdm

from xmine import distributed
from xmine.classifiers import LabelClassifiers
from xmine.config import ClassifierConfig
from xmine.encoders.base import Encoder, Prepared
from xmine.losses import build_shortlist_loss
from xmine.mining.mips import remove_positives_and_duplicates
from xmine.optim import RowSparseAdam
from xmine.topk import csr_rows_to_ids
from xmine.training.checkpoint import generator_states, restore_generators
from xmine.training.loop import EpochCheckpoints, History, optimizer_states, restore_optimizers

log = logging.getLogger(__name__)

MAX_POSITIVES_PER_STEP = 64  # a point with more positives contributes a random 64 of them per step


@dataclass
class ClassifierEpoch:
    epoch: int
    loss: float
    seconds: float
    points_per_s: float
    negatives_seconds: float


NegativeFn = Callable[[np.ndarray, np.ndarray | None, sp.csr_matrix, int, int], np.ndarray]
"""negatives(batch_rows, batch_embeddings or None, batch_positives, epoch, global_step) -> (B, N) ids, -1 pad."""


def positive_candidates(positives: sp.csr_matrix, rng: np.random.Generator,
                        cap: int = MAX_POSITIVES_PER_STEP) -> np.ndarray:
    """(B, P) positive label ids per row, -1 padded, at most `cap` (sampled) per row."""
    lengths = np.diff(positives.indptr)
    width = int(min(max(lengths.max(initial=0), 1), cap))
    out = csr_rows_to_ids(positives, width)
    for i in np.flatnonzero(lengths > cap):  # rows beyond the cap (rare): a sample of their positives instead
        out[i] = rng.choice(positives.indices[positives.indptr[i]:positives.indptr[i + 1]], size=cap, replace=False)
    return out


class ClassifierStep(nn.Module):
    """One step's forward: dense inputs (the fine-tuned encoder's output, or fixed embeddings), then
    candidates from `make_candidates(embeddings)` (negatives need the current embeddings), then the
    candidate scores. One module call per step, as DistributedDataParallel expects."""

    def __init__(self, classifiers: LabelClassifiers, encoder: Encoder | None) -> None:
        super().__init__()
        self.classifiers = classifiers
        self.encoder = encoder

    def forward(self, point_batch: Prepared | None, fixed: torch.Tensor | None, sparse_x: sp.csr_matrix | None,
                make_candidates: Callable[[np.ndarray | None], np.ndarray]) -> tuple[torch.Tensor, np.ndarray]:
        emb = self.encoder(point_batch) if self.encoder is not None else fixed
        candidates = make_candidates(emb.detach().cpu().numpy() if emb is not None else None)
        return self.classifiers.score(emb, sparse_x, candidates), candidates


def dense_optimizers(classifiers: LabelClassifiers, config: ClassifierConfig) -> list[torch.optim.Optimizer]:
    """Adam over the dense weights and biases; with `config.row_sparse_updates` the weights' step touches only the
    rows the batch scored (RowSparseAdam: "lazy" Adam, whose untouched rows keep their moments), so it costs the
    batch's candidates, not all L labels; the biases (L floats) stay on dense Adam."""
    if not (config.row_sparse_updates and classifiers.sparse_grad and classifiers.weight is not None):
        # fused kernels: one pass over the L x d weights instead of one per Adam operation (5x faster on CPU at 43k
        # labels; this step runs over every label's row, so it grows with L)
        return [torch.optim.Adam(classifiers.dense_parameters(), lr=config.lr, fused=True)]
    return [RowSparseAdam([classifiers.weight], lr=config.lr),
            torch.optim.Adam([classifiers.bias], lr=config.lr, fused=True)]


def classifier_optimizers(classifiers: LabelClassifiers, config: ClassifierConfig) -> list[torch.optim.Optimizer]:
    """`dense_optimizers`, then Adagrad over the hashed sparse weights where the classifiers have them."""
    optimizers = dense_optimizers(classifiers, config)
    if classifiers.use_sparse:
        optimizers.append(torch.optim.Adagrad(classifiers.sparse_parameters(), lr=config.lr_sparse, fused=True))
    return optimizers


def train_classifiers(classifiers: LabelClassifiers, labels: sp.csr_matrix, config: ClassifierConfig,
                      negatives: NegativeFn, embeddings: np.ndarray | None = None,
                      sparse_features: sp.csr_matrix | None = None, encoder: Encoder | None = None,
                      point_inputs: Prepared | None = None, checkpoint_path: str | Path | None = None,
                      resume: bool = False, progress: bool = True,
                      on_step: Callable[[int], None] | None = None,
                      on_epoch_start: Callable[[int, int], None] | None = None,
                      config_fingerprint: dict[str, Any] | None = None,
                      generators: dict[str, np.random.Generator] | None = None) -> History[ClassifierEpoch]:
    """Train `classifiers` in place on the (n, L) `labels`.

    Dense inputs come either from fixed `embeddings` (frozen encoder) or from `encoder` applied to
    `point_inputs` (fine-tuned jointly). `on_step(global_step)` runs before every step and
    `on_epoch_start(epoch, global_step)` before every epoch (the MIPS method rebuilds its index there).

    Under torchrun the loop is data-parallel: `config.batch_size` is the global batch, each rank takes a
    contiguous share of its rows (negatives are drawn for its own rows), DistributedDataParallel averages
    the gradients, and rank 0 writes the checkpoint. The checkpoint also holds the states of `generators`
    (the random streams the `negatives` function draws from), so a resumed run continues them exactly, and the
    labels' fingerprint with `config_fingerprint` (default: `config`): resuming from one that differs is refused."""
    labels = sp.csr_matrix(labels)
    generators = generators or {}
    checkpoints = EpochCheckpoints(checkpoint_path, labels, config_fingerprint or config.to_dict(), ClassifierEpoch,
                                   config.checkpoint_every_s)
    keep = np.flatnonzero(np.diff(labels.indptr) > 0)
    trainable_encoder = encoder is not None and config.finetune_encoder
    progress = progress and distributed.is_main()
    if trainable_encoder and distributed.needs_dense_gradients():
        encoder.use_dense_gradients()
    model = distributed.wrap(ClassifierStep(classifiers, encoder if trainable_encoder else None))
    optimizers = classifier_optimizers(classifiers, config)
    if trainable_encoder:
        # the encoder learns slower than the freshly initialised classifiers
        optimizers += encoder.make_optimizers(config.lr / 10, config.lr / 20)
    loss_fn = build_shortlist_loss(config)
    step = 0
    loaded = checkpoints.resume(resume)
    if loaded is not None:
        tensors, meta = loaded
        classifiers.load_state_dict(tensors["classifiers"])
        restore_optimizers(optimizers, tensors["optimizers"])
        if trainable_encoder:
            encoder.load_state_dict(tensors["encoder"])
        restore_generators(generators, meta["generators"], checkpoint_path)
        step = meta["step"]
    first_epoch = checkpoints.first_epoch(loaded[1] if loaded is not None else None)
    device = classifiers.bias.device
    for epoch in range(first_epoch, config.epochs):
        start = time.perf_counter()
        rng = np.random.default_rng([config.seed, epoch, 7])
        torch.manual_seed(config.seed * 100_003 + epoch)
        if on_epoch_start is not None:
            on_epoch_start(epoch, step)
        order = rng.permutation(keep)
        total, steps, neg_seconds = 0.0, 0, 0.0
        model.train()
        bar = tqdm(range(0, len(order), config.batch_size), desc=f"classifiers {epoch + 1}/{config.epochs}",
                   disable=not progress, leave=False, unit="batch")
        for begin in bar:
            rows = order[begin:begin + config.batch_size]
            if on_step is not None:
                on_step(step)
            if len(rows) < distributed.world_size():
                continue  # a last batch too small to give every rank a row (skipped on all ranks alike)
            rows = rows[distributed.shard_rows(len(rows))]
            batch_pos = labels[rows]
            # drawn before the step so that the positives' subsample does not depend on the negatives
            pos = positive_candidates(batch_pos, rng) if distributed.world_size() == 1 else \
                positive_candidates(batch_pos, np.random.default_rng([config.seed, epoch, step, 8]))

            def make_candidates(emb_np: np.ndarray | None, rows: np.ndarray = rows,
                                batch_pos: sp.csr_matrix = batch_pos, pos: np.ndarray = pos, epoch: int = epoch,
                                step: int = step) -> np.ndarray:
                nonlocal neg_seconds
                t0 = time.perf_counter()
                neg = remove_positives_and_duplicates(negatives(rows, emb_np, batch_pos, epoch, step), batch_pos)
                neg_seconds += time.perf_counter() - t0
                return np.concatenate([pos, neg], axis=1)

            fixed = torch.from_numpy(embeddings[rows]).to(device) if embeddings is not None and \
                not trainable_encoder else None
            sparse_x = sparse_features[rows] if sparse_features is not None else None
            scores, candidates = model(point_inputs.select(rows) if trainable_encoder else None, fixed, sparse_x,
                                       make_candidates)
            is_positive = np.zeros(candidates.shape, dtype=bool)
            is_positive[:, :pos.shape[1]] = pos >= 0
            valid = torch.from_numpy(candidates >= 0)
            loss = loss_fn(scores, torch.from_numpy(is_positive).to(device), valid.to(device))
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers:
                opt.step()
            total += distributed.all_reduce_mean(float(loss.detach()))
            steps += 1
            step += 1
            bar.set_postfix(loss=f"{total / steps:.4f}")
        seconds = time.perf_counter() - start
        record = ClassifierEpoch(epoch, total / max(steps, 1), seconds, len(keep) / max(seconds, 1e-9), neg_seconds)
        log.info("classifiers epoch %d/%d: loss %.4f, %.1fs (%.0f points/s, negatives %.1fs)", epoch + 1,
                 config.epochs, record.loss, seconds, record.points_per_s, neg_seconds)

        def state(step: int = step) -> tuple[dict[str, Any], dict[str, Any]]:
            tensors = {"classifiers": classifiers.state_dict(), "optimizers": optimizer_states(optimizers)}
            if trainable_encoder:
                tensors["encoder"] = encoder.state_dict()
            return tensors, {"step": step, "generators": generator_states(generators)}

        checkpoints.end_epoch(record, state, final=epoch == config.epochs - 1)
    model.eval()
    return checkpoints.history
