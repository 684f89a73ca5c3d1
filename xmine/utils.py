"""Small shared helpers: atomic file writes, device choice, seeding, memory readings."""

from __future__ import annotations

import os
import random
import resource
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Write a file so that readers see the old content or the new, never a torn file:
    `write(tmp_path)` fills a temporary file in the same directory, which is fsynced and renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 less the umask)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_write(path, write)


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    atomic_write(path, write)


def atomic_torch_save(path: str | Path, obj: object) -> None:
    import torch

    def write(tmp: str) -> None:
        torch.save(obj, tmp)

    atomic_write(path, write)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def resolve_device(name: str = "auto") -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu". Never assumes a GPU."""
    import torch

    from xmine.errors import ConfigError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but no CUDA device is available; use 'cpu' or 'auto'")
    return name


def seed_everything(seed: int) -> np.random.Generator:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


def set_threads(num_threads: int | None) -> None:
    """Every compute thread pool xmine uses -- torch's, faiss's, numba's and numpy's BLAS (scikit-learn's fits, numpy
    products) -- gets `num_threads` threads (None or 0: left as they are)."""
    if num_threads:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(num_threads)
        try:
            import faiss

            faiss.omp_set_num_threads(num_threads)
        except ImportError:  # pragma: no cover - faiss is a core dependency
            pass
        import numba

        numba.set_num_threads(min(num_threads, numba.config.NUMBA_NUM_THREADS))
        threadpool_limits(limits=num_threads, user_api="blas")  # after the imports: faiss loads a BLAS of its own
