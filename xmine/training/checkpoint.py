"""Atomic training checkpoints: one file, replaced whole at the end of every epoch.

A checkpoint holds tensors (state dicts of the model and optimisers) and one JSON string with everything
else: epoch, history, random-generator states and the run's fingerprint. It is read with
`torch.load(weights_only=True)`, so a crafted file cannot run code. The fingerprint (the training data's
shape and a hash of its label matrix, and the configuration) must match on resume: a checkpoint of
another dataset or of other hyper-parameters is refused instead of silently continued.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from xmine.errors import ModelError
from xmine.safeio import load_tensors
from xmine.utils import atomic_torch_save

CHECKPOINT_FORMAT = 2
# settings that change where and how fast a run goes, not what it computes: free to change on resume
RUNTIME_KEYS = frozenset({"device", "num_threads", "encode_batch_size", "stages", "checkpoint_every_s"})


def data_fingerprint(labels: sp.spmatrix) -> dict[str, Any]:
    """Shape, number of positives and a SHA-256 of the (n_points, n_labels) training label matrix."""
    labels = sp.csr_matrix(labels)
    labels.sort_indices()
    digest = hashlib.sha256()
    digest.update(np.asarray(labels.shape, dtype=np.int64).tobytes())
    digest.update(labels.indptr.astype(np.int64).tobytes())
    digest.update(labels.indices.astype(np.int64).tobytes())
    digest.update(labels.data.astype(np.float64).tobytes())
    return {"shape": [int(s) for s in labels.shape], "nnz": int(labels.nnz), "labels_sha256": digest.hexdigest()}


def config_fingerprint(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration (a `to_dict()`) without its runtime-only keys."""
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in RUNTIME_KEYS}
        return node

    return strip(config)


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def check_fingerprint(path: str | Path, saved: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    """Refuse a checkpoint whose data or configuration differ from this run's."""
    expected = json.loads(json.dumps(expected))  # as stored: tuples become lists
    if saved is None:
        raise ModelError(f"{path}: checkpoint has no fingerprint of its data and configuration; "
                         "train without --resume (or delete the checkpoints directory)")
    if saved.get("data") != expected.get("data"):
        raise ModelError(f"{path}: checkpoint was written for other training data (label matrix "
                         f"{saved.get('data', {}).get('shape')} vs this run's {expected['data']['shape']}, or the "
                         "same shape with other labels); train without --resume or use that dataset")
    changed = _differences(saved.get("config"), expected.get("config"))
    if changed:
        shown = "; ".join(changed[:5]) + (f"; and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise ModelError(f"{path}: checkpoint was written with other hyper-parameters ({shown}); resume with the "
                         "same configuration, or train without --resume")


def generator_states(generators: dict[str, np.random.Generator]) -> dict[str, Any]:
    """JSON-able states of numpy generators (PCG64 states are dicts of Python ints)."""
    return {name: gen.bit_generator.state for name, gen in generators.items()}


def restore_generators(generators: dict[str, np.random.Generator], states: dict[str, Any], path: str | Path) -> None:
    for name, gen in generators.items():
        if name not in states:
            raise ModelError(f"{path}: checkpoint has no state for the random generator {name!r}")
        try:
            gen.bit_generator.state = states[name]
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelError(f"{path}: random generator {name!r}: bad state ({exc})") from None


def save_checkpoint(path: str | Path, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    """`tensors`: state dicts (tensors and plain containers); `meta`: JSON-able values."""
    atomic_torch_save(path, {"format": CHECKPOINT_FORMAT, "meta": json.dumps(meta), "tensors": tensors})
    _test_hook_after_checkpoint(Path(path), meta)


def load_checkpoint(path: str | Path, fingerprint: dict[str, Any] | None = None
                    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(tensors, meta) of the checkpoint at `path`, None when there is none. With `fingerprint`, a
    checkpoint of other data or another configuration raises ModelError."""
    path = Path(path)
    if not path.exists():
        return None
    state = load_tensors(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or \
            not isinstance(state.get("meta"), str) or not isinstance(state.get("tensors"), dict):
        raise ModelError(f"checkpoint: {path}: written by another xmine version (format "
                         f"{state.get('format') if isinstance(state, dict) else '?'}, expected {CHECKPOINT_FORMAT}); "
                         "train without --resume")
    try:
        meta = json.loads(state["meta"])
    except json.JSONDecodeError as exc:
        raise ModelError(f"checkpoint: {path}: corrupt metadata ({exc.msg})") from None
    if fingerprint is not None:
        check_fingerprint(path, meta.get("fingerprint"), fingerprint)
    return state["tensors"], meta


def _test_hook_after_checkpoint(path: Path, meta: dict[str, Any]) -> None:
    """Tests only (inert unless XMINE_TEST_KILL_AFTER_CHECKPOINT is set, e.g. "stage2.pt:1"): the process
    kills itself with SIGKILL right after writing that checkpoint at that epoch, as a crash would."""
    target = os.environ.get("XMINE_TEST_KILL_AFTER_CHECKPOINT")
    if target and target == f"{path.name}:{meta.get('epoch')}":
        os.kill(os.getpid(), signal.SIGKILL)


def remove_checkpoints(directory: str | Path | None) -> None:
    """Training has finished: its checkpoints (optimizer states, kept only to resume) leave the model directory.
    Only the main process deletes, as only it writes them."""
    from xmine import distributed

    if directory is not None and distributed.is_main():
        shutil.rmtree(directory, ignore_errors=True)
