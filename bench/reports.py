"""The `xmine report` of every dataset of the main suite, from the prediction files the benchmark saved.

  python -m bench.reports                      # every dataset with saved predictions
  python -m bench.reports --datasets hpo       # one dataset
  python -m bench.reports --all-kinds          # also NGAME's single score sources (encoder, classifier, ranker)

Reads bench/results/main/predictions/<dataset>__<run>__<scores>.npz (written by bench/run_xmine.py) and
the peers' bench/results/main/features/<dataset>/pred_<peer>.npz (written by bench/peers.py), and writes
bench/results/main/reports/<dataset>.html with its figures beside it (<dataset>-buckets.png, ...).
NGAME comes first, then the peers, then xmine's other methods; NGAME's training curves come from the
history saved in its result JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.run import BENCH, DATASETS, PEERS, dataset_dir
from xmine.errors import XmineError
from xmine.report import write_report


def saved_predictions(results: Path, key: str, all_kinds: bool = False) -> tuple[list[tuple[str, Path]], dict | None]:
    """(method name, prediction file) of a dataset, NGAME first, and NGAME's training history (or None)."""
    ngame, peers, others, history = [], [], [], None
    pred_dir = results / "predictions"
    for result_file in sorted(results.glob(f"{key}__*.json")):
        run = json.loads(result_file.read_text())
        if run.get("package"):  # a peer: its predictions sit beside its features
            method = run.get("method", "")
            path = results / "features" / key / f"pred_{method}.npz"
            label = dict(PEERS).get(method, method)
            if result_file.stem == f"{key}__peer-{method}" and path.is_file():
                peers.append((label, path))
            continue
        kinds = list(run.get("metrics", {}))
        for i, kind in enumerate(kinds if all_kinds else kinds[:1]):
            path = pred_dir / f"{result_file.stem}__{kind}.npz"
            if not path.is_file():
                continue
            name = run["label"] if i == 0 else f"{run['label']} ({kind})"
            (ngame if run["label"] == "NGAME" else others).append((name, path))
            # training curves only from the run that made these predictions (not from an older result)
            if run["label"] == "NGAME" and i == 0 and run.get("prediction_files", {}).get(kind) == path.name:
                history = run.get("history")
    return ngame + peers + others, history


def write_reports(keys: list[str], results: Path, all_kinds: bool = False) -> list[Path]:
    """Write the report of each dataset in `keys` that has saved predictions; returns the HTML paths."""
    out = []
    for key in keys:
        folder, variant, _ = DATASETS[key]
        preds, history = saved_predictions(results, key, all_kinds)
        if not preds:
            print(f"  report {key}: no saved predictions in {results}", flush=True)
            continue
        html = results / "reports" / f"{key}.html"
        try:
            write_report(dataset_dir(folder), preds, html, history=history or None,
                         model_name="NGAME, this benchmark run", text_variant=variant)
        except XmineError as exc:
            print(f"  report {key}: {exc}", flush=True)
            continue
        print(f"  report {key}: {html} ({', '.join(name for name, _ in preds)})", flush=True)
        out.append(html)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--results", type=Path, default=BENCH / "results" / "main")
    parser.add_argument("--all-kinds", action="store_true", help="also NGAME's single score sources")
    args = parser.parse_args()
    write_reports(args.datasets, args.results, args.all_kinds)


if __name__ == "__main__":
    main()
