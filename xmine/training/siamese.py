"""NGAME stage 1: train the Siamese encoder with negative-mining-aware mini-batches.

Per epoch: (at refresh epochs) re-embed the training points -> re-cluster -> for each batch of
points: pair every point with one of its positives (sampled afresh each epoch), encode points and
labels, in-batch similarities, loss with co-positives masked, step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from xmine import distributed
from xmine.config import SiameseConfig
from xmine.encoders.base import Encoder, Prepared
from xmine.errors import XmineError
from xmine.losses import build_siamese_loss, in_batch_spread
from xmine.mining.clusters import ClusterBatchSampler, ClusterSchedule
from xmine.training.heldout import EncoderHeldOut
from xmine.training.loop import EpochCheckpoints, History, optimizer_states, restore_optimizers

log = logging.getLogger(__name__)


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    loss_name: str
    seconds: float
    points_per_s: float
    cluster_size: int | None
    refresh_seconds: float
    pos_cos: float
    neg_cos: float
    gap: float
    points_seen: int | None = None  # training points in this epoch's batches, summed over ranks
    # the encoder's nDCG@5 over all labels after this epoch, on held-out points stage 1 does not train on and on
    # as many it does (`EncoderHeldOut`); None when not measured
    heldout_ndcg5_unseen: float | None = None
    heldout_ndcg5_seen: float | None = None
    heldout_seconds: float = 0.0


def sample_one_positive(labels: sp.csr_matrix, rng: np.random.Generator) -> np.ndarray:
    """One positive label per row, uniformly among the row's labels (rows must be non-empty)."""
    lengths = np.diff(labels.indptr)
    offsets = (rng.random(labels.shape[0]) * lengths).astype(np.int64)
    return labels.indices[labels.indptr[:-1] + offsets]


def co_positive_mask(labels: sp.csr_matrix, points: np.ndarray, batch_labels: np.ndarray) -> torch.Tensor:
    """(B, B) bool: label batch_labels[j] is a positive of point points[i]."""
    block = labels[points][:, batch_labels]
    mask = np.asarray(block.toarray() > 0)
    np.fill_diagonal(mask, True)
    return torch.from_numpy(mask)


class SiameseForward(torch.nn.Module):
    """Points and their sampled labels through the shared encoder in one forward call (one call per
    step is what DistributedDataParallel expects)."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, points: Prepared, labels: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder.forward_pair(points, labels)


def local_batches(sampler: ClusterBatchSampler, rank: int, world_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(global batch, this rank's rows of it) for every step of the epoch. Ranks get whole clusters; the
    global batch lists the ranks' shares in rank order (that is the row order of the gathered embeddings).
    Batches too small to give every rank a point (and a negative) are skipped on all ranks alike."""
    for parts in sampler.batches_of_clusters():
        if world_size == 1:
            batch = np.concatenate(parts)
            if len(batch) >= 2:
                yield batch, batch
            continue
        shares = distributed.split_whole_clusters(parts, world_size)
        if min(len(s) for s in shares) == 0:  # fewer points than ranks
            continue
        yield np.concatenate(shares), shares[rank]


def refresh_clusters(sampler: ClusterBatchSampler, encoder: Encoder, points: Prepared, cluster_size: int | None
                     ) -> None:
    """Re-cluster from current embeddings. Distributed: each rank embeds its share of the points, rank 0
    alone clusters them and broadcasts the clusters (clustering is done once, not once per rank)."""
    if not distributed.is_distributed():
        sampler.update(encoder.encode(points, progress=False), cluster_size)
        return
    share = np.arange(len(points))[distributed.shard_rows(len(points))]
    embeddings = distributed.all_gather_numpy(encoder.encode(points.select(share), progress=False))
    if distributed.is_main():
        sampler.update(embeddings, cluster_size)
    sampler.clusters = distributed.broadcast_object(sampler.clusters)


def is_heldout_epoch(epoch: int, config: SiameseConfig) -> bool:
    """Whether the held-out curve is measured after `epoch` (0-based): every `heldout_every` epochs and the last."""
    return (epoch + 1) % config.heldout_every == 0 or epoch == config.epochs - 1


def loss_name_at(config: SiameseConfig, epoch: int) -> str:
    if config.loss == "infonce_then_triplet":
        return "infonce" if epoch < int(round(config.warmup_fraction * config.epochs)) else "triplet"
    return config.loss


def train_siamese(encoder: Encoder, points: Prepared, label_inputs: Prepared, labels: sp.csr_matrix,
                  config: SiameseConfig, checkpoint_path: str | Path | None = None, resume: bool = False,
                  progress: bool = True, config_fingerprint: dict[str, Any] | None = None,
                  heldout: EncoderHeldOut | None = None) -> History[EpochRecord]:
    """Train `encoder` in place. `labels` is the (n_points, n_labels) training label matrix;
    points without a label are skipped. With `checkpoint_path`, the state is saved atomically at the end of an
    epoch (`config.checkpoint_every_s`), and `resume=True` continues from it with the same result as an
    uninterrupted run.

    Under torchrun (see `xmine.distributed`) the loop is data-parallel: `config.batch_size` is the GLOBAL
    batch, each rank encodes its share, the similarity matrix and loss are over the whole global batch
    (all-gathered embeddings), and DistributedDataParallel averages the gradients, so N ranks compute
    the same step as one process with the same global batch. Rank 0 writes the checkpoint; it holds no
    per-rank state, so a run can resume with a different number of ranks. The checkpoint records the
    labels' fingerprint and `config_fingerprint` (default: `config`); resuming from one that differs is refused.

    With `heldout`, the encoder is measured on held-out points every `config.heldout_every` epochs and after the last
    (the records' heldout_* fields; None where not measured); with `config.early_stopping_patience` > 0 too, training
    stops at a measurement that comes that many epochs or more after the best unseen-points nDCG@5, and the encoder
    is left with the weights of its best measured epoch."""
    labels = sp.csr_matrix(labels)
    checkpoints = EpochCheckpoints(checkpoint_path, labels, config_fingerprint or config.to_dict(), EpochRecord,
                                   config.checkpoint_every_s)
    keep = np.flatnonzero(np.diff(labels.indptr) > 0)
    if keep.size < 2:
        raise XmineError("Siamese training needs at least 2 training points with labels")
    labels = labels[keep]
    points = points.select(keep)
    device = encoder.device
    schedule = ClusterSchedule(config.schedule, config.epochs)
    sampler = ClusterBatchSampler(len(keep), config.batch_size, seed=config.seed)
    if config.batching == "clusters":
        too_big = [s for s in schedule.sizes if s > len(keep)]
        if too_big:
            raise XmineError(f"cluster size {too_big[0]} is larger than the training set ({len(keep)} points)")
    world, my_rank = distributed.world_size(), distributed.rank()
    progress = progress and distributed.is_main()
    if distributed.needs_dense_gradients():
        encoder.use_dense_gradients()
    model = distributed.wrap(SiameseForward(encoder))
    optimizers = encoder.make_optimizers(config.lr, config.lr_embeddings, config.weight_decay,
                                         config.embedding_optimizer)
    dense_params = [p for g in encoder.parameter_groups(config.lr, config.lr_embeddings) for p in g["params"]]
    use_amp = config.mixed_precision and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    stopper = EarlyStopping(config.early_stopping_patience if heldout is not None else 0)
    loaded = checkpoints.resume(resume)
    if loaded is not None:
        tensors, meta = loaded
        encoder.load_state_dict(tensors["encoder"])
        restore_optimizers(optimizers, tensors["optimizers"])
        sampler.load_state_dict(meta["sampler"])
        stopper.load_state_dict(meta.get("early_stopping", {}), tensors.get("best_encoder"))
    first_epoch = checkpoints.first_epoch(loaded[1] if loaded is not None else None)
    if first_epoch:
        log.info("resuming Siamese training at epoch %d", first_epoch)

    for epoch in range(first_epoch, config.epochs):
        if stopper.stopped:
            break
        start = time.perf_counter()
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout etc. reproducible across resumes
        rng = np.random.default_rng([config.seed, epoch])
        sampler.set_epoch(epoch)
        refresh_seconds = 0.0
        cluster_size = schedule.cluster_size(epoch) if config.batching == "clusters" else None
        if config.batching == "clusters" and schedule.is_refresh_epoch(epoch):
            t0 = time.perf_counter()
            log.info("stage 1 epoch %d: re-embedding the %d points and clustering them into groups of %d "
                     "(each batch: whole clusters)", epoch + 1, len(keep), cluster_size)
            refresh_clusters(sampler, encoder, points, cluster_size)
            refresh_seconds = time.perf_counter() - t0
        positives = sample_one_positive(labels, rng)
        loss_name = loss_name_at(config, epoch)
        loss_fn = build_siamese_loss(loss_name, config.margin, config.num_negatives, config.softmax_tau,
                                     config.temperature)
        model.train()
        total, steps, spread_sum, seen = 0.0, 0, np.zeros(3), 0
        bar = tqdm(local_batches(sampler, my_rank, world), total=len(sampler),
                   desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False, unit="batch")
        for batch, mine in bar:
            batch_labels = positives[batch]
            mask = co_positive_mask(labels, batch, batch_labels).to(device)
            with torch.autocast(device_type=device.type, enabled=use_amp):
                point_emb, label_emb = model(points.select(mine), label_inputs.select(positives[mine]))
                point_emb = distributed.all_gather_rows(point_emb.float())
                label_emb = distributed.all_gather_rows(label_emb.float())
                similarity = point_emb @ label_emb.T
                loss = loss_fn(similarity, mask)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            # each rank's gradient is the global loss's gradient through its own slice; DDP averages them,
            # so scaling by the world size gives the single-process gradient of the global batch
            scaler.scale(loss * world).backward()
            for opt in optimizers:
                scaler.unscale_(opt)
            if config.grad_clip and dense_params:
                torch.nn.utils.clip_grad_norm_(dense_params, config.grad_clip)
            for opt in optimizers:
                scaler.step(opt)
            scaler.update()
            spread = in_batch_spread(similarity.detach(), mask)
            spread_sum += (spread["pos_cos"], spread["neg_cos"], spread["gap"])
            total += float(loss.detach())
            steps += 1
            seen += len(mine)
            bar.set_postfix(loss=f"{total / steps:.4f}")
        seconds = time.perf_counter() - start
        pos_cos, neg_cos, gap = spread_sum / max(steps, 1)
        record = EpochRecord(epoch=epoch, loss=total / max(steps, 1), loss_name=loss_name, seconds=seconds,
                             points_per_s=len(keep) / max(seconds, 1e-9), cluster_size=cluster_size,
                             refresh_seconds=refresh_seconds, pos_cos=float(pos_cos), neg_cos=float(neg_cos),
                             gap=float(gap), points_seen=int(round(distributed.all_reduce_mean(seen) * world)))
        measured = heldout is not None and is_heldout_epoch(epoch, config)
        if measured:
            scores = heldout(encoder)
            record.heldout_ndcg5_unseen, record.heldout_ndcg5_seen = scores.ndcg5_unseen, scores.ndcg5_seen
            record.heldout_seconds = scores.seconds
            stopper.observe(epoch, scores.ndcg5_unseen, encoder)
        log.info("stage 1 epoch %d/%d: %s loss %.4f, %.1fs (%.0f points/s), clusters %s (refresh %.1fs), "
                 "in-batch cos pos %.3f neg %.3f%s", epoch + 1, config.epochs, loss_name, record.loss, seconds,
                 record.points_per_s, cluster_size, refresh_seconds, pos_cos, neg_cos,
                 "" if not measured else
                 f", held-out nDCG@5 {record.heldout_ndcg5_unseen:.2f} on {len(heldout)} unseen points, "
                 f"{record.heldout_ndcg5_seen or 0:.2f} on seen ones")
        checkpoints.end_epoch(record, lambda: ({"encoder": encoder.state_dict(),
                                                "optimizers": optimizer_states(optimizers), **stopper.tensors()},
                                               {"sampler": sampler.state_dict(),
                                                "early_stopping": stopper.state_dict()}),
                              final=epoch == config.epochs - 1 or stopper.stopped)
    last_epoch = len(checkpoints.history.epochs) - 1
    if stopper.restore_best(encoder, last_epoch):
        log.info("stage 1: stopped after epoch %d; keeping the encoder of epoch %d (held-out nDCG@5 %.2f)",
                 last_epoch + 1, stopper.best_epoch + 1, stopper.best_score)
    encoder.eval()
    return checkpoints.history


class EarlyStopping:
    """Tracks the best held-out score over epochs and a copy of the encoder's weights at it; `stopped` once `patience`
    epochs in a row have not beaten it (patience 0: never stops, keeps no copy)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_epoch, self.best_score = -1, float("-inf")
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stopped = False

    def observe(self, epoch: int, score: float, encoder: Encoder) -> None:
        if self.patience <= 0:
            return
        if score > self.best_score:
            self.best_epoch, self.best_score = epoch, score
            self.best_state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        self.stopped = epoch - self.best_epoch >= self.patience

    def restore_best(self, encoder: Encoder, last_epoch: int) -> bool:
        """Load the best epoch's weights into `encoder` when it was not `last_epoch`; True when they were loaded."""
        if self.best_state is None or self.best_epoch == last_epoch:
            return False
        encoder.load_state_dict(self.best_state)
        return True

    def tensors(self) -> dict[str, Any]:
        return {"best_encoder": self.best_state} if self.best_state is not None else {}

    def state_dict(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, "best_score": self.best_score, "stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any], best_encoder: dict[str, torch.Tensor] | None) -> None:
        if self.patience <= 0 or not state:
            return
        self.best_epoch, self.best_score = int(state["best_epoch"]), float(state["best_score"])
        self.stopped = bool(state["stopped"])
        self.best_state = best_encoder
