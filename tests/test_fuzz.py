"""Property-based fuzzing of every parser (hypothesis, bounded example counts so that it runs in seconds).

For each format: files the writer produces parse back to the same content; and mutated files (bytes
deleted, inserted, replaced, lines duplicated or dropped, truncated) either parse cleanly into a valid result
or raise DataFormatError naming the file. Anything else (a traceback from numpy, scipy, json, a crash) fails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xmine.cli import load_predictions, save_predictions
from xmine.data import (
    read_filter_pairs,
    read_jsonl,
    read_single_file,
    read_sparse_matrix,
    read_text_lines,
    write_jsonl,
    write_single_file,
    write_sparse_matrix,
    write_text_lines,
)
from xmine.errors import DataFormatError

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])


@st.composite
def sparse_matrices(draw, min_cols: int = 1, values: bool = True) -> sp.csr_matrix:
    n_rows = draw(st.integers(0, 6))
    n_cols = draw(st.integers(min_cols, 9))
    mask = draw(st.lists(st.lists(st.booleans(), min_size=n_cols, max_size=n_cols), min_size=n_rows,
                         max_size=n_rows))
    dense = np.zeros((n_rows, n_cols), dtype=np.float32)
    for i, row in enumerate(mask):
        for j, on in enumerate(row):
            if on:  # values exactly representable in %g: quarters in [-50, 50], never 0
                dense[i, j] = draw(st.integers(1, 200).map(lambda v: v / 4)) * draw(st.sampled_from([1, -1])) \
                    if values else 1.0
    return sp.csr_matrix(dense)


@st.composite
def mutations(draw, data: bytes) -> bytes:
    """`data` with one to three random edits."""
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["delete", "insert", "replace", "truncate", "dup_line", "drop_line"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "delete":
            data = data[:pos] + data[pos + draw(st.integers(1, 4)):]
        elif kind == "insert":
            data = data[:pos] + draw(st.sampled_from([b":", b",", b" ", b"\n", b"-", b"x", b"9" * 30, b"\xff",
                                                      b"nan", b"inf", b"\r", b"\t", b"0", b"1e400", b"\x00",
                                                      b"\"", b"{", b"]"])) + data[pos:]
        elif kind == "replace" and data:
            data = data[:pos] + bytes([draw(st.integers(0, 255))]) + data[pos + 1:]
        elif kind == "truncate":
            data = data[:pos]
        else:
            lines = data.split(b"\n")
            k = draw(st.integers(0, len(lines) - 1))
            lines = lines[:k + 1] + lines[k:] if kind == "dup_line" else lines[:k] + lines[k + 1:]
            data = b"\n".join(lines)
    return data


def parse_or_clean_error(read, path: Path):
    """read(path), or None after a DataFormatError that names the file; any other exception fails."""
    try:
        return read(path)
    except DataFormatError as exc:
        assert str(path) in str(exc)
        return None


def assert_valid_csr(m: sp.csr_matrix) -> None:
    assert m.indptr[0] == 0 and m.indptr[-1] == m.indices.size == m.data.size
    assert np.all(np.diff(m.indptr) >= 0)
    assert not m.indices.size or (m.indices.min() >= 0 and m.indices.max() < m.shape[1])
    assert np.isfinite(m.data).all()


# ------------------------------------------------------------------------------------ sparse matrices
@FUZZ
@given(matrix=sparse_matrices())
def test_sparse_matrix_round_trips(tmp_path, matrix):
    write_sparse_matrix(tmp_path / "m.txt", matrix)
    back = read_sparse_matrix(tmp_path / "m.txt")
    assert back.shape == matrix.shape and (back != matrix).nnz == 0


@FUZZ
@given(data=st.data(), matrix=sparse_matrices())
def test_mutated_sparse_matrix_parses_or_is_a_clean_error(tmp_path, data, matrix):
    write_sparse_matrix(tmp_path / "m.txt", matrix)
    path = tmp_path / "bad.txt"
    path.write_bytes(data.draw(mutations((tmp_path / "m.txt").read_bytes())))
    out = parse_or_clean_error(read_sparse_matrix, path)
    if out is not None:
        assert_valid_csr(out)


# ---------------------------------------------------------------------------------------- single file
@FUZZ
@given(data=st.data(), x=sparse_matrices())
def test_single_file_round_trips(tmp_path, data, x):
    n_labels = data.draw(st.integers(1, 6))
    pattern = data.draw(st.lists(st.lists(st.booleans(), min_size=n_labels, max_size=n_labels),
                                 min_size=x.shape[0], max_size=x.shape[0]))
    y = sp.csr_matrix(np.array(pattern, dtype=np.float32).reshape(x.shape[0], n_labels))
    write_single_file(tmp_path / "d.txt", x, y)
    bx, by = read_single_file(tmp_path / "d.txt")
    assert (bx != x).nnz == 0 and (by != y).nnz == 0 and bx.shape == x.shape and by.shape == y.shape


@FUZZ
@given(data=st.data(), x=sparse_matrices())
def test_mutated_single_file_parses_or_is_a_clean_error(tmp_path, data, x):
    y = sp.csr_matrix((np.arange(x.shape[0] * 3).reshape(-1, 3) % 2).astype(np.float32))
    write_single_file(tmp_path / "d.txt", x, y)
    path = tmp_path / "bad.txt"
    path.write_bytes(data.draw(mutations((tmp_path / "d.txt").read_bytes())))
    out = parse_or_clean_error(read_single_file, path)
    if out is not None:
        assert_valid_csr(out[0])
        assert_valid_csr(out[1])


# ---------------------------------------------------------------------------------------- text lines
texts = st.lists(st.text(st.characters(blacklist_characters="\n\r\ufeff", blacklist_categories=("Cs",)),
                         max_size=20), max_size=8)


@FUZZ
@given(lines=texts)
def test_text_lines_round_trip(tmp_path, lines):
    write_text_lines(tmp_path / "t.txt", lines)
    assert read_text_lines(tmp_path / "t.txt") == lines


@FUZZ
@given(data=st.data(), lines=texts)
def test_mutated_text_lines_parse_or_are_a_clean_error(tmp_path, data, lines):
    write_text_lines(tmp_path / "t.txt", lines)
    path = tmp_path / "bad.txt"
    path.write_bytes(data.draw(mutations((tmp_path / "t.txt").read_bytes())))
    out = parse_or_clean_error(read_text_lines, path)
    assert out is None or all(isinstance(t, str) and "\n" not in t for t in out)


# ------------------------------------------------------------------------------------------ JSON lines
@FUZZ
@given(lines=texts, y=sparse_matrices(values=False))
def test_jsonl_round_trips(tmp_path, lines, y):
    y = sp.csr_matrix(np.resize(y.toarray(), (len(lines), y.shape[1])))
    write_jsonl(tmp_path / "d.json", lines, y)
    titles, _, back, _ = read_jsonl(tmp_path / "d.json", n_labels=y.shape[1])
    assert titles == lines and (back != y).nnz == 0


@FUZZ
@given(data=st.data(), lines=texts, y=sparse_matrices(values=False))
def test_mutated_jsonl_parses_or_is_a_clean_error(tmp_path, data, lines, y):
    y = sp.csr_matrix(np.resize(y.toarray(), (len(lines), y.shape[1])))
    write_jsonl(tmp_path / "d.json", lines, y)
    path = tmp_path / "bad.json"
    path.write_bytes(data.draw(mutations((tmp_path / "d.json").read_bytes())))
    out = parse_or_clean_error(lambda p: read_jsonl(p, n_labels=y.shape[1]), path)
    if out is not None and out[2] is not None:
        assert_valid_csr(out[2])
        assert (out[2].data > 0).all()


# --------------------------------------------------------------------------------------- filter pairs
pairs = st.lists(st.tuples(st.integers(0, 20), st.integers(0, 30)), max_size=8)


@FUZZ
@given(items=pairs)
def test_filter_pairs_round_trip(tmp_path, items):
    (tmp_path / "f.txt").write_text("".join(f"{r} {c}\n" for r, c in items))
    assert read_filter_pairs(tmp_path / "f.txt", 21, 31).tolist() == [list(p) for p in items]


@FUZZ
@given(data=st.data(), items=pairs)
def test_mutated_filter_pairs_parse_or_are_a_clean_error(tmp_path, data, items):
    raw = "".join(f"{r} {c}\n" for r, c in items).encode()
    path = tmp_path / "bad.txt"
    path.write_bytes(data.draw(mutations(raw)))
    out = parse_or_clean_error(lambda p: read_filter_pairs(p, 21, 31), path)
    if out is not None:
        assert out.shape[1] == 2 and (out >= 0).all() and (out[:, 0] < 21).all() and (out[:, 1] < 31).all()


# ---------------------------------------------------------------------------------------- predictions
@FUZZ
@given(matrix=sparse_matrices())
def test_prediction_files_round_trip(tmp_path, matrix):
    save_predictions(tmp_path / "p.npz", matrix)
    back = load_predictions(tmp_path / "p.npz")
    assert back.shape == matrix.shape and (back != matrix).nnz == 0


@FUZZ
@given(data=st.data(), matrix=sparse_matrices())
def test_mutated_prediction_arrays_load_or_are_a_clean_error(tmp_path, data, matrix):
    matrix = sp.csr_matrix(matrix)
    arrays = {"format": np.array("csr"), "shape": np.array(matrix.shape), "data": matrix.data,
              "indices": matrix.indices, "indptr": matrix.indptr}
    key = data.draw(st.sampled_from(sorted(arrays)))
    arrays[key] = data.draw(st.sampled_from([
        np.array([np.inf]), np.array([-1]), np.array([10**9]), np.array(["x"]), np.array([1.5]),
        np.array([], dtype=np.int64), np.array([3, 1, 2]), np.array([-np.inf, np.nan]), np.array("coo"),
        np.array([2, -3]), np.array([[1, 2]]), np.atleast_1d(arrays[key])[::-1].copy()]))
    path = tmp_path / "bad.npz"
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    out = parse_or_clean_error(load_predictions, path)
    if out is not None:
        assert_valid_csr(out)


@FUZZ
@given(data=st.data(), matrix=sparse_matrices())
def test_mutated_prediction_bytes_load_or_are_a_clean_error(tmp_path, data, matrix):
    save_predictions(tmp_path / "p.npz", matrix)
    path = tmp_path / "bad.npz"
    path.write_bytes(data.draw(mutations((tmp_path / "p.npz").read_bytes())))
    out = parse_or_clean_error(load_predictions, path)
    if out is not None:
        assert_valid_csr(out)


@pytest.mark.parametrize("payload", [json.dumps({"title": "x", "target_ind": [0], "target_rel": [0]}),
                                     json.dumps({"title": "x", "target_ind": [0], "target_rel": [-2.5]})])
def test_jsonl_relevance_must_be_positive(tmp_path, payload):
    (tmp_path / "d.json").write_text(payload + "\n")
    with pytest.raises(DataFormatError, match="not positive"):
        read_jsonl(tmp_path / "d.json", n_labels=3)
