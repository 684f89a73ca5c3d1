"""The pypi-keywords dataset build (bench/datasets/pypi_keywords.py): tag rules, selection, files xmine loads."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from bench.datasets import pypi_keywords as pk
from xmine.data import load_dataset


def test_keyword_tags_splits_by_the_separator_the_author_used():
    assert pk.keyword_tags("Machine Learning, NLP ,nlp") == ["machine-learning", "nlp"]
    assert pk.keyword_tags("jobs\nrethinkdb\nqueues") == ["jobs", "rethinkdb", "queues"]
    assert pk.keyword_tags("audio; speech_to_text") == ["audio", "speech-to-text"]
    assert pk.keyword_tags("cas apistellar") == ["cas", "apistellar"]
    assert pk.keyword_tags("['a', \"b\"]") == ["a", "b"]


def test_keyword_tags_drops_empty_overlong_punctuation_and_own_name():
    assert pk.keyword_tags(None) == [] and pk.keyword_tags("  ") == []
    assert pk.keyword_tags("x" * 51 + ", ok") == ["ok"]
    assert pk.keyword_tags("--, ***, ok") == ["ok"]
    assert pk.keyword_tags("My_Tool, tools", project="my.tool") == ["tools"]


def _record(name, summary, keywords):
    return {"query": name.lower(), "name": name, "version": "1", "summary": summary, "keywords": keywords,
            "crawled": "2026-12-02"}


def _snapshot(tmp_path: Path, records: list[dict]) -> Path:
    path = tmp_path / "snap.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    return path


def test_build_keeps_shared_tags_drops_duplicates_and_loads_in_xmine(tmp_path):
    records = [_record(f"p{i}", f"a tool for task number {i}", "web, api" if i % 2 else "cli, web, only-once-" + str(i))
               for i in range(20)]
    records.append(_record("copy", "A tool for task number 3", "web"))  # duplicate summary: dropped
    records.append(_record("short", "two words", "web"))  # too short a summary: dropped
    records.append({"query": "gone", "error": 404})
    stats = pk.build(_snapshot(tmp_path, records), tmp_path / "ds")
    labels = (tmp_path / "ds" / "Y.txt").read_text().split()
    assert labels == ["api", "cli", "web"]  # tags used once are not labels
    assert stats["n_train"] + stats["n_test"] == 20 and stats["n_test"] == 4
    ds = load_dataset(tmp_path / "ds")
    assert ds.train.labels.shape == (16, 3) and ds.test.labels.shape == (4, 3)
    texts = ds.train.texts + ds.test.texts
    assert all(t.startswith("p") and ": a tool for task number" in t for t in texts)
    Y = ds.train.labels.toarray()
    web = labels.index("web")
    assert (Y[:, web] == 1).all()


def test_build_is_deterministic_and_replaces_the_folder_whole(tmp_path):
    records = [_record(f"p{i}", f"summary words here {i}", "a, b") for i in range(10)]
    snap = _snapshot(tmp_path, records)
    pk.build(snap, tmp_path / "ds")
    first = (tmp_path / "ds" / "trn_X.txt").read_text()
    pk.build(snap, tmp_path / "ds")
    assert (tmp_path / "ds" / "trn_X.txt").read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "snap.jsonl.gz"]


def test_a_malformed_snapshot_line_is_named(tmp_path):
    path = tmp_path / "snap.jsonl"
    path.write_text(json.dumps(_record("a", "b c d", "x")) + "\n{not json\n")
    with pytest.raises(SystemExit, match=r"snap.jsonl:2: not a JSON line"):
        pk.read_snapshot(path)


def test_runtime_dependencies_skip_extras_versions_markers_and_self():
    from bench.datasets.pypi_deps import runtime_dependencies

    requires = ["numpy (>=1.20)", "Requests[socks]>=2; python_version >= '3.8'", "pytest; extra == 'dev'",
                "my_tool>=1", "numpy<3", "  ", "zope.interface"]
    assert runtime_dependencies(requires, project="My.Tool") == ["numpy", "requests", "zope-interface"]
    assert runtime_dependencies(None) == []


def test_pypi_deps_build_shares_one_space_and_lists_self_pairs(tmp_path):
    from bench.datasets import pypi_deps

    def point(name, deps):
        return {"query": name, "role": "point", "name": name, "summary": f"the {name} project does things",
                "requires_dist": deps}

    records = [point(f"app{i}", ["numpy", "lib-a" if i % 2 else "lib-b"]) for i in range(10)]
    records += [point("lib-a", ["numpy"]), point("numpy", ["numpy"])]  # numpy's self-dependency is dropped
    records += [{"query": n, "role": "label", "name": n, "summary": f"{n} summary"} for n in ("lib-b", "unknown")]
    stats = pypi_deps.build(_snapshot(tmp_path, records), tmp_path / "ds")
    labels = (tmp_path / "ds" / "Y.txt").read_text().splitlines()
    # lib-a is a label (named 5 times) with the text of its own point record; numpy has one too
    assert labels == ["lib-a: the lib-a project does things", "lib-b: lib-b summary",
                      "numpy: the numpy project does things"]
    assert stats["n_train"] + stats["n_test"] == 11  # numpy's point has no dependency left
    ds = load_dataset(tmp_path / "ds")
    ids = (tmp_path / "ds" / "trn_ids.txt").read_text().split() + (tmp_path / "ds" / "tst_ids.txt").read_text().split()
    assert "lib-a" in ids
    pairs = [tuple(map(int, line.split())) for name in ("filter_labels_train.txt", "filter_labels_test.txt")
             for line in (tmp_path / "ds" / name).read_text().splitlines()]
    assert len(pairs) == 1 and pairs[0][1] == 0  # lib-a's own row, its own label
    assert ds.train.labels.shape[1] == 3
