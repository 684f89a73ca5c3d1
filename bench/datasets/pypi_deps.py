"""pypi-deps: PyPI project summary -> the projects it depends on; points and labels share one space (projects).

A point is a PyPI project, its text `"<name>: <summary>"`; its labels are the projects its latest release requires
at run time (Requires-Dist without an `extra` marker), each label's text that project's own `"<name>: <summary>"`.
Short texts, a head of very common dependencies and a long tail, and one id space for points and labels, as in
LF-WikiSeeAlso-like data (`filter_labels_*.txt` list a point's own project where it is also a label).

  python -m bench.datasets.pypi_deps crawl --out SNAPSHOT.jsonl [--names 30000]
  python -m bench.datasets.pypi_deps build [--snapshot SNAPSHOT.jsonl.gz] [--out DIR]

`crawl` fetches the first `--names` projects of pypi_keywords' seeded order of PyPI's simple index (the points'
candidates), then the projects their dependencies name (the labels' texts). `build` writes the dataset folder
(BUILD_RULES). The bench builds it from the shipped snapshot on first use.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import json
import re
import sys
import time
from pathlib import Path

from bench.datasets.pypi_keywords import (
    MIN_SUMMARY_WORDS,
    SPLIT_SEED,
    TEST_FRACTION,
    build_folder,
    fetch_info,
    normalise_name,
    point_text,
    read_snapshot,
    seeded_project_names,
    split_points,
    split_stats,
)

HERE = Path(__file__).resolve().parent
SNAPSHOT = HERE / "pypi-deps-snapshot.jsonl.gz"
NAME = "pypi-deps"
MIN_LABEL_POINTS = 2

BUILD_RULES = f"""\
1. Points: crawled projects (role "point") with a summary of at least {MIN_SUMMARY_WORDS} words and at least one
   run-time dependency: a Requires-Dist entry without an `extra ==` marker, its project name taken before any
   version, extras or marker and normalised as PEP 503 does; a project's dependency on itself is dropped.
2. Point text: `"<name>: <summary>"`; exact duplicate summaries keep their first project in crawl order.
3. Label space: dependency projects named by at least {MIN_LABEL_POINTS} kept points and whose own metadata has a
   summary (sorted by normalised name); label text `"<name>: <summary>"`. Points left without a label are dropped.
4. Seeded random split (python `random.Random({SPLIT_SEED}).shuffle`), {int(100 * (1 - TEST_FRACTION))}/
   {int(100 * TEST_FRACTION)} by point. `filter_labels_{{train,test}}.txt`: (row, label) where the point's own project
   is a label (never a ground-truth pair), to drop from predictions before scoring.
"""

_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def runtime_dependencies(requires_dist: list[str] | None, project: str = "") -> list[str]:
    """Normalised names of the run-time requirements (no `extra ==` marker), in order, without duplicates."""
    own = normalise_name(project) if project else None
    out: list[str] = []
    for requirement in requires_dist or []:
        name_part, _, marker = requirement.partition(";")
        if re.search(r"\bextra\s*==", marker):
            continue
        match = _REQUIREMENT_NAME.match(name_part)
        if not match:
            continue
        name = normalise_name(match.group(1))
        if name != own and name not in out:
            out.append(name)
    return out


def build(snapshot: Path, out: Path) -> dict:
    records = read_snapshot(snapshot)
    summaries = {normalise_name(r["name"]): (r["name"], r["summary"]) for r in records
                 if r.get("name") and r.get("summary") and r["summary"].strip()}
    points, seen_summaries = [], set()
    for rec in records:
        name, summary = rec.get("name"), rec.get("summary")
        if rec.get("role") != "point" or not name or not summary or len(summary.split()) < MIN_SUMMARY_WORDS:
            continue
        deps = runtime_dependencies(rec.get("requires_dist"), name)
        key = " ".join(summary.lower().split())
        if not deps or key in seen_summaries:
            continue
        seen_summaries.add(key)
        points.append((normalise_name(name), point_text(name, summary), deps))
    counts = collections.Counter(dep for _, _, deps in points for dep in deps)
    labels = sorted(dep for dep, c in counts.items() if c >= MIN_LABEL_POINTS and dep in summaries)
    splits = split_points(points, labels)
    label_texts = [point_text(*summaries[dep]) for dep in labels]
    index = {dep: i for i, dep in enumerate(labels)}
    filters = {split: [(row, index[name]) for row, (name, _, _) in enumerate(rows) if name in index]
               for split, rows in splits.items()}
    stats = {"n_crawled_points": sum(1 for r in records if r.get("role") == "point"),
             "n_with_summary_and_dependencies": len(points), **split_stats(splits, len(labels)),
             "filter_pairs": {split: len(pairs) for split, pairs in filters.items()}, "snapshot": snapshot.name}
    readme = f"""# {NAME}: PyPI project summary -> the projects it depends on

Built by `python -m bench.datasets.pypi_deps build` from `{snapshot.name}` (shipped in bench/datasets/).

## Source
PyPI's JSON API (`https://pypi.org/pypi/<project>/json`, field `info`: name, summary, requires_dist), crawled
2026-12-02: the first projects of a seeded random order of PyPI's simple index, then the projects their
dependencies name. Metadata published on PyPI by each project's authors; cite "PyPI project metadata".

## Construction
{BUILD_RULES}
## Stats
{json.dumps(stats, indent=1)}
"""
    build_folder(out, splits, labels=label_texts, stats=stats, readme=readme, filters=filters)
    return stats


def _fetch(name: str, role: str) -> dict | None:
    info = fetch_info(name)
    if not isinstance(info, dict):
        return None if info is None else {"query": name, "role": role, "error": info}
    return {"query": name, "role": role, "name": info.get("name"), "summary": info.get("summary"),
            "requires_dist": info.get("requires_dist") if role == "point" else None,
            "crawled": time.strftime("%Y-%m-%d", time.gmtime())}


def crawl(out: Path, n_names: int, workers: int = 128) -> None:
    names = seeded_project_names()
    records: list[dict] = []
    with out.open("w", encoding="utf-8") as fh, cf.ThreadPoolExecutor(workers) as pool:
        for role, todo in (("point", names[:n_names]), ("label", None)):
            if todo is None:  # the dependencies named at least twice, for their summaries
                counts = collections.Counter(d for r in records if r.get("summary")
                                             for d in runtime_dependencies(r.get("requires_dist"), r["name"]))
                have = {normalise_name(r["name"]) for r in records if r.get("name")}
                todo = sorted(d for d, c in counts.items() if c >= MIN_LABEL_POINTS and d not in have)
            for k in range(0, len(todo), 1024):
                for rec in pool.map(lambda n, role=role: _fetch(n, role), todo[k:k + 1024]):
                    if rec is not None:
                        records.append(rec)
                        fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                fh.flush()
                print(f"{time.strftime('%H:%M:%S')} {role}s fetched {min(k + 1024, len(todo))} of {len(todo)}",
                      flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("crawl", help="fetch PyPI metadata into a snapshot (network)")
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--names", type=int, default=30000, help="projects to fetch as candidate points")
    b = sub.add_parser("build", help="write the dataset folder from a snapshot")
    b.add_argument("--snapshot", type=Path, default=SNAPSHOT)
    b.add_argument("--out", type=Path, default=HERE.parent / "data" / NAME)
    args = ap.parse_args(argv)
    if args.command == "crawl":
        crawl(args.out, args.names)
    else:
        print(json.dumps(build(args.snapshot, args.out), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
