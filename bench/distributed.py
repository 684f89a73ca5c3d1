"""1 process vs N data-parallel processes (torchrun, gloo on CPU) on the same global batch: NGAME stage 1
throughput, final loss and the encoder's test accuracy, side by side.

  python -m bench.distributed                        # HPO (bundled demo data), 1 vs 2 processes
  python -m bench.distributed --data DIR --nproc 1 2 4 --epochs 20

On one CPU machine the processes share its cores (each gets cores / N threads), so this measures that the
distributed run computes the same thing and what the communication costs, not a speed-up: the speed-up
comes from giving each process its own GPU or machine. Writes bench/results/distributed.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.blocks import REPO, SCALING_DOC, update_block
from xmine.demo import demo_dataset_path

BENCH = REPO / "bench"


def run(nproc: int, data: str, out: Path, epochs: int, cores: int) -> dict:
    train = ["-m", "xmine", "-q", "train", "--method", "ngame", "--stages", "1", "--data", data, "--out", str(out),
             "--set", f"siamese.epochs={epochs}"]
    if nproc == 1:
        cmd = [sys.executable] + train + ["--set", f"encoder.num_threads={cores}"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] + train
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(max(1, cores // nproc))}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    history = json.loads((out / "history.json").read_text())
    stage1 = history["stage1"]
    pred = out / "pred.npz"
    subprocess.run([sys.executable, "-m", "xmine", "-q", "predict", "--model", str(out), "--data", data, "--out",
                    str(pred), "--scores", "encoder"], check=True, env=env, cwd=REPO)
    evaluation = subprocess.run([sys.executable, "-m", "xmine", "evaluate", "--data", data, "--pred", str(pred),
                                 "--json"], capture_output=True, text=True, env=env, cwd=REPO)
    metrics = json.loads(evaluation.stdout) if evaluation.returncode == 0 else {}
    return {"processes": nproc, "threads_per_process": max(1, cores // nproc), "wall_s": wall,
            "stage1_s": history.get("stage1_seconds"),
            "points_per_s": sum(e["points_per_s"] for e in stage1[1:]) / max(len(stage1) - 1, 1),
            "losses": [e["loss"] for e in stage1], "points_seen": [e.get("points_seen") for e in stage1],
            "P@1": metrics.get("P@1"), "P@5": metrics.get("P@5"), "PSP@5": metrics.get("PSP@5")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="dataset directory (default: the bundled HPO demo data)")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--update-readme", action="store_true",
                        help="write the table into docs/scaling.md's DIST block")
    parser.add_argument("--work", default="/tmp/xmine-bench-distributed")
    args = parser.parse_args()
    data = args.data or str(demo_dataset_path())
    results = [run(n, data, Path(args.work) / f"np{n}", args.epochs, args.cores) for n in args.nproc]
    ref = results[0]["losses"]
    lines = [f"NGAME stage 1 on `{Path(data).name}`, {args.epochs} epochs, global batch = the config's batch size, "
             f"{args.cores} CPU cores shared by the processes (`python -m bench.distributed`).", "",
             "| processes | threads each | stage 1 s | points/s | final loss | max rel. loss diff vs 1 process | "
             "points seen per epoch | encoder P@1 | P@5 | PSP@5 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        diff = max(abs(a - b) / abs(b) for a, b in zip(r["losses"], ref, strict=True))
        seen = sorted(set(r["points_seen"]))
        lines.append(f"| {r['processes']} | {r['threads_per_process']} | {r['stage1_s']:.0f} | {r['points_per_s']:.0f} "
                     f"| {r['losses'][-1]:.4f} | {diff:.1e} | {', '.join(map(str, seen))} | "
                     f"{r['P@1'] or float('nan'):.2f} | {r['P@5'] or float('nan'):.2f} | "
                     f"{r['PSP@5'] or float('nan'):.2f} |")
    text = "\n".join(lines)
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    (out / "distributed.md").write_text(text + "\n")
    (out / "distributed.json").write_text(json.dumps(results, indent=2))
    print(text)
    if args.update_readme:
        update_block(SCALING_DOC, "DIST", text)


if __name__ == "__main__":
    main()
