"""`xmine report`: one self-contained HTML page of the pictures XMC practitioners read -- accuracy by
label frequency (head to tail), recall curves, per-point comparisons of methods and training curves --
plus the same figures as PNG files beside it.

Every number comes from :mod:`xmine.metrics`; this module only gathers, draws and lays out. The page
has no network references: figures are inline base64 PNGs and the style sheet is inline.

Recipe (:func:`write_report`): read the dataset and the prediction files -> score every method
(:func:`score_methods`) -> pick the points where methods disagree most -> draw the figures -> write
the HTML and the PNGs atomically.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from xmine.errors import XmineError
from xmine.metrics import (
    PROPENSITY_PRESETS,
    evaluate,
    frequency_bucket_metrics,
    frequency_buckets,
    inverse_propensity,
    ranked_relevance,
)
from xmine.utils import atomic_write, atomic_write_text

__all__ = ["MethodScores", "ReportData", "parse_pred_arg", "read_predictions", "score_methods", "write_report"]

KS = (1, 3, 5)
RECALL_DEPTH = 100
TOP = 5  # the depth of the bucket metrics and per-point figures
FIGURES = ("metrics", "buckets", "recall", "coverage", "points", "training")


# ------------------------------------------------------------------------------------------- inputs
def parse_pred_arg(text: str) -> tuple[str, Path]:
    """``NAME=PRED.npz`` of ``--pred`` as (name, path); a bare path is named after its file stem."""
    name, sep, path = text.partition("=")
    if not sep:
        return Path(text).stem, Path(text)
    if not name.strip() or not path.strip():
        raise XmineError(f"--pred {text!r}: expected NAME=PRED.npz")
    return name.strip(), Path(path.strip())


def read_predictions(path: str | Path, shape: tuple[int, int]) -> sp.csr_matrix:
    """A prediction file (the CSR .npz that `xmine predict` writes) checked against the split's shape.

    Never unpickles (scipy reads .npz with allow_pickle=False); a file that is not a sparse matrix,
    has the wrong shape or holds NaN scores raises XmineError naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise XmineError(f"prediction file not found: {path}")
    try:
        pred = sp.load_npz(path)
    except Exception as exc:  # noqa: BLE001 - zip/numpy errors: not a prediction file
        raise XmineError(f"{path}: not a sparse prediction file as `xmine predict` writes ({exc})") from exc
    if pred.ndim != 2 or pred.shape != tuple(shape):
        raise XmineError(f"{path}: predictions have shape {pred.shape}, the test split has {tuple(shape)} "
                         "(points x labels); were they made for this dataset and split?")
    pred = sp.csr_matrix(pred)
    if not np.issubdtype(pred.data.dtype, np.number) or np.issubdtype(pred.data.dtype, np.complexfloating):
        raise XmineError(f"{path}: scores must be real numbers, got dtype {pred.data.dtype}")
    if np.issubdtype(pred.data.dtype, np.floating) and np.isnan(pred.data).any():
        raise XmineError(f"{path}: {int(np.isnan(pred.data).sum())} scores are NaN; cannot rank them")
    return pred


def read_history(model_dir: str | Path) -> dict[str, Any]:
    """The training records (history.json, plain JSON) of a saved model directory."""
    path = Path(model_dir) / "history.json"
    if not path.is_file():
        raise XmineError(f"--model {model_dir}: no history.json there (is it an xmine model directory?)")
    try:
        history = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise XmineError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(history, dict):
        raise XmineError(f"{path}: expected a JSON object, got {type(history).__name__}")
    return history


# ------------------------------------------------------------------------------------------ scoring
@dataclass
class MethodScores:
    """Everything the report shows about one method, all from xmine.metrics."""

    name: str
    metrics: dict[str, float]
    buckets: list[dict[str, float]]
    recall: np.ndarray  # (RECALL_DEPTH,) R@1..R@100 in %
    point_p5: np.ndarray  # (n,) P@5 of every point in %
    top: np.ndarray  # (n, TOP) label ids, -1 where fewer were predicted
    hits: np.ndarray  # (n, TOP) bool


@dataclass
class ReportData:
    dataset: str
    split: str
    n_points: int
    n_labels: int
    n_buckets: int
    methods: list[MethodScores]
    bucket_of_label: np.ndarray
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    history: dict[str, Any] | None = None
    model: str | None = None


def score_methods(preds: Sequence[tuple[str, sp.csr_matrix]], true: sp.csr_matrix, train_labels: sp.csr_matrix,
                  filter_pairs: np.ndarray | None = None, n_buckets: int = 5,
                  propensity: str = "default") -> tuple[list[MethodScores], np.ndarray]:
    """Score each (name, predictions) pair on the same label-frequency buckets; returns the scores and the
    (L,) bucket of every label."""
    a, b = PROPENSITY_PRESETS[propensity]
    inv_p = inverse_propensity(train_labels, a, b)
    buckets = frequency_buckets(train_labels, n_buckets)
    n_true = np.diff(true.indptr)
    has_true = n_true > 0
    out = []
    for name, pred in preds:
        metrics = evaluate(pred, true, ks=KS, inv_propensity=inv_p, filter_pairs=filter_pairs, recall_ks=(10, 100))
        labels, rel = ranked_relevance(pred, true, RECALL_DEPTH, filter_pairs)
        hits = np.cumsum(rel[has_true], axis=1, dtype=np.float64)
        recall = 100.0 * (hits / n_true[has_true, None]).mean(axis=0) if has_true.any() else np.zeros(RECALL_DEPTH)
        rows = frequency_bucket_metrics(pred, true, train_labels, n_buckets=n_buckets, k=TOP,
                                        filter_pairs=filter_pairs, buckets=buckets)
        out.append(MethodScores(name, metrics, rows, recall, 100.0 * rel[:, :TOP].sum(axis=1) / TOP,
                                labels[:, :TOP], rel[:, :TOP]))
    return out, buckets


def disagreements(methods: list[MethodScores], n: int = 6) -> list[int]:
    """Points where the methods' P@5 differ most (largest max - min, ties by point index). At most a third
    of them are points that some method left without any prediction, so the examples also show wrong
    predictions side by side, not only abstentions."""
    if len(methods) < 2:
        return []
    p5 = np.stack([m.point_p5 for m in methods])
    spread = p5.max(axis=0) - p5.min(axis=0)
    order = np.argsort(-spread, kind="stable")
    order = order[spread[order] > 0]
    empty = np.stack([m.top[:, 0] < 0 for m in methods]).any(axis=0)
    n_empty = min(n // 3, int(empty[order].sum()))
    full = order[~empty[order]][: n - n_empty]
    picked = np.concatenate([full, order[empty[order]][: n - len(full)]])
    return [int(i) for i in picked[np.argsort(-spread[picked], kind="stable")]]


def _example(i: int, methods: list[MethodScores], true: sp.csr_matrix, point_texts: Sequence[str] | None,
             label_texts: Sequence[str] | None) -> dict[str, Any]:
    def name(label: int) -> str:
        return label_texts[label] if label_texts is not None else f"label {label}"

    truth = true.indices[true.indptr[i]:true.indptr[i + 1]][true.data[true.indptr[i]:true.indptr[i + 1]] != 0]
    return {
        "point": i,
        "text": point_texts[i] if point_texts is not None else None,
        "true": [name(int(j)) for j in truth],
        "methods": [{"name": m.name, "p5": float(m.point_p5[i]),
                     "top": [(name(int(j)), bool(h)) for j, h in zip(m.top[i], m.hits[i], strict=True) if j >= 0]}
                    for m in methods],
    }


# ------------------------------------------------------------------------------------------ figures
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colors(n: int) -> list:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _bucket_ticks(rows: list[dict[str, float]]) -> list[str]:
    last = len(rows) - 1
    return [f"{r['bucket']}{' head' if i == 0 else ' tail' if i == last else ''}\n"
            f"{r['freq_min']}–{r['freq_max']}\n{r['labels']} labels" for i, r in enumerate(rows)]


BUCKET_XLABEL = "bucket: training points per label, number of labels"


def _grouped_bars(ax: Any, groups: list[str], methods: list[MethodScores], values: list[list[float]],
                  colors: list, annotate: bool = False) -> None:
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(groups))
    for j, (m, vals) in enumerate(zip(methods, values, strict=True)):
        bars = ax.bar(x + (j - (len(methods) - 1) / 2) * width, vals, width, label=m.name, color=colors[j])
        if annotate and len(methods) <= 4:
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(x, groups)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _legend(fig: Any, ax: Any, n: int) -> None:
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(n, 6), frameon=False, bbox_to_anchor=(0.5, -0.02))


def figure_metrics(data: ReportData) -> bytes:
    plt = _plt()
    colors = _colors(len(data.methods))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, prefix, title in ((axes[0], "P", "Precision P@k"), (axes[1], "PSP", "Propensity-scored PSP@k")):
        groups = [f"{prefix}@{k}" for k in KS]
        _grouped_bars(ax, groups, data.methods, [[m.metrics[g] for g in groups] for m in data.methods], colors,
                      annotate=True)
        ax.set_title(title)
        ax.set_ylabel("%")
    _legend(fig, axes[0], len(data.methods))
    fig.tight_layout(rect=(0, 0.08 + 0.04 * ((len(data.methods) - 1) // 6), 1, 1))
    return _png(fig)


def figure_buckets(data: ReportData) -> bytes:
    plt = _plt()
    colors = _colors(len(data.methods))
    ticks = _bucket_ticks(data.methods[0].buckets)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    panels = (("contribution", f"Contribution to P@{TOP} (bars add up to P@{TOP})"),
              ("precision", f"Precision@{TOP} of the bucket's predictions"),
              ("recall", f"Recall@{TOP} of the bucket's test positives"))
    for ax, (key, title) in zip(axes, panels, strict=True):
        _grouped_bars(ax, ticks, data.methods, [[r[key] for r in m.buckets] for m in data.methods], colors)
        ax.set_title(title, fontsize=11)
        ax.set_ylabel("%")
        ax.set_xlabel(BUCKET_XLABEL, fontsize=8)
        ax.tick_params(axis="x", labelsize=7.5)
    fig.suptitle(f"{data.dataset}: accuracy by training frequency of the labels, head (1) to tail "
                 f"({data.n_buckets}); equal training positives per bucket", fontsize=11)
    _legend(fig, axes[0], len(data.methods))
    fig.tight_layout(rect=(0, 0.08 + 0.04 * ((len(data.methods) - 1) // 6), 1, 1))
    return _png(fig)


def figure_recall(data: ReportData) -> bytes:
    plt = _plt()
    colors = _colors(len(data.methods))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    k = np.arange(1, RECALL_DEPTH + 1)
    for m, c in zip(data.methods, colors, strict=True):
        ax.plot(k, m.recall, label=m.name, color=c, lw=1.8)
    ax.set_xscale("log")
    ax.set_xticks([1, 2, 5, 10, 20, 50, 100], ["1", "2", "5", "10", "20", "50", "100"])
    ax.set_xlabel("k (how far down the ranked list)")
    ax.set_ylabel("R@k, % of a point's true labels found")
    ax.set_title("Recall@k, k = 1..100")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _png(fig)


def figure_coverage(data: ReportData) -> bytes:
    plt = _plt()
    colors = _colors(len(data.methods))
    fig, ax = plt.subplots(figsize=(9, 4.6))
    ticks = _bucket_ticks(data.methods[0].buckets)
    _grouped_bars(ax, ticks, data.methods, [[r["coverage"] for r in m.buckets] for m in data.methods], colors,
                  annotate=True)
    ax.set_ylabel(f"% of the bucket's test labels hit in some top {TOP}")
    ax.set_title(f"Label coverage: labels ever predicted correctly in a top {TOP}")
    ax.set_xlabel(BUCKET_XLABEL, fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def figure_points(data: ReportData) -> bytes:
    plt = _plt()
    colors = _colors(len(data.methods))
    two = len(data.methods) >= 2
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(13 if two else 7, 4.5), squeeze=False)
    values = np.arange(0, 101, 100 // TOP)
    shares = [[100.0 * float(np.mean(np.isclose(m.point_p5, v))) for v in values] for m in data.methods]
    _grouped_bars(axes[0, 0], [f"{v:g}" for v in values], data.methods, shares, colors)
    axes[0, 0].set_xlabel(f"P@{TOP} of a point (%)")
    axes[0, 0].set_ylabel("% of test points")
    axes[0, 0].set_title(f"Per-point P@{TOP}")
    axes[0, 0].legend(fontsize=8)
    if two:
        a, b = data.methods[0], data.methods[1]
        ia = np.rint(a.point_p5 * TOP / 100).astype(int)
        ib = np.rint(b.point_p5 * TOP / 100).astype(int)
        joint = np.zeros((TOP + 1, TOP + 1), dtype=np.int64)
        np.add.at(joint, (ib, ia), 1)
        ax = axes[0, 1]
        im = ax.imshow(joint, origin="lower", cmap="Blues", norm=_plt().matplotlib.colors.LogNorm(vmin=1))
        for (r, c), v in np.ndenumerate(joint):
            if v:
                ax.text(c, r, str(v), ha="center", va="center", fontsize=7,
                        color="white" if v > math.sqrt(joint.max()) * 2 else "black")
        ax.set_xticks(range(TOP + 1), [f"{v:g}" for v in values])
        ax.set_yticks(range(TOP + 1), [f"{v:g}" for v in values])
        ax.set_xlabel(f"{a.name}: P@{TOP} (%)")
        ax.set_ylabel(f"{b.name}: P@{TOP} (%)")
        ax.set_title("Points by P@5 of both (off the diagonal: they disagree)")
        fig.colorbar(im, ax=ax, label="points")
    fig.tight_layout()
    return _png(fig)


def _stage_times(history: dict[str, Any]) -> dict[str, float]:
    """Seconds per training stage from an NGAME or MIPS history.json (what it holds)."""
    out: dict[str, float] = {}
    if "stage1_seconds" in history:
        out["stage 1: Siamese encoder"] = float(history["stage1_seconds"])
    if "label_index_seconds" in history:
        out["label embeddings + index"] = float(history["label_index_seconds"])
    if "stage2_seconds" in history:
        parts = {"stage 2: shortlist": float(history.get("shortlist_seconds", 0.0)),
                 "stage 2: sparse ranker": float(history.get("ranker_seconds", 0.0)),
                 "stage 2: classifier epochs": float(sum(e.get("seconds", 0.0) for e in history.get("stage2", [])))}
        out.update({k: v for k, v in parts.items() if v > 0})
        rest = float(history["stage2_seconds"]) - sum(parts.values())
        if rest > 0.5:  # a resumed training counts only its own part in stage2_seconds
            out["stage 2: rest (features, fusion)"] = rest
    if "epochs" in history:  # MIPS
        out["classifier epochs"] = float(sum(e.get("seconds", 0.0) for e in history["epochs"]))
        if "reindex_seconds" in history:
            out["MIPS re-indexing"] = float(history["reindex_seconds"])
    return out


def _epoch_series(history: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    series = []
    for key, title in (("stage1", "stage 1 (Siamese)"), ("stage2", "stage 2 (classifiers)"),
                       ("epochs", "classifiers")):
        epochs = history.get(key)
        if isinstance(epochs, list) and epochs and all(isinstance(e, dict) for e in epochs):
            series.append((title, epochs))
    return series


def figure_training(history: dict[str, Any]) -> bytes:
    plt = _plt()
    from matplotlib.ticker import MaxNLocator
    series = _epoch_series(history)
    cos = next((epochs for _, epochs in series if "pos_cos" in epochs[0]), None)
    # the curve is measured every few epochs (siamese.heldout_every): only those epochs are plotted
    measured = ([e for e in epochs if e.get("heldout_ndcg5_unseen") is not None] for _, epochs in series)
    heldout = next((epochs for epochs in measured if epochs), None)
    times = _stage_times(history)
    n_panels = len(series) + (cos is not None) + (heldout is not None) + bool(times)
    if n_panels == 0:
        raise XmineError("history.json holds no per-epoch records or stage times to plot")
    cols = min(n_panels, 2)
    rows = math.ceil(n_panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3.6 * rows), squeeze=False)
    flat = list(axes.ravel())
    for title, epochs in series:
        ax = flat.pop(0)
        ep = [int(e.get("epoch", i)) + 1 for i, e in enumerate(epochs)]
        ax.plot(ep, [float(e.get("loss", np.nan)) for e in epochs], marker="o", ms=3)
        loss_name = epochs[0].get("loss_name")
        ax.set_title(f"{title}: training loss" + (f" ({loss_name})" if loss_name else ""))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if cos is not None:
        ax = flat.pop(0)
        ep = [int(e.get("epoch", i)) + 1 for i, e in enumerate(cos)]
        ax.plot(ep, [e["pos_cos"] for e in cos], label="positive pairs", marker="o", ms=3)
        ax.plot(ep, [e.get("neg_cos", np.nan) for e in cos], label="in-batch negatives", marker="o", ms=3)
        ax.plot(ep, [e.get("gap", np.nan) for e in cos], label="gap", ls="--")
        ax.set_title("stage 1: mean in-batch cosine")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if heldout is not None:
        ax = flat.pop(0)
        ep = [int(e["epoch"]) + 1 for e in heldout]
        ax.plot(ep, [e["heldout_ndcg5_unseen"] for e in heldout], label="points stage 1 does not train on",
                marker="o", ms=3)
        seen = [e.get("heldout_ndcg5_seen") for e in heldout]
        if all(v is not None for v in seen):
            ax.plot(ep, seen, label="points it trains on", marker="o", ms=3, ls="--")
        ax.set_title("stage 1: encoder nDCG@5 on held-out points (gap = memorisation)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("nDCG@5 (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if times:
        ax = flat.pop(0)
        names = list(times)[::-1]
        bars = ax.barh(names, [times[n] for n in names], color="tab:gray")
        ax.bar_label(bars, fmt="%.1f s", fontsize=8, padding=2)
        ax.set_title(f"time per stage (total {sum(times.values()):.0f} s)")
        ax.set_xlabel("seconds")
        ax.margins(x=0.15)
        ax.tick_params(axis="y", labelsize=8)
    for ax in flat:
        ax.set_visible(False)
    fig.tight_layout()
    return _png(fig)


def draw_figures(data: ReportData) -> dict[str, bytes]:
    figs = {"metrics": figure_metrics(data), "buckets": figure_buckets(data), "recall": figure_recall(data),
            "coverage": figure_coverage(data), "points": figure_points(data)}
    if data.history is not None:
        figs["training"] = figure_training(data.history)
    return figs


# --------------------------------------------------------------------------------------------- HTML
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1180px;
       color: #222; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
img { max-width: 100%; height: auto; display: block; margin: 0.8em 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; vertical-align: top; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; }
p.note { color: #555; font-size: 0.92em; }
.ex { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; margin: 1em 0; }
.ex .text { font-style: italic; color: #333; }
.hit { color: #0a7a2a; font-weight: 600; } .miss { color: #a33; }
ol.top { margin: 0.2em 0; padding-left: 1.5em; }
.cols { display: flex; gap: 1.5em; flex-wrap: wrap; } .cols > div { flex: 1 1 240px; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _table(table_id: str, header: list[str], rows: list[list[Any]], left: int = 1) -> str:
    th = "".join(f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>" for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            text = ("–" if math.isnan(v) else f"{v:.2f}") if isinstance(v, float) else str(v)
            cells.append(f'<td class="l">{_e(text)}</td>' if i < left else f"<td>{_e(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table id="{table_id}"><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _img(name: str, png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img id="fig-{name}" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


METRIC_COLUMNS = ("P@1", "P@3", "P@5", "nDCG@5", "PSP@1", "PSP@3", "PSP@5", "R@10", "R@100")
BUCKET_COLUMNS = ("contribution", "precision", "recall", "coverage", "predicted_share", "true_share")
RECALL_COLUMNS = (1, 3, 5, 10, 20, 50, 100)


def _examples_html(examples: list[dict[str, Any]]) -> str:
    parts = []
    for ex in examples:
        text = ex["text"]
        if text is not None and len(text) > 400:
            text = text[:400] + " …"
        head = f"<b>test point {ex['point']}</b> — " + ", ".join(
            f"{_e(m['name'])} P@5 {m['p5']:.0f}%" for m in ex["methods"])
        truth = "; ".join(_e(t) for t in ex["true"][:12]) + (" …" if len(ex["true"]) > 12 else "")
        cols = "".join(
            f"<div><b>{_e(m['name'])}</b><ol class=\"top\">"
            + ("".join(f'<li class="{"hit" if hit else "miss"}">{"✓" if hit else "✗"} {_e(label)}</li>'
                       for label, hit in m["top"]) or '<li class="miss">(no prediction for this point)</li>')
            + "</ol></div>" for m in ex["methods"])
        parts.append(f'<div class="ex">{head}'
                     + (f'<p class="text">{_e(text)}</p>' if text is not None else "")
                     + f"<p><b>true labels ({len(ex['true'])}):</b> {truth}</p><div class=\"cols\">{cols}</div></div>")
    return "".join(parts)


def render_html(data: ReportData, figures: dict[str, bytes]) -> str:
    methods = data.methods
    first = methods[0].buckets
    sections = [
        f"<h1>xmine report: {_e(data.dataset)}</h1>",
        f'<p class="note">{data.split} split: {data.n_points} points, {data.n_labels} labels; methods: '
        + ", ".join(_e(m.name) for m in methods) + ". Metrics in %, from xmine.metrics (PSP with the "
        "Jain et al. propensities; filter_labels applied where the dataset has them).</p>",
        "<h2>P@k and PSP@k</h2>",
        _img("metrics", figures["metrics"], "P@k and PSP@k per method"),
        _table("table-metrics", ["method", *METRIC_COLUMNS],
               [[m.name, *(float(m.metrics.get(c, float("nan"))) for c in METRIC_COLUMNS)] for m in methods]),
        "<h2>Accuracy by label frequency</h2>",
        f'<p class="note">Labels sorted by training frequency and cut into {data.n_buckets} buckets with equal '
        "numbers of training positives: bucket 1 (head) holds the few most frequent labels, the last bucket "
        "(tail) the many rare ones, including labels never seen in training. <i>Contribution</i>: hits on the "
        f"bucket's labels / (5 × points) — the buckets add up to P@5. <i>Precision</i>: share of the method's "
        f"top-{TOP} predictions from this bucket that are right. <i>Recall</i>: share of the bucket's test "
        f"positives found in a top {TOP}. <i>Pred. share</i> / <i>true share</i>: the bucket's share of all "
        f"top-{TOP} predictions / of all test positives.</p>",
        _img("buckets", figures["buckets"], "accuracy by label-frequency bucket"),
        _table("table-bucket-labels", ["bucket", "labels", "train freq", "train positives", "test positives"],
               [[f"{r['bucket']}", r["labels"], f"{r['freq_min']}–{r['freq_max']}", r["train_positives"],
                 r["test_positives"]] for r in first]),
        _table("table-buckets", ["bucket", "method", "contribution", "precision", "recall", "coverage",
                                 "pred. share", "true share"],
               [[f"{r['bucket']}", m.name, *(float(r[c]) for c in BUCKET_COLUMNS)]
                for b, _ in enumerate(first) for m in methods for r in [m.buckets[b]]], left=2),
        "<h2>Recall@k</h2>",
        '<p class="note">How far down the ranked list the true labels are: R@k averages, over points with a '
        "true label, the share of its labels within the top k. The curve is flat after the last stored "
        "prediction of a row.</p>",
        _img("recall", figures["recall"], "recall at k"),
        _table("table-recall", ["method", *(f"R@{k}" for k in RECALL_COLUMNS)],
               [[m.name, *(float(m.recall[k - 1]) for k in RECALL_COLUMNS)] for m in methods]),
        "<h2>Label coverage</h2>",
        f'<p class="note">Of each bucket\'s labels that occur in the test split, the share that the method '
        f"predicts correctly in at least one top {TOP}: labels a method never gets right are invisible in "
        "averages over points.</p>",
        _img("coverage", figures["coverage"], "label coverage per bucket"),
        "<h2>Per point</h2>",
        f'<p class="note">The distribution of P@{TOP} over test points, and (right) how the first two methods\' '
        f"P@{TOP} combine: points off the diagonal are those where one is right and the other is not.</p>",
        _img("points", figures["points"], "per-point P@5"),
        _table("table-points", ["method", "mean P@5", "points with P@5 = 0 (%)", "points with P@5 ≥ 60 (%)",
                                "points without any prediction (%)"],
               [[m.name, float(m.point_p5.mean()), float(100 * np.mean(m.point_p5 == 0)),
                 float(100 * np.mean(m.point_p5 >= 60 - 1e-9)), float(100 * np.mean(m.top[:, 0] < 0))]
                for m in methods]),
    ]
    if data.disagreements:
        sections += ["<h3>Where the methods disagree most</h3>",
                     f'<p class="note">The test points with the largest spread of P@{TOP} between methods; '
                     f"each method's top {TOP} with ✓ for a true label.</p>",
                     _examples_html(data.disagreements)]
    if "training" in figures and data.history is not None:
        times = _stage_times(data.history)
        sections += [f"<h2>Training ({_e(data.model)})</h2>",
                     _img("training", figures["training"], "training curves"),
                     _table("table-training-times", ["stage", "seconds"], [[k, float(v)] for k, v in times.items()])]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>xmine report: {_e(data.dataset)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(sections) + "</body></html>\n")


# ---------------------------------------------------------------------------------------------- API
def write_report(data_dir: str | Path, preds: Sequence[tuple[str, str | Path]], out: str | Path,
                 model: str | Path | None = None, split: str = "test", n_buckets: int = 5,
                 propensity: str = "default", text_variant: str = "full", n_examples: int = 6,
                 history: dict[str, Any] | None = None, model_name: str | None = None) -> list[Path]:
    """Write the HTML report to ``out`` and its figures as ``<out stem>-<figure>.png`` beside it.

    ``preds`` are (method name, prediction file) pairs, each a CSR .npz of shape (points of the split,
    labels). The training curves come from ``model``'s history.json, or from a ``history`` dict of the
    same form. Returns the written paths, the HTML first."""
    from xmine.data import load_dataset

    if not preds:
        raise XmineError("xmine report needs at least one --pred NAME=PRED.npz")
    names = [name for name, _ in preds]
    if len(set(names)) != len(names):
        raise XmineError(f"--pred names must differ, got {names}")
    dataset = load_dataset(data_dir, text_variant=text_variant)
    part = dataset.test if split == "test" else dataset.train
    loaded = [(name, read_predictions(path, part.labels.shape)) for name, path in preds]
    if model is not None:
        history, model_name = read_history(model), model_name or str(model)
    methods, buckets = score_methods(loaded, part.labels, dataset.train.labels, part.filter_pairs, n_buckets,
                                     propensity)
    examples = [_example(i, methods, part.labels, part.texts, dataset.label_texts)
                for i in disagreements(methods, n_examples)]
    data = ReportData(dataset.name, split, part.n_points, dataset.n_labels, n_buckets, methods, buckets,
                      examples, history, model_name or "the model")
    figures = draw_figures(data)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = [out]
    page = render_html(data, figures)
    atomic_write_text(out, page)
    for name, png in figures.items():
        path = out.with_name(f"{out.stem}-{name}.png")
        atomic_write(path, lambda tmp, png=png: Path(tmp).write_bytes(png))
        written.append(path)
    for path in written:  # the temporary files are private (0600); a report is for sharing
        path.chmod(0o644)
    return written
