"""Parse speed and peak memory of the sparse-format readers on a synthetic 1,000,000-row dataset.

Writes, in a temporary directory, a label matrix in the ``X_Y`` format (~5 labels/row), a feature
matrix in the same format (~20 features/row) and the same data in the single-file format, then times
``read_sparse_matrix`` / ``read_single_file``. Each read runs in a fresh subprocess so that its peak
RSS (``ru_maxrss``) is its own and not the generator's.

    python -m bench.parse_speed [--rows N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def _maxrss_mib() -> float:
    # ru_maxrss is KiB on Linux (bytes on macOS, where this bench is not expected to run).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _random_csr(
    rng: np.random.Generator, n_rows: int, n_cols: int, mean_nnz: int, values: bool
) -> sp.csr_matrix:
    """Rows with Poisson(mean_nnz) distinct random columns; values rounded to 4 digits (or all 1)."""
    counts = np.minimum(rng.poisson(mean_nnz, n_rows), n_cols)
    cols = rng.integers(0, n_cols, int(counts.sum()))
    indptr = np.concatenate(([0], np.cumsum(counts)))
    m = sp.csr_matrix((np.ones(cols.size, np.float32), cols, indptr), shape=(n_rows, n_cols))
    m.sum_duplicates()  # a repeated random column becomes one entry
    if values:
        m.data = (rng.integers(1, 10_001, m.nnz) / 10_000).astype(np.float32)  # 0.0001 .. 1
    else:
        m.data[:] = 1.0
    return m


def _child(kind: str, path: str) -> None:
    """Run one read in this (fresh) process and print a JSON line with its timings."""
    from xmine.data import read_single_file, read_sparse_matrix

    before = _maxrss_mib()
    t0 = time.perf_counter()
    if kind == "single":
        X, Y = read_single_file(path)
        rows, nnz = X.shape[0], X.nnz + Y.nnz
    else:
        M = read_sparse_matrix(path)
        rows, nnz = M.shape[0], M.nnz
    secs = time.perf_counter() - t0
    print(
        json.dumps({"rows": rows, "nnz": nnz, "secs": secs, "rss_before": before, "rss_peak": _maxrss_mib()})
    )


def _generate(out: Path, n: int) -> None:
    """Write the three synthetic files into ``out`` (run in its own process, see main)."""
    from xmine.data import write_single_file, write_sparse_matrix

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    Y = _random_csr(rng, n, 100_000, 5, values=False)
    X = _random_csr(rng, n, 50_000, 20, values=True)
    print(
        f"generated {n:,} rows: Y nnz {Y.nnz:,} (100,000 labels), X nnz {X.nnz:,} (50,000 features)"
        f" in {time.perf_counter() - t0:.1f}s"
    )
    jobs = (
        ("X_Y", "trn_X_Y.txt", write_sparse_matrix, (Y,)),
        ("X_Xf", "trn_X_Xf.txt", write_sparse_matrix, (X,)),
        ("single", "trn_data.txt", write_single_file, (X, Y)),
    )
    for name, fname, write, mats in jobs:
        t0 = time.perf_counter()
        write(out / fname, *mats)
        secs = time.perf_counter() - t0
        print(f"wrote {name:7s} {(out / fname).stat().st_size / 2**20:7.1f} MiB in {secs:5.1f}s")


def _run(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "bench.parse_speed", *args], check=True, capture_output=True, text=True)
    return res.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, default=None, help="write the files here and keep them")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--generate", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child)
        return
    if args.generate:
        _generate(args.generate, args.rows)
        return

    # This process only orchestrates: Linux carries a parent's RSS high-water mark into a child's
    # ru_maxrss across fork + exec, so the (large) generator runs in a subprocess of its own and
    # the parent of every timed reader stays small.
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        print(_run("--generate", str(out), "--rows", str(args.rows)), end="")
        print(
            f"{'format':8s} {'reader':20s} {'MiB':>7s} {'secs':>6s} {'rows/s':>11s} {'MiB/s':>7s}"
            f" {'peak RSS MiB':>12s} {'(at start)':>10s}"
        )
        for name, fname, kind, reader in (
            ("X_Y", "trn_X_Y.txt", "matrix", "read_sparse_matrix"),
            ("X_Xf", "trn_X_Xf.txt", "matrix", "read_sparse_matrix"),
            ("single", "trn_data.txt", "single", "read_single_file"),
        ):
            path = out / fname
            r = json.loads(_run("--child", kind, str(path)).strip().splitlines()[-1])
            size = path.stat().st_size / 2**20
            print(
                f"{name:8s} {reader:20s} {size:7.1f} {r['secs']:6.2f} {r['rows'] / r['secs']:11,.0f}"
                f" {size / r['secs']:7.1f} {r['rss_peak']:12.0f} {r['rss_before']:10.0f}"
            )
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, cpus {os.cpu_count()}")


if __name__ == "__main__":
    main()
