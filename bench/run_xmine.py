"""Train, predict and evaluate ONE xmine method on ONE dataset, in this process, and write a JSON result.

Run by `python -m bench.run`, one process per run, so that the peak resident memory is this run's alone.

  python -m bench.run_xmine --method ngame --data DIR [--text-variant title] [--set key=value ...] --out R.json
  methods: knn, ngame, mips, zeroshot (the pretrained transformer, untrained: encoder similarity only)
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.run import cpu_model
from xmine.cli import build_config, save_predictions, setup_logging, train_model
from xmine.config import EncoderConfig, IndexConfig
from xmine.data import load_dataset
from xmine.metrics import evaluate, inverse_propensity
from xmine.models.base import Inputs
from xmine.utils import peak_rss_mb, set_threads

KS = (1, 3, 5)


def bench_metrics(ds, pred, inv_propensity: np.ndarray | None = None) -> dict[str, float]:
    """The bench's metrics of predictions on a dataset's test set: propensities from its training labels (pass
    them in to compute them once), its filter pairs."""
    if inv_propensity is None:
        inv_propensity = inverse_propensity(ds.train.labels)
    return evaluate(pred, ds.test.labels, ks=KS, inv_propensity=inv_propensity, filter_pairs=ds.test.filter_pairs)


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def latency_ms(predict_one, inputs, n: int = 200) -> tuple[float, float]:
    """p50/p99 of predicting the first n test points one at a time (each with its text and features)."""
    times = []
    for i in range(min(n, inputs.n_points)):
        one = inputs.select([i])
        start = time.perf_counter()
        predict_one(one)
        times.append(1000 * (time.perf_counter() - start))
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def git_commit() -> str | None:
    """The code version a result came from (None outside a git checkout); "+dirty" with uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        return (head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")) or None
    except OSError:
        return None


def zero_shot(ds, args) -> dict:
    from xmine.encoders import build_encoder
    from xmine.index import LabelIndex
    from xmine.topk import csr_from_topk

    start = time.perf_counter()
    encoder = build_encoder(EncoderConfig(kind="transformer", num_threads=args.threads))
    index = LabelIndex.build(encoder.encode(ds.label_texts, progress=False), IndexConfig())
    setup = time.perf_counter() - start
    start = time.perf_counter()
    scores, ids = index.search(encoder.encode(ds.test.texts), 100)
    pred = csr_from_topk(scores, ids, ds.n_labels)
    seconds = time.perf_counter() - start
    p50, p99 = latency_ms(lambda one: index.search(encoder.encode(one.texts), 100), Inputs.of(ds.test))
    return {"train_seconds": setup, "predictions": {"encoder": pred}, "predict_seconds": seconds,
            "latency_ms_p50": p50, "latency_ms_p99": p99, "model_size_mb": None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", required=True, choices=["knn", "ngame", "mips", "zeroshot"])
    parser.add_argument("--data", required=True)
    parser.add_argument("--text-variant", default="full")
    parser.add_argument("--config", default=None, help="config file or preset name (e.g. fast)")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--label", default=None, help="name of this run in the tables")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    setup_logging(True)
    logging.getLogger("xmine").setLevel(logging.INFO)
    set_threads(args.threads)
    ds = load_dataset(args.data, text_variant=args.text_variant)
    inv_p = inverse_propensity(ds.train.labels)
    result: dict = {"method": args.method, "label": args.label or args.method, "dataset": ds.name,
                    "text_variant": ds.text_variant, "config_preset": args.config, "overrides": args.set,
                    "threads": args.threads, "cpu": cpu_model(),
                    "n_train": ds.train.n_points, "n_test": ds.test.n_points, "n_labels": ds.n_labels,
                    "git_commit": git_commit()}
    if args.method == "zeroshot":
        run = zero_shot(ds, args)
    else:
        flags = {"threads": args.threads} if args.method != "knn" else {}
        config = build_config(args.method, args.config, args.set, flags)
        result["config"] = config.to_dict()
        model_dir = Path(tempfile.mkdtemp(prefix="xmine-bench-"))
        start = time.perf_counter()
        model = train_model(args.method, ds, config, model_dir, progress=False)
        train_seconds = time.perf_counter() - start
        model.save(model_dir)
        history = getattr(model, "history", {})
        result["history"] = {k: v for k, v in history.items() if k not in ("stage2",)}
        kinds = ["fused", "encoder", "classifier"] if args.method == "ngame" and model.classifiers is not None \
            else (["encoder"] if args.method == "ngame" else [None])
        if getattr(model, "ranker", None) is not None:
            kinds.append("ranker")
        # one text first: the timings below leave out one-time costs (numba compiles its kernels on a fresh install
        # and caches them; torch sets up its first call), which a user pays once, not per batch
        model.predict(Inputs.of(ds.test).select([0]), k=100, **({"scores": kinds[0]} if kinds[0] else {}))
        preds, predict_seconds = {}, None
        for kind in kinds:
            start = time.perf_counter()
            preds[kind or "model"] = model.predict(ds.test, k=100, **({"scores": kind} if kind else {}))
            if predict_seconds is None:
                predict_seconds = time.perf_counter() - start
                # where the batched prediction's time went (encode / featurize / search / score / fuse)
                result["predict_stage_seconds"] = dict(getattr(model, "last_predict_seconds", {}))
        first_kind = {"scores": kinds[0]} if kinds[0] else {}
        p50, p99 = latency_ms(lambda one: model.predict(one, k=100, **first_kind), Inputs.of(ds.test))
        run = {"train_seconds": train_seconds, "predictions": preds, "predict_seconds": predict_seconds,
               "latency_ms_p50": p50, "latency_ms_p99": p99, "model_size_mb": dir_size_mb(model_dir),
               "model_has_checkpoints": (model_dir / "checkpoints").exists()}
        shutil.rmtree(model_dir, ignore_errors=True)
    result.update({k: v for k, v in run.items() if k != "predictions"})
    result["predict_points_per_s"] = ds.test.n_points / max(run["predict_seconds"], 1e-9)
    result["metrics"] = {kind: bench_metrics(ds, pred, inv_p) for kind, pred in run["predictions"].items()}
    result["peak_rss_mb"] = peak_rss_mb()
    result["prediction_files"] = {}
    for kind, pred in run["predictions"].items():  # kept for bench/reports.py (xmine report)
        path = Path(args.out).parent / "predictions" / f"{Path(args.out).stem}__{kind}.npz"
        save_predictions(path, pred)
        result["prediction_files"][kind] = path.name
    Path(args.out).write_text(json.dumps(result, indent=2, default=float))
    main_kind = next(iter(result["metrics"]))
    m = result["metrics"][main_kind]
    print(f"{result['label']} on {ds.name}/{ds.text_variant}: P@1 {m['P@1']:.2f} PSP@5 {m['PSP@5']:.2f} "
          f"train {result['train_seconds']:.0f}s peak {result['peak_rss_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
