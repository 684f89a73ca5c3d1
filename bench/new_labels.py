"""New labels without retraining: how close does a model with labels added by text come to one retrained with them?

For a dataset, two hidden sets of labels are drawn among the labels that have training points: a random 10% and
the 10% rarest (fewest training points, ties broken at random). For each hidden set, the default NGAME is trained
with those label columns dropped from the training label matrix (and their texts kept aside); the hidden labels
are then added back by text (`model.add_labels`) and the test set is predicted. The reference is the same default
NGAME trained with all labels. Reported per setting:

  1. P@1, P@5, R@10 on the hidden labels, over the test points that have at least one of them, two ways:
     "in full ranking" (the model's ranking over all labels, truth restricted to the hidden labels: does a new
     label beat the trained ones?) and "among hidden" (the model's top-100 restricted to the hidden labels);
  2. overall P@1 and PSP@5 (all labels, all test points), so that the cost to the trained labels shows;
  3. the seconds to add 1,000 labels to a loaded model (encode + index + classifiers + ranker + fusion).

  python bench/new_labels.py train --dataset hpo --work /tmp/xmine-new-labels     (3 models per dataset: all labels,
                                                                                  random 10% and rarest 10% hidden;
                                                                                  the all-labels one serves both)
  python bench/new_labels.py evaluate --dataset hpo --work /tmp/xmine-new-labels  (adds, predicts, writes JSON)
  python bench/new_labels.py time --dataset hpo --work /tmp/xmine-new-labels      (only the time to add 1,000)
  python bench/new_labels.py table                                                (docs/new-labels.md table)

Results go to bench/results/new_labels.json (one entry per dataset, merged with what is there).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DATA = Path(os.environ.get("XMINE_BENCH_DATA", REPO.parent / "shared" / "data"))
RESULTS = BENCH / "results" / "new_labels.json"
DOC = REPO / "docs" / "new-labels.md"
DATASETS = {"hpo": ("hpo-disease-phenotype", "full"), "debian-title": ("debian-related", "title")}
SETTINGS = ("random", "rare")
# how the hidden labels are added back and scored: NewLabelsConfig fields ("predict": NGAME.predict's scores)
VARIANTS: dict[str, dict[str, Any]] = {
    "added_rank": {"scores": "rank"},
    "added_rank_margin": {"scores": "rank", "rank_margin": 0.02},
    "added_impute": {"scores": "impute"},
    "added_as_is": {"scores": "as_is"},
    "added_encoder_only": {"predict": "encoder"},
}
VARIANT_NAMES = {"added_rank": "added, placed by encoder rank (default)",
                 "added_rank_margin": "added, placed by encoder rank, `rank_margin=0.02`",
                 "added_impute": "added, imputed source scores", "added_as_is": "added, raw scores fused",
                 "added_encoder_only": "added, encoder scores only"}
HIDE_SHARE = 0.10
ADD_TIMING_LABELS = 1000

log = logging.getLogger("new_labels")


def load(dataset: str):
    from xmine.data import load_dataset

    folder, variant = DATASETS[dataset]
    return load_dataset(DATA / folder, text_variant=variant)


def hidden_labels(train_labels: sp.csr_matrix, setting: str, seed: int = 0) -> np.ndarray:
    """The label ids to hide: 10% of the labels that have training points, at random or the rarest."""
    counts = np.asarray((train_labels > 0).sum(0)).ravel()
    seen = np.flatnonzero(counts > 0)
    n_hide = int(round(HIDE_SHARE * len(seen)))
    rng = np.random.default_rng([seed, 0 if setting == "random" else 1])
    if setting == "random":
        return np.sort(rng.choice(seen, n_hide, replace=False))
    order = np.lexsort((rng.random(len(seen)), counts[seen]))  # fewest training points first, ties at random
    return np.sort(seen[order[:n_hide]])


def without_labels(ds, hidden: np.ndarray):
    """The dataset with the hidden label columns dropped (kept labels keep their order)."""
    from xmine.data import Dataset, Split

    kept = np.setdiff1d(np.arange(ds.n_labels), hidden)
    new_id = np.full(ds.n_labels, -1)
    new_id[kept] = np.arange(len(kept))

    def split(s):
        pairs = None
        if s.filter_pairs is not None:
            pairs = s.filter_pairs[new_id[s.filter_pairs[:, 1]] >= 0]
            pairs = np.stack([pairs[:, 0], new_id[pairs[:, 1]]], axis=1)
        return Split(labels=sp.csr_matrix(s.labels[:, kept]), texts=s.texts, features=s.features, filter_pairs=pairs)

    return Dataset(ds.path, split(ds.train), split(ds.test), len(kept), [ds.label_texts[i] for i in kept],
                   ds.text_variant, ds.layout)


def train(args: argparse.Namespace) -> None:
    from xmine.cli import build_config, train_model
    from xmine.utils import set_threads

    set_threads(args.threads)
    ds = load(args.dataset)
    work = Path(args.work) / args.dataset
    work.mkdir(parents=True, exist_ok=True)
    config = build_config("ngame", None, args.set, {"threads": args.threads})
    runs = [("full", None)] + [(f"hidden-{s}", hidden_labels(ds.train.labels, s, args.seed)) for s in SETTINGS]
    for name, hidden in runs:
        if args.only and name not in args.only:
            continue
        out = work / name
        if (out / "config.json").exists():
            log.info("%s: already trained (%s)", name, out)
            continue
        data = ds if hidden is None else without_labels(ds, hidden)
        log.info("%s: training default NGAME on %d labels", name, data.n_labels)
        start = time.perf_counter()
        # checkpoints go to out/checkpoints, which a save into `out` keeps
        model = train_model("ngame", data, config, out, progress=False)
        seconds = time.perf_counter() - start
        model.save(out)
        meta = {"train_seconds": seconds, "hidden": None if hidden is None else hidden.tolist(),
                "overrides": args.set, "threads": args.threads, "config": config.to_dict()}
        (out / "bench_new_labels.json").write_text(json.dumps(meta))
        log.info("%s: trained in %.0fs", name, seconds)


def restricted(pred: sp.csr_matrix, truth: sp.csr_matrix, cols: np.ndarray) -> dict[str, float]:
    """P@1, P@5, R@10 on the labels `cols`, over the points with at least one of them. The truth is restricted to
    `cols`; the prediction is taken as given (its ranking over all labels)."""
    from xmine.metrics import evaluate

    mask = np.zeros(truth.shape[1], dtype=np.float32)
    mask[cols] = 1
    t = sp.csr_matrix(truth @ sp.diags(mask))
    t.eliminate_zeros()
    rows = np.flatnonzero(np.diff(t.indptr) > 0)
    m = evaluate(pred[rows], t[rows], ks=(1, 5), recall_ks=(10,))
    return {"P@1": m["P@1"], "P@5": m["P@5"], "R@10": m.get("R@10"), "points": len(rows)}


def only_columns(pred: sp.csr_matrix, cols: np.ndarray) -> sp.csr_matrix:
    mask = np.zeros(pred.shape[1], dtype=np.float32)
    mask[cols] = 1
    out = sp.csr_matrix(pred @ sp.diags(mask))
    out.eliminate_zeros()
    return out


def to_original_ids(pred: sp.csr_matrix, order: np.ndarray) -> sp.csr_matrix:
    """Columns of a model whose label j is original label order[j] -> original label ids."""
    pred = sp.csr_matrix(pred)
    return sp.csr_matrix((pred.data, order[pred.indices], pred.indptr), shape=pred.shape)


def scores_of(pred_orig: sp.csr_matrix, ds, hidden: np.ndarray, inv_p: np.ndarray) -> dict:
    from xmine.metrics import evaluate, filter_predictions

    pred_orig = filter_predictions(pred_orig, ds.test.filter_pairs)  # debian: a package's own name is not a label
    overall = evaluate(pred_orig, ds.test.labels, ks=(1, 5), inv_propensity=inv_p, recall_ks=(10,))
    return {"hidden_in_full_ranking": restricted(pred_orig, ds.test.labels, hidden),
            "hidden_among_hidden": restricted(only_columns(pred_orig, hidden), ds.test.labels, hidden),
            "overall": {"P@1": overall["P@1"], "P@5": overall["P@5"], "PSP@5": overall["PSP@5"]}}


def full_predictions(work: Path, ds) -> sp.csr_matrix:
    """The all-labels model's test predictions (cached beside it: every setting compares with them)."""
    from xmine.models import load_model

    cache = work / "full" / "test_predictions.npz"
    if cache.exists():
        return sp.load_npz(cache)
    start = time.perf_counter()
    pred = load_model(work / "full").predict(ds.test, k=100)
    log.info("full model predicted in %.0fs", time.perf_counter() - start)
    sp.save_npz(cache, pred)
    return pred


def evaluate_dataset(args: argparse.Namespace) -> None:
    from xmine.metrics import inverse_propensity
    from xmine.utils import set_threads

    set_threads(args.threads)
    ds = load(args.dataset)
    work = Path(args.work) / args.dataset
    inv_p = inverse_propensity(ds.train.labels)
    full_pred = full_predictions(work, ds)
    full_meta = json.loads((work / "full" / "bench_new_labels.json").read_text())
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    result = results.setdefault(args.dataset, {"settings": {}})
    result.update({"dataset": args.dataset, "n_labels": ds.n_labels, "n_test": ds.test.n_points,
                   "full_train_seconds": full_meta["train_seconds"], "threads": args.threads})
    variants = args.variant or list(VARIANTS)
    for setting in args.only or SETTINGS:
        folder = work / f"hidden-{setting}"
        meta = json.loads((folder / "bench_new_labels.json").read_text())
        hidden = np.asarray(meta["hidden"], dtype=np.int64)
        order = np.concatenate([np.setdiff1d(np.arange(ds.n_labels), hidden), hidden])
        counts = np.asarray((ds.train.labels > 0).sum(0)).ravel()[hidden]
        entry = result["settings"].get(setting, {}) if args.variant else {}
        entry.update({"hidden_labels": len(hidden), "hidden_train_points_median": float(np.median(counts)),
                      "hidden_train_points_max": int(counts.max()), "train_seconds": meta["train_seconds"],
                      "retrained": scores_of(full_pred, ds, hidden, inv_p)})
        model, entry["add_seconds"] = with_hidden_added(folder, ds, hidden)
        for name in variants:
            entry[name] = added_scores(model, ds, hidden, order, inv_p, VARIANTS[name])
            log.info("%s, %s: %s", setting, name, entry[name])
        result["settings"][setting] = entry
        if setting == "random" and not args.no_timing:
            result["add_1000_seconds"] = time_add(folder, ds, args.repeats)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2, default=float) + "\n")
        log.info("wrote %s", RESULTS)


def with_hidden_added(folder: Path, ds, hidden: np.ndarray):
    """The hidden-label model with the hidden labels added back by text, and the seconds the adding took."""
    from xmine.models import load_model

    model = load_model(folder)
    start = time.perf_counter()
    model.add_labels([ds.label_texts[i] for i in hidden])
    return model, time.perf_counter() - start


def added_scores(model, ds, hidden: np.ndarray, order: np.ndarray, inv_p: np.ndarray, variant: dict[str, Any]) -> dict:
    """The test set predicted with the variant's NewLabelsConfig, scored in the original label ids."""
    from xmine.labels import label_state

    state = label_state(model)
    state.config = state.config.replace(**{k: v for k, v in variant.items() if k != "predict"})
    start = time.perf_counter()
    pred = model.predict(ds.test, k=100, scores=variant.get("predict"))
    out = scores_of(to_original_ids(pred, order), ds, hidden, inv_p)
    out.update({"predict_seconds": time.perf_counter() - start, "config": variant})
    return out


def timing(args: argparse.Namespace) -> None:
    """Only the seconds to add 1,000 labels (to the random-hidden model), merged into the results."""
    from xmine.utils import set_threads

    set_threads(args.threads)
    ds = load(args.dataset)
    results = json.loads(RESULTS.read_text())
    results[args.dataset]["add_1000_seconds"] = time_add(Path(args.work) / args.dataset / "hidden-random", ds,
                                                         args.repeats)
    results[args.dataset]["add_1000_threads"] = args.threads
    # the machine's load while timing (1-minute load average): timings on a busy machine are longer
    results[args.dataset]["add_1000_load_average"] = os.getloadavg()[0]
    RESULTS.write_text(json.dumps(results, indent=2, default=float) + "\n")
    log.info("%s: %s", args.dataset, results[args.dataset]["add_1000_seconds"])


def time_add(folder: Path, ds, repeats: int) -> dict[str, float]:
    """Seconds to add ADD_TIMING_LABELS label texts to a freshly loaded model (median of `repeats`)."""
    from xmine.models import load_model

    texts = [ds.label_texts[i % ds.n_labels] for i in range(ADD_TIMING_LABELS)]
    times = []
    for _ in range(repeats):
        model = load_model(folder)
        start = time.perf_counter()
        model.add_labels(texts)
        times.append(time.perf_counter() - start)
    return {"median": float(np.median(times)), "min": float(np.min(times)), "repeats": repeats}


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def table(_: argparse.Namespace) -> None:
    results = json.loads(RESULTS.read_text())
    lines = ["| dataset | hidden set | model | hidden P@1 | hidden P@5 | hidden R@10 | among hidden P@1 | "
             "among hidden R@10 | overall P@1 | overall PSP@5 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        for setting, entry in res["settings"].items():
            points = entry["retrained"]["hidden_in_full_ranking"]["points"]
            label = f"{setting} 10% ({entry['hidden_labels']} labels, {points} test points)"
            for key, model in (("retrained", "retrained with all labels"), *VARIANT_NAMES.items()):
                if key not in entry:
                    continue
                sc = entry[key]
                h, a, o = sc["hidden_in_full_ranking"], sc["hidden_among_hidden"], sc["overall"]
                lines.append(f"| {name} | {label} | {model} | {fmt(h['P@1'])} | {fmt(h['P@5'])} | {fmt(h['R@10'])} | "
                             f"{fmt(a['P@1'])} | {fmt(a['R@10'])} | {fmt(o['P@1'])} | {fmt(o['PSP@5'])} |")
    lines += ["", "| dataset | labels | test points | seconds to add 1,000 labels (median; threads; load average) "
              "| training, all labels (under load) |", "|---|---|---|---|---|"]
    for name, res in results.items():
        add = res.get("add_1000_seconds", {})
        where = ""
        if "add_1000_load_average" in res:
            load = res["add_1000_load_average"]
            where = f" ({add['repeats']} runs; {res['add_1000_threads']} threads; load {load:.1f})"
        lines.append(f"| {name} | {res['n_labels']} | {res['n_test']} | {fmt(add.get('median'))}{where} | "
                     f"{res['full_train_seconds']:.0f} s |")
    update_block(DOC, "NEWLABELS", "\n".join(lines))
    print("\n".join(lines))


def update_block(path: Path, name: str, text: str) -> None:
    """Replace the text between `<!-- NAME:START -->` and `<!-- NAME:END -->` in `path`."""
    content = path.read_text()
    start, end = f"<!-- {name}:START -->", f"<!-- {name}:END -->"
    if start not in content or end not in content:
        raise SystemExit(f"{path} has no {start} ... {end} block")
    head, rest = content.split(start, 1)
    path.write_text(head + start + "\n" + text.strip() + "\n" + end + rest.split(end, 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["train", "evaluate", "time", "table"])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="hpo")
    parser.add_argument("--work", default="/tmp/xmine-new-labels", help="where the trained models are kept")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timings of adding 1,000 labels")
    parser.add_argument("--variant", action="append", default=[], choices=sorted(VARIANTS),
                        help="evaluate: only this way of adding (merged into the results); repeatable")
    parser.add_argument("--no-timing", action="store_true", help="evaluate: skip timing the adding of 1,000 labels")
    parser.add_argument("--set", action="append", default=[], help="NGAME config overrides (key=value)")
    parser.add_argument("--only", action="append", default=[], help="train: only this model (full, hidden-random, "
                        "hidden-rare); evaluate: only this hidden set (random, rare); repeatable")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    {"train": train, "evaluate": evaluate_dataset, "time": timing, "table": table}[args.phase](args)


if __name__ == "__main__":
    main()
