"""Frequency-bucket metrics (against plain loops), `xmine evaluate --by-frequency`, and the HTML report
(`xmine report`): every figure present, tables equal to xmine.metrics, nothing fetched from a network,
clear errors for bad prediction files, and -- where Chromium is installed -- a real headless render."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from xmine.errors import XmineError
from xmine.metrics import (
    evaluate,
    frequency_bucket_metrics,
    frequency_buckets,
    inverse_propensity,
    point_precision,
    recall_curve,
)


# ------------------------------------------------------------------------------------------ helpers
def random_problem(seed: int, n: int = 60, n_labels: int = 40, n_train: int = 200):
    rng = np.random.default_rng(seed)
    # Zipf-like label frequencies so that the buckets differ in size; some labels never trained on.
    weights = 1.0 / np.arange(1, n_labels + 1) ** 1.1
    weights[-3:] = 0.0
    weights /= weights.sum()

    def labels(rows: int, zero_ok: bool) -> sp.csr_matrix:
        dense = np.zeros((rows, n_labels), dtype=np.float32)
        for i in range(rows):
            k = rng.integers(0 if zero_ok else 1, 5)
            dense[i, rng.choice(n_labels, size=k, replace=False, p=weights)] = 1.0
        return sp.csr_matrix(dense)

    train = labels(n_train, False)
    true = labels(n, True).tolil()
    true[0, n_labels - 1] = 1.0  # a test-only label
    true = sp.csr_matrix(true)
    # Scores with ties and rows of different lengths (some shorter than 5); sometimes the truth scores high.
    dense = np.where(rng.random((n, n_labels)) < 0.3, rng.integers(0, 6, (n, n_labels)).astype(np.float32), 0)
    dense = dense + 3.0 * true.toarray() * (rng.random((n, n_labels)) < 0.5)
    dense[1] = 0.0
    dense[1, :3] = [1.0, 2.0, 3.0]
    mask = dense > 0
    pred = sp.csr_matrix((dense[mask], np.nonzero(mask)[1], np.r_[0, np.cumsum(mask.sum(1))]), shape=(n, n_labels))
    filters = np.array([[2, int(pred[2].indices[0])], [3, 0]]) if pred[2].nnz else None
    return pred, true, train, filters


def plain_ranking(pred: sp.csr_matrix, k: int, filters) -> list[list[int]]:
    """Top-k label ids per row by a plain sort: score descending, lower label id first on ties."""
    drop = {tuple(p) for p in filters} if filters is not None else set()
    out = []
    for i in range(pred.shape[0]):
        row = pred.getrow(i)
        entries = [(-float(v), int(j)) for j, v in zip(row.indices, row.data, strict=True) if (i, int(j)) not in drop]
        out.append([j for _, j in sorted(entries)[:k]])
    return out


# --------------------------------------------------------------------------------------- the metrics
@pytest.mark.parametrize("n_buckets", [1, 3, 5])
def test_buckets_hold_equal_positives_from_head_to_tail(n_buckets: int) -> None:
    _, _, train, _ = random_problem(0)
    b = frequency_buckets(train, n_buckets)
    counts = np.asarray((train != 0).sum(0)).ravel()
    # plain reference: walk labels from most to least frequent and cut at every 1/n of the positives
    order = sorted(range(len(counts)), key=lambda j: (-counts[j], j))
    total, seen, expected = counts.sum(), 0, {}
    for j in order:
        expected[j] = min(seen * n_buckets // total, n_buckets - 1) if counts[j] else n_buckets - 1
        seen += counts[j]
    assert [expected[j] for j in range(len(counts))] == b.tolist()
    # head first: every label of a bucket is at least as frequent as every label of a later bucket
    for a in range(n_buckets - 1):
        if (b == a).any() and (b == a + 1).any():
            assert counts[b == a].min() >= counts[b == a + 1].max()
    assert (b[counts == 0] == n_buckets - 1).all()
    pos = np.bincount(b, weights=counts, minlength=n_buckets)
    assert pos.sum() == total and pos.max() <= total / n_buckets + counts.max()


def test_bucket_metrics_match_plain_loops() -> None:
    for seed in range(4):
        pred, true, train, filters = random_problem(seed)
        rows = frequency_bucket_metrics(pred, true, train, n_buckets=4, filter_pairs=filters)
        b = frequency_buckets(train, 4)
        top = plain_ranking(pred, 5, filters)
        truth = [set(true.getrow(i).indices.tolist()) for i in range(true.shape[0])]
        for r in rows:
            bucket = r["bucket"] - 1
            preds = [(i, j) for i, t in enumerate(top) for j in t if b[j] == bucket]
            hits = [(i, j) for i, j in preds if j in truth[i]]
            positives = [(i, j) for i, t in enumerate(truth) for j in t if b[j] == bucket]
            test_labels = {j for _, j in positives}
            assert r["contribution"] == pytest.approx(100 * len(hits) / (5 * true.shape[0]))
            assert r["precision"] == pytest.approx(100 * len(hits) / len(preds) if preds else 0.0)
            assert r["recall"] == pytest.approx(100 * len(hits) / len(positives) if positives else 0.0)
            found = {j for _, j in hits}
            assert r["coverage"] == pytest.approx(100 * len(found) / len(test_labels) if test_labels else 0.0)
            assert r["labels"] == int((b == bucket).sum())
        total = evaluate(pred, true, ks=(5,), filter_pairs=filters)["P@5"]
        assert sum(r["contribution"] for r in rows) == pytest.approx(total)
        assert sum(r["predicted_share"] for r in rows) == pytest.approx(100.0)


def test_recall_curve_and_point_precision_agree_with_evaluate() -> None:
    pred, true, train, filters = random_problem(7)
    curve = recall_curve(pred, true, 30, filters)
    ev = evaluate(pred, true, ks=(5,), filter_pairs=filters, recall_ks=range(1, 31))
    stored = int(np.diff(pred.indptr).max())
    for k in range(1, 31):
        if k <= stored:  # evaluate() reports R@k only up to the longest row
            assert curve[k - 1] == pytest.approx(ev[f"R@{k}"])
    assert np.all(np.diff(curve) >= 0)
    pp = point_precision(pred, true, 5, filters)
    assert pp.mean() == pytest.approx(ev["P@5"])
    top = plain_ranking(pred, 5, filters)
    truth = [set(true.getrow(i).indices.tolist()) for i in range(true.shape[0])]
    assert pp.tolist() == pytest.approx([100 * len(set(t) & y) / 5 for t, y in zip(top, truth, strict=True)])


def test_bucket_metrics_reject_bad_input() -> None:
    pred, true, train, _ = random_problem(1)
    with pytest.raises(XmineError, match="n_buckets"):
        frequency_buckets(train, 0)
    with pytest.raises(XmineError, match="no positive"):
        frequency_buckets(sp.csr_matrix(train.shape), 5)
    with pytest.raises(XmineError, match="labels"):
        frequency_bucket_metrics(pred, true, train[:, :-1], 5)
    with pytest.raises(XmineError, match="shape"):
        frequency_bucket_metrics(pred[:-1], true, train, 5)


# --------------------------------------------------------------------------------------- the report
def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`xmine ARGS` in this process (imports are paid once), with its exit code and output."""
    from xmine.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def hpo_preds(small_hpo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two prediction files on the small real HPO data: a noisy oracle and a popularity ranker
    (top labels by training frequency for every point), as two methods that differ by bucket."""
    from xmine.cli import save_predictions
    from xmine.data import load_dataset

    ds = load_dataset(small_hpo)
    rng = np.random.default_rng(0)
    n, n_labels = ds.test.labels.shape
    noise = sp.random(n, n_labels, density=20 / n_labels, format="csr", random_state=1, dtype=np.float32)
    oracle = (noise + ds.test.labels.multiply(rng.random(ds.test.labels.shape) < 0.5) * 2).tocsr()
    freq = np.asarray(ds.train.labels.sum(0)).ravel()
    top = np.argsort(-freq, kind="stable")[:50]
    popular = sp.csr_matrix((np.tile(freq[top], n), np.tile(top, n), np.arange(0, 50 * n + 1, 50)),
                            shape=(n, n_labels))
    out = tmp_path_factory.mktemp("preds")
    save_predictions(out / "oracle.npz", oracle)
    save_predictions(out / "popular.npz", popular)
    history = {"stage1": [{"epoch": e, "loss": 3.0 / (e + 1), "loss_name": "infonce", "pos_cos": 0.5 + 0.02 * e,
                           "neg_cos": 0.4 - 0.01 * e, "gap": 0.1 + 0.03 * e, "seconds": 1.0} for e in range(5)],
               "stage2": [{"epoch": e, "loss": 0.1 / (e + 1), "seconds": 2.0} for e in range(3)],
               "stage1_seconds": 5.5, "label_index_seconds": 0.2, "shortlist_seconds": 1.0,
               "ranker_seconds": 2.0, "stage2_seconds": 12.0}
    (out / "model").mkdir()
    (out / "model" / "history.json").write_text(json.dumps(history))
    return {"oracle": out / "oracle.npz", "popular": out / "popular.npz", "model": out / "model"}


class Tables(HTMLParser):
    """Cells of every <table id=...>, and every src/href attribute of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.refs: list[str] = []
        self.images: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "img":
            self.images.append(a.get("id", ""))
        if tag == "table":
            self._table = a["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def report(small_hpo: Path, hpo_preds: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "hpo.html"
    proc = run_cli("report", "--data", str(small_hpo), "--pred", f"oracle={hpo_preds['oracle']}",
                   "--pred", f"popular={hpo_preds['popular']}", "--model", str(hpo_preds["model"]),
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_report_has_every_figure_and_png_files(report: Path) -> None:
    page = Tables()
    page.feed(report.read_text())
    figures = ["metrics", "buckets", "recall", "coverage", "points", "training"]
    assert page.images == [f"fig-{f}" for f in figures]
    for f in figures:
        png = report.with_name(f"hpo-{f}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    text = report.read_text()
    assert "Where the methods disagree most" in text and "✓" in text


def test_report_is_self_contained(report: Path) -> None:
    page = Tables()
    text = report.read_text()
    page.feed(text)
    assert page.refs and all(r.startswith("data:image/png;base64,") for r in page.refs)
    assert "http://" not in text and "https://" not in text and "<script" not in text and "<link" not in text
    assert "url(" not in text and "@import" not in text


def test_report_tables_equal_xmine_metrics(report: Path, small_hpo: Path, hpo_preds: dict[str, Path]) -> None:
    from xmine.data import load_dataset
    from xmine.report import read_predictions

    ds = load_dataset(small_hpo)
    page = Tables()
    page.feed(report.read_text())
    inv_p = inverse_propensity(ds.train.labels)
    metric_rows = {row[0]: row[1:] for row in page.tables["table-metrics"][1:]}
    header = page.tables["table-metrics"][0][1:]
    bucket_rows = page.tables["table-buckets"][1:]
    recall_rows = {row[0]: row[1:] for row in page.tables["table-recall"][1:]}
    recall_ks = [int(h[2:]) for h in page.tables["table-recall"][0][1:]]
    for name in ("oracle", "popular"):
        pred = read_predictions(hpo_preds[name], ds.test.labels.shape)
        m = evaluate(pred, ds.test.labels, inv_propensity=inv_p, filter_pairs=ds.test.filter_pairs)
        # R@100 only where every row stores 100 predictions (as evaluate() reports it)
        assert metric_rows[name] == [f"{m[h]:.2f}" if h in m else "–" for h in header]
        rows = frequency_bucket_metrics(pred, ds.test.labels, ds.train.labels, 5, filter_pairs=ds.test.filter_pairs)
        mine = [r for r in bucket_rows if r[1] == name]
        assert [r[0] for r in mine] == ["1", "2", "3", "4", "5"]
        for html_row, r in zip(mine, rows, strict=True):
            assert html_row[2:] == [f"{r[c]:.2f}" for c in ("contribution", "precision", "recall", "coverage",
                                                            "predicted_share", "true_share")]
        curve = recall_curve(pred, ds.test.labels, 100, ds.test.filter_pairs)
        assert recall_rows[name] == [f"{curve[k - 1]:.2f}" for k in recall_ks]
    # the popularity ranker lives in the head bucket; the noisy oracle is spread over all of them
    pop = {r[0]: float(r[2]) for r in bucket_rows if r[1] == "popular"}
    assert pop["1"] > 0 and pop["5"] == 0.0


def test_evaluate_by_frequency_json(small_hpo: Path, hpo_preds: dict[str, Path]) -> None:
    from xmine.data import load_dataset
    from xmine.report import read_predictions

    proc = run_cli("evaluate", "--data", str(small_hpo), "--pred", str(hpo_preds["oracle"]), "--by-frequency",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    ds = load_dataset(small_hpo)
    pred = read_predictions(hpo_preds["oracle"], ds.test.labels.shape)
    expected = frequency_bucket_metrics(pred, ds.test.labels, ds.train.labels, 5, filter_pairs=ds.test.filter_pairs)
    # row by row: pytest.approx takes a dict of numbers, not (in every pytest version) a list of dicts
    assert len(out["by_frequency"]) == len(expected)
    for got, want in zip(out["by_frequency"], expected, strict=True):
        assert got == pytest.approx(want)
    assert sum(r["contribution"] for r in out["by_frequency"]) == pytest.approx(out["P@5"])
    text = run_cli("evaluate", "--data", str(small_hpo), "--pred", str(hpo_preds["oracle"]), "--by-frequency")
    assert "5 tail" in text.stdout and "contributions add up to P@5" in text.stdout


def test_bad_prediction_files_give_clear_errors(small_hpo: Path, hpo_preds: dict[str, Path], tmp_path: Path) -> None:
    from xmine.cli import save_predictions

    not_npz = tmp_path / "notes.npz"
    not_npz.write_text("hello\n")
    wrong = tmp_path / "wrong.npz"
    save_predictions(wrong, sp.csr_matrix((3, 7)))
    nan = tmp_path / "nan.npz"
    bad = sp.load_npz(hpo_preds["oracle"]).tocsr()
    bad.data[0] = np.nan
    save_predictions(nan, bad)
    cases = [(not_npz, "not a sparse prediction file"), (wrong, "shape (3, 7)"), (nan, "NaN"),
             (tmp_path / "missing.npz", "not found")]
    for path, message in cases:
        proc = run_cli("report", "--data", str(small_hpo), "--pred", f"x={path}", "--out", str(tmp_path / "r.html"))
        assert proc.returncode == 1
        assert str(path) in proc.stderr and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r.html").exists()
    proc = run_cli("report", "--data", str(small_hpo), "--pred", "=x.npz", "--out", str(tmp_path / "r.html"))
    assert proc.returncode == 1 and "NAME=PRED.npz" in proc.stderr


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed (Debian: apt-get install chromium)")
def test_report_renders_offline_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "shot.png"
    # an unreachable proxy: if the page fetched anything from a network, it would not get it
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
           "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1200,3000", report.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), proc.stderr
    img = np.asarray(Image.open(shot).convert("L"))
    assert img.shape == (3000, 1200)
    # the figures rendered: many distinct grey levels and plenty of non-white pixels down the page
    assert len(np.unique(img)) > 50
    assert (img[2000:] < 250).mean() > 0.02


def test_training_figure_shows_the_stage1_heldout_curve_when_recorded() -> None:
    from xmine.report import figure_training

    def records(heldout: bool, seen: bool) -> list[dict]:
        return [{"epoch": e, "loss": 2.0 - e / 10, "pos_cos": 0.5, "neg_cos": 0.2, "gap": 0.3,
                 "heldout_ndcg5_unseen": 20.0 + e if heldout else None,
                 "heldout_ndcg5_seen": 25.0 + 3 * e if heldout and seen else None} for e in range(4)]

    import matplotlib.image

    heights = {}
    for case in ((True, True), (True, False), (False, False)):
        png = figure_training({"stage1": records(*case)})
        if case[0]:  # measured every few epochs (siamese.heldout_every): the epochs without it are left out
            sparse = [dict(r, heldout_ndcg5_unseen=None, heldout_ndcg5_seen=None) if r["epoch"] % 2 == 0 else r
                      for r in records(*case)]
            assert matplotlib.image.imread(io.BytesIO(figure_training({"stage1": sparse}))).shape == \
                matplotlib.image.imread(io.BytesIO(png)).shape
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        heights[case] = matplotlib.image.imread(io.BytesIO(png)).shape[0]
    # loss and cosines: one row of two panels; the held-out curve is a third panel, on a second row (also drawn when
    # no seen points were recorded)
    assert heights[(True, True)] == heights[(True, False)] > heights[(False, False)]
