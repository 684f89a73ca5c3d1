"""The `xmine` command line: a thin shell over the Python API.

  xmine data stats DIR
  xmine train --data DIR --out MODEL_DIR [--method ngame|mips|knn] [--config FILE] [options]
  xmine predict --model MODEL_DIR --data DIR [--split test] --out PRED.npz [-k K] [--scores ...]
  xmine predict --model MODEL_DIR --input FILE|- [-k K] [--format jsonl|tsv] [--out FILE]
  xmine serve --model MODEL_DIR [--host 127.0.0.1] [--port 8000]   (HTTP API, see docs/serving.md)
  xmine evaluate --data DIR --pred PRED.npz [--json] [--by-frequency]
  xmine report --data DIR --pred NAME=PRED.npz [--pred ...] [--model M] --out report.html
  xmine demo          (train, predict and evaluate on the bundled HPO dataset)
  xmine labels add|disable|enable --model MODEL_DIR (--labels FILE | --ids FILE)

Configuration: defaults < --config FILE (JSON) < --set key.path=value < dedicated flags.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from xmine import __version__
from xmine.errors import XmineError

log = logging.getLogger("xmine")

# dedicated flags -> config key paths, per method (one place; defaults live in the dataclasses)
FLAG_PATHS: dict[str, dict[str, list[str]]] = {
    "encoder": {"ngame": ["encoder.kind"], "mips": ["encoder.kind"]},
    "epochs": {"ngame": ["siamese.epochs"], "mips": ["classifier.epochs"]},
    "classifier_epochs": {"ngame": ["classifier.epochs"], "mips": ["classifier.epochs"]},
    "batching": {"ngame": ["siamese.batching"]},
    "loss": {"ngame": ["siamese.loss"]},
    "batch_size": {"ngame": ["siamese.batch_size"], "mips": ["classifier.batch_size"]},
    "seed": {"ngame": ["siamese.seed", "classifier.seed"], "mips": ["classifier.seed"]},
    "features": {"ngame": ["classifier.features"], "mips": ["classifier.features"]},
    "fusion": {"ngame": ["fusion.kind"]},
    "index": {"ngame": ["index.kind"], "mips": ["mips.index.kind"]},
    "threads": {"ngame": ["encoder.num_threads"], "mips": ["encoder.num_threads"]},
    "device": {"ngame": ["encoder.device"], "mips": ["encoder.device"]},
    "max_length": {"ngame": ["encoder.max_length"], "mips": ["encoder.max_length"]},
    "mips_negatives": {"mips": ["mips.mips_negatives"]},
    "uniform_negatives": {"mips": ["mips.uniform_negatives"]},
    "reindex_every": {"mips": ["mips.reindex_every"]},
    "warmup_epochs": {"mips": ["mips.warmup_epochs"]},
    "neighbours": {"knn": ["neighbours"]},
    "lead_channel": {"ngame": ["tfidf.lead_channel"], "mips": ["tfidf.lead_channel"], "knn": ["tfidf.lead_channel"]},
    "stages": {"ngame": ["stages"]},
}


def _set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    for key in keys[:-1]:
        node = tree.setdefault(key, {})
        if not isinstance(node, dict):
            raise XmineError(f"cannot set {path}: {key} is not a section")
        tree = node
    tree[keys[-1]] = value


def _apply_overrides(data: dict[str, Any], overrides: list[str], option: str) -> None:
    for item in overrides:
        if "=" not in item:
            raise XmineError(f"{option} expects key.path=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # bare strings need no quotes
        _set_path(data, key.strip(), value)


def build_predict_config(args: argparse.Namespace) -> Any:
    """`xmine predict`'s prediction-time settings (PredictConfig) from --scores and --predict-set; a model refuses
    those it does not have (`XMCModel.check_predict_config`)."""
    from xmine.config import PredictConfig

    data: dict[str, Any] = {"scores": args.scores}
    _apply_overrides(data, args.predict_set, "--predict-set")
    return PredictConfig.from_dict(data, where="--predict-set")


def build_config(method: str, config_file: str | None, overrides: list[str], flags: dict[str, Any]) -> Any:
    from xmine.config import METHOD_CONFIGS, presets

    cls = METHOD_CONFIGS[method]
    data: dict[str, Any] = {}
    if config_file:
        if config_file in presets():
            data = json.loads(json.dumps(presets()[config_file]))
        else:
            data = cls.load(config_file).to_dict()
    _apply_overrides(data, overrides, "--set")
    for flag, value in flags.items():
        if value is None:
            continue
        paths = FLAG_PATHS.get(flag, {}).get(method)
        if paths is None:
            methods = ", ".join(FLAG_PATHS.get(flag, {}))
            raise XmineError(f"--{flag.replace('_', '-')} does not apply to --method {method} (it applies to "
                             f"--method {methods})")
        for path in paths:
            _set_path(data, path, value)
    return cls.from_dict(data, where=f"{method} config")


def setup_logging(verbose: bool) -> None:
    """xmine's log format; INFO with `verbose`; the libraries' own chatter silenced."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("faiss", "faiss.loader", "transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _model_text_variant(model_dir: str | Path) -> str:
    from xmine.models.base import read_model_config

    return read_model_config(model_dir).get("text_variant", "full")


# ---------------------------------------------------------------------------------------- commands
def cmd_data_stats(args: argparse.Namespace) -> int:
    from xmine.data import dataset_stats, load_dataset

    ds = load_dataset(args.dir, text_variant=args.text_variant)
    stats = dataset_stats(ds)
    if args.json:
        print(json.dumps(stats, indent=2, default=float))
        return 0
    print(f"dataset {ds.name} ({ds.layout}, text variant {ds.text_variant})")
    for key, value in stats.items():
        if isinstance(value, dict):
            print(f"  {key}: " + "  ".join(f"{k}={v:g}" for k, v in value.items()))
        elif isinstance(value, float):
            print(f"  {key}: {value:.2f}")
        else:
            print(f"  {key}: {value}")
    return 0


def cmd_data_demo(args: argparse.Namespace) -> int:
    from xmine.demo import demo_dataset_path

    print(demo_dataset_path())
    return 0


def train_model(method: str, dataset: Any, config: Any, out: str | Path, resume: bool = False,
                init_from: str | None = None, progress: bool = True, keep_checkpoints: bool = False) -> Any:
    """Any method, through the one training signature (`XMCModel.train`)."""
    from xmine.models import model_class

    return model_class(method).train(dataset, config, out_dir=out, resume=resume, init_from=init_from,
                                     progress=progress, keep_checkpoints=keep_checkpoints)


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from xmine import distributed
    from xmine.data import load_dataset
    from xmine.models import model_class
    from xmine.models.base import check_model_dir_target

    flags = {k: getattr(args, k) for k in FLAG_PATHS}
    if args.stages is not None:
        try:
            flags["stages"] = [int(s) for s in args.stages.split(",")]
        except ValueError:
            raise XmineError(f"--stages expects 1, 2 or 1,2, got {args.stages!r}") from None
    config = build_config(args.method, args.config, args.set or [], flags)
    if args.print_default_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    if not args.data or not args.out:
        raise XmineError("xmine train needs --data DIR and --out MODEL_DIR")
    check_model_dir_target(args.out)  # before training: a bad --out must not cost a training run
    if distributed.init_from_env():
        if not model_class(args.method).data_parallel:
            raise XmineError(f"--method {args.method} has no training loop to run data-parallel; "
                             "run it without torchrun")
        if distributed.local_device() is None and not os.environ.get("OMP_NUM_THREADS"):
            # processes on one CPU machine share its cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    dataset = load_dataset(args.data, text_variant=args.text_variant)
    start = time.perf_counter()
    model = train_model(args.method, dataset, config, args.out, resume=args.resume, init_from=args.init_from,
                        progress=not args.quiet and distributed.is_main(), keep_checkpoints=args.keep_checkpoints)
    seconds = time.perf_counter() - start
    if not distributed.is_main():  # rank 0 writes the model directory
        distributed.shutdown()
        return 0
    model.save(args.out, extra={"text_variant": dataset.text_variant, "dataset": str(dataset.path),
                                "train_seconds": seconds})
    print(f"trained {args.method} on {dataset.name} ({dataset.train.n_points} points, {dataset.n_labels} labels) "
          f"in {seconds:.1f}s -> {args.out}"
          + (f" ({distributed.world_size()} processes)" if distributed.is_distributed() else ""))
    distributed.shutdown()
    return 0


def save_predictions(path: str | Path, pred: sp.csr_matrix) -> None:
    from xmine.utils import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            sp.save_npz(fh, sp.csr_matrix(pred), compressed=True)

    atomic_write(path, write)


def load_predictions(path: str | Path) -> sp.csr_matrix:
    """A prediction file, validated (index ranges, monotonic indptr, finite numeric scores) before use."""
    from xmine.errors import DataFormatError, ModelError
    from xmine.safeio import load_sparse_npz

    try:
        return load_sparse_npz(path, "predictions")
    except ModelError as exc:
        raise DataFormatError(path, f"not a prediction file written by `xmine predict` ({exc.problem})") from None


def read_input_texts(source: str) -> list[str]:
    """One text per line from a file, or from stdin when `source` is "-" (strict UTF-8)."""
    from xmine.data.text import decode_utf8, split_lines

    name = "<stdin>" if source == "-" else source
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except FileNotFoundError as exc:
        raise XmineError(f"input file not found: {source}") from exc
    except IsADirectoryError as exc:
        raise XmineError(f"{source}: is a directory, expected a file with one text per line") from exc
    return split_lines(decode_utf8(name, data))


def _one_field(text: str | None) -> str:
    # a tab or newline inside a label text would shift the TSV columns
    return "" if text is None else text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def format_predictions(texts: list[str], ranked: list[list[Any]], fmt: str, first_line: int) -> str:
    """JSON lines ({"text", "labels": [{"id", "label", "score"}]}) or TSV rows (line, rank, id, label, score)."""
    if fmt == "jsonl":
        return "".join(json.dumps({"text": text, "labels": [{"id": i, "label": name, "score": score}
                                                           for i, name, score in labels]}, ensure_ascii=False) + "\n"
                       for text, labels in zip(texts, ranked, strict=True))
    return "".join(f"{first_line + n}\t{rank}\t{i}\t{_one_field(name)}\t{score:.6g}\n"
                   for n, labels in enumerate(ranked) for rank, (i, name, score) in enumerate(labels, 1))


def predict_texts(args: argparse.Namespace) -> int:
    """`xmine predict --input`: free texts in, named labels out (stdout or --out)."""
    from tqdm.auto import tqdm

    from xmine.models import load_model
    from xmine.utils import atomic_write

    if args.split != "test" or args.text_variant:
        raise XmineError("--split and --text-variant apply to --data, not --input")
    model = load_model(args.model)
    config = build_predict_config(args)
    model.check_predict_config(config)  # before any output
    args.format = args.format or "jsonl"
    texts = read_input_texts(args.input)
    chunk = 1024  # bounded memory per model call; output streams out chunk by chunk

    def write_all(out: Any) -> None:
        if args.format == "tsv":
            out.write("line\trank\tid\tlabel\tscore\n")
        bar = tqdm(total=len(texts), desc="predict", unit="text", disable=args.quiet or args.out is None)
        for start in range(0, len(texts), chunk):
            part = texts[start:start + chunk]
            out.write(format_predictions(part, model.predict_labels(part, k=args.k, config=config), args.format,
                                         start + 1))
            bar.update(len(part))
        bar.close()

    if args.out is None:
        write_all(sys.stdout)
        sys.stdout.flush()
        return 0

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            write_all(fh)

    atomic_write(args.out, write)
    print(f"predicted top-{args.k} labels for {len(texts)} texts -> {args.out}", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from xmine.data import load_dataset
    from xmine.models import load_model

    if (args.data is None) == (args.input is None):
        raise XmineError("xmine predict needs either --data DIR (a dataset split -> .npz) or --input FILE|- "
                         "(one text per line -> named labels)")
    if args.k is None:
        args.k = 10 if args.input is not None else 100
    if args.k < 1:
        raise XmineError(f"-k must be >= 1, got {args.k}")
    if args.out is not None and Path(args.out).is_dir():  # checked before the model is loaded and run
        raise XmineError(f"--out {args.out} is a directory; give the predictions file to write")
    if args.input is not None:
        return predict_texts(args)
    if args.out is None:
        raise XmineError("xmine predict --data needs --out PRED.npz")
    if args.format is not None:
        raise XmineError("--format applies to --input")
    model = load_model(args.model)
    variant = args.text_variant or _model_text_variant(args.model)
    if variant not in ("full", "title"):  # "none": trained on a dataset without texts (features only)
        variant = "full"
    dataset = load_dataset(args.data, text_variant=variant)
    split = dataset.split(args.split)
    if dataset.n_labels != model.n_labels:
        raise XmineError(f"the model has {model.n_labels} labels, the dataset {dataset.n_labels}")
    start = time.perf_counter()
    pred = model.predict(split, k=args.k, config=build_predict_config(args), progress=not args.quiet)
    seconds = time.perf_counter() - start
    save_predictions(args.out, pred)
    print(f"predicted top-{args.k} for {pred.shape[0]} points in {seconds:.1f}s "
          f"({pred.shape[0] / max(seconds, 1e-9):.0f} points/s) -> {args.out}")
    return 0


def evaluate_split(pred: sp.csr_matrix, dataset: Any, split_name: str, preset: str = "default") -> dict[str, float]:
    from xmine.metrics import PROPENSITY_PRESETS, evaluate, inverse_propensity

    split = dataset.split(split_name)
    if pred.shape != split.labels.shape:
        raise XmineError(f"predictions have shape {pred.shape}, the {split_name} split has {split.labels.shape}")
    a, b = PROPENSITY_PRESETS[preset]
    inv_p = inverse_propensity(dataset.train.labels, a, b)
    return evaluate(pred, split.labels, ks=(1, 3, 5), inv_propensity=inv_p, filter_pairs=split.filter_pairs)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from xmine.data import load_dataset
    from xmine.metrics import format_metrics

    dataset = load_dataset(args.data)
    pred = load_predictions(args.pred)
    metrics: dict[str, Any] = dict(evaluate_split(pred, dataset, args.split, args.propensity))
    buckets = by_frequency(pred, dataset, args.split, args.buckets) if args.by_frequency else None
    if args.json:
        print(json.dumps({**metrics, "by_frequency": buckets} if buckets is not None else metrics))
    else:
        filtered = " (filter_labels applied)" if dataset.split(args.split).filter_pairs is not None else ""
        print(f"{dataset.name} {args.split}: {pred.shape[0]} points{filtered}")
        print(format_metrics(metrics))
        if buckets is not None:
            from xmine.metrics import format_buckets

            print(f"\nby training frequency of the labels ({len(buckets)} buckets, head first; metrics in %):")
            print(format_buckets(buckets))
    return 0


def by_frequency(pred: sp.csr_matrix, dataset: Any, split_name: str, n_buckets: int = 5) -> list[dict[str, float]]:
    """`xmine evaluate --by-frequency`: accuracy per label-frequency bucket of one split's predictions."""
    from xmine.metrics import frequency_bucket_metrics

    split = dataset.test if split_name == "test" else dataset.train
    return frequency_bucket_metrics(pred, split.labels, dataset.train.labels, n_buckets=n_buckets,
                                    filter_pairs=split.filter_pairs)


def cmd_report(args: argparse.Namespace) -> int:
    from xmine.report import parse_pred_arg, write_report

    written = write_report(args.data, [parse_pred_arg(p) for p in args.pred], args.out, model=args.model,
                           split=args.split, n_buckets=args.buckets, propensity=args.propensity,
                           text_variant=args.text_variant)
    print(f"report -> {written[0]} (figures: {', '.join(p.name for p in written[1:])})")
    return 0


METRIC_NOTES = (
    "P@k    precision at k: the share of the k top-scored labels that are correct, averaged over test points",
    "PSP@k  propensity-scored P@k: the same with each correct label weighted by how rare it is (rare labels count "
    "more), as a % of the best achievable",
    "nDCG@k P@k that counts a correct label more the higher it is ranked; R@k: the share of a point's labels in its "
    "top k",
)


def cmd_demo(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from xmine.data import load_dataset
    from xmine.demo import demo_dataset_path
    from xmine.metrics import format_metrics
    from xmine.models import model_class

    data_dir = demo_dataset_path()
    out = Path(args.out)
    dataset = load_dataset(data_dir)
    config = build_config(args.method, args.config, args.set or [], {})
    print(f"xmine demo: {args.method} on the bundled {dataset.name} dataset: disease names -> phenotype terms "
          f"({dataset.train.n_points} train / {dataset.test.n_points} test points, {dataset.n_labels} labels)")
    print(f"  data:  {data_dir}  (unpacked from the package once; set XMINE_CACHE to unpack it elsewhere)")
    print(f"  model: {out}")
    print(textwrap.fill(model_class(args.method).summary, width=110, initial_indent="  ", subsequent_indent="  "),
          flush=True)
    # the demo narrates: stage lines at INFO, printed between the progress bars
    logging.getLogger("xmine").setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    start = time.perf_counter()
    with logging_redirect_tqdm():
        model = train_model(args.method, dataset, config, out, progress=not args.quiet,
                            keep_checkpoints=args.keep_checkpoints)
        model.save(out)
        train_s = time.perf_counter() - start
        size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
        log.info("trained in %.0fs; model saved in %s (%.0f MiB)", train_s, out, size_mb)
        log.info("predicting the top 100 labels of the %d test points", dataset.test.n_points)
        start = time.perf_counter()
        pred = model.predict(dataset.test, k=100, progress=not args.quiet)
        predict_s = time.perf_counter() - start
    save_predictions(out / "test_predictions.npz", pred)
    print(f"\npredicted {pred.shape[0]} points in {predict_s:.1f}s ({pred.shape[0] / max(predict_s, 1e-9):.0f} "
          f"points/s); test metrics in %:")
    print(format_metrics(evaluate_split(pred, dataset, "test")))
    print("\n" + "\n".join(METRIC_NOTES))
    suggestions = [
        (f"xmine predict --model {out} --data {data_dir} --out pred.npz", "predict again (top 100 per point)"),
        (f"xmine evaluate --data {data_dir} --pred pred.npz", "score the predictions"),
        (f"echo 'Marfan syndrome' | xmine predict --model {out} --input - -k 5", "label names for your own text"),
        (f"xmine report --data {data_dir} --pred ngame=pred.npz --model {out} --out report.html",
         "accuracy by label frequency, as a web page"),
        (f"xmine serve --model {out}", "an HTTP service (docs/serving.md)"),
        (f"xmine train --data {data_dir} --out my-model --set siamese.epochs=5", "train with other settings"),
        ("xmine train --help", "every option, with its default"),
    ]
    width = max(len(command) for command, _ in suggestions)
    print("\nNext, try:")
    for command, what in suggestions:
        print(f"  {command.ljust(width)}  # {what}")
    print("Your own data: a folder in one of the layouts of docs/data-formats.md, then "
          "xmine train --data FOLDER --out MODEL")
    return 0


SERVE_FLAGS = ("host", "port", "max_batch_texts", "max_wait_ms", "max_texts_per_request", "max_chars_per_text",
               "max_body_bytes", "max_concurrent_requests", "default_k", "graceful_timeout_s", "access_log", "threads")


def cmd_serve(args: argparse.Namespace) -> int:
    from xmine.serve import ServeConfig, serve

    config = ServeConfig.load(args.config) if args.config else ServeConfig()
    changes = {name: getattr(args, name) for name in SERVE_FLAGS if getattr(args, name) is not None}
    return serve(args.model, config.replace(**changes))


def add_serve_parser(sub: Any) -> None:
    srv = sub.add_parser("serve", allow_abbrev=False, help="serve a model over HTTP (FastAPI + uvicorn)",
                         description="Serve a trained model: POST /predict {\"inputs\": [...], \"k\": 10}, "
                         "GET /health, /info, /metrics (Prometheus), /docs. Concurrent requests are batched into "
                         "one model call. SIGTERM drains in-flight requests and exits 0. Settings: defaults < "
                         "--config FILE (JSON) < flags. See docs/serving.md.")
    srv.add_argument("--model", required=True, help="model directory")
    srv.add_argument("--config", help="JSON file of server settings (the flags below, snake_case)")
    srv.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    srv.add_argument("--max-batch-texts", type=int, help="texts per merged model call (default 64)")
    srv.add_argument("--max-wait-ms", type=float, help="how long a batch waits for more requests (default 2)")
    srv.add_argument("--max-texts-per-request", type=int, help="default 256; more: 413")
    srv.add_argument("--max-chars-per-text", type=int, help="longer texts are truncated (default 5000)")
    srv.add_argument("--max-body-bytes", type=int, help="default 2 MiB; larger bodies: 413")
    srv.add_argument("--max-concurrent-requests", type=int,
                     help="/predict requests in progress at once (default 256); beyond: 429 at once")
    srv.add_argument("--default-k", type=int, help="k when a request gives none (default 10)")
    srv.add_argument("--graceful-timeout-s", type=float, help="SIGTERM: time allowed to finish requests (default 30)")
    srv.add_argument("--access-log", action="store_true", default=None, help="log every request")
    srv.add_argument("--threads", type=int, help="threads of the model call (torch, faiss, numba; default: all cores)")
    srv.set_defaults(func=cmd_serve)
# ------------------------------------------------------------------------------------------ labels
def cmd_labels(args: argparse.Namespace) -> int:
    """Change a trained model's label set in place (the directory is swapped atomically)."""
    from xmine import labels
    from xmine.models import load_model

    model = load_model(args.model)
    if getattr(args, "set", None):
        set_new_labels_config(model, args.set)
    if args.labels_command == "add":
        texts, ids = labels.read_label_file(args.labels)
        new = labels.add_labels(model, texts, ids if any(i is not None for i in ids) else None)
        done = f"added {len(new)} labels (ids {new[0]}..{new[-1]})"
    else:
        items = labels.read_id_file(args.ids)
        if not items:
            raise XmineError(f"{args.ids}: no label ids (the file is empty)")
        resolved = labels.resolve_labels(model, items, source=args.ids)
        change = labels.disable_labels if args.labels_command == "disable" else labels.enable_labels
        change(model, resolved.tolist())
        done = f"{args.labels_command}d {len(np.unique(resolved))} labels"
    labels.update_model_dir(model, args.model)
    state = labels.label_state(model)
    print(f"{done}; {args.model}: {model.n_labels} labels ({state.n_added} added after training, "
          f"{len(state.disabled)} disabled)")
    return 0


def set_new_labels_config(model: Any, overrides: list[str]) -> None:
    """`xmine labels add --set key=value`: the model's NewLabelsConfig (stored with its label state)."""
    from xmine.config import NewLabelsConfig
    from xmine.labels import label_state
    from xmine.models import NGAME

    if not isinstance(model, NGAME):
        raise XmineError("--set applies to NGAME models (how their added labels are scored)")
    state = label_state(model)
    data = state.config.to_dict()
    _apply_overrides(data, overrides, "--set")
    state.config = NewLabelsConfig.from_dict(data, where="--set")


def add_labels_parser(sub: Any) -> None:
    cmd = sub.add_parser("labels", help="add labels to a trained NGAME model by text, disable or enable labels",
                         description="Change a trained model's label set without retraining (docs/new-labels.md).")
    labels_sub = cmd.add_subparsers(dest="labels_command", required=True)
    add = labels_sub.add_parser("add", help="add labels by text (NGAME)")
    add.add_argument("--model", required=True, help="model directory (updated in place, atomically)")
    add.add_argument("--labels", required=True, help="UTF-8 file, one label per line: `text`, or `id<TAB>text` "
                     "on every line")
    add.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="how the model scores added labels (NewLabelsConfig, kept with the model), e.g. "
                     "rank_margin=0.02 or scores=as_is; repeatable")
    for name, what in (("disable", "stop labels from being predicted (reversible)"),
                       ("enable", "let disabled labels be predicted again")):
        p = labels_sub.add_parser(name, help=what)
        p.add_argument("--model", required=True, help="model directory (updated in place, atomically)")
        p.add_argument("--ids", required=True, help="file with one label per line: a label id given when it was "
                       "added (or a label name of the model), or a label index")
    cmd.set_defaults(func=cmd_labels)


# ------------------------------------------------------------------------------------------ parser
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except empty ones (None: the configuration decides; False: a switch)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or isinstance(action.default, list):
            return action.help
        return super()._get_help_string(action)


def _config_defaults(flag: str) -> str:
    """' (config default: ngame X, mips Y)': what a dedicated flag sets when it is not given."""
    from xmine.config import METHOD_CONFIGS

    values = []
    for method, paths in FLAG_PATHS.get(flag, {}).items():
        node: Any = METHOD_CONFIGS[method]().to_dict()
        for key in paths[0].split("."):
            node = node[key]
        values.append(f"{method} {'auto' if node is None else json.dumps(node)}")
    return f" (config default: {', '.join(values)})" if values else ""


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False everywhere: a prefix such as --text must never be taken for --text-variant
    parser = argparse.ArgumentParser(prog="xmine", description="Extreme multi-label classification: NGAME, "
                                     "MIPS negative sampling and baselines.", allow_abbrev=False)
    parser.add_argument("-V", "--version", action="version", version=f"xmine {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress lines (per epoch etc.)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command")
    formatter = {"formatter_class": _HelpFormatter, "allow_abbrev": False}

    data = sub.add_parser("data", **formatter, help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    stats = data_sub.add_parser("stats", **formatter, help="print a dataset's statistics")
    stats.add_argument("dir")
    stats.add_argument("--text-variant", choices=["full", "title"], default="full")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_data_stats)
    demo_data = data_sub.add_parser("demo", **formatter,
                                    help="unpack the bundled demo dataset (once) and print its folder",
                                    description="Unpack the bundled HPO demo dataset into $XMINE_CACHE/demo "
                                    "(default ~/.cache/xmine/demo) unless it is there, and print its folder.")
    demo_data.set_defaults(func=cmd_data_demo)

    train = sub.add_parser("train", **formatter, help="train a model",
                           description="Train a model. Configuration: defaults "
                           "< --config FILE (JSON, or a preset name: ngame-paper, mips-paper, fast) < --set < flags. "
                           "Data-parallel (ngame, mips): torchrun --nproc-per-node N -m xmine train ... "
                           "(gloo on CPUs, NCCL on GPUs; siamese.batch_size is then the global batch).")
    train.add_argument("--data", help="dataset directory")
    train.add_argument("--out", help="model directory to write")
    train.add_argument("--method", choices=["ngame", "mips", "knn"], default="ngame", help="what to train")
    train.add_argument("--config", help="JSON config file, or a preset name (ngame-paper, mips-paper, fast)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override any config value, e.g. --set siamese.lr=1e-3 (repeatable)")
    train.add_argument("--print-default-config", action="store_true",
                       help="print the full configuration (defaults + overrides) as JSON and exit")
    train.add_argument("--text-variant", choices=["full", "title"], default="full",
                       help="the dataset's texts to train on (title: trn_X_title.txt, where the dataset has them)")
    train.add_argument("--resume", action="store_true",
                       help="continue from the checkpoints in --out (written at the end of an epoch, at most every "
                            "siamese.checkpoint_every_s / classifier.checkpoint_every_s seconds, and after each loop's "
                            "last epoch)")
    train.add_argument("--keep-checkpoints", action="store_true",
                       help="keep the training checkpoints (optimizer states, for --resume) in --out/checkpoints "
                            "after training has finished; by default they are deleted then")
    train.add_argument("--stages", help="NGAME stages to run: 1, 2 or 1,2 (default)")
    train.add_argument("--init-from", help="NGAME --stages 2: the saved stage-1 model directory")
    train.add_argument("--encoder", choices=["bow", "transformer", "cached"], help="text encoder")
    train.add_argument("--epochs", type=int, help="NGAME stage-1 epochs; MIPS classifier epochs")
    train.add_argument("--classifier-epochs", type=int, help="classifier epochs (NGAME stage 2, MIPS)")
    train.add_argument("--batching", choices=["clusters", "random"], help="NGAME stage-1 batches")
    train.add_argument("--loss", choices=["infonce", "triplet", "infonce_then_triplet"], help="NGAME stage-1 loss")
    train.add_argument("--batch-size", type=int, help="training batch")
    train.add_argument("--seed", type=int, help="random seed")
    train.add_argument("--features", choices=["dense", "sparse", "dense+sparse"], help="classifier features")
    train.add_argument("--fusion", choices=["learned", "fixed"], help="NGAME score fusion")
    train.add_argument("--index", choices=["exact", "hnsw", "ivf"], help="nearest-neighbour index")
    train.add_argument("--threads", type=int, help="torch/faiss threads")
    train.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    train.add_argument("--max-length", type=int, help="tokens per text")
    train.add_argument("--mips-negatives", type=int, help="MIPS: hard negatives per point")
    train.add_argument("--uniform-negatives", type=int, help="MIPS: uniform negatives per point")
    train.add_argument("--reindex-every", type=int, help="MIPS index rebuild interval, in steps")
    train.add_argument("--warmup-epochs", type=int, help="epochs of uniform negatives before MIPS negatives")
    train.add_argument("--neighbours", type=int, help="knn baseline: neighbours that vote")
    train.add_argument("--lead-channel", choices=["auto", "on", "off"],
                       help="TF-IDF of each text's first tfidf.lead_words words as a second feature block "
                            "(auto: when the median training text is longer than twice that)")
    for action in train._actions:
        if action.dest in FLAG_PATHS and action.help:
            action.help += _config_defaults(action.dest).replace("%", "%%")
    train.set_defaults(func=cmd_train)

    predict = sub.add_parser("predict", **formatter,
                             help="predict top-k labels for free texts or a dataset split",
                             description="Either --input FILE|- (one text per line; '-' reads stdin) -> one JSON "
                             "line {text, labels: [{id, label, score}]} or TSV rows (line, rank, id, label, score) "
                             "per text, to stdout or --out; or --data DIR -> a CSR score matrix (.npz) for "
                             "`xmine evaluate`.")
    predict.add_argument("--model", required=True)
    predict.add_argument("--input", help="text file, one text per line; '-' for stdin")
    predict.add_argument("--format", choices=["jsonl", "tsv"], help="--input output format (default jsonl)")
    predict.add_argument("--data", help="dataset directory (predicts its --split)")
    predict.add_argument("--split", choices=["test", "train"], default="test", help="--data: the split to predict")
    predict.add_argument("--out", help="--data: predictions file (.npz, a CSR score matrix), required; "
                         "--input: output file (default stdout)")
    predict.add_argument("-k", type=int, help="labels per text (default 10 with --input, 100 with --data)")
    predict.add_argument("--scores", choices=["fused", "encoder", "classifier", "ranker"], default="fused",
                         help="NGAME: which scores to return")
    predict.add_argument("--predict-set", action="append", default=[], metavar="KEY=VALUE",
                         help="NGAME prediction setting (PredictConfig), e.g. --predict-set shortlist_size=50, "
                         "ef_search=64, nprobe=16, knn_shortlist=0, classifier_index=false, batch_size=256 "
                         "(repeatable)")
    predict.add_argument("--text-variant", choices=["full", "title"], help="default: the one the model trained on")
    predict.set_defaults(func=cmd_predict)

    ev = sub.add_parser("evaluate", **formatter, help="P@k, nDCG@k, PSP@k, R@k of a predictions file")
    ev.add_argument("--data", required=True)
    ev.add_argument("--pred", required=True)
    ev.add_argument("--split", choices=["test", "train"], default="test", help="the split the predictions are of")
    ev.add_argument("--propensity", choices=["default", "amazon", "wikipedia"], default="default",
                    help="propensity model (A, B): default (0.55, 1.5), amazon (0.6, 2.6), wikipedia (0.5, 0.4)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--by-frequency", action="store_true",
                    help="also P@5 contribution, precision, recall and coverage per label-frequency bucket "
                         "(head to tail, equal training positives per bucket)")
    ev.add_argument("--buckets", type=int, default=5, help="number of frequency buckets (default 5)")
    ev.set_defaults(func=cmd_evaluate)

    rep = sub.add_parser("report", help="one self-contained HTML report comparing prediction files",
                         description="Accuracy by label frequency (head to tail), P@k/PSP@k, recall@k curves, "
                         "label coverage, per-point comparisons with example texts, and (with --model) training "
                         "curves: one HTML file with inline images, plus the figures as PNG files beside it.")
    rep.add_argument("--data", required=True, help="dataset directory")
    rep.add_argument("--pred", action="append", required=True, metavar="NAME=PRED.npz",
                     help="a method's predictions (CSR .npz as `xmine predict` writes); repeat to compare")
    rep.add_argument("--model", help="a trained model directory: adds its training curves (history.json)")
    rep.add_argument("--out", required=True, help="the HTML file to write (PNGs go beside it)")
    rep.add_argument("--split", choices=["test", "train"], default="test")
    rep.add_argument("--buckets", type=int, default=5, help="label-frequency buckets (default 5)")
    rep.add_argument("--propensity", choices=["default", "amazon", "wikipedia"], default="default")
    rep.add_argument("--text-variant", choices=["full", "title"], default="full",
                     help="point texts shown in the examples (default full)")
    rep.set_defaults(func=cmd_report)

    demo = sub.add_parser("demo", **formatter, help="train, predict and evaluate on the bundled HPO dataset",
                          description="Train a model on the bundled HPO dataset (disease name -> phenotype terms), "
                          "predict the test split and evaluate it, saying what each stage does. The data is "
                          "unpacked once into $XMINE_CACHE/demo (default ~/.cache/xmine/demo).")
    demo.add_argument("--out", default="xmine-demo-model", help="model directory to write")
    demo.add_argument("--method", choices=["ngame", "mips", "knn"], default="ngame", help="what to train")
    demo.add_argument("--config", help="JSON config file or preset name")
    demo.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config value (repeatable)")
    demo.add_argument("--keep-checkpoints", action="store_true", help="keep the training checkpoints")
    demo.set_defaults(func=cmd_demo)

    add_serve_parser(sub)
    add_labels_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging(args.verbose)
    if args.quiet:
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        return args.func(args)
    except BrokenPipeError:
        # the reader went away (`xmine ... | head`): stop quietly, as a killed-by-SIGPIPE process would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except XmineError as exc:
        print(f"xmine: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # pragma: no cover
        print("xmine: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
