"""Tests of xmine.data: file formats (round trips, every kind of bad input) and dataset loading on
the real datasets in ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import shared_dataset as _dataset_dir

import xmine.data.sparse as sparse_mod
from xmine.data import (
    Dataset,
    dataset_stats,
    load_dataset,
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


def _write(tmp_path: Path, name: str, content: bytes | str) -> Path:
    p = tmp_path / name
    p.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return p


def _assert_bad(call, path: Path, line: int | None, *words: str) -> DataFormatError:
    """The call raises DataFormatError naming the file, the line and the given words."""
    with pytest.raises(DataFormatError) as info:
        call(path)
    err = info.value
    msg = str(err)
    assert path.name in msg
    if line is not None:
        assert err.line == line, msg
        assert f"line {line}" in msg
    for w in words:
        assert w in msg, msg
    return err


def _random_csr(
    rng: np.random.Generator, n: int, m: int, density: float, ones: bool = False
) -> sp.csr_matrix:
    dense = (rng.random((n, m)) < density) * rng.integers(1, 1000, (n, m)) / 64.0
    X = sp.csr_matrix(dense.astype(np.float32))
    if ones:
        X.data[:] = 1.0
    return X


def _same(A: sp.spmatrix, B: sp.spmatrix) -> bool:
    return A.shape == B.shape and (sp.csr_matrix(A) != sp.csr_matrix(B)).nnz == 0


# --------------------------------------------------------------------------- sparse matrix format


def test_sparse_roundtrip_with_empty_rows(tmp_path: Path) -> None:
    X = _random_csr(np.random.default_rng(0), 50, 30, 0.1)
    X = sp.vstack([sp.csr_matrix((1, 30)), X, sp.csr_matrix((2, 30))]).tocsr()  # empty first/last rows
    p = tmp_path / "X.txt"
    write_sparse_matrix(p, X)
    Y = read_sparse_matrix(p)
    assert Y.dtype == np.float32 and Y.shape == (53, 30) and Y.has_sorted_indices
    assert _same(X, Y)
    assert p.read_text().endswith("\n\n\n")  # the two empty last rows are empty lines


def test_sparse_roundtrip_exact_float32_and_float64(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.float64):
        X = sp.random(40, 25, density=0.2, format="csr", dtype=dtype, random_state=1)
        X.data = (X.data * 10 ** rng.uniform(-20, 20, X.nnz)).astype(dtype)
        p = tmp_path / f"X_{np.dtype(dtype).name}.txt"
        write_sparse_matrix(p, X)
        assert _same(X, read_sparse_matrix(p, dtype=dtype))


def test_sparse_write_custom_format_and_atomic(tmp_path: Path) -> None:
    X = sp.csr_matrix(np.array([[0.0, 0.123456], [2.0, 0.0]], dtype=np.float32))
    p = tmp_path / "X.txt"
    p.write_text("old content")
    write_sparse_matrix(p, X, fmt="%.2f")
    assert p.read_text() == "2 2\n1:0.12\n0:2.00\n"
    assert [q.name for q in tmp_path.iterdir()] == ["X.txt"]  # no temp file left behind


def test_sparse_reader_accepts_harmless_variants(tmp_path: Path) -> None:
    # CRLF, tabs and repeated spaces, exponents and signs in values, unsorted columns, no final
    # newline, and blank lines after the declared rows.
    p = _write(tmp_path, "X.txt", b"3 4\r\n3:1e-1\t 0:+2\r\n\r\n  1:-.5 2:3.  \r\n\r\n\n")
    X = read_sparse_matrix(p)
    np.testing.assert_array_equal(
        X.toarray(), np.array([[2, 0, 0, 0.1], [0, 0, 0, 0], [0, -0.5, 3, 0]], np.float32)
    )
    p2 = _write(tmp_path, "X2.txt", b"2 3\n0:1\n2:2")
    np.testing.assert_array_equal(read_sparse_matrix(p2).toarray(), [[1, 0, 0], [0, 0, 2]])


def test_sparse_empty_matrix(tmp_path: Path) -> None:
    p = tmp_path / "E.txt"
    write_sparse_matrix(p, sp.csr_matrix((0, 7), dtype=np.float32))
    assert read_sparse_matrix(p).shape == (0, 7)


def test_sparse_chunked_parse_matches_and_counts_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny chunks exercise the chunk boundaries; the error must still name the right line.
    monkeypatch.setattr(sparse_mod, "_CHUNK_BYTES", 64)
    X = _random_csr(np.random.default_rng(2), 300, 40, 0.1)
    p = tmp_path / "X.txt"
    write_sparse_matrix(p, X)
    assert _same(X, read_sparse_matrix(p))
    lines = p.read_text().split("\n")
    lines[201] = lines[201] + " 40:1"  # row 200 -> line 202
    bad = _write(tmp_path, "bad.txt", "\n".join(lines))
    _assert_bad(read_sparse_matrix, bad, 202, "index 40", "out of range")


def test_sparse_fast_path_used_for_real_files(monkeypatch: pytest.MonkeyPatch) -> None:
    d = _dataset_dir("debian-related")

    def fail(*args: object) -> None:
        raise AssertionError("per-line scanner used on a well-formed file")

    monkeypatch.setattr(sparse_mod, "_slow_pairs", fail)
    monkeypatch.setattr(sparse_mod, "_slow_single", fail)
    assert read_sparse_matrix(d / "trn_X_Y.txt").shape == (46363, 43112)
    assert read_single_file(_dataset_dir("mldr-delicious") / "trn_data.txt")[1].shape == (12884, 983)


@pytest.mark.parametrize(
    "token", ["3:", ":1", "a:1", "3:1:2", "3-1", "3:1e", "3:nan", "3:1,2", "1.0:1", "3::1"]
)
def test_sparse_malformed_pair(tmp_path: Path, token: str) -> None:
    p = _write(tmp_path, "X_Y.txt", f"3 5\n0:1 1:1\n2:1 {token}\n4:1\n")
    _assert_bad(read_sparse_matrix, p, 3, token)


def test_sparse_index_out_of_range(tmp_path: Path) -> None:
    p = _write(tmp_path, "X_Y.txt", "3 5\n0:1\n\n1:1 5:1\n")
    _assert_bad(read_sparse_matrix, p, 4, "index 5", "out of range")


def test_sparse_negative_index(tmp_path: Path) -> None:
    p = _write(tmp_path, "X_Y.txt", "2 5\n-1:1\n0:1\n")
    _assert_bad(read_sparse_matrix, p, 2, "negative", "-1")


def test_sparse_duplicate_index(tmp_path: Path) -> None:
    p = _write(tmp_path, "X_Y.txt", "2 9\n0:1\n5:1 2:1 5:2\n")
    _assert_bad(read_sparse_matrix, p, 3, "duplicate index 5")


def test_sparse_too_many_rows(tmp_path: Path) -> None:
    p = _write(tmp_path, "X_Y.txt", "2 5\n0:1\n1:1\n2:1\n")
    _assert_bad(read_sparse_matrix, p, 4, "extra row", "2 declared")


def test_sparse_too_few_rows(tmp_path: Path) -> None:
    p = _write(tmp_path, "X_Y.txt", "4 5\n0:1\n1:1\n")
    _assert_bad(read_sparse_matrix, p, 4, "ends after 2 row", "declares 4")


def test_sparse_too_few_rows_last_line_unterminated(tmp_path: Path) -> None:
    p = _write(tmp_path, "X_Y.txt", "4 5\n0:1\n1:1\n2:1")
    _assert_bad(read_sparse_matrix, p, 5, "ends after 3 row")


def test_sparse_empty_file(tmp_path: Path) -> None:
    p = _write(tmp_path, "X_Y.txt", b"")
    _assert_bad(read_sparse_matrix, p, 1, "empty file")


def test_sparse_header_missing_field(tmp_path: Path) -> None:
    p = _write(tmp_path, "X_Y.txt", "3\n0:1\n1:1\n2:1\n")
    _assert_bad(read_sparse_matrix, p, 1, "header", "num_rows num_cols")


def test_sparse_header_not_integer(tmp_path: Path) -> None:
    p = _write(tmp_path, "X_Y.txt", "3 5.0\n0:1\n1:1\n2:1\n")
    _assert_bad(read_sparse_matrix, p, 1, "num_cols", "'5.0'")


def test_sparse_header_disagrees_with_n_cols(tmp_path: Path) -> None:
    p = _write(tmp_path, "X_Y.txt", "1 5\n0:1\n")
    _assert_bad(lambda q: read_sparse_matrix(q, n_cols=6), p, 1, "5 columns", "expected 6")


def test_sparse_non_ascii_bytes(tmp_path: Path) -> None:
    p = _write(tmp_path, "X_Y.txt", b"2 5\n0:1\n1:\xc3\xa9\n")
    _assert_bad(read_sparse_matrix, p, 3, "malformed pair")


def test_sparse_missing_file(tmp_path: Path) -> None:
    _assert_bad(read_sparse_matrix, tmp_path / "nope.txt", None, "file not found")


# --------------------------------------------------------------------------- single-file format


def test_single_file_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    X = _random_csr(rng, 60, 20, 0.15)
    Y = _random_csr(rng, 60, 12, 0.15, ones=True)
    keep_x = np.ones(60)
    keep_y = np.ones(60)
    keep_x[[5, 9]] = 0  # row 5: labels but no features; row 9: neither
    keep_y[[7, 9]] = 0  # row 7: features but no labels
    X = sp.csr_matrix(sp.diags(keep_x) @ X, dtype=np.float32)
    Y = sp.csr_matrix(sp.diags(keep_y) @ Y, dtype=np.float32)
    X.eliminate_zeros()
    Y.eliminate_zeros()
    p = tmp_path / "trn_data.txt"
    write_single_file(p, X, Y)
    lines = p.read_text().split("\n")
    assert lines[0] == "60 20 12" and lines[8].startswith(" ") and lines[10] == ""
    X2, Y2 = read_single_file(p)
    assert _same(X, X2) and _same(Y, Y2)


def test_single_file_layouts_of_a_line(tmp_path: Path) -> None:
    p = _write(tmp_path, "d.txt", "4 4 5\n1,2 0:1 3:2\n 1:0.5\n4\n0:1 2:1\n")
    X, Y = read_single_file(p)
    np.testing.assert_array_equal(X.toarray(), [[1, 0, 0, 2], [0, 0.5, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0]])
    np.testing.assert_array_equal(Y.toarray(), [[0, 1, 1, 0, 0], [0] * 5, [0, 0, 0, 0, 1], [0] * 5])


@pytest.mark.parametrize("labels", ["1,,2", ",1", "1,", "1,x", "1;2"])
def test_single_file_malformed_label_list(tmp_path: Path, labels: str) -> None:
    p = _write(tmp_path, "trn_data.txt", f"2 4 5\n0 0:1\n{labels} 0:1\n")
    _assert_bad(read_single_file, p, 3)


def test_single_file_label_out_of_range(tmp_path: Path) -> None:
    p = _write(tmp_path, "trn_data.txt", "2 4 5\n0 0:1\n1,5 0:1\n")
    _assert_bad(read_single_file, p, 3, "label index 5", "out of range")


def test_single_file_feature_out_of_range(tmp_path: Path) -> None:
    p = _write(tmp_path, "trn_data.txt", "2 4 5\n0 4:1\n1 0:1\n")
    _assert_bad(read_single_file, p, 2, "feature index 4")


def test_single_file_header_missing_field(tmp_path: Path) -> None:
    p = _write(tmp_path, "trn_data.txt", "2 4\n0 0:1\n1 0:1\n")
    _assert_bad(read_single_file, p, 1, "num_points num_features num_labels")


def test_single_file_too_few_rows(tmp_path: Path) -> None:
    p = _write(tmp_path, "trn_data.txt", "3 4 5\n0 0:1\n1 0:1\n")
    _assert_bad(read_single_file, p, 4, "ends after 2 row")


def test_single_file_equals_xf_plus_xy_delicious() -> None:
    d = _dataset_dir("mldr-delicious")
    for split in ("trn", "tst"):
        X, Y = read_single_file(d / f"{split}_data.txt")
        assert _same(X, read_sparse_matrix(d / f"{split}_X_Xf.txt"))
        assert _same(Y, read_sparse_matrix(d / f"{split}_X_Y.txt"))


# --------------------------------------------------------------------------- filter pairs


def test_filter_pairs_read(tmp_path: Path) -> None:
    p = _write(tmp_path, "filter_labels_test.txt", "0 5\n1 8\r\n4 17\n\n")
    pairs = read_filter_pairs(p, n_rows=5, n_labels=18)
    assert pairs.dtype == np.int64
    np.testing.assert_array_equal(pairs, [[0, 5], [1, 8], [4, 17]])
    assert read_filter_pairs(_write(tmp_path, "empty.txt", "")).shape == (0, 2)


def test_filter_pairs_row_out_of_range(tmp_path: Path) -> None:
    p = _write(tmp_path, "filter_labels_test.txt", "0 5\n3 1\n")
    _assert_bad(lambda q: read_filter_pairs(q, n_rows=3, n_labels=10), p, 2, "row index 3", "out of range")


def test_filter_pairs_label_out_of_range(tmp_path: Path) -> None:
    p = _write(tmp_path, "filter_labels_test.txt", "0 5\n1 1\n2 10\n")
    _assert_bad(lambda q: read_filter_pairs(q, n_rows=3, n_labels=10), p, 3, "label index 10")


def test_filter_pairs_malformed_line(tmp_path: Path) -> None:
    p = _write(tmp_path, "filter_labels_test.txt", "0 5\n1 2 3\n")
    _assert_bad(read_filter_pairs, p, 2, "3 field")


def test_filter_pairs_negative(tmp_path: Path) -> None:
    p = _write(tmp_path, "filter_labels_test.txt", "0 5\n1 -2\n")
    _assert_bad(read_filter_pairs, p, 2, "negative")


# --------------------------------------------------------------------------- text lines


def test_text_roundtrip(tmp_path: Path) -> None:
    texts = ["héllo wörld", "", "tab\tinside", "日本語", "ends with space ", "line\u2028sep"]
    p = tmp_path / "trn_X.txt"
    write_text_lines(p, texts)
    assert read_text_lines(p) == texts
    assert read_text_lines(p, expected=6) == texts
    write_text_lines(p, ["a\nb", "c\r\nd"])
    assert read_text_lines(p) == ["a b", "c d"]


def test_text_crlf_and_no_final_newline(tmp_path: Path) -> None:
    p = _write(tmp_path, "t.txt", b"a\r\nb\r\nc")
    assert read_text_lines(p) == ["a", "b", "c"]


def test_text_invalid_utf8(tmp_path: Path) -> None:
    p = _write(tmp_path, "trn_X.txt", b"fine\nalso fine\nbad \xff byte\n")
    _assert_bad(read_text_lines, p, 3, "invalid UTF-8")


def test_text_line_count_mismatch(tmp_path: Path) -> None:
    p = _write(tmp_path, "trn_X.txt", "a\nb\n")
    _assert_bad(lambda q: read_text_lines(q, expected=3), p, 3, "expected 3")
    _assert_bad(lambda q: read_text_lines(q, expected=1), p, 2, "more lines")


# --------------------------------------------------------------------------- JSON lines


@pytest.mark.parametrize("name", ["trn.json", "trn.json.gz"])
def test_jsonl_roundtrip(tmp_path: Path, name: str) -> None:
    Y = sp.csr_matrix(np.array([[1, 0, 0.5], [0, 0, 0], [0, 2, 0]], dtype=np.float32))
    titles, contents, uids = ["a", "bé", "c"], ["x", "", "long text"], ["u1", "u2", "u3"]
    p = tmp_path / name
    write_jsonl(p, titles, Y, contents=contents, uids=uids)
    assert (p.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    t2, c2, Y2, u2 = read_jsonl(p)
    assert (t2, c2, u2) == (titles, contents, uids)
    assert Y2 is not None and Y2.dtype == np.float32 and _same(Y, Y2)
    _, _, Y3, _ = read_jsonl(p, n_labels=5)
    assert Y3 is not None and Y3.shape == (3, 5)


def test_jsonl_gzip_detected_by_magic(tmp_path: Path) -> None:
    p = tmp_path / "lbl.json"
    write_jsonl(p, ["t0", "t1"], gzip_compress=True)
    titles, contents, Y, uids = read_jsonl(p, require_targets=False)
    assert titles == ["t0", "t1"] and contents is None and Y is None and uids == ["0", "1"]


def test_jsonl_defaults(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "trn.json",
        '{"uid": 7, "title": "a", "target_ind": [3, 1]}\n{"uid": "b", "title": "b", "target_ind": []}\n',
    )
    titles, contents, Y, uids = read_jsonl(p)
    assert contents is None and uids == ["7", "b"]
    assert Y is not None and Y.shape == (2, 4) and Y.has_sorted_indices
    np.testing.assert_array_equal(Y.toarray(), [[0, 1, 0, 1], [0, 0, 0, 0]])


def test_jsonl_bad_json(tmp_path: Path) -> None:
    p = _write(
        tmp_path, "trn.json", '{"uid": "a", "title": "a", "target_ind": [1]}\n{"uid": "b", "title": \n'
    )
    _assert_bad(read_jsonl, p, 2, "invalid JSON")


def test_jsonl_missing_target_ind(tmp_path: Path) -> None:
    p = _write(
        tmp_path, "trn.json", '{"uid": "a", "title": "a", "target_ind": [1]}\n{"uid": "b", "title": "b"}\n'
    )
    _assert_bad(read_jsonl, p, 2, "target_ind")
    assert read_jsonl(p, require_targets=False)[2] is not None  # present elsewhere: empty row here


def test_jsonl_missing_title(tmp_path: Path) -> None:
    p = _write(tmp_path, "trn.json", '{"uid": "a", "target_ind": [1]}\n')
    _assert_bad(read_jsonl, p, 1, "title")


def test_jsonl_target_out_of_range(tmp_path: Path) -> None:
    p = _write(
        tmp_path, "tst.json", '{"title": "a", "target_ind": [1]}\n{"title": "b", "target_ind": [0, 4]}\n'
    )
    _assert_bad(lambda q: read_jsonl(q, n_labels=4), p, 2, "label index 4", "out of range")


def test_jsonl_target_negative(tmp_path: Path) -> None:
    p = _write(tmp_path, "tst.json", '{"title": "a", "target_ind": [-1]}\n')
    _assert_bad(read_jsonl, p, 1, "negative")


@pytest.mark.parametrize("bad", ["1.5", "true", '"3"', "null"])
def test_jsonl_target_not_int(tmp_path: Path, bad: str) -> None:
    p = _write(
        tmp_path,
        "tst.json",
        f'{{"title": "a", "target_ind": [0]}}\n{{"title": "b", "target_ind": [0, {bad}]}}\n',
    )
    _assert_bad(read_jsonl, p, 2, "not an integer")


def test_jsonl_target_rel_length_mismatch(tmp_path: Path) -> None:
    p = _write(tmp_path, "tst.json", '{"title": "a", "target_ind": [0, 1], "target_rel": [1.0]}\n')
    _assert_bad(read_jsonl, p, 1, "target_rel", "1 entries")


def test_jsonl_duplicate_target(tmp_path: Path) -> None:
    p = _write(tmp_path, "tst.json", '{"title": "a", "target_ind": [2, 0, 2]}\n')
    _assert_bad(read_jsonl, p, 1, "duplicate label index 2")


def test_jsonl_invalid_utf8(tmp_path: Path) -> None:
    p = _write(
        tmp_path, "tst.json", b'{"title": "a", "target_ind": []}\n{"title": "\xe9", "target_ind": []}\n'
    )
    _assert_bad(read_jsonl, p, 2, "invalid UTF-8")


# --------------------------------------------------------------------------- real datasets


@pytest.fixture(scope="module")
def debian() -> Dataset:
    return load_dataset(_dataset_dir("debian-related"))


def test_debian_related(debian: Dataset) -> None:
    ds = debian
    assert (ds.layout, ds.name, ds.text_variant) == ("text+XY", "debian-related", "full")
    assert (ds.train.n_points, ds.test.n_points, ds.n_labels) == (46363, 11591, 43112)
    assert len(ds.train.texts or []) == 46363 and len(ds.label_texts or []) == 43112
    assert ds.train.features is None and ds.train.labels.dtype == np.float32
    assert ds.test.filter_pairs is not None and ds.test.filter_pairs.shape == (7865, 2)
    assert ds.train.filter_pairs is not None and ds.train.filter_pairs.shape == (31658, 2)
    st = dataset_stats(ds)
    assert st["train_labels_with_zero_points"] == 4797
    assert st["test_labels_unseen_in_train"] == 4797
    assert st["train_nnz"] == 248968 and round(st["train_avg_labels_per_point"], 2) == 5.37
    assert round(st["train_avg_points_per_label"], 2) == 5.77
    assert st["train_label_freq_quantiles"] == {
        "q00": 0, "q05": 0, "q25": 1, "q50": 1, "q75": 3, "q95": 14, "q99": 58, "max": 17519
    }  # fmt: skip
    assert st["train_labels_per_point_quantiles"] == {
        "q00": 1, "q05": 1, "q25": 2, "q50": 3, "q75": 6, "q95": 16, "q99": 32, "max": 406
    }  # fmt: skip
    assert st["train_words_per_text_quantiles"]["q50"] == 51
    assert st["train_words_per_text_quantiles"]["max"] == 3446
    assert st["label_words_per_text_quantiles"]["max"] == 53
    json.dumps(st)  # JSON-able


def test_debian_title_variant(debian: Dataset) -> None:
    ds = load_dataset(_dataset_dir("debian-related"), text_variant="title")
    assert ds.text_variant == "title"
    assert ds.train.texts is not None and debian.train.texts is not None
    assert debian.train.texts[0].startswith(ds.train.texts[0]) and len(ds.train.texts[0]) < len(
        debian.train.texts[0]
    )
    assert dataset_stats(ds)["train_words_per_text_quantiles"]["q50"] == 7


def test_debian_json_matches_txt(debian: Dataset, tmp_path: Path) -> None:
    src = _dataset_dir("debian-related")
    d = tmp_path / "debian-json"
    d.mkdir()
    for name in ("trn.json.gz", "tst.json.gz", "lbl.json.gz", "filter_labels_test.txt"):
        (d / name).symlink_to(src / name)
    ds = load_dataset(d)
    assert ds.layout == "jsonl" and ds.n_labels == debian.n_labels
    assert _same(ds.train.labels, debian.train.labels) and _same(ds.test.labels, debian.test.labels)
    assert ds.train.texts == debian.train.texts and ds.label_texts == debian.label_texts
    assert ds.test.filter_pairs is not None and ds.train.filter_pairs is None


def test_hpo(tmp_path: Path) -> None:
    d = _dataset_dir("hpo-disease-phenotype")
    ds = load_dataset(d)
    assert (ds.train.n_points, ds.test.n_points, ds.n_labels) == (10144, 2536, 11272)
    st = dataset_stats(ds)
    assert st["train_labels_with_zero_points"] == 661 and st["test_labels_unseen_in_train"] == 661
    assert "n_features" not in st and ds.train.filter_pairs is None
    defs = load_dataset(d, label_text_variant="def")
    assert defs.label_texts is not None and ds.label_texts is not None
    assert defs.label_texts[0].startswith(ds.label_texts[0] + ".")
    # The same data as plain (not gzipped) JSON lines, without lbl.json.
    j = tmp_path / "hpo-json"
    j.mkdir()
    for name in ("trn.json", "tst.json"):
        (j / name).symlink_to(d / name)
    dj = load_dataset(j)
    assert dj.layout == "jsonl" and dj.n_labels == 11272 and dj.label_texts is None
    assert _same(dj.test.labels, ds.test.labels) and dj.train.texts == ds.train.texts


@pytest.mark.parametrize(
    ("name", "n_train", "n_test", "n_labels", "n_features"),
    [("mldr-delicious", 12884, 3221, 983, 500), ("mldr-bibtex", 5916, 1479, 159, 1836)],
)
def test_feature_datasets(name: str, n_train: int, n_test: int, n_labels: int, n_features: int) -> None:
    ds = load_dataset(_dataset_dir(name))
    assert ds.layout == "text+XY"
    assert (ds.train.n_points, ds.test.n_points, ds.n_labels) == (n_train, n_test, n_labels)
    assert ds.train.features is not None and ds.test.features is not None
    assert ds.train.features.shape == (n_train, n_features) and ds.test.features.shape == (n_test, n_features)
    assert dataset_stats(ds)["n_features"] == n_features
    assert ds.label_texts is not None and len(ds.label_texts) == n_labels


def test_sparse_xy_and_single_file_layouts(tmp_path: Path) -> None:
    src = _dataset_dir("mldr-bibtex")
    full = load_dataset(src)
    for layout, names in (
        ("sparse-XY", ("trn_X_Xf.txt", "tst_X_Xf.txt", "trn_X_Y.txt", "tst_X_Y.txt", "Y.txt")),
        ("single-file", ("trn_data.txt", "tst_data.txt", "Y.txt")),
    ):
        d = tmp_path / layout
        d.mkdir()
        for n in names:
            (d / n).symlink_to(src / n)
        ds = load_dataset(d)
        assert ds.layout == layout and ds.text_variant == "none" and ds.train.texts is None
        assert _same(ds.train.labels, full.train.labels) and _same(ds.test.features, full.test.features)
        assert ds.label_texts == full.label_texts


# --------------------------------------------------------------------------- dataset consistency errors


def _tiny_dataset(d: Path, trn_y: str = "2 3\n0:1\n1:1 2:1\n", tst_y: str = "1 3\n2:1\n") -> Path:
    d.mkdir(exist_ok=True)
    _write(d, "trn_X.txt", "first text\nsecond text\n")
    _write(d, "tst_X.txt", "test text\n")
    _write(d, "trn_X_Y.txt", trn_y)
    _write(d, "tst_X_Y.txt", tst_y)
    _write(d, "Y.txt", "l0\nl1\nl2\n")
    return d


def test_tiny_dataset_loads(tmp_path: Path) -> None:
    d = _tiny_dataset(tmp_path / "tiny")
    _write(d, "filter_labels_test.txt", "0 1\n")
    ds = load_dataset(d)
    assert ds.train.texts == ["first text", "second text"] and ds.label_texts == ["l0", "l1", "l2"]
    st = dataset_stats(ds)
    assert st["train_labels_with_zero_points"] == 0 and st["test_filter_pairs"] == 1


def test_dataset_train_test_label_counts_differ(tmp_path: Path) -> None:
    d = _tiny_dataset(tmp_path / "tiny", tst_y="1 4\n2:1\n")
    err = _assert_bad(load_dataset, d, 1, "trn_X_Y.txt", "4 label columns")
    assert err.path.endswith("tst_X_Y.txt")


def test_dataset_text_count_differs_from_labels(tmp_path: Path) -> None:
    d = _tiny_dataset(tmp_path / "tiny")
    _write(d, "trn_X.txt", "only one text\n")
    err = _assert_bad(load_dataset, d, 2, "trn_X_Y.txt", "1 lines")
    assert err.path.endswith("trn_X.txt")


def test_dataset_label_text_count_differs(tmp_path: Path) -> None:
    d = _tiny_dataset(tmp_path / "tiny")
    _write(d, "Y.txt", "l0\nl1\n")
    err = _assert_bad(load_dataset, d, 3, "Y.txt", "trn_X_Y.txt", "2 label texts")
    assert err.path.endswith("Y.txt")


def test_dataset_feature_rows_differ(tmp_path: Path) -> None:
    d = _tiny_dataset(tmp_path / "tiny")
    _write(d, "trn_X_Xf.txt", "3 2\n0:1\n\n1:1\n")
    _write(d, "tst_X_Xf.txt", "1 2\n0:1\n")
    err = _assert_bad(load_dataset, d, 1, "trn_X_Y.txt", "3 rows")
    assert err.path.endswith("trn_X_Xf.txt")


def test_dataset_feature_dims_differ(tmp_path: Path) -> None:
    d = _tiny_dataset(tmp_path / "tiny")
    _write(d, "trn_X_Xf.txt", "2 2\n0:1\n1:1\n")
    _write(d, "tst_X_Xf.txt", "1 3\n0:1\n")
    _assert_bad(load_dataset, d, 1, "trn_X_Xf.txt", "3 feature columns")


def test_dataset_title_variant_missing(tmp_path: Path) -> None:
    d = _tiny_dataset(tmp_path / "tiny")
    _assert_bad(lambda q: load_dataset(q, text_variant="title"), d, None, "trn_X_title.txt", "file not found")


def test_dataset_bad_file_inside(tmp_path: Path) -> None:
    d = _tiny_dataset(tmp_path / "tiny", tst_y="1 3\n3:1\n")
    err = _assert_bad(load_dataset, d, 2, "tst_X_Y.txt", "column index 3")
    assert err.path.endswith("tst_X_Y.txt")


def test_dataset_nothing_recognisable(tmp_path: Path) -> None:
    d = tmp_path / "empty-ds"
    d.mkdir()
    _write(d, "README.md", "nothing here")
    _assert_bad(load_dataset, d, None, "trn_X.txt", "trn_data.txt", "trn.json")


def test_dataset_missing_directory(tmp_path: Path) -> None:
    _assert_bad(load_dataset, tmp_path / "nope", None, "not found")


# --------------------------------------------------------------------------- hostile numbers


def test_sparse_header_implausibly_large(tmp_path: Path) -> None:
    p = _write(tmp_path, "X_Y.txt", "1 99999999999999999999\n0:1\n")
    _assert_bad(read_sparse_matrix, p, 1, "implausibly large")


def test_sparse_value_overflows(tmp_path: Path) -> None:
    p = _write(tmp_path, "X_Y.txt", "2 5\n0:1\n1:1e999\n")
    _assert_bad(read_sparse_matrix, p, 3, "not a finite number")


def test_sparse_utf8_bom_tolerated(tmp_path: Path) -> None:
    p = _write(tmp_path, "X_Y.txt", b"\xef\xbb\xbf1 2\n1:1\n")
    np.testing.assert_array_equal(read_sparse_matrix(p).toarray(), [[0, 1]])


def test_filter_pairs_beyond_int64(tmp_path: Path) -> None:
    p = _write(tmp_path, "filter_labels_test.txt", "0 1\n9223372036854775808 1\n")
    _assert_bad(read_filter_pairs, p, 2, "out of range")


def test_jsonl_target_implausibly_large(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "trn.json",
        '{"title": "a", "target_ind": [1]}\n{"title": "b", "target_ind": [1' + "0" * 30 + "]}\n",
    )
    _assert_bad(read_jsonl, p, 2, "implausibly large")


def test_bad_arguments_to_the_data_layer_are_xmine_errors(tmp_path, small_hpo):
    from xmine.errors import XmineError

    with pytest.raises(XmineError, match="text_variant must be 'full' or 'title', got 'titles'"):
        load_dataset(small_hpo, text_variant="titles")
    with pytest.raises(XmineError, match="non-finite"):
        write_sparse_matrix(tmp_path / "m.txt", sp.csr_matrix(np.array([[np.nan, 1.0]])))
    with pytest.raises(XmineError, match="X has 2 rows but Y has 1"):
        write_single_file(tmp_path / "d.txt", sp.csr_matrix(np.ones((2, 3))), sp.csr_matrix(np.ones((1, 2))))
    assert not (tmp_path / "m.txt").exists() and not (tmp_path / "d.txt").exists()
