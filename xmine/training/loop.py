"""The skeleton both training loops share (NGAME's Siamese stage 1; the shortlist classifiers of NGAME stage 2 and
of the MIPS method): a record per epoch, a checkpoint at the end of an epoch, and resuming from it.

A loop opens its `EpochCheckpoints`, asks it for the state to resume from (restoring its own tensors and random
streams from it), runs its remaining epochs, and ends each with `end_epoch(record, state, final)`: the record joins
the history, rank 0 writes the checkpoint when it is due (the loop's last epoch, or the configured seconds since the
last one; the loop's tensors and meta from `state()`, with the epoch, the history and the fingerprint of data and
hyper-parameters), and every rank waits for it. A resumed run continues after the last epoch written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import scipy.sparse as sp
import torch

from xmine import distributed
from xmine.training.checkpoint import data_fingerprint, load_checkpoint, save_checkpoint

Record = TypeVar("Record")


@dataclass
class History(Generic[Record]):
    """The per-epoch records of one training loop."""

    epochs: list[Record] = field(default_factory=list)

    def to_list(self) -> list[dict[str, Any]]:
        return [vars(e) for e in self.epochs]

    @classmethod
    def from_list(cls, record_type: Callable[..., Record], items: list[dict[str, Any]]) -> History[Record]:
        return cls([record_type(**item) for item in items])


class EpochCheckpoints:
    """One loop's checkpoint file (`path`; None: no checkpoints) and its history. A checkpoint records the
    fingerprint of the training labels and of `config_fingerprint`; resuming from one that differs is refused.
    `every_seconds`: 0 writes after every epoch; more writes at most that often, and always after the last epoch."""

    def __init__(self, path: str | Path | None, labels: sp.spmatrix, config_fingerprint: dict[str, Any],
                 record_type: Callable[..., Record], every_seconds: float = 0.0) -> None:
        self.path = Path(path) if path is not None else None
        self.fingerprint = {"data": data_fingerprint(labels), "config": config_fingerprint}
        self.record_type = record_type
        self.every_seconds = every_seconds
        self.history: History[Any] = History()
        self._last_write = time.monotonic()

    def resume(self, resume: bool) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """With `resume` and a checkpoint on disk: its (tensors, meta), the history restored from it; the loop
        restores its own state from them and continues at `first_epoch(meta)`. None: start from epoch 0."""
        if not resume or self.path is None:
            return None
        loaded = load_checkpoint(self.path, self.fingerprint)
        if loaded is not None:
            self.history = History.from_list(self.record_type, loaded[1]["history"])
        return loaded

    @staticmethod
    def first_epoch(meta: dict[str, Any] | None) -> int:
        return 0 if meta is None else meta["epoch"] + 1

    def end_epoch(self, record: Any, state: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
                  final: bool) -> None:
        """Append the epoch's record; rank 0 writes the checkpoint when the loop's last epoch (`final`) ends or
        `every_seconds` have passed since the last one: the loop's `state()` = (tensors, meta), the meta completed
        with the epoch, the history and the fingerprint. All ranks wait for it. (A checkpoint holds the optimiser
        moments of every weight; written after each short epoch it can cost a third of a small run's time.)"""
        self.history.epochs.append(record)
        due = final or time.monotonic() - self._last_write >= self.every_seconds
        if self.path is not None and due and distributed.is_main():
            tensors, meta = state()
            save_checkpoint(self.path, tensors, {"epoch": record.epoch, **meta, "history": self.history.to_list(),
                                                 "fingerprint": self.fingerprint})
            self._last_write = time.monotonic()
        distributed.barrier()


def optimizer_states(optimizers: list[torch.optim.Optimizer]) -> list[dict[str, Any]]:
    """The optimizers' states, in order, for a checkpoint's tensors (see `restore_optimizers`)."""
    return [opt.state_dict() for opt in optimizers]


def restore_optimizers(optimizers: list[torch.optim.Optimizer], states: list[dict[str, Any]]) -> None:
    """Load `optimizer_states` back into the same optimizers, built in the same order."""
    for opt, state in zip(optimizers, states, strict=True):
        opt.load_state_dict(state)
