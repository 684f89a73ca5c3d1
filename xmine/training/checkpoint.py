"""Atomic training checkpoints: one file, replaced whole at the end of every epoch."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from xmine.errors import ModelError
from xmine.utils import atomic_torch_save


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    atomic_torch_save(path, state)


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad checkpoint
        raise ModelError(f"{path}: unreadable checkpoint ({exc})") from exc


def remove_checkpoints(directory: str | Path | None) -> None:
    """Training has finished: its checkpoints (optimizer states, kept only to resume) leave the model directory.
    Only the main process deletes, as only it writes them."""
    from xmine import distributed

    if directory is not None and distributed.is_main():
        shutil.rmtree(directory, ignore_errors=True)
