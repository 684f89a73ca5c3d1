"""A laboratory for the score fusion: train NGAME once per (dataset, seed), keep what its fusion was fitted on and
what it fused at test time, then try fusion changes on those inputs in seconds instead of a training each.

  python -m bench.fusion_lab capture --datasets hpo bibtex --seeds 0 1 2     # trains; writes bench/results/tmp/
  python -m bench.fusion_lab evaluate --datasets hpo bibtex --seeds 0 1 2    # every variant, mean ± sd per dataset

`capture` trains the default configuration (plus any --set overrides) in this process and records the held-out
points' candidates and source scores that `ScoreFusion.fit_checked` receives, and the test set's candidates and
source scores that prediction fuses. `evaluate` refits each variant's fusion on the recorded held-out inputs, fuses
the recorded test scores and reports test P@1 / PSP@5, side by side with the fusion the model was trained with. A
variant that holds up here still goes through `python -m bench.seeds --variant` (a full training per seed) before
it becomes a default: the lab sees only the fusion step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

import xmine.fusion as fusion_module
import xmine.models.ngame as ngame_module
from bench.run import BENCH, DATASETS, dataset_dir
from bench.run_xmine import bench_metrics
from xmine.cli import build_config, train_model
from xmine.config import FusionConfig
from xmine.data import load_dataset
from xmine.metrics import inverse_propensity
from xmine.topk import csr_from_topk, csr_row_topk
from xmine.utils import set_threads

LAB = BENCH / "results" / "tmp" / "fusion-lab"
# fusion settings added after some captures were made, with the value that reproduces a fusion fitted before the
# setting existed (a capture's own config has no entry for them, and the current default would apply instead)
SETTINGS_BEFORE_THEY_EXISTED = {"positive_weight_power": 0.0, "selection_metric": "ndcg"}


def _pad(blocks: list[np.ndarray], fill: float) -> np.ndarray:
    width = max(block.shape[1] for block in blocks)
    return np.concatenate([np.pad(block, ((0, 0), (0, width - block.shape[1])), constant_values=fill)
                           for block in blocks])


def capture(key: str, seed: int, overrides: list[str], threads: int) -> Path:
    """Train NGAME on a dataset with a seed and record the fusion's held-out inputs and test inputs."""
    folder, variant, _ = DATASETS[key]
    ds = load_dataset(dataset_dir(folder), text_variant=variant)
    config = build_config("ngame", None, [f"siamese.seed={seed}", f"classifier.seed={seed}", *overrides],
                          {"threads": threads})
    fit_inputs: dict[str, Any] = {}
    original_fit_checked = fusion_module.ScoreFusion.fit_checked

    def recording_fit_checked(self, scores, candidates, true_labels, unseen, seed=0, n_jobs=1):
        fit_inputs.update(scores=scores, candidates=candidates, labels=sp.csr_matrix(true_labels),
                          unseen=np.asarray(unseen, dtype=bool), seed=seed)
        return original_fit_checked(self, scores, candidates, true_labels, unseen, seed, n_jobs)

    test_blocks: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
    original_fuse = ngame_module.fuse

    def recording_fuse(model, scores, candidates):
        test_blocks.append((candidates, {name: scores[name] for name in model.fusion.sources}))
        return original_fuse(model, scores, candidates)

    fusion_module.ScoreFusion.fit_checked = recording_fit_checked
    ngame_module.fuse = recording_fuse
    try:
        start = time.perf_counter()
        model = train_model("ngame", ds, config, None, progress=False)
        train_seconds = time.perf_counter() - start
        test_blocks.clear()
        pred = model.predict(ds.test, k=100)
    finally:
        fusion_module.ScoreFusion.fit_checked = original_fit_checked
        ngame_module.fuse = original_fuse
    sources = model.fusion.sources
    arrays = {"fit_candidates": fit_inputs["candidates"], "fit_unseen": fit_inputs["unseen"],
              "fit_labels_indptr": fit_inputs["labels"].indptr, "fit_labels_indices": fit_inputs["labels"].indices,
              "fusion_inv_propensity": model.fusion.inv_propensity,
              "test_candidates": _pad([cand for cand, _ in test_blocks], -1)}
    for name in sources:
        arrays[f"fit_{name}"] = fit_inputs["scores"][name]
        arrays[f"test_{name}"] = _pad([scores[name] for _, scores in test_blocks], 0.0)
    LAB.mkdir(parents=True, exist_ok=True)
    out = LAB / f"{key}__seed{seed}"
    np.savez(out.with_suffix(".npz"), **arrays)
    metrics = bench_metrics(ds, pred)
    meta = {"dataset": key, "seed": seed, "overrides": overrides, "sources": list(sources),
            "fusion_config": model.config.fusion.to_dict(), "fusion_seed": fit_inputs["seed"],
            "n_labels": ds.n_labels, "fusion_mode": model.fusion.mode, "train_seconds": train_seconds,
            "trained_metrics": metrics}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=float))
    print(f"{key} seed {seed}: trained in {train_seconds:.0f} s, fused P@1 {metrics['P@1']:.2f} "
          f"PSP@5 {metrics['PSP@5']:.2f} ({model.fusion.mode})", flush=True)
    return out


class Recorded:
    """One capture: the held-out fit inputs and the test inputs."""

    def __init__(self, path: Path) -> None:
        self.meta = json.loads(path.with_suffix(".json").read_text())
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as f:
            data = {name: f[name] for name in f.files}
        self.sources = tuple(self.meta["sources"])
        cand = data["fit_candidates"]
        self.fit_candidates, self.fit_unseen = cand, data["fit_unseen"]
        self.fit_labels = sp.csr_matrix((np.ones(len(data["fit_labels_indices"]), dtype=np.float32),
                                         data["fit_labels_indices"], data["fit_labels_indptr"]),
                                        shape=(cand.shape[0], self.meta["n_labels"]))
        self.fit_scores = {name: data[f"fit_{name}"] for name in self.sources}
        self.inv_propensity = data["fusion_inv_propensity"]
        self.test_candidates = data["test_candidates"]
        self.test_scores = {name: data[f"test_{name}"] for name in self.sources}


# a variant: (recorded inputs, fusion config) -> fused test scores
Variant = Callable[[Recorded, FusionConfig], np.ndarray]


def refit(recorded: Recorded, config: FusionConfig) -> fusion_module.ScoreFusion:
    fusion = fusion_module.ScoreFusion(config, recorded.inv_propensity, recorded.sources)
    fusion.fit_checked(recorded.fit_scores, recorded.fit_candidates, recorded.fit_labels, recorded.fit_unseen,
                       seed=recorded.meta["fusion_seed"], n_jobs=2)
    return fusion


def as_trained(recorded: Recorded, config: FusionConfig) -> np.ndarray:
    return refit(recorded, config).combine(recorded.test_scores, recorded.test_candidates)


def fit_on(which: str) -> Variant:
    """The fusion fitted on the held-out points stage 1 saw ("seen"), never saw ("unseen") or all of them, without
    the leakage check's choice."""
    def variant(recorded: Recorded, config: FusionConfig) -> np.ndarray:
        rows = {"seen": ~recorded.fit_unseen, "unseen": recorded.fit_unseen,
                "all": np.ones_like(recorded.fit_unseen)}[which]
        fusion = fusion_module.ScoreFusion(config, recorded.inv_propensity, recorded.sources)
        fusion.fit({k: v[rows] for k, v in recorded.fit_scores.items()}, recorded.fit_candidates[rows],
                   recorded.fit_labels[np.flatnonzero(rows)], seed=recorded.meta["fusion_seed"], n_jobs=2)
        return fusion.combine(recorded.test_scores, recorded.test_candidates)
    return variant


def with_settings(**settings: Any) -> Variant:
    """The capture's own fusion settings with `settings` changed."""
    def variant(recorded: Recorded, config: FusionConfig) -> np.ndarray:
        return as_trained(recorded, config.replace(**settings))
    return variant


def todays_default(recorded: Recorded, config: FusionConfig) -> np.ndarray:
    """The fusion as configured by default now, whatever the capture was trained with."""
    return as_trained(recorded, FusionConfig())


def boosted(rounds: int) -> Variant:
    """Today's default with gradient-boosted trees in the single tree's place (FusionConfig.boosting_rounds)."""
    def variant(recorded: Recorded, config: FusionConfig) -> np.ndarray:
        return as_trained(recorded, FusionConfig(boosting_rounds=rounds))
    return variant


VARIANTS: dict[str, Variant] = {
    "as trained": as_trained,
    "today's default": todays_default,
    "select by nDCG@5 + PSnDCG@5": with_settings(selection_metric="ndcg+psndcg"),
    "positive_weight_power=0.5": with_settings(positive_weight_power=0.5),
    "positive_weight_power=0.25": with_settings(positive_weight_power=0.25),
    "positive_weight_power=0": with_settings(positive_weight_power=0.0),
    "fitted on unseen only": fit_on("unseen"),
    "fitted on all held-out": fit_on("all"),
    "boosting_rounds=50": boosted(50),
    "boosting_rounds=100": boosted(100),
}


def evaluate_all(keys: list[str], seeds: list[int], variants: list[str]) -> None:
    for key in keys:
        folder, text_variant, _ = DATASETS[key]
        ds = load_dataset(dataset_dir(folder), text_variant=text_variant)
        inv_propensity = inverse_propensity(ds.train.labels)
        per_variant: dict[str, dict[str, list[float]]] = {}
        for seed in seeds:
            path = LAB / f"{key}__seed{seed}"
            if not path.with_suffix(".npz").exists():
                continue
            recorded = Recorded(path)
            config = FusionConfig.from_dict({**SETTINGS_BEFORE_THEY_EXISTED, **recorded.meta["fusion_config"]})
            trained = recorded.meta["trained_metrics"]
            per_variant.setdefault("model", {"P@1": [], "PSP@5": []})
            per_variant["model"]["P@1"].append(trained["P@1"])
            per_variant["model"]["PSP@5"].append(trained["PSP@5"])
            for name in variants:
                fused = VARIANTS[name](recorded, config)  # -inf on padding candidates (ScoreFusion.combine)
                pred = csr_row_topk(csr_from_topk(fused, recorded.test_candidates, ds.n_labels), 100)
                metrics = bench_metrics(ds, pred, inv_propensity)
                per_variant.setdefault(name, {"P@1": [], "PSP@5": []})
                per_variant[name]["P@1"].append(metrics["P@1"])
                per_variant[name]["PSP@5"].append(metrics["PSP@5"])
        for name, scores in per_variant.items():
            cells = []
            for metric, values in scores.items():
                sd = statistics.stdev(values) if len(values) > 1 else float("nan")
                cells.append(f"{metric} {statistics.mean(values):.2f} ± {sd:.2f} "
                             f"({' / '.join(f'{v:.2f}' for v in values)})")
            print(f"{key:13s} {name:28s} " + "   ".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["capture", "evaluate"])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], help="capture: training overrides (key=value)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)
    if args.command == "capture":
        for key in args.datasets:
            for seed in args.seeds:
                capture(key, seed, args.set, args.threads)
    else:
        evaluate_all(args.datasets, args.seeds, args.variants)


if __name__ == "__main__":
    main()
