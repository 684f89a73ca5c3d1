"""The keep-or-drop rule of bench.seeds' A/B comparison: a change is dropped when it loses on any dataset, on either
metric, by more than the seed spread."""

from __future__ import annotations

import pytest

from bench.seeds import compare, machine_warning, stale_settings


def scores(p1: list[float], psp5: list[float]) -> dict[str, list[float]]:
    return {"seed": list(range(len(p1))), "P@1": p1, "PSP@5": psp5}


def test_a_loss_within_the_seed_spread_is_kept() -> None:
    base = scores([60.0, 61.0, 62.0], [30.0, 30.1, 30.2])  # P@1 sd 1.0
    changed = scores([59.5, 60.5, 61.5], [30.0, 30.1, 30.2])  # -0.5: within the spread
    row, record, loses = compare("hpo", base, changed)
    assert not loses and not record["loses"]
    assert record["P@1"]["delta"] == pytest.approx(-0.5)
    assert record["P@1"]["spread"] == pytest.approx(1.0)
    assert "(loses)" not in row


def test_a_loss_beyond_the_seed_spread_on_one_metric_drops_the_change() -> None:
    base = scores([60.0, 60.1, 60.2], [30.0, 30.1, 30.2])
    changed = scores([62.0, 62.1, 62.2], [29.0, 29.1, 29.2])  # P@1 gains, PSP@5 loses by 1.0 against sd 0.1
    row, record, loses = compare("bibtex", base, changed)
    assert loses
    assert record["P@1"]["delta"] == pytest.approx(2.0) and "(gains)" in row
    assert record["PSP@5"]["delta"] == pytest.approx(-1.0) and "(loses)" in row


def test_a_single_seed_has_no_spread_so_any_loss_counts() -> None:
    _, record, loses = compare("delicious", scores([60.0], [30.0]), scores([59.99], [30.0]))
    assert loses and record["P@1"]["spread"] == 0.0


def test_a_result_recorded_with_other_settings_is_stale() -> None:
    """A cached seed result is reused only if it was run with today's settings. Keys removed since, keys added with
    an "off" default, and the thread count do not make it stale; a key added with another default does (the run may
    have behaved otherwise)."""
    expected = {"classifier": {"epochs": 3, "seed": 1, "new_off": 0, "new_opt_in": None},
                "encoder": {"num_threads": 2, "device": "cpu"}}
    recorded = {"classifier": {"epochs": 5, "seed": 1, "old_key": 0}, "encoder": {"num_threads": 4, "device": "cuda"}}
    assert stale_settings(recorded, expected) == ["classifier.epochs=5, now 3"]
    assert stale_settings(expected, expected) == []
    expected["classifier_index"] = {"kind": "hnsw"}
    assert stale_settings(recorded, expected) == ["classifier_index not recorded, now {'kind': 'hnsw'}",
                                                  "classifier.epochs=5, now 3"]


def test_runs_from_different_machines_are_flagged() -> None:
    one = {"cpu": ["AMD EPYC, AVX512"] * 3}
    assert machine_warning("hpo", one, one) is None
    other = {"cpu": ["AMD EPYC, AVX2", "AMD EPYC, AVX512", "AMD EPYC, AVX512"]}
    assert "AVX2" in machine_warning("hpo", other, one)
    assert "not recorded" in machine_warning("hpo", {"cpu": ["not recorded"]}, {"cpu": ["not recorded"]})
