"""How much NGAME's scores move with the random seed, next to the best peer: is a win a win?

  python -m bench.seeds                                 # HPO, Bibtex, Delicious; seeds 0 1 2
  python -m bench.seeds --datasets hpo --seeds 0 1 2 3 --update-readme

Each (dataset, seed) is one `bench.run_xmine` process with siamese.seed and classifier.seed set (seed 0 is
the default configuration: the main suite's NGAME run is reused for it); results go to bench/results/seeds/
and are reused unless --force. The peers are
read from the main suite's results (bench/results/main/, run `python -m bench.run` first): they are
deterministic given their features. Writes bench/results/seeds.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from bench.blocks import BENCHMARKS_DOC, update_block
from bench.run import BENCH, DATA, DATASETS, LEAD_FILE_SUFFIX, run


def best_peer(key: str, metric: str, lead: bool = False) -> tuple[float, str] | None:
    """The best peer's score on the peers' standard features, or with `lead` on xmine's features (rows run
    where xmine's TF-IDF adds a lead channel)."""
    peers = []
    for path in sorted((BENCH / "results" / "main").glob(f"{key}__peer-*.json")):
        if path.stem.endswith(LEAD_FILE_SUFFIX) != lead:
            continue
        result = json.loads(path.read_text())
        value = result.get("metrics", {}).get("model", {}).get(metric)
        if value is not None:
            peers.append((value, result.get("label", path.stem)))
    return max(peers) if peers else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=["hpo", "bibtex", "delicious"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--update-readme", action="store_true",
                        help="write the table into docs/benchmarks.md's SEEDS block")
    args = parser.parse_args()
    out_dir = BENCH / "results" / "seeds"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, records = [], []
    for key in args.datasets:
        folder, variant, _ = DATASETS[key]
        scores: dict[str, list[float]] = {"P@1": [], "PSP@5": []}
        for seed in args.seeds:
            out = out_dir / f"{key}__seed{seed}.json"
            main_run = BENCH / "results" / "main" / f"{key}__ngame.json"
            if seed == 0 and main_run.exists() and not json.loads(main_run.read_text()).get("overrides"):
                out = main_run  # seed 0 is the default configuration: the main suite's run
            elif args.force or not out.exists():
                run([sys.executable, "-m", "bench.run_xmine", "--method", "ngame", "--data", str(DATA / folder),
                     "--text-variant", variant, "--threads", str(args.threads), "--set", f"siamese.seed={seed}",
                     "--set", f"classifier.seed={seed}", "--out", str(out)], out.with_suffix(".log"))
            if not out.exists():
                continue
            fused = json.loads(out.read_text())["metrics"]["fused"]
            for metric in scores:
                scores[metric].append(fused[metric])
            records.append({"dataset": key, "seed": seed, "P@1": fused["P@1"], "PSP@5": fused["PSP@5"]})
        cells = []
        for metric, values in scores.items():
            if not values:
                cells += ["", "", ""]
                continue
            spread = statistics.stdev(values) if len(values) > 1 else float("nan")
            versus = []
            for lead in (False, True):
                peer = best_peer(key, metric, lead)
                if peer:
                    wins = f"{sum(v > peer[0] for v in values)} of {len(values)}"
                    versus.append(f"{peer[0]:.2f} ({peer[1]}), NGAME above in {wins}")
            cells += [" / ".join(f"{v:.2f}" for v in values), f"{statistics.mean(values):.2f} ± {spread:.2f}",
                      "; ".join(versus) or "no peer result"]
        rows.append(f"| {key} | " + " | ".join(cells) + " |")
    text = "\n".join([
        f"NGAME (fused), seeds {' '.join(map(str, args.seeds))} (`python -m bench.run` for the peers, then "
        f"`python -m bench.seeds`); mean ± sample standard deviation.", "",
        "| dataset | P@1 per seed | P@1 mean ± sd | best peer P@1 | PSP@5 per seed | PSP@5 mean ± sd "
        "| best peer PSP@5 |",
        "|---|---|---|---|---|---|---|", *rows])
    (BENCH / "results" / "seeds.md").write_text(text + "\n")
    (BENCH / "results" / "seeds.json").write_text(json.dumps(records, indent=2))
    print(text)
    if args.update_readme:
        update_block(BENCHMARKS_DOC, "SEEDS", text)


if __name__ == "__main__":
    main()
