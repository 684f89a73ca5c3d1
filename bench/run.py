"""The side-by-side benchmark: xmine's methods and the peer libraries, same data, same run, this machine.

  python -m bench.run                       # main suite, all datasets (about 50 min on 2 cores with --force)
  python -m bench.run --quick               # minutes: HPO and Bibtex, short schedules
  python -m bench.run --suite mips          # MIPS negative-sampling ablation
  python -m bench.run --suite ngame         # NGAME stage-1 ablation (random vs cluster batches, losses)
  python -m bench.run --update-readme       # also write docs/benchmarks.md's tables and README.md's summary
  python -m bench.run --report --update-readme   # measure nothing: rebuild both from the stored results

Every run is its own process (peak memory is that run's alone) and writes bench/results/<suite>/<run>.json;
existing results are reused unless --force. Peers run in their own virtual environment (bench/setup_peers.sh),
on TF-IDF features computed by bench/prepare_features.py from the same training texts. Paths in result files are
relative to the repository. Run from the repository root.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.blocks import BENCHMARKS_DOC, README, REPO, repo_relative, update_block

BENCH = REPO / "bench"
DATA = Path(os.environ.get("XMINE_BENCH_DATA", REPO.parent / "shared" / "data"))
PEERS_PY = BENCH / ".venv-peers" / "bin" / "python"

# (key, folder, text variant, has real text)
DATASETS = {
    "hpo": ("hpo-disease-phenotype", "full", True),
    "bibtex": ("mldr-bibtex", "full", False),
    "delicious": ("mldr-delicious", "full", False),
    "debian-title": ("debian-related", "title", True),
    "debian-full": ("debian-related", "full", True),
    "pypi-keywords": ("pypi-keywords", "full", True),
    "pypi-deps": ("pypi-deps", "full", True),
}
# datasets the project builds itself from a snapshot it ships (bench/datasets/<module>.py), into bench/data/
PROJECT_BUILT = {"pypi-keywords": "pypi_keywords", "pypi-deps": "pypi_deps"}


def dataset_dir(folder: str) -> Path:
    """Where a bench dataset lives: ../shared/data (or $XMINE_BENCH_DATA), or bench/data for the datasets the
    project builds itself, built from their snapshot on first use."""
    if folder not in PROJECT_BUILT:
        return DATA / folder
    out = BENCH / "data" / folder
    if not out.is_dir():
        builder = importlib.import_module(f"bench.datasets.{PROJECT_BUILT[folder]}")
        print(f"building {out} from {builder.SNAPSHOT.name}", flush=True)
        builder.build(builder.SNAPSHOT, out)
    return out


QUICK_SETS = ["siamese.epochs=6", "classifier.epochs=3"]
# the zero-shot MiniLM row runs where texts are short: the transformer sees at most 32 tokens
SHORT_TEXTS = ("hpo", "debian-title", "pypi-keywords", "pypi-deps")


def xmine_runs(suite: str, dataset: str, quick: bool) -> list[tuple[str, str, list[str]]]:
    """(label, method, --set overrides or "@preset") of the xmine runs of a suite on a dataset."""
    extra = QUICK_SETS if quick else []
    if suite == "main":
        runs = [("knn baseline", "knn", []),
                ("NGAME", "ngame", extra),
                ("NGAME fast", "ngame", ["@fast"] + extra),
                ("NGAME stage 1, random batches", "ngame", ["stages=[1]", "siamese.batching=random"] + extra[:1]),
                ("MIPS negatives", "mips", ["classifier.epochs=3"] if quick else [])]
        if dataset in SHORT_TEXTS:
            runs.insert(1, ("MiniLM zero-shot", "zeroshot", []))
        return runs
    if suite == "ngame":
        base = ["stages=[1]"] + extra[:1]
        return [("stage 1 clusters, InfoNCE", "ngame", base),
                ("stage 1 random, InfoNCE", "ngame", base + ["siamese.batching=random"]),
                ("stage 1 clusters, triplet (paper)", "ngame", base + ["siamese.loss=triplet"]),
                ("stage 1 clusters, InfoNCE then triplet", "ngame", base + ["siamese.loss=infonce_then_triplet"]),
                ("stage 1 cached MiniLM, clusters", "ngame", base + ["encoder.kind=cached"]),
                ("stage 1 cached MiniLM, random", "ngame", base + ["encoder.kind=cached", "siamese.batching=random"])]
    if suite == "mips":
        ep = ["classifier.epochs=3"] if quick else []
        return [("uniform only", "mips", ep + ["mips.mips_negatives=0", "mips.uniform_negatives=205"]),
                ("MIPS only, reindex 50", "mips", ep + ["mips.mips_negatives=100", "mips.uniform_negatives=0",
                                                       "mips.reindex_every=50"]),
                ("MIPS only, reindex 500", "mips", ep + ["mips.mips_negatives=100", "mips.uniform_negatives=0",
                                                        "mips.reindex_every=500"]),
                ("mix 5 MIPS + 200 uniform", "mips", ep),
                ("mix, no warm-up", "mips", ep + ["mips.warmup_epochs=0"]),
                ("NGAME", "ngame", extra)]  # the issue asks for NGAME in the same table
    raise SystemExit(f"unknown suite {suite}")


def run(cmd: list[str], log: Path) -> bool:
    print("  $", " ".join(cmd), flush=True)
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"})
    if proc.returncode != 0:
        print(f"  FAILED (see {log})", flush=True)
    return proc.returncode == 0


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def run_suite(suite: str, datasets: list[str], quick: bool, force: bool, peers: bool, threads: int,
              exclude: set[str] = frozenset(), measure: bool = True) -> list[dict]:
    """Run what is missing (everything with `force`; nothing unless `measure`) and return the suite's results."""
    out_dir = BENCH / "results" / (suite + ("-quick" if quick else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for key in datasets:
        folder, variant, _ = DATASETS[key]
        data = dataset_dir(folder)
        print(f"== {key} ({data}, {variant})", flush=True)
        for label, method, sets in xmine_runs(suite, key, quick):
            if f"{key}:{label}" in exclude:
                print(f"  skipped (--exclude): {label}", flush=True)
                continue
            out = out_dir / f"{key}__{slug(label)}.json"
            if measure and (force or not out.exists()):
                cmd = [sys.executable, "-m", "bench.run_xmine", "--method", method, "--data", str(data),
                       "--text-variant", variant, "--label", label, "--threads", str(threads), "--out", str(out)]
                for s in sets:  # "@name": a preset (--config name); the rest: --set overrides
                    cmd += ["--config", s[1:]] if s.startswith("@") else ["--set", s]
                run(cmd, out.with_suffix(".log"))
            if out.exists():
                results.append({**json.loads(out.read_text()), "dataset_key": key})
        if peers and suite == "main":
            if measure:
                results += run_peers(key, data, variant, out_dir, force, threads)
            else:
                outs = [out_dir / f"{key}__peer-{method}{suffix}.json" for suffix in ("", LEAD_FILE_SUFFIX)
                        for method, _ in PEERS]
                results += [{**json.loads(out.read_text()), "dataset_key": key} for out in outs if out.exists()]
    return results


# peers on xmine's features (TF-IDF with a lead channel): result files end in LEAD_FILE_SUFFIX, labels in LEAD_LABEL
LEAD_FILE_SUFFIX = "-lead"
LEAD_LABEL = " + lead channel"


PEERS = (("pecos", "PECOS XR-Linear"), ("omikuji", "Omikuji Parabel"), ("napkinxc", "napkinXC PLT"))


def run_peers(key: str, data: Path, variant: str, out_dir: Path, force: bool, threads: int) -> list[dict]:
    results = []
    # the peers' standard features, and -- where xmine's own featurizer adds a lead channel -- xmine's features,
    # so that the table separates what the features give from what the model gives
    for lead in ("off", "auto"):
        suffix = "" if lead == "off" else LEAD_FILE_SUFFIX
        outs = [out_dir / f"{key}__peer-{method}{suffix}.json" for method, _ in PEERS]
        if not force and all(out.exists() for out in outs):  # nothing to run: no features, no peers venv needed
            results += [{**json.loads(out.read_text()), "dataset_key": key} for out in outs]
            continue
        feats = out_dir / "features" / f"{key}{suffix}"
        if force or not (feats / "meta.json").exists():
            run([sys.executable, "-m", "bench.prepare_features", "--data", str(data), "--text-variant", variant,
                 "--lead-channel", lead, "--out", repo_relative(feats)], out_dir / f"{key}__features{suffix}.log")
        if lead != "off" and not json.loads((feats / "meta.json").read_text()).get("lead_words"):
            continue
        if not PEERS_PY.exists():  # the tables keep the peers' stored results, if any
            print("  peers not run (bash bench/setup_peers.sh first): their stored results are used", flush=True)
            results += [{**json.loads(out.read_text()), "dataset_key": key} for out in outs if out.exists()]
            continue
        results += run_peers_on(key, data, variant, out_dir, feats, suffix, force, threads)
    return results


def run_peers_on(key: str, data: Path, variant: str, out_dir: Path, feats: Path, suffix: str, force: bool,
                 threads: int) -> list[dict]:
    results = []
    for method, label in PEERS:
        label += LEAD_LABEL if suffix else ""
        out = out_dir / f"{key}__peer-{method}{suffix}.json"
        if force or not out.exists():
            ok = run([str(PEERS_PY), "-m", "bench.peers", "--method", method, "--features-dir", repo_relative(feats),
                      "--threads", str(threads), "--out", str(out)], out.with_suffix(".log"))
            if ok:
                score = subprocess.run([sys.executable, "-m", "bench.score_predictions", "--data", str(data),
                                        "--text-variant", variant, "--pred", str(feats / f"pred_{method}.npz")],
                                       capture_output=True, text=True, cwd=REPO,
                                       env={**os.environ, "PYTHONPATH": str(REPO)})
                peer = json.loads(out.read_text())
                peer["metrics"] = {"model": json.loads(score.stdout.strip().splitlines()[-1])}
                peer["label"] = label
                out.write_text(json.dumps(peer, indent=2))
        if out.exists():
            results.append({**json.loads(out.read_text()), "dataset_key": key})
    return results


def negatives_cost(r: dict) -> str:
    """MIPS runs: seconds spent re-indexing + searching for negatives, and their share of the training time."""
    hist = r.get("history") or {}
    if r.get("method") != "mips" or "epochs" not in hist:
        return ""
    reindex = hist.get("reindex_seconds", 0.0)
    search = sum(e.get("negatives_seconds", 0.0) for e in hist["epochs"])
    total = r.get("train_seconds") or hist.get("train_seconds") or float("nan")
    return f"{reindex:.1f} + {search:.1f} ({100 * (reindex + search) / total:.0f}%)"


def kept(r: dict) -> bool:
    """Whether an xmine run's model size includes its training checkpoints (results written before run_xmine
    recorded `model_has_checkpoints` kept them)."""
    if r.get("package") or r.get("method") == "knn" or r.get("model_size_mb") is None:
        return False
    return r.get("model_has_checkpoints", True)


def table(results: list[dict], negatives_column: bool = False) -> str:
    head = ("| dataset | method | scores | P@1 | P@3 | P@5 | nDCG@5 | PSP@1 | PSP@3 | PSP@5 | train s (x PECOS) | "
            + ("re-index + negatives s (share of train) | " if negatives_column else "")
            + "predict pts/s (x PECOS) | latency p50/p99 ms | peak MiB | model MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    pecos = {r["dataset_key"]: r for r in results if r.get("label") == PECOS_LABEL}
    for r in results:
        ref = pecos.get(r["dataset_key"])
        for kind, m in r.get("metrics", {}).items():
            first = kind == next(iter(r["metrics"]))
            timing = [_seconds(r.get("train_seconds", 0)) + _ratio(r, ref, "train_seconds")] + (
                [negatives_cost(r)] if negatives_column else []) + [
                f"{r.get('predict_points_per_s', 0):.0f}" + _ratio(r, ref, "predict_points_per_s"),
                f"{r.get('latency_ms_p50', 0):.1f} / {r.get('latency_ms_p99', 0):.1f}",
                f"{r.get('peak_rss_mb', 0):.0f}",
                "" if r.get("model_size_mb") is None else f"{r['model_size_mb']:.0f}" + ("*" if kept(r) else "")]
            if not first:
                timing = [""] * len(timing)
            cells = [r["dataset_key"], r["label"] if first else "", kind if kind != "model" else ""]
            cells += [f"{m.get(k, float('nan')):.2f}" for k in ("P@1", "P@3", "P@5", "nDCG@5", "PSP@1", "PSP@3",
                                                                 "PSP@5")]
            lines.append("| " + " | ".join(cells + timing) + " |")
    return "\n".join(lines)


PECOS_LABEL = "PECOS XR-Linear"  # the reference of the ratio columns: the peers' fastest, on standard features


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _ratio(r: dict, ref: dict | None, key: str) -> str:
    """` (3.2x)`: r's value of `key` as a multiple of the reference run's (empty without one)."""
    if ref is None or r is ref or not ref.get(key) or r.get(key) is None:
        return ""
    x = r[key] / ref[key]
    return f" ({x:.2g}x)" if x < 10 else f" ({x:.0f}x)"


# per-stage seconds in an NGAME run's history (stage 2's steps) and in its batched prediction
TRAIN_STAGES = (("stage 1", "stage1_seconds"), ("TF-IDF", "tfidf_seconds"),
                ("encode points", "encode_points_seconds"), ("shortlist", "shortlist_seconds"),
                ("classifiers", "classifiers_seconds"), ("ranker fit", "ranker_fit_seconds"),
                ("fusion", "fusion_seconds"), ("ranker refit", "ranker_refit_seconds"),
                ("ranker total", "ranker_seconds"), ("stage 2", "stage2_seconds"))
PREDICT_STAGES = ("encode", "featurize", "search", "score", "fuse")


def stage_table(results: list[dict]) -> str:
    """Where an NGAME run's time goes: training per stage (stage 2 per step) and batched prediction per step, in
    seconds (empty: not recorded by the version that produced the result)."""
    head = ("| dataset | run | " + " | ".join(name for name, _ in TRAIN_STAGES) + " | train total | predict: "
            + " / ".join(PREDICT_STAGES) + " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        if r.get("method") != "ngame" or "stage2_seconds" not in r.get("history", {}):
            continue
        h = r["history"]
        cells = [f"{h[key]:.1f}" if key in h else "" for _, key in TRAIN_STAGES]
        ps = r.get("predict_stage_seconds", {})
        predict = " / ".join(f"{ps[k]:.1f}" for k in PREDICT_STAGES) if ps else ""
        lines.append(f"| {r['dataset_key']} | {r['label']} | " + " | ".join(cells)
                     + f" | {r.get('train_seconds', 0):.0f} | {predict} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def pareto_plot(results: list[dict], path: Path) -> bool:
    """Per dataset, P@1 and PSP@5 against training seconds (log axis) for every xmine run with a model and every
    peer: the cost/accuracy trade-off at a glance. Returns whether a plot was written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    keys = [k for k in dict.fromkeys(r["dataset_key"] for r in results)]
    if not keys:
        return False
    fig, axes = plt.subplots(2, len(keys), figsize=(3.6 * len(keys), 6.4), squeeze=False)
    markers = {}
    for col, key in enumerate(keys):
        rows = [r for r in results if r["dataset_key"] == key and r.get("train_seconds")]
        for row_i, metric in enumerate(("P@1", "PSP@5")):
            ax = axes[row_i][col]
            for r in rows:
                kind = "fused" if "fused" in r["metrics"] else next(iter(r["metrics"]))
                label = r["label"]
                marker = markers.setdefault(label, "osD^v<>pP*hX"[len(markers) % 12])
                peer = bool(r.get("package"))
                ax.scatter(r["train_seconds"], r["metrics"][kind][metric], marker=marker, s=36,
                           color="tab:gray" if peer else "tab:blue", label=label)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # a narrow span labels its minor ticks, overlapping
            ax.grid(True, alpha=0.3)
            if row_i == 0:
                ax.set_title(key)
            if row_i == 1:
                ax.set_xlabel("training seconds (log)")
            if col == 0:
                ax.set_ylabel(f"{metric} (%)")
    handles = {}
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), 5), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _versus(ngame: dict, peers: list[tuple[str, dict]]) -> tuple[str, str, str]:
    """Best peer P@1 and PSP@5 cells, and the verdict of NGAME against them."""
    best_p1 = max(peers, key=lambda p: p[1]["P@1"])
    best_psp = max(peers, key=lambda p: p[1]["PSP@5"])
    wins = [name for name, ours, theirs in (("P@1", ngame["P@1"], best_p1[1]["P@1"]),
                                            ("PSP@5", ngame["PSP@5"], best_psp[1]["PSP@5"])) if ours > theirs]
    verdict = "wins both" if len(wins) == 2 else (f"wins {wins[0]} only" if wins else "loses both")
    return (f"{best_p1[1]['P@1']:.2f} ({best_p1[0]})", f"{best_psp[1]['PSP@5']:.2f} ({best_psp[0]})", verdict)


def summary(results: list[dict]) -> str:
    """Per dataset: xmine's NGAME (fused) against the best peer on P@1 and PSP@5 -- on the peers' standard
    features, and, where xmine's featurizer adds a lead channel, against the peers given xmine's features."""
    lines = ["| dataset | NGAME fused P@1 | best peer P@1 | NGAME fused PSP@5 | best peer PSP@5 | verdict | "
             "peers on xmine's features: best P@1 / PSP@5, verdict |", "|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys(r["dataset_key"] for r in results):
        rows = [r for r in results if r["dataset_key"] == key]
        ngame = next((r["metrics"]["fused"] for r in rows if r["label"] == "NGAME" and "fused" in r["metrics"]), None)
        peers = [(r["label"], r["metrics"]["model"]) for r in rows if r.get("package")]
        standard = [p for p in peers if not p[0].endswith(LEAD_LABEL)]
        lead = [p for p in peers if p[0].endswith(LEAD_LABEL)]
        if ngame is None or not standard:
            continue
        p1, psp, verdict = _versus(ngame, standard)
        same = "same as standard (no lead channel)"
        if lead:
            lead_p1, lead_psp, lead_verdict = _versus(ngame, lead)
            same = f"{lead_p1} / {lead_psp}, {lead_verdict}"
        lines.append(f"| {key} | {ngame['P@1']:.2f} | {p1} | {ngame['PSP@5']:.2f} | {psp} | {verdict} | {same} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def short_summary(results: list[dict]) -> str:
    """README.md's five rows: per dataset, NGAME (fused) against the best peer result on each metric, over every
    peer row (the peers on their standard features and, where run, on xmine's features)."""
    lines = ["| dataset | xmine NGAME P@1 / PSP@5 | best peer P@1 / PSP@5 | verdict | NGAME train s (x PECOS) | "
             "NGAME predict texts/s (x PECOS) |", "|---|---|---|---|---|---|"]
    for key in dict.fromkeys(r["dataset_key"] for r in results):
        rows = [r for r in results if r["dataset_key"] == key]
        run = next((r for r in rows if r["label"] == "NGAME" and "fused" in r["metrics"]), None)
        ngame = run["metrics"]["fused"] if run else None
        pecos = next((r for r in rows if r.get("method") == "pecos" and r["label"] == PEERS[0][1]), None)
        peers = [(r["label"], r["metrics"]["model"]) for r in rows if r.get("package")]
        if ngame is None or not peers:
            continue
        p1, psp, verdict = _versus(ngame, peers)
        same_peer = p1.split(" ", 1)[1] == psp.split(" ", 1)[1]  # one peer is best on both: name it once
        best = f"{p1.split(' ', 1)[0]} / {psp}" if same_peer else f"{p1} / {psp}"
        labels = next((r["n_labels"] for r in rows if r.get("n_labels")), None)
        name = f"{key} ({labels:,} labels)" if labels else key
        cost = (f"{_seconds(run['train_seconds'])}{_ratio(run, pecos, 'train_seconds')} | "
                f"{run.get('predict_points_per_s', 0):.0f}{_ratio(run, pecos, 'predict_points_per_s')}")
        lines.append(f"| {name} | {ngame['P@1']:.2f} / {ngame['PSP@5']:.2f} | {best} | {verdict} | {cost} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def cpu_model() -> str:
    """The CPU's model name and the widest vector instructions torch uses on it (e.g. "AMD EPYC, AVX2"): the
    sessions' machines differ in both, and so do their timings and which product kernels are fastest."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            name = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), name)
    except OSError:
        pass
    try:
        import torch

        return f"{name}, {torch.backends.cpu.get_cpu_capability()}"
    except (ImportError, AttributeError):
        return name


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except ImportError:
        gpu = "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu_model()}), {mem:.0f} GiB RAM, {gpu}"


def describe(meta: dict, suite: str, quick: bool, results: list[dict]) -> str:
    """The paragraph above the tables: when, where and how the results were measured, and how to read them."""
    checkpoints = (" `model MiB` is the model directory on disk; * marks xmine models measured with their training "
                   "checkpoints (optimizer states) still in it." if any(kept(r) for r in results)
                   else " `model MiB` is the model directory on disk.")
    return (f"Measured {meta['date']} on {meta['machine']}, {meta['threads']} threads per run, with "
            f"`{meta['command']}` (suite `{suite}`{', quick' if quick else ''}). "
            "Test split of each dataset; metrics in %; PSP with A=0.55, B=1.5; filter_labels applied. "
            "Peers on TF-IDF word 1–2-gram features (sublinear tf, min_df 2, L2 rows) of the same training texts, "
            "given features for Delicious/Bibtex; xmine on raw text (plus those TF-IDF features in its "
            "classifiers and sparse ranker, with a lead channel -- the TF-IDF of each text's first 12 words -- "
            "where texts are long: debian full texts). Rows marked `+ lead channel` are the peers on xmine's "
            "features. For NGAME, `scores` shows the fused model and the sources it fuses "
            "(the fourth, the TF-IDF neighbour vote, ranks labels as the knn baseline does)." + checkpoints)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["main", "ngame", "mips"], default="main")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--force", action="store_true", help="re-run even if a result exists")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--update-readme", action="store_true",
                        help="write the full tables into docs/benchmarks.md and the summary into README.md")
    parser.add_argument("--report", action="store_true",
                        help="measure nothing: rebuild the tables from the stored results")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="DATASET:LABEL",
                        help='leave out runs, e.g. "debian-full:MIPS negatives"')
    args = parser.parse_args()
    if args.update_readme and args.suite != "main":
        raise SystemExit("--update-readme writes the main suite's tables; use it with --suite main")
    datasets = args.datasets or (["hpo", "bibtex"] if args.quick else list(DATASETS))
    name = args.suite + ("-quick" if args.quick else "")
    meta_path = BENCH / "results" / f"{name}.meta.json"
    start = time.time()
    results = run_suite(args.suite, datasets, args.quick, args.force, not args.no_peers, args.threads,
                        set(args.exclude), measure=not args.report)
    if args.report:
        if not meta_path.exists():
            raise SystemExit(f"{repo_relative(meta_path)} is missing: run the suite first")
        meta = json.loads(meta_path.read_text())
    else:
        command = "python -m bench.run " + " ".join(f'"{a}"' if " " in a else a for a in sys.argv[1:])
        meta = {"date": dt.date.today().isoformat(), "machine": machine(), "threads": args.threads,
                "command": command.strip(), "wall_minutes": round((time.time() - start) / 60, 1),
                "every_run_executed": args.force and not args.exclude}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    stages = stage_table(results)
    pareto = BENCH / "results" / f"{name}-pareto.png"
    has_plot = pareto_plot(results, pareto)
    text = (describe(meta, args.suite, args.quick, results) + "\n\n" + summary(results) + "\n\n"
            + table(results, negatives_column=args.suite == "mips")
            + ("\n\nAccuracy against training time (blue: xmine, grey: peers):\n\n"
               f"![accuracy against training time](../{repo_relative(pareto)})" if has_plot else "")
            + ("\n\nWhere NGAME's time goes (seconds; stage 2 by step; prediction of the test set in batches):\n\n"
               + stages if stages else ""))
    (BENCH / "results" / f"{name}.md").write_text(text + "\n")
    # every result the tables were made from (a partial re-run measures some rows and reuses the others' files)
    (BENCH / "results" / f"{name}.json").write_text(json.dumps(results, indent=2, default=float))
    print(text)
    print(f"\n(total {time.time() - start:.0f}s)")
    if args.suite == "main":  # the xmine report of each dataset, from the saved prediction files
        from bench.reports import write_reports

        write_reports(datasets, BENCH / "results" / name)
    if args.update_readme:
        update_block(BENCHMARKS_DOC, "BENCH", text)
        update_block(README, "SUMMARY", f"NGAME (fused scores) against the best of PECOS, Omikuji and napkinXC on "
                     f"each test set, {meta['date']}, {meta['machine']}; P@1 and PSP@5 in %. Full tables, "
                     "timings and model sizes: [docs/benchmarks.md](docs/benchmarks.md).\n\n"
                     + short_summary(results)
                     + (f"\n\n![accuracy against training time]({repo_relative(pareto)})" if has_plot else ""))


if __name__ == "__main__":
    main()
