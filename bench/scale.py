"""How xmine's costs grow with the number of labels L (and points N), on generated data.

Generated data with realistic statistics: label frequencies follow a power law (Zipf, exponent 1.1),
about 5 labels per point, label and point embeddings of dimension 384 that cluster around their labels.
Per L it measures, each in a fresh process (peak memory is that step's alone):
  - index build time and query latency over L label vectors, exact search vs HNSW (faiss), and HNSW's recall@10
  - a classifier training step on a shortlist (dense + hashed sparse features): time per step
  - the MIPS negative sampler: rebuild (IVF) and sample time per batch
  - peak resident memory

  python bench/scale.py                   # L = 1e4, 1e5, 1e6
  python bench/scale.py --quick           # L = 1e4, 1e5
  python bench/scale.py --labels 10000000 --index-only

Writes bench/results/scale.json, scale.md and scale.png (log-log).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
DIM = 384


def generate(n_labels: int, n_points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    labels = rng.normal(size=(n_labels, DIM)).astype(np.float32)
    labels /= np.linalg.norm(labels, axis=1, keepdims=True)
    # power-law label frequencies: label rank r drawn with p ~ 1 / r^1.1
    p = 1.0 / np.arange(1, n_labels + 1) ** 1.1
    p /= p.sum()
    k = np.clip(rng.poisson(5, n_points), 1, 40)
    flat = rng.choice(n_labels, size=int(k.sum()), p=p)
    positives = np.split(flat, np.cumsum(k)[:-1])
    points = np.stack([labels[pos].mean(0) for pos in positives]) + 0.05 * rng.normal(size=(n_points, DIM))
    points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    return labels, points, positives


def measure(n_labels: int, index_only: bool) -> dict:
    """One L, in this process."""
    import scipy.sparse as sp
    import torch

    from xmine.classifiers import LabelClassifiers
    from xmine.config import ClassifierConfig, IndexConfig
    from xmine.index import LabelIndex
    from xmine.mining import MIPSNegativeSampler
    from xmine.training.classifiers import positive_candidates, shortlist_loss
    from xmine.utils import peak_rss_mb, set_threads

    set_threads(2)
    n_points = 20_000
    t0 = time.perf_counter()
    labels, points, positives = generate(n_labels, n_points)
    result: dict = {"labels": n_labels, "points": n_points, "dim": DIM, "generate_s": time.perf_counter() - t0}
    queries = points[:500]
    exact = LabelIndex.build(labels, IndexConfig(kind="exact"))
    t0 = time.perf_counter()
    _, ref = exact.search(queries, 10)
    result["exact_query_ms"] = 1000 * (time.perf_counter() - t0) / len(queries)
    t0 = time.perf_counter()
    hnsw = LabelIndex.build(labels, IndexConfig(kind="hnsw", M=32, ef_construction=100, ef_search=100, exact_below=0))
    result["hnsw_build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, ids = hnsw.search(queries, 10)
    result["hnsw_query_ms"] = 1000 * (time.perf_counter() - t0) / len(queries)
    result["hnsw_recall@10"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ref, strict=True)]))
    del hnsw
    if not index_only:
        # one classifier step on a shortlist of 100 ANN candidates + positives, batch 256, sparse part 20 features
        batch = 256
        clf = LabelClassifiers(n_labels, DIM, "dense+sparse", 1 << 22)
        clf.init_dense(labels)
        opt = torch.optim.Adam(clf.dense_parameters(), lr=1e-2)
        sopt = torch.optim.Adagrad(clf.sparse_parameters(), lr=0.5)
        rows = np.arange(batch)
        indptr = np.cumsum([0] + [len(positives[i]) for i in rows])
        pos = sp.csr_matrix((np.ones(indptr[-1]), np.concatenate([positives[i] for i in rows]), indptr),
                            shape=(batch, n_labels))
        feats = sp.random(batch, 50_000, density=20 / 50_000, format="csr", dtype=np.float32, random_state=0)
        _, short = exact.search(points[:batch], 100)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            cand = np.concatenate([positive_candidates(pos, np.random.default_rng(0)), short], axis=1)
            is_pos = torch.zeros(cand.shape, dtype=torch.bool)
            is_pos[:, :positive_candidates(pos, np.random.default_rng(0)).shape[1]] = True
            scores = clf.score(torch.from_numpy(points[:batch]), feats, cand)
            loss = shortlist_loss(scores, is_pos, torch.from_numpy(cand >= 0), ClassifierConfig())
            opt.zero_grad()
            sopt.zero_grad()
            loss.backward()
            opt.step()
            sopt.step()
            times.append(time.perf_counter() - t0)
        result["classifier_step_ms"] = 1000 * float(np.median(times[1:]))
        result["classifier_points_per_s"] = batch / float(np.median(times[1:]))
        sampler = MIPSNegativeSampler(n_labels, 5, 200, IndexConfig(kind="ivf", nprobe=16, exact_below=0))
        t0 = time.perf_counter()
        sampler.rebuild(labels)
        result["mips_rebuild_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        sampler.sample(points[:batch], pos)
        result["mips_sample_ms_per_batch"] = 1000 * (time.perf_counter() - t0)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["labels"] for r in results]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for key, name in (("exact_query_ms", "exact query (ms/query)"), ("hnsw_query_ms", "HNSW query (ms/query)"),
                      ("classifier_step_ms", "classifier step (ms/batch of 256)"),
                      ("mips_sample_ms_per_batch", "MIPS sample (ms/batch of 256)")):
        pts = [(x, r[key]) for x, r in zip(xs, results, strict=True) if key in r]
        if pts:
            ax[0].loglog(*zip(*pts, strict=True), marker="o", label=name)
    ax[0].set_xlabel("labels L")
    ax[0].set_ylabel("milliseconds")
    ax[0].legend(fontsize=8)
    ax[0].grid(True, which="both", alpha=0.3)
    for key, name in (("hnsw_build_s", "HNSW build (s)"), ("mips_rebuild_s", "IVF rebuild (s)"),
                      ("peak_rss_mb", "peak memory (MiB)")):
        pts = [(x, r[key]) for x, r in zip(xs, results, strict=True) if key in r]
        if pts:
            ax[1].loglog(*zip(*pts, strict=True), marker="o", label=name)
    ax[1].set_xlabel("labels L")
    ax[1].legend(fontsize=8)
    ax[1].grid(True, which="both", alpha=0.3)
    fig.suptitle("xmine cost vs number of labels (generated data, d=384, 2 CPU threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def slope(results: list[dict], key: str) -> float | None:
    pts = [(r["labels"], r[key]) for r in results if key in r and r[key] > 0]
    if len(pts) < 2:
        return None
    x, y = np.log10([p[0] for p in pts]), np.log10([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, nargs="+")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--index-only", action="store_true")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one L in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.index_only)))
        return
    sizes = args.labels or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    results = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--one", str(n)] + (["--index-only"] if args.index_only else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"L={n} failed:\n{proc.stderr[-2000:]}")
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    keys = ["labels", "hnsw_build_s", "exact_query_ms", "hnsw_query_ms", "hnsw_recall@10", "classifier_step_ms",
            "classifier_points_per_s", "mips_rebuild_s", "mips_sample_ms_per_batch", "peak_rss_mb"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in results:
        lines.append("| " + " | ".join(f"{r[k]:.4g}" if k in r else "" for k in keys) + " |")
    laws = {k: slope(results, k) for k in ("exact_query_ms", "hnsw_query_ms", "hnsw_build_s", "classifier_step_ms",
                                           "mips_sample_ms_per_batch", "peak_rss_mb")}
    lines.append("")
    lines.append("Log-log slopes (cost ~ L^slope): " + ", ".join(f"{k} {v:.2f}" for k, v in laws.items()
                                                                   if v is not None))
    text = "\n".join(lines)
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    (out / "scale.json").write_text(json.dumps({"results": results, "slopes": laws}, indent=2))
    (out / "scale.md").write_text(text + "\n")
    if results:
        plot(results, out / "scale.png")
    print(text)


if __name__ == "__main__":
    main()
