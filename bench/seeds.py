"""How much NGAME's scores move with the random seed, next to the best peer: is a win a win?

  python -m bench.seeds                                 # HPO, Bibtex, Delicious; seeds 0 1 2
  python -m bench.seeds --datasets hpo --seeds 0 1 2 3 --update-readme
  python -m bench.seeds --datasets hpo bibtex delicious debian-title debian-full \
      --variant unseen-holdout --set fusion.stage1_unseen_points=2000   # an A/B of one change against the default
  python -m bench.seeds --variant epochs12 --set siamese.epochs=12 --set fusion.stage1_unseen_points=2000 \
      --base unseen-holdout --base-set fusion.stage1_unseen_points=2000  # a change on top of an earlier one

Each (dataset, seed) is one `bench.run_xmine` process with siamese.seed and classifier.seed set (seed 0 is
the default configuration: the main suite's NGAME run is reused for it); results go to bench/results/seeds/
and are reused unless --force or their recorded config differs from today's (then they are run again). The peers are
read from the main suite's results (bench/results/main/, run `python -m bench.run` first): they are
deterministic given their features. Writes bench/results/seeds.{md,json}.

With --variant NAME and --set overrides, the same seeds are also run with those overrides (results in
bench/results/seeds/NAME/) and bench/results/seeds-NAME.{md,json} compare the two per dataset: the change is kept
only if on no dataset it loses, on either metric, by more than the seed spread (the larger of the two standard
deviations), the rule every accuracy-affecting change follows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from bench.blocks import BENCHMARKS_DOC, update_block
from bench.run import BENCH, DATASETS, LEAD_FILE_SUFFIX, dataset_dir, run
from xmine.cli import build_config

METRICS = ("P@1", "PSP@5")
# where a run was computed or what it measured on the side, not what it trained: a result from a run with other values
# of these is still today's result (siamese.heldout_curve and heldout_every only record stage 1's held-out curve;
# tests/test_models.py checks that the encoder it trains is the same bit for bit; checkpoint_every_s only says when
# checkpoints are written)
MACHINE_SETTINGS = ("num_threads", "device", "heldout_curve", "heldout_every", "checkpoint_every_s")


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


def seed_scores(key: str, seeds: list[int], threads: int, force: bool, variant: str | None = None,
                overrides: list[str] = ()) -> dict[str, list]:
    """Fused P@1 and PSP@5 of NGAME on a dataset per seed that has a result ("seed": which; "cpu": the machine it
    ran on), running what is missing (everything with `force`)."""
    folder, text_variant, _ = DATASETS[key]
    out_dir = BENCH / "results" / "seeds" / (variant or "")
    out_dir.mkdir(parents=True, exist_ok=True)
    scores: dict[str, list] = {"seed": [], "cpu": [], **{metric: [] for metric in METRICS}}
    for seed in seeds:
        out = out_dir / f"{key}__seed{seed}.json"
        main_run = BENCH / "results" / "main" / f"{key}__ngame.json"
        sets = [f"siamese.seed={seed}", f"classifier.seed={seed}", *overrides]
        expected = build_config("ngame", None, sets, {"threads": threads}).to_dict()
        main = json.loads(main_run.read_text()) if main_run.exists() else None
        if variant is None and seed == 0 and main and not main.get("overrides") and not stale_settings(
                main.get("config", {}), expected):
            out = main_run  # seed 0 is the default configuration: the main suite's run
        else:
            # a result recorded with other settings (e.g. before a default changed) is run again: comparing it with
            # today's runs would mix two configurations
            stale = stale_settings(json.loads(out.read_text()).get("config", {}), expected) if out.exists() else []
            if stale and not force:
                print(f"  {out.name} was run with other settings ({'; '.join(stale[:4])}): running it again",
                      flush=True)
            if force or stale or not out.exists():
                run([sys.executable, "-m", "bench.run_xmine", "--method", "ngame", "--data", str(dataset_dir(folder)),
                     "--text-variant", text_variant, "--threads", str(threads),
                     *[arg for item in sets for arg in ("--set", item)], "--out", str(out)], out.with_suffix(".log"))
        if not out.exists():
            continue
        result = json.loads(out.read_text())
        fused = result["metrics"]["fused"]
        scores["seed"].append(seed)
        scores["cpu"].append(result.get("cpu") or "not recorded")
        for metric in METRICS:
            scores[metric].append(fused[metric])
    return scores


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def stale_settings(recorded: dict, expected: dict, prefix: str = "") -> list[str]:
    """The settings (dotted keys) a recorded run's config holds with another value than `expected`. A key added since
    the run counts when today's value is not an "off" one (null, 0, false, empty): an opt-in setting added with
    such a default changed nothing, one added with another default (the HNSW classifier index) may have; keys
    removed since are not compared."""
    stale = [f"{prefix}{key} not recorded, now {expected[key]!r}" for key in sorted(set(expected) - set(recorded))
             if expected[key] not in (None, 0, False, "", [], {}) and key not in MACHINE_SETTINGS]
    for key in sorted(set(recorded) & set(expected)):
        a, b = recorded[key], expected[key]
        if isinstance(a, dict) and isinstance(b, dict):
            stale += stale_settings(a, b, f"{prefix}{key}.")
        elif a != b and key not in MACHINE_SETTINGS:
            stale.append(f"{prefix}{key}={a!r}, now {b!r}")
    return stale


def compare(key: str, base: dict[str, list[float]], changed: dict[str, list[float]]) -> tuple[str, dict, bool]:
    """A table row and a record comparing a variant with the default on one dataset, and whether the variant
    loses there beyond the seed spread on either metric."""
    cells, record, loses = [key], {"dataset": key}, False
    for metric in METRICS:
        if not base[metric] or not changed[metric]:
            cells += ["", "", ""]
            continue
        (m0, s0), (m1, s1) = mean_sd(base[metric]), mean_sd(changed[metric])
        spread = max(s0, s1) if len(base[metric]) > 1 and len(changed[metric]) > 1 else 0.0
        delta = m1 - m0
        metric_loses = delta < -spread
        loses |= metric_loses
        cells += [f"{m0:.2f} ± {s0:.2f}", f"{m1:.2f} ± {s1:.2f}",
                  f"{delta:+.2f}" + (" (loses)" if metric_loses else " (gains)" if delta > spread else "")]
        record[metric] = {"default": base[metric], "variant": changed[metric], "delta": delta, "spread": spread}
    record["loses"] = loses
    return "| " + " | ".join(cells) + " |", record, loses


def machine_warning(key: str, base: dict[str, list], changed: dict[str, list]) -> str | None:
    """A warning where the default's and the variant's runs did not all run on one kind of machine: the same
    configuration and seeds can score further apart on two machines than its seed spread (docs/accuracy.md)."""
    machines = set(base["cpu"]) | set(changed["cpu"])
    if len(machines) == 1 and "not recorded" not in machines:
        return None
    return (f"{key}: the runs compared come from more than one machine ({'; '.join(sorted(machines))}); the delta "
            "holds the machines' difference too. Re-run the base here (a variant with a no-op --set) to compare.")


def run_variant(args: argparse.Namespace) -> None:
    rows, records, losing, warnings = [], [], [], []
    for key in args.datasets:
        base = seed_scores(key, args.seeds, args.threads, args.force, args.base, args.base_set)
        changed = seed_scores(key, args.seeds, args.threads, args.force, args.variant, args.set)
        row, record, loses = compare(key, base, changed)
        warning = machine_warning(key, base, changed)
        if warning:
            warnings.append(warning)
            record["machine_warning"] = warning
        rows.append(row)
        records.append(record)
        if loses:
            losing.append(key)
    verdict = (f"loses beyond the seed spread on {', '.join(losing)}: not kept" if losing else
               "loses on no dataset beyond the seed spread")
    against = f"`{args.base}` ({' '.join(args.base_set)})" if args.base else "the default"
    text = "\n".join([
        f"`{args.variant}` ({' '.join(args.set)}) against {against}, NGAME fused, seeds "
        f"{' '.join(map(str, args.seeds))}; mean ± sample standard deviation; a delta is marked when it exceeds "
        f"the larger standard deviation. Verdict: {verdict}.", "",
        "| dataset | P@1 default | P@1 variant | P@1 delta | PSP@5 default | PSP@5 variant | PSP@5 delta |",
        "|---|---|---|---|---|---|---|", *rows, *(["", *(f"- {w}" for w in warnings)] if warnings else [])])
    (BENCH / "results" / f"seeds-{args.variant}.md").write_text(text + "\n")
    (BENCH / "results" / f"seeds-{args.variant}.json").write_text(json.dumps(
        {"variant": args.variant, "overrides": args.set, "base": args.base, "base_overrides": args.base_set,
         "seeds": args.seeds, "datasets": records,
         "kept": not losing}, indent=2))
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=["hpo", "bibtex", "delicious"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--update-readme", action="store_true",
                        help="write the table into docs/benchmarks.md's SEEDS block")
    parser.add_argument("--variant", default=None, help="name of a change to compare with the default")
    parser.add_argument("--set", action="append", default=[], help="the variant's overrides (key=value)")
    parser.add_argument("--base", default=None,
                        help="compare with this earlier variant instead of the default (a change on top of another)")
    parser.add_argument("--base-set", action="append", default=[], help="the base variant's overrides")
    args = parser.parse_args()
    if bool(args.variant) != bool(args.set) or bool(args.base) != bool(args.base_set):
        parser.error("--variant goes with --set, and --base with --base-set")
    if args.base and not args.variant:
        parser.error("--base needs --variant")
    if args.variant:
        run_variant(args)
        return
    rows, records = [], []
    for key in args.datasets:
        scores = seed_scores(key, args.seeds, args.threads, args.force)
        for seed, p1, psp5 in zip(scores["seed"], scores["P@1"], scores["PSP@5"], strict=True):
            records.append({"dataset": key, "seed": seed, "P@1": p1, "PSP@5": psp5})
        cells = []
        for metric in METRICS:
            values = scores[metric]
            if not values:
                cells += ["", "", ""]
                continue
            mean, spread = mean_sd(values)
            versus = []
            for lead in (False, True):
                peer = best_peer(key, metric, lead)
                if peer:
                    wins = f"{sum(v > peer[0] for v in values)} of {len(values)}"
                    versus.append(f"{peer[0]:.2f} ({peer[1]}), NGAME above in {wins}")
            cells += [" / ".join(f"{v:.2f}" for v in values), f"{mean:.2f} ± {spread:.2f}",
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
