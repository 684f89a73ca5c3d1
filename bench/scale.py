"""How xmine's costs grow with the number of labels L, on generated data.

Generated data with realistic statistics: label vectors (d=384, float32) lie around 1,000 topic centres
like real label embeddings; label frequencies follow a power law (Zipf, exponent 1.1); about 5 labels per
point; a point's vector is the mean of its labels' plus noise. Per L, each in a fresh process (peak memory
is that L's alone):
  - index build time, memory and query latency over the L label vectors: exact search, HNSW (faiss; NGAME's
    index) and IVF-PQ (48-byte codes; the compact index for millions of labels), recall@10 against exact
  - a short training run of the classifiers (dense + hashed sparse features) on shortlists: time per step
  - the MIPS negative sampler: rebuild (IVF) and sample time per batch
  - peak resident memory
At 10^7 labels (`--stream`) the label vectors (14.3 GiB as float32) are never held in memory: they are
generated chunk by chunk into an IVF-PQ index, and the exact reference for recall streams over the chunks.

  python -m bench.scale                   # L = 1e4, 1e5, 1e6 (about 25 minutes on 2 cores)
  python -m bench.scale --quick           # L = 1e4, 1e5
  python -m bench.scale --labels 10000000 --stream   # index build + query only, appended to the results

Writes bench/results/scale.json, scale.md and scale.png (log-log).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.blocks import REPO, SCALING_DOC, update_block

BENCH = REPO / "bench"
DIM = 384
TOPICS = 1000
CHUNK = 100_000
N_POINTS = 20_000
N_QUERIES = 500


def _normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def label_chunks(n_labels: int, seed: int = 0) -> Iterator[np.ndarray]:
    """The label vectors, CHUNK rows at a time, the same on every call (float32 throughout)."""
    centres = _normalise(np.random.default_rng([seed, 1]).standard_normal((TOPICS, DIM), dtype=np.float32))
    for c, start in enumerate(range(0, n_labels, CHUNK)):
        rng = np.random.default_rng([seed, 2, c])
        m = min(CHUNK, n_labels - start)
        x = centres[rng.integers(0, TOPICS, m)]
        x += rng.standard_normal((m, DIM), dtype=np.float32) * np.float32(0.6 / np.sqrt(DIM))
        yield _normalise(x)


def generate(n_labels: int, n_points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    labels = np.concatenate(list(label_chunks(n_labels, seed)))
    rng = np.random.default_rng([seed, 3])
    # power-law label frequencies: label rank r drawn with p ~ 1 / r^1.1
    p = 1.0 / np.arange(1, n_labels + 1) ** 1.1
    p /= p.sum()
    k = np.clip(rng.poisson(5, n_points), 1, 40)
    flat = rng.choice(n_labels, size=int(k.sum()), p=p)
    positives = np.split(flat, np.cumsum(k)[:-1])
    points = np.stack([labels[pos].mean(0) for pos in positives])
    points += 0.05 * rng.standard_normal(points.shape, dtype=np.float32)
    return labels, _normalise(points), positives


def _recall(ids: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / ref.shape[1] for a, b in zip(ids, ref, strict=True)]))


def _time_index(result: dict, name: str, index, queries: np.ndarray, shortlist: bool = True  # noqa: ANN001
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Size, batched query time and single-query latency of a built index; returns its top-10 (and, with
    `shortlist`, top-100) ids for the queries (the recall is recorded by `_record_recall` once the exact
    answer is known)."""
    result[f"{name}_mib"] = index.memory_bytes / 2**20
    t0 = time.perf_counter()
    _, ids = index.search(queries, 10)
    result[f"{name}_query_ms"] = 1000 * (time.perf_counter() - t0) / len(queries)
    one = [time.perf_counter()]
    for q in queries[:100]:  # one query at a time: the latency a service sees
        index.search(q[None], 10)
        one.append(time.perf_counter())
    result[f"{name}_latency_p50_ms"] = 1000 * float(np.median(np.diff(one)))
    return ids, index.search(queries, 100)[1] if shortlist else None


def _record_recall(result: dict, name: str, ids: tuple[np.ndarray, np.ndarray], ref: np.ndarray) -> None:
    result[f"{name}_recall@10"] = _recall(ids[0], ref)
    # as a shortlist: how many of the true top 10 are among the index's top 100
    result[f"{name}_recall10@100"] = _recall(ids[1], ref)


def _build_and_time(result: dict, name: str, build, queries: np.ndarray  # noqa: ANN001
                    ) -> tuple[np.ndarray, np.ndarray]:
    t0 = time.perf_counter()
    index = build()
    result[f"{name}_build_s"] = time.perf_counter() - t0
    return _time_index(result, name, index, queries)


def _classifier_steps(result: dict, n_labels: int, labels: np.ndarray, points: np.ndarray,
                      positives: list[np.ndarray]):
    """A short classifier training run, as NGAME's training does it (its classifier config, `classifier_optimizers`;
    on CPU the dense part scored pair by pair, `classifier.pair_kernel`), twice: dense Adam over all L rows (the MIPS
    method's) and row-sparse updates (`classifier.row_sparse_updates`, NGAME's default: RowSparseAdam over the rows
    a batch scored). 20 steps of batch 256; candidates = positives + 100 sampled labels (the shortlist search is timed
    with the indexes); sparse part 20 features per point. Returns the label matrix (the MIPS sampler uses it)."""
    import scipy.sparse as sp
    import torch

    from xmine.classifiers import LabelClassifiers
    from xmine.config import NGAMEConfig
    from xmine.losses import build_shortlist_loss
    from xmine.training.classifiers import classifier_optimizers, positive_candidates

    rng = np.random.default_rng(0)
    # 20 TF-IDF-like features per point out of 50,000 (sp.random would materialise a permutation of n*m)
    feats = sp.csr_matrix((rng.random(N_POINTS * 20, dtype=np.float32), rng.integers(0, 50_000, N_POINTS * 20),
                           np.arange(0, N_POINTS * 20 + 1, 20)), shape=(N_POINTS, 50_000))
    feats.sum_duplicates()
    y = sp.csr_matrix((np.ones(sum(len(q) for q in positives)), np.concatenate(positives),
                       np.cumsum([0] + [len(q) for q in positives])), shape=(N_POINTS, n_labels))
    y.sum_duplicates()
    batch, n_steps = 256, 20
    for key, row_sparse in (("classifier_step_ms", False), ("classifier_step_row_sparse_ms", True)):
        config = dataclasses.replace(NGAMEConfig().classifier, row_sparse_updates=row_sparse)
        clf = LabelClassifiers(n_labels, DIM, "dense+sparse", 1 << 22, sparse_grad=row_sparse,
                               pair_kernel=config.pair_kernel)
        clf.init_dense(labels)
        optimizers = classifier_optimizers(clf, config)
        loss_fn = build_shortlist_loss(config)
        times = []
        for step in range(n_steps):
            rows = np.arange(step * batch, (step + 1) * batch) % N_POINTS
            t0 = time.perf_counter()
            pc = positive_candidates(y[rows], rng)
            cand = np.concatenate([pc, rng.integers(0, n_labels, (batch, 100))], axis=1)
            is_pos = torch.zeros(cand.shape, dtype=torch.bool)
            is_pos[:, :pc.shape[1]] = torch.from_numpy(pc >= 0)
            scores = clf.score(torch.from_numpy(points[rows]), feats[rows], cand)
            loss = loss_fn(scores, is_pos, torch.from_numpy(cand >= 0))
            for opt in optimizers:
                opt.zero_grad()
            loss.backward()
            for opt in optimizers:
                opt.step()
            times.append(time.perf_counter() - t0)
        result[key] = 1000 * float(np.median(times[1:]))
        if not row_sparse:
            result["classifier_points_per_s"] = batch / float(np.median(times[1:]))
        del clf, optimizers
    return y


def measure(n_labels: int, index_only: bool, classifier_only: bool = False) -> dict:
    """One L, in this process."""
    from xmine.config import IndexConfig
    from xmine.index import LabelIndex
    from xmine.mining import MIPSNegativeSampler
    from xmine.utils import peak_rss_mb, set_threads

    set_threads(2)
    t0 = time.perf_counter()
    labels, points, positives = generate(n_labels, N_POINTS)
    result: dict = {"labels": n_labels, "points": N_POINTS, "dim": DIM, "generate_s": time.perf_counter() - t0}
    if classifier_only:
        _classifier_steps(result, n_labels, labels, points, positives)
        return result
    queries = points[:N_QUERIES]
    exact = LabelIndex.build(labels, IndexConfig(kind="exact"))
    ref = _time_index(result, "exact", exact, queries, shortlist=False)[0]
    for name, config in (("hnsw", IndexConfig(kind="hnsw", M=32, ef_construction=100, ef_search=100, exact_below=0)),
                         ("ivfpq", IndexConfig(kind="ivfpq", pq_bytes=48, nprobe=64, exact_below=0))):
        ids = _build_and_time(result, name, lambda config=config: LabelIndex.build(labels, config), queries)
        _record_recall(result, name, ids, ref)
    if not index_only:
        y = _classifier_steps(result, n_labels, labels, points, positives)
        batch = 256
        sampler = MIPSNegativeSampler(n_labels, 5, 200, IndexConfig(kind="ivf", nprobe=16, exact_below=0))
        t0 = time.perf_counter()
        sampler.rebuild(labels)
        result["mips_rebuild_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        sampler.sample(points[:batch], y[:batch])
        result["mips_sample_ms_per_batch"] = 1000 * (time.perf_counter() - t0)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def measure_streaming(n_labels: int) -> dict:
    """IVF-PQ build + query over `n_labels` generated vectors that never sit in memory together."""
    import faiss

    from xmine.config import IndexConfig
    from xmine.index import LabelIndex
    from xmine.utils import peak_rss_mb, set_threads

    set_threads(2)
    result: dict = {"labels": n_labels, "dim": DIM, "streamed": True}
    rng = np.random.default_rng(7)
    train = next(label_chunks(n_labels))  # the first chunk (100k vectors) trains the quantizers
    # queries: noisy copies of labels drawn from the first chunks
    queries = train[rng.choice(len(train), 200, replace=False)]
    queries = _normalise(queries + 0.05 * rng.standard_normal(queries.shape, dtype=np.float32))
    config = IndexConfig(kind="ivfpq", pq_bytes=48, nprobe=64, nlist=4096, exact_below=0)
    ids = _build_and_time(result, "ivfpq", lambda: LabelIndex.build_streaming(label_chunks(n_labels), n_labels,
                                                                              train, config), queries)
    # exact reference, streamed over the chunks (timed: the search only, not the chunks' generation)
    search_s = 0.0
    best_s = np.full((len(queries), 10), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), 10), -1, dtype=np.int64)
    for c, chunk in enumerate(label_chunks(n_labels)):
        t0 = time.perf_counter()
        s, i = faiss.knn(queries, chunk, 10, metric=faiss.METRIC_INNER_PRODUCT)
        search_s += time.perf_counter() - t0
        s_all, i_all = np.concatenate([best_s, s], 1), np.concatenate([best_i, i + c * CHUNK], 1)
        top = np.argsort(-s_all, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(s_all, top, 1), np.take_along_axis(i_all, top, 1)
    result["exact_query_ms"] = 1000 * search_s / len(queries)
    _record_recall(result, "ivfpq", ids, best_i)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


QUERY_KEYS = (("exact_query_ms", "exact query"), ("hnsw_query_ms", "HNSW query"), ("ivfpq_query_ms", "IVF-PQ query"),
              ("classifier_step_ms", "classifier step (batch 256)"),
              ("classifier_step_row_sparse_ms", "classifier step, row-sparse updates"),
              ("mips_sample_ms_per_batch", "MIPS sample (batch 256)"))
BUILD_KEYS = (("hnsw_build_s", "HNSW build (s)"), ("ivfpq_build_s", "IVF-PQ build (s)"),
              ("mips_rebuild_s", "MIPS IVF rebuild (s)"), ("exact_mib", "exact index (MiB)"),
              ("hnsw_mib", "HNSW index (MiB)"), ("ivfpq_mib", "IVF-PQ index (MiB)"), ("peak_rss_mb", "peak RSS (MiB)"))
TABLE_KEYS = ["labels", "exact_query_ms", "hnsw_build_s", "hnsw_query_ms", "hnsw_latency_p50_ms", "hnsw_recall@10",
              "ivfpq_build_s", "ivfpq_query_ms", "ivfpq_recall@10", "ivfpq_recall10@100", "exact_mib", "hnsw_mib",
              "ivfpq_mib", "classifier_step_ms", "classifier_step_row_sparse_ms", "classifier_points_per_s",
              "mips_rebuild_s", "mips_sample_ms_per_batch", "peak_rss_mb"]


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, keys, ylabel in ((ax[0], QUERY_KEYS, "milliseconds (per query / per step)"),
                               (ax[1], BUILD_KEYS, "seconds / MiB")):
        for key, name in keys:
            pts = sorted((r["labels"], r[key]) for r in results if key in r)
            if pts:
                axis.loglog(*zip(*pts, strict=True), marker="o", label=name)
        axis.set_xlabel("labels L")
        axis.set_ylabel(ylabel)
        axis.legend(fontsize=7)
        axis.grid(True, which="both", alpha=0.3)
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
    parser.add_argument("--index-only", action="store_true", help="indexes only, no classifier/MIPS steps")
    parser.add_argument("--classifier-only", action="store_true",
                        help="re-measure only the classifier steps; the saved index columns of each L are kept")
    parser.add_argument("--stream", action="store_true",
                        help="IVF-PQ over vectors generated chunk by chunk (for 1e7); adds to the saved results")
    parser.add_argument("--update-readme", action="store_true",
                        help="write the table into docs/scaling.md's SCALE block")
    parser.add_argument("--report", action="store_true", help="measure nothing: rebuild the table from saved results")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one L in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_streaming(args.one) if args.stream else
                         measure(args.one, args.index_only, args.classifier_only)))
        return
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    sizes = [] if args.report else args.labels or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    # new measurements replace saved ones of the same L and kind; the others stay (so --stream adds 1e7)
    saved = json.loads((out / "scale.json").read_text())["results"] if (out / "scale.json").exists() else []
    results = [r for r in saved if (r["labels"], r.get("streamed", False)) not in {(n, args.stream) for n in sizes}]
    for n in sizes:
        cmd = [sys.executable, "-m", "bench.scale", "--one", str(n)] + (["--index-only"] if args.index_only else []) + \
            (["--stream"] if args.stream else []) + (["--classifier-only"] if args.classifier_only else [])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            print(f"L={n} failed:\n{proc.stderr[-2000:]}")
            continue
        measured = json.loads(proc.stdout.strip().splitlines()[-1])
        if args.classifier_only:  # into the saved row of this L: its other columns stay
            row = next((r for r in saved if r["labels"] == n and not r.get("streamed")), {})
            measured = {**row, **{k: v for k, v in measured.items() if k.startswith("classifier_")},
                        "classifier_measured": time.strftime("%Y-%m-%d")}
            results.append(measured)
        else:
            results.append({**measured, "wall_s": time.perf_counter() - t0, "measured": dt.date.today().isoformat()})
        print(json.dumps(results[-1]), flush=True)
    results.sort(key=lambda r: (r["labels"], r.get("streamed", False)))
    lines = ["| " + " | ".join(TABLE_KEYS) + " |", "|" + "---|" * len(TABLE_KEYS)]
    for r in results:
        lines.append("| " + " | ".join(f"{r[k]:.4g}" if k in r else "" for k in TABLE_KEYS) + " |")
    laws = {k: slope([r for r in results if not r.get("streamed")], k)
            for k in ("exact_query_ms", "hnsw_query_ms", "ivfpq_query_ms", "hnsw_build_s", "classifier_step_ms",
                      "classifier_step_row_sparse_ms",
                      "mips_sample_ms_per_batch", "peak_rss_mb")}
    lines.append("")
    lines.append("Log-log slopes over L = " + ", ".join(f"{r['labels']:.0e}" for r in results if not r.get("streamed"))
                 + " (cost ~ L^slope): " + ", ".join(f"{k} {v:.2f}" for k, v in laws.items() if v is not None))
    lines.append("")
    lines.append("![cost vs number of labels](../bench/results/scale.png)")
    dates = sorted({r["measured"] for r in results if r.get("measured")}) or [dt.date.today().isoformat()]
    clf_dates = sorted({r["classifier_measured"] for r in results if r.get("classifier_measured")})
    when = " and ".join(dates) + (f" (classifier step columns {', '.join(clf_dates)}, `--classifier-only`)"
                                  if clf_dates else "")
    lines.insert(0, f"Measured {when} on {os.cpu_count()} CPU cores "
                    f"({platform.machine()}), 2 threads, each L in its own process, with `python -m bench.scale` "
                    "(and `--labels 10000000 --stream` for the last row). Times in ms per query (batch of "
                    f"{N_QUERIES} queries) or per training step (batch 256); `_mib` columns: index size; recall "
                    "against exact search on the same queries; `recall10@100`: share of the exact top 10 found "
                    "in the index's top 100 (a shortlist).\n")
    text = "\n".join(lines)
    (out / "scale.json").write_text(json.dumps({"results": results, "slopes": laws}, indent=2))
    (out / "scale.md").write_text(text + "\n")
    if results:
        plot(results, out / "scale.png")
    print(text)
    if args.update_readme:
        update_block(SCALING_DOC, "SCALE", text)


if __name__ == "__main__":
    main()
