"""pypi-keywords: a short-text, long-tail XMC dataset built from PyPI project metadata.

A point is a PyPI project; its text is ``"<name>: <summary>"`` (the one-line summary its authors wrote); its labels
are the keywords its authors gave it, normalised into tags. It is a kind of data the other bench datasets lack:
texts of about one sentence, about three labels per point, and a long label tail (most tags are used by two to
five projects).

Two steps, so that a build is reproducible from a stored snapshot:

  python -m bench.datasets.pypi_keywords crawl --out SNAPSHOT.jsonl [--target 30000] [--seconds 4200]
  python -m bench.datasets.pypi_keywords build [--snapshot SNAPSHOT.jsonl.gz] [--out DIR]

`crawl` reads PyPI's simple index (every project name), shuffles it with a fixed seed and fetches each project's
JSON metadata in that order until enough projects with keywords are seen. `build` turns a snapshot into the
trn_X.txt / trn_X_Y.txt / tst_X.txt / tst_X_Y.txt / Y.txt layout (see BUILD_RULES). The bench builds the dataset
from the snapshot shipped next to this file the first time it is asked for (bench.run's `dataset_dir`).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import gzip
import json
import os
import random
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
SNAPSHOT = HERE / "pypi-keywords-snapshot.jsonl.gz"
NAME = "pypi-keywords"
SPLIT_SEED = 42
CRAWL_SEED = 20261202
MIN_LABEL_POINTS = 2  # a tag used by one project only can be neither learned nor fairly tested
MIN_SUMMARY_WORDS = 3
MAX_TAG_CHARS = 50
TEST_FRACTION = 0.2

BUILD_RULES = f"""\
1. Projects whose metadata has a summary of at least {MIN_SUMMARY_WORDS} words and a non-empty keywords field.
2. Point text: `"<name>: <summary>"`, whitespace collapsed to single spaces.
3. Keywords -> tags: split on commas or newlines when there are any, else on semicolons when there are any,
   else on whitespace; each part lower-cased, stripped of quotes and brackets, and its runs of spaces and
   underscores joined by "-" (so "Machine Learning", "machine_learning" and "machine-learning" are one tag).
   Parts longer than {MAX_TAG_CHARS} characters or without a letter or digit are dropped, as is a tag equal to the
   project's own normalised name (the point's text already holds it).
4. Exact duplicate summaries (lower-cased) keep their first project in crawl order: families of generated
   packages share one summary and would otherwise put near-copies on both sides of the split.
5. Label space: tags used by at least {MIN_LABEL_POINTS} kept projects (sorted by tag); projects left without a
   tag are dropped.
6. Seeded random split (python `random.Random({SPLIT_SEED}).shuffle`), {int(100 * (1 - TEST_FRACTION))}/
   {int(100 * TEST_FRACTION)} by project.
"""


# --------------------------------------------------------------------------- normalisation

def normalise_name(name: str) -> str:
    """PEP 503's normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def keyword_tags(keywords: str | None, project: str = "") -> list[str]:
    """The tags of a keywords field (BUILD_RULES 3), in order of first appearance, without duplicates."""
    if not keywords or not keywords.strip():
        return []
    if "," in keywords or "\n" in keywords:
        parts = re.split(r"[,\n]", keywords)
    elif ";" in keywords:
        parts = keywords.split(";")
    else:
        parts = keywords.split()
    own = normalise_name(project) if project else None
    tags: list[str] = []
    for part in parts:
        tag = re.sub(r"[\s_]+", "-", part.strip().strip("\"'[](){}").strip().lower()).strip("-")
        if not tag or len(tag) > MAX_TAG_CHARS or not re.search(r"[^\W_]", tag) or tag == own or tag in tags:
            continue
        tags.append(tag)
    return tags


def point_text(name: str, summary: str) -> str:
    return f"{name}: {' '.join(summary.split())}"


# --------------------------------------------------------------------------- build

def read_snapshot(path: Path) -> list[dict]:
    """The snapshot's records; a line that is not a JSON object is an error naming the file and line."""
    opener = gzip.open if path.suffix == ".gz" else open
    records = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{lineno}: not a JSON line ({e.msg})") from None
            if not isinstance(rec, dict) or "query" not in rec:
                raise SystemExit(f"{path}:{lineno}: expected an object with a 'query' field")
            records.append(rec)
    return records


def select_points(records: list[dict]) -> list[tuple[str, str, list[str]]]:
    """(project name, text, tags) of the kept projects, in crawl order (BUILD_RULES 1-4)."""
    points, seen_summaries = [], set()
    for rec in records:
        name, summary = rec.get("name"), rec.get("summary")
        if not name or not summary or len(summary.split()) < MIN_SUMMARY_WORDS:
            continue
        tags = keyword_tags(rec.get("keywords"), name)
        key = " ".join(summary.lower().split())
        if not tags or key in seen_summaries:
            continue
        seen_summaries.add(key)
        points.append((name, point_text(name, summary), tags))
    return points


def _write_matrix(path: Path, rows: list[list[int]], n_cols: int) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"{len(rows)} {n_cols}\n")
        for row in rows:
            fh.write(" ".join(f"{j}:1.0" for j in row) + "\n")


def quantiles(values: list[int]) -> dict[str, int]:
    s = sorted(values)
    return {f"q{q:02d}": s[min(len(s) - 1, int(q / 100 * len(s)))] for q in (0, 5, 25, 50, 75, 95, 99)} | {
        "max": s[-1]}


def build(snapshot: Path, out: Path) -> dict:
    """Write the dataset folder `out` (whole or absent: built in a temporary folder, then renamed)."""
    records = read_snapshot(snapshot)
    points = select_points(records)
    counts = collections.Counter(tag for _, _, tags in points for tag in tags)
    labels = sorted(tag for tag, c in counts.items() if c >= MIN_LABEL_POINTS)
    splits = split_points(points, labels)
    stats = {"n_crawled": len(records), "n_with_summary_and_tags": len(points), **split_stats(splits, len(labels)),
             "snapshot": snapshot.name, "crawl_dates": _crawl_dates(records)}
    build_folder(out, splits, labels, stats, _readme(stats))
    return stats


def split_points(points: list[tuple[str, str, list[str]]], labels: list[str]
                 ) -> dict[str, list[tuple[str, str, list[int]]]]:
    """(id, text, label names) points -> {"trn", "tst"} rows of (id, text, label indices into `labels`): names
    outside `labels` dropped, points left without one dropped, then a seeded random split."""
    index = {label: i for i, label in enumerate(labels)}
    kept = [(name, text, sorted(index[n] for n in names if n in index)) for name, text, names in points]
    kept = [p for p in kept if p[2]]
    random.Random(SPLIT_SEED).shuffle(kept)
    n_test = int(round(TEST_FRACTION * len(kept)))
    return {"trn": kept[n_test:], "tst": kept[:n_test]}


def split_stats(splits: dict[str, list[tuple[str, str, list[int]]]], n_labels: int) -> dict:
    """Sizes, label counts and text lengths of a split dataset, for its stats.json and README."""
    kept = splits["trn"] + splits["tst"]
    train_freq = collections.Counter(j for _, _, ys in splits["trn"] for j in ys)
    return {
        "n_train": len(splits["trn"]), "n_test": len(splits["tst"]), "n_labels": n_labels,
        "avg_labels_per_point": sum(len(ys) for _, _, ys in kept) / len(kept),
        "labels_absent_from_train": sum(1 for j in range(n_labels) if train_freq[j] == 0),
        "train_label_frequency": quantiles([train_freq[j] for j in range(n_labels)]),
        "labels_per_point": quantiles([len(ys) for _, _, ys in kept]),
        "words_per_text": quantiles([len(text.split()) for _, text, _ in kept]),
    }


def build_folder(out: Path, splits: dict[str, list[tuple[str, str, list[int]]]], labels: list[str], stats: dict,
                 readme: str, filters: dict[str, list[tuple[int, int]]] | None = None) -> None:
    """Write a dataset folder (whole or absent: written in a temporary folder, then renamed into place): per split
    `{split}_X.txt`, `{split}_ids.txt`, `{split}_X_Y.txt` from (id, text, label indices) rows; `Y.txt` (label
    texts); `filter_labels_{train,test}.txt` when `filters` is given; stats.json; README.md."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    for split, rows in splits.items():
        (tmp / f"{split}_X.txt").write_text("".join(text + "\n" for _, text, _ in rows), encoding="utf-8")
        (tmp / f"{split}_ids.txt").write_text("".join(name + "\n" for name, _, _ in rows), encoding="utf-8")
        _write_matrix(tmp / f"{split}_X_Y.txt", [ys for _, _, ys in rows], len(labels))
    (tmp / "Y.txt").write_text("".join(label + "\n" for label in labels), encoding="utf-8")
    for split, pairs in (filters or {}).items():
        name = {"trn": "filter_labels_train.txt", "tst": "filter_labels_test.txt"}[split]
        (tmp / name).write_text("".join(f"{row} {label}\n" for row, label in pairs), encoding="utf-8")
    (tmp / "stats.json").write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    (tmp / "README.md").write_text(readme, encoding="utf-8")
    if out.exists():
        old = out.with_name(f".{out.name}-old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        tmp.rename(out)


def _crawl_dates(records: list[dict]) -> str:
    dates = sorted(r["crawled"] for r in records if r.get("crawled"))
    return f"{dates[0]} .. {dates[-1]}" if dates else "unknown"


def _readme(stats: dict) -> str:
    return f"""# {NAME}: PyPI project summary -> its authors' keywords

Built by `python -m bench.datasets.pypi_keywords build` from `{stats['snapshot']}` (shipped in bench/datasets/).

## Source
PyPI's JSON API (`https://pypi.org/pypi/<project>/json`, field `info`: name, summary, keywords), crawled
{stats['crawl_dates']} for a seeded random sample of the names in PyPI's simple index. The summaries and keywords
are metadata that each project's authors published on PyPI; cite "PyPI project metadata".

## Construction
{BUILD_RULES}
## Stats
- crawled projects: {stats['n_crawled']}; with a summary and at least one tag: {stats['n_with_summary_and_tags']}
- train points: {stats['n_train']}, test points: {stats['n_test']}, labels: {stats['n_labels']}
- labels per point: {stats['avg_labels_per_point']:.2f} on average; quantiles {stats['labels_per_point']}
- labels with no training point: {stats['labels_absent_from_train']}
- training points per label, quantiles: {stats['train_label_frequency']}
- words per text, quantiles: {stats['words_per_text']}
"""


# --------------------------------------------------------------------------- crawl

def seeded_project_names() -> list[str]:
    """Every project name of PyPI's simple index, in the crawls' seeded random order."""
    with urllib.request.urlopen("https://pypi.org/simple/", timeout=120) as r:
        names = re.findall(r'<a href="([^"/]+)/">', r.read().decode())
    random.Random(CRAWL_SEED).shuffle(names)
    return names


def fetch_info(name: str) -> dict | int | None:
    """A project's `info` metadata from PyPI's JSON API; 404 for a project that is gone; None when three tries
    failed otherwise."""
    for _ in range(3):
        try:
            with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=60) as r:
                return json.loads(r.read())["info"]
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return 404
        except (OSError, ValueError, KeyError):
            time.sleep(2)
    return None


def _fetch(name: str) -> dict | None:
    info = fetch_info(name)
    if not isinstance(info, dict):
        return None if info is None else {"query": name, "error": info}
    rec = {"query": name, "name": info.get("name"), "version": info.get("version"),
           "crawled": time.strftime("%Y-%m-%d", time.gmtime())}
    if (info.get("keywords") or "").strip():  # the rest can never become a point: keep the snapshot small
        rec |= {"summary": info.get("summary"), "keywords": info["keywords"]}
    return rec


def crawl(out: Path, target: int, seconds: float, workers: int = 128) -> None:
    """Append project records to `out` (resumable) until `target` projects with keywords or `seconds` pass."""
    names = seeded_project_names()
    done = set()
    if out.exists():
        done = {json.loads(line)["query"] for line in out.open(encoding="utf-8")}
    todo = [n for n in names if n not in done]
    start, with_keywords = time.time(), 0
    with out.open("a", encoding="utf-8") as fh, cf.ThreadPoolExecutor(workers) as pool:
        for k in range(0, len(todo), 1024):
            for rec in pool.map(_fetch, todo[k:k + 1024]):
                if rec is not None:
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    with_keywords += bool((rec.get("keywords") or "").strip())
            fh.flush()
            print(f"{time.strftime('%H:%M:%S')} fetched {min(k + 1024, len(todo))}, with keywords {with_keywords}",
                  flush=True)
            if with_keywords >= target or time.time() - start > seconds:
                break


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("crawl", help="fetch PyPI metadata into a snapshot (network)")
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--target", type=int, default=30000, help="stop after this many projects with keywords")
    c.add_argument("--seconds", type=float, default=4200)
    b = sub.add_parser("build", help="write the dataset folder from a snapshot")
    b.add_argument("--snapshot", type=Path, default=SNAPSHOT)
    b.add_argument("--out", type=Path, default=HERE.parent / "data" / NAME)
    args = ap.parse_args(argv)
    if args.command == "crawl":
        crawl(args.out, args.target, args.seconds)
    else:
        stats = build(args.snapshot, args.out)
        print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
