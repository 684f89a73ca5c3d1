"""Train and evaluate ONE peer XMC library on ONE prepared dataset; print one JSON line.

Run with the peers venv (bench/setup_peers.sh), never with xmine's python -- this script does not
import xmine (the peers venv has numpy<2 and no xmine):

    bench/.venv-peers/bin/python -m bench.peers --method pecos|omikuji|omikuji-bonsai|napkinxc \\
        --features-dir DIR --out RESULT.json [--threads 2]

DIR holds what bench.prepare_features wrote (X_trn.npz, X_tst.npz, Y_trn.npz). Writes the top-100
score matrix DIR/pred_<method>.npz (CSR, shape (n_test, n_labels); score it with
bench.score_predictions) and RESULT.json with the timings, memory and model size.

Protocol, the same for every peer:

* train_seconds: wall time from the in-memory CSR matrices to a model saved on disk (includes any
  format conversion, clustering, training and saving; the parts are in train_breakdown_s).
* The saved model is loaded back (load_seconds) and all predictions come from the loaded model.
* predict_seconds: one batch call over all test points (Omikuji's Python API takes one example per
  call, so its "batch" is a Python loop), top 100.
* latency_ms_p50/p99: one query per call over the first 200 test points (after one warm-up call), with
  the model loaded with 1 thread (latency_threads), the usual way to serve single queries; the same at
  --threads is latency_at_threads_ms_p50/p99. PECOS (OpenMP) pays a fork/join per call when told to use
  more threads, which on a loaded 2-core machine turns 0.2 ms into ~100 ms.
* peak_rss_mb: ru_maxrss of this process at the end (train + predict).
* threads: passed to each library's own threads parameter.
* pred_min_row_entries: Omikuji's beam search (beam 10) can return fewer than 100 labels for a row.
* stdout carries only the result line (the libraries' own progress output goes to stderr).

Settings: PECOS XR-Linear (PIFA label embedding, hierarchical k-means indexer, XLinearModel defaults,
beam 10); Omikuji Parabel-like defaults (3 trees, balanced 2-means, beam 10) and the Bonsai-like
setting (unbalanced 100-means, max depth 3) as omikuji-bonsai; napkinXC PLT defaults (exact tree
search, seed 0).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import scipy.sparse as sp

METHODS = ("pecos", "omikuji", "omikuji-bonsai", "napkinxc")
PACKAGE = {"pecos": "libpecos", "omikuji": "omikuji", "omikuji-bonsai": "omikuji", "napkinxc": "napkinxc"}
TOP_K = 100
BEAM = 10
N_LATENCY = 200


def _csr32(m: sp.spmatrix) -> sp.csr_matrix:
    m = sp.csr_matrix(m, dtype=np.float32)
    m.sum_duplicates()
    m.sort_indices()
    return m


def _dir_size_mb(path: Path) -> float:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return total / 2**20


def _pairs_to_csr(rows: list[list[tuple[int, float]]], n_labels: int) -> sp.csr_matrix:
    """Per-row lists of (label, score) -> CSR (n, n_labels); explicit zero scores are kept."""
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=indptr[1:])
    indices = np.fromiter((lab for r in rows for lab, _ in r), dtype=np.int32, count=int(indptr[-1]))
    data = np.fromiter((s for r in rows for _, s in r), dtype=np.float32, count=int(indptr[-1]))
    out = sp.csr_matrix((data, indices, indptr), shape=(len(rows), n_labels))
    out.sort_indices()
    return out


# --------------------------------------------------------------------------- peers
# Each peer: train(X, Y, model_dir, threads, work_dir) -> (info dict, time breakdown dict), model saved in model_dir;
# load(model_dir, threads) -> predictor; predictor(X_rows) -> CSR (rows, n_labels) top-100 scores.


class Pecos:
    def __init__(self) -> None:
        from pecos.xmc import Indexer, LabelEmbeddingFactory
        from pecos.xmc.xlinear.model import XLinearModel

        self.Indexer, self.LabelEmbeddingFactory, self.XLinearModel = Indexer, LabelEmbeddingFactory, XLinearModel

    def train(
        self, x: sp.csr_matrix, y: sp.csr_matrix, model_dir: Path, threads: int, work_dir: Path
    ) -> tuple[dict, dict]:
        Indexer, LabelEmbeddingFactory, XLinearModel = self.Indexer, self.LabelEmbeddingFactory, self.XLinearModel
        t0 = time.perf_counter()
        label_feat = LabelEmbeddingFactory.create(y, x, method="pifa", threads=threads)
        chain = Indexer.gen(label_feat, indexer_type="hierarchicalkmeans", threads=threads, seed=0)
        t1 = time.perf_counter()
        model = XLinearModel.train(x, y, C=chain, threads=threads)
        t2 = time.perf_counter()
        model.save(str(model_dir))
        t3 = time.perf_counter()
        info = {
            "settings": {
                "label_embedding": "pifa",
                "indexer": "hierarchicalkmeans",
                "seed": 0,
                "beam_size": BEAM,
                "only_topk": TOP_K,
                "xlinear": "defaults",
            },
            "cluster_chain_depth": len(chain),
        }
        return info, {"pifa_indexer": t1 - t0, "fit": t2 - t1, "save": t3 - t2}

    def load(self, model_dir: Path, threads: int, n_labels: int):
        model = self.XLinearModel.load(str(model_dir), is_predict_only=True)

        def predict(x: sp.csr_matrix) -> sp.csr_matrix:
            return model.predict(x, beam_size=BEAM, only_topk=TOP_K, threads=threads)

        return predict


class Omikuji:
    def __init__(self, bonsai: bool) -> None:
        import omikuji

        self.bonsai = bonsai
        self.omikuji = omikuji

    def train(
        self, x: sp.csr_matrix, y: sp.csr_matrix, model_dir: Path, threads: int, work_dir: Path
    ) -> tuple[dict, dict]:
        omikuji = self.omikuji
        t0 = time.perf_counter()
        # Omikuji trains only from a file in the single-file layout and rejects rows with labels but no
        # features: drop those (dropped_train_rows), and rows with neither (no training signal either way).
        # Rows with features but no labels are kept, as the other peers see them too.
        x_nnz, y_nnz = np.diff(x.indptr), np.diff(y.indptr)
        keep = np.flatnonzero(x_nnz > 0)
        dropped = int(((x_nnz == 0) & (y_nnz > 0)).sum())
        dropped_empty = int(((x_nnz == 0) & (y_nnz == 0)).sum())
        data_path = work_dir / "omikuji_train.txt"
        with open(data_path, "w") as fh:
            fh.write(f"{len(keep)} {x.shape[1]} {y.shape[1]}\n")
            for i in keep:
                labs = ",".join(map(str, y.indices[y.indptr[i] : y.indptr[i + 1]]))
                lo, hi = x.indptr[i], x.indptr[i + 1]
                cols, vals = x.indices[lo:hi].tolist(), x.data[lo:hi].tolist()
                feats = " ".join(f"{f}:{v:.7g}" for f, v in zip(cols, vals, strict=True))
                fh.write(f"{labs} {feats}\n")
        t1 = time.perf_counter()
        hp = omikuji.Model.default_hyper_param()
        if self.bonsai:
            hp.cluster_balanced = False
            hp.cluster_k = 100
            hp.max_depth = 3
        model = omikuji.Model.train_on_data(str(data_path), hp, n_threads=threads)
        t2 = time.perf_counter()
        model.save(str(model_dir))
        t3 = time.perf_counter()
        data_path.unlink()
        settings = {
            name: getattr(hp, name)
            for name in (
                "n_trees",
                "min_branch_size",
                "max_depth",
                "cluster_k",
                "cluster_balanced",
                "linear_c",
                "linear_eps",
            )
        }
        settings.update({"beam_size": BEAM, "top_k": TOP_K})
        info = {
            "settings": settings,
            "dropped_train_rows": dropped,
            "dropped_train_rows_empty": dropped_empty,
            "train_rows_used": len(keep),
        }
        return info, {"write_data_file": t1 - t0, "fit": t2 - t1, "save": t3 - t2}

    def load(self, model_dir: Path, threads: int, n_labels: int):
        model = self.omikuji.Model.load(str(model_dir))
        model.init_prediction_thread_pool(threads)

        def predict(x: sp.csr_matrix) -> sp.csr_matrix:
            rows = []
            for i in range(x.shape[0]):
                lo, hi = x.indptr[i], x.indptr[i + 1]
                pairs = list(zip(x.indices[lo:hi].tolist(), x.data[lo:hi].tolist(), strict=True))
                rows.append(model.predict(pairs, beam_size=BEAM, top_k=TOP_K))
            return _pairs_to_csr(rows, n_labels)

        return predict


class Napkinxc:
    def __init__(self) -> None:
        from napkinxc.models import PLT

        self.PLT = PLT

    def train(
        self, x: sp.csr_matrix, y: sp.csr_matrix, model_dir: Path, threads: int, work_dir: Path
    ) -> tuple[dict, dict]:
        PLT = self.PLT
        t0 = time.perf_counter()
        y_lists = [y.indices[y.indptr[i] : y.indptr[i + 1]].tolist() for i in range(y.shape[0])]
        t1 = time.perf_counter()
        model = PLT(str(model_dir), threads=threads, seed=0)
        model.fit(x, y_lists)  # writes the model to model_dir
        t2 = time.perf_counter()
        settings = {k: v for k, v in model.get_params().items() if k not in ("output", "tree_structure")}
        settings.update({"top_k": TOP_K, "scores": "predict_proba"})
        return {"settings": settings}, {"label_lists": t1 - t0, "fit_and_save": t2 - t1}

    def load(self, model_dir: Path, threads: int, n_labels: int):
        model = self.PLT(str(model_dir), threads=threads)
        model.load()

        def predict(x: sp.csr_matrix) -> sp.csr_matrix:
            return _pairs_to_csr(model.predict_proba(x, top_k=TOP_K), n_labels)

        return predict


def _peer(method: str):
    if method == "pecos":
        return Pecos()
    if method == "omikuji":
        return Omikuji(bonsai=False)
    if method == "omikuji-bonsai":
        return Omikuji(bonsai=True)
    if method == "napkinxc":
        return Napkinxc()
    raise ValueError(method)


# --------------------------------------------------------------------------- main


def _latency(predict, x: sp.csr_matrix, n: int) -> np.ndarray:
    """Milliseconds per call of predict on one row, for the first n rows (after one warm-up call)."""
    predict(x[:1])
    out = np.empty(n)
    for i in range(n):
        q = x[i : i + 1]
        t0 = time.perf_counter()
        predict(q)
        out[i] = time.perf_counter() - t0
    return out * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True, choices=METHODS)
    ap.add_argument("--features-dir", required=True, help="output of bench.prepare_features")
    ap.add_argument("--out", required=True, help="RESULT.json to write")
    ap.add_argument("--threads", type=int, default=2, help="threads given to the library (default 2)")
    ap.add_argument("--pred", default=None, help="prediction file (default FEATURES_DIR/pred_<method>.npz)")
    ap.add_argument("--model-dir", default=None, help="keep the saved model here (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    # The libraries print progress to stdout (Omikuji from Rust); send fd 1 to stderr so that stdout
    # carries only the result line.
    sys.stdout.flush()
    result_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    fdir = Path(args.features_dir)
    x_trn = _csr32(sp.load_npz(fdir / "X_trn.npz"))
    x_tst = _csr32(sp.load_npz(fdir / "X_tst.npz"))
    y_trn = _csr32(sp.load_npz(fdir / "Y_trn.npz"))
    y_trn.data[:] = 1.0
    n_labels = y_trn.shape[1]
    if x_tst.shape[1] != x_trn.shape[1]:
        raise SystemExit(f"X_tst has {x_tst.shape[1]} features, X_trn has {x_trn.shape[1]}")
    peer = _peer(args.method)

    work = Path(tempfile.mkdtemp(prefix=f"peer-{args.method}-"))
    model_dir = Path(args.model_dir) if args.model_dir else work / "model"
    if model_dir.exists() and any(model_dir.iterdir()):
        shutil.rmtree(work)
        raise SystemExit(f"--model-dir {model_dir} exists and is not empty")
    model_dir.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        info, breakdown = peer.train(x_trn, y_trn, model_dir, args.threads, work)
        train_seconds = time.perf_counter() - t0
        model_size_mb = _dir_size_mb(model_dir)

        t0 = time.perf_counter()
        predict = peer.load(model_dir, args.threads, n_labels)
        load_seconds = time.perf_counter() - t0

        t0 = time.perf_counter()
        pred = predict(x_tst)
        predict_seconds = time.perf_counter() - t0

        n_lat = min(N_LATENCY, x_tst.shape[0])
        lat = _latency(predict, x_tst, n_lat)
        del predict
        gc.collect()
        # One query per call is also timed with the library told to use 1 thread (the headline latency):
        # with OpenMP (PECOS) a multi-threaded call on one row pays a large fork/join cost.
        lat1 = lat if args.threads == 1 else _latency(peer.load(model_dir, 1, n_labels), x_tst, n_lat)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    pred = sp.csr_matrix(pred, dtype=np.float32)
    pred.sort_indices()
    if pred.shape != (x_tst.shape[0], n_labels):
        raise SystemExit(f"predictions have shape {pred.shape}, expected {(x_tst.shape[0], n_labels)}")
    pred_path = Path(args.pred) if args.pred else fdir / f"pred_{args.method}.npz"
    sp.save_npz(pred_path, pred)

    result = {
        "method": args.method,
        "package": PACKAGE[args.method],
        "package_version": version(PACKAGE[args.method]),
        "features_dir": str(fdir),
        "pred_path": str(pred_path),
        "n_train": x_trn.shape[0],
        "n_test": x_tst.shape[0],
        "n_features": x_trn.shape[1],
        "n_labels": n_labels,
        "threads": args.threads,
        "train_seconds": round(train_seconds, 3),
        "train_breakdown_s": {k: round(v, 3) for k, v in breakdown.items()},
        "load_seconds": round(load_seconds, 3),
        "predict_seconds": round(predict_seconds, 3),
        "predict_points_per_s": round(x_tst.shape[0] / predict_seconds, 1),
        "latency_ms_p50": round(float(np.percentile(lat1, 50)), 3),
        "latency_ms_p99": round(float(np.percentile(lat1, 99)), 3),
        "latency_threads": 1,
        "latency_points": n_lat,
        "latency_at_threads_ms_p50": round(float(np.percentile(lat, 50)), 3),
        "latency_at_threads_ms_p99": round(float(np.percentile(lat, 99)), 3),
        "top_k": TOP_K,
        "pred_min_row_entries": int(np.diff(pred.indptr).min()),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "model_size_mb": round(model_size_mb, 3),
        **info,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
    }
    line = json.dumps(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(line + "\n")
    sys.stdout.flush()
    result_out.write(line + "\n")
    result_out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
