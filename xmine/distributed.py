"""Data-parallel training on torch.distributed (launched with torchrun; gloo on CPU, NCCL on GPUs).

xmine runs the same pipeline on every rank; only the training loops are data-parallel:
each global mini-batch is split across ranks (whole clusters per rank in NGAME stage 1), gradients
are averaged by DistributedDataParallel, and in stage 1 the in-batch negatives span the global batch
(point and label embeddings are all-gathered; each rank's own slice keeps its gradient). Rank 0 alone
clusters (and broadcasts the clusters), writes checkpoints and the model directory.

With one process (no torchrun) every helper here is a no-op, so single-process code paths are unchanged.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def init_from_env(device: torch.device | str | None = None) -> bool:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE > 1).
    Returns True when running distributed. The backend is NCCL when this rank trains on a CUDA device,
    gloo otherwise; XMINE_DIST_BACKEND overrides."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    backend = os.environ.get("XMINE_DIST_BACKEND") or ("nccl" if use_cuda else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=dt.timedelta(minutes=30))
    log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (after the last collective)."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def local_device() -> torch.device | None:
    """The CUDA device of this rank under NCCL (LOCAL_RANK); None when the config decides."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (pickled; for small things like cluster assignments)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_rows(local: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's (n_r, ...) tensor along dim 0 (uneven n_r allowed). This rank's slice is
    `local` itself, so gradients flow into it; the other ranks' slices are constants."""
    if not is_distributed():
        return local
    n = torch.tensor([local.shape[0]], device=local.device)
    counts = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(counts, n)
    sizes = [int(c.item()) for c in counts]
    width = max(sizes)
    padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[:local.shape[0]] = local.detach()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    pieces = [local if r == rank() else parts[r][:sizes[r]] for r in range(len(sizes))]
    return torch.cat(pieces, dim=0)


def all_gather_numpy(local: np.ndarray) -> np.ndarray:
    """Rows of every rank's array, in rank order (no gradients)."""
    if not is_distributed():
        return local
    return all_gather_rows(torch.from_numpy(np.ascontiguousarray(local)).to(_comm_device())).cpu().numpy()


def all_reduce_mean(value: float) -> float:
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def _comm_device() -> torch.device:
    return local_device() or torch.device("cpu")


def shard_rows(n: int, r: int | None = None, w: int | None = None) -> slice:
    """Contiguous near-equal slice [start, stop) of n rows for rank r of w."""
    r = rank() if r is None else r
    w = world_size() if w is None else w
    return slice(n * r // w, n * (r + 1) // w)


def split_whole_clusters(parts: Sequence[np.ndarray], w: int) -> list[np.ndarray]:
    """Assign whole clusters (`parts`) to `w` ranks, largest first to the least-loaded rank, so each rank's
    share stays a set of complete clusters; falls back to an even split of the concatenation when there are
    fewer clusters than ranks (e.g. random batches, which come as one part)."""
    if len(parts) < w:
        flat = np.concatenate(list(parts)) if parts else np.zeros(0, dtype=np.int64)
        return [flat[shard_rows(len(flat), r, w)] for r in range(w)]
    loads = np.zeros(w, dtype=np.int64)
    shares: list[list[np.ndarray]] = [[] for _ in range(w)]
    for i in sorted(range(len(parts)), key=lambda i: -len(parts[i])):
        r = int(np.argmin(loads))
        shares[r].append(parts[i])
        loads[r] += len(parts[i])
    return [np.concatenate(s) if s else np.zeros(0, dtype=np.int64) for s in shares]


def needs_dense_gradients() -> bool:
    """NCCL all-reduces dense gradients only (gloo takes sparse ones too)."""
    return is_distributed() and dist.get_backend() == "nccl"


def wrap(module: torch.nn.Module) -> torch.nn.Module:
    """DistributedDataParallel around `module` when distributed, else `module` itself."""
    if not is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel

    from xmine.errors import ConfigError

    device = local_device()
    sparse = [m for m in module.modules() if isinstance(m, torch.nn.Embedding | torch.nn.EmbeddingBag) and m.sparse]
    if sparse and dist.get_backend() == "nccl":
        # DDP all-reduces sparse gradients with gloo only
        raise ConfigError("sparse gradients cannot be all-reduced by NCCL: call the encoder's "
                          "use_dense_gradients() first, or set XMINE_DIST_BACKEND=gloo")
    return DistributedDataParallel(module, device_ids=[device.index] if device is not None else None)
