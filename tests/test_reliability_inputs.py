"""Bad input gives a clear error (or a documented acceptance), never a traceback or a silent wrong answer.

Tables of malformed inputs by class: data files in the four layouts, prediction files, command-line values.
Each case is one test id; the count by class is printed by `python -m pytest tests/test_reliability_inputs.py
--collect-only -q` (together with the model-directory cases of test_reliability.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from xmine.cli import main
from xmine.data import load_dataset, write_sparse_matrix
from xmine.errors import DataFormatError

REPO = Path(__file__).resolve().parents[1]

TEXT_XY = {
    "trn_X.txt": "alpha beta gamma\nbeta delta\ngamma epsilon zeta\ndelta alpha\n",
    "tst_X.txt": "alpha gamma\nbeta zeta\n",
    "trn_X_Y.txt": "4 3\n0:1 1:1\n2:1\n1:1\n0:1\n",
    "tst_X_Y.txt": "2 3\n0:1\n1:1 2:1\n",
    "Y.txt": "first label\nsecond label\nthird label\n",
}
SPARSE_XY = {
    "trn_X_Xf.txt": "4 5\n0:0.5 1:0.5\n2:1\n3:0.25 4:0.75\n1:1\n",
    "tst_X_Xf.txt": "2 5\n0:1\n2:0.5 3:0.5\n",
    "trn_X_Y.txt": TEXT_XY["trn_X_Y.txt"],
    "tst_X_Y.txt": TEXT_XY["tst_X_Y.txt"],
}
SINGLE = {
    "trn_data.txt": "3 4 2\n0 0:1 1:0.5\n1 2:1\n0,1 3:1\n",
    "tst_data.txt": "1 4 2\n1 0:1\n",
}
JSONL = {
    "trn.json": "".join(json.dumps({"uid": str(i), "title": t, "target_ind": ind}) + "\n"
                        for i, (t, ind) in enumerate([("a b", [0]), ("b c", [1, 2]), ("c d", [2])])),
    "tst.json": json.dumps({"uid": "9", "title": "a c", "target_ind": [0, 2]}) + "\n",
    "lbl.json": "".join(json.dumps({"uid": str(i), "title": f"label {i}"}) + "\n" for i in range(3)),
}


def make_dataset(root: Path, files: dict[str, str | bytes | None]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if content is None:
            continue
        if isinstance(content, bytes):
            (root / name).write_bytes(content)
        else:
            (root / name).write_text(content)
    return root


def with_change(base: dict, **changes) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key.replace("__", ".")] = value
    return out


# (layout files, the file the error must name, the line it must name or None, a pattern of the problem)
DATA_CASES: dict[str, tuple[dict, str, int | None, str]] = {
    # label values other than 1
    "label value 0": (with_change(TEXT_XY, trn_X_Y__txt="4 3\n0:1 1:0\n2:1\n1:1\n0:1\n"), "trn_X_Y.txt", 2,
                      "value 0; label values must be positive"),
    "label value -1": (with_change(TEXT_XY, tst_X_Y__txt="2 3\n0:1\n1:-1 2:1\n"), "tst_X_Y.txt", 3,
                       "value -1"),
    "label value -0.5": (with_change(TEXT_XY, trn_X_Y__txt="4 3\n0:1\n2:1\n1:-0.5\n0:1\n"), "trn_X_Y.txt", 4,
                         "value -0.5"),
    "label value 0 (sparse layout)": (with_change(SPARSE_XY, trn_X_Y__txt="4 3\n0:0\n2:1\n1:1\n0:1\n"),
                                      "trn_X_Y.txt", 2, "value 0"),
    "label value nan": (with_change(TEXT_XY, trn_X_Y__txt="4 3\n0:nan\n2:1\n1:1\n0:1\n"), "trn_X_Y.txt", 2,
                        "malformed|finite"),
    "label value inf": (with_change(TEXT_XY, trn_X_Y__txt="4 3\n0:inf\n2:1\n1:1\n0:1\n"), "trn_X_Y.txt", 2,
                        "malformed|finite"),
    "label value text": (with_change(TEXT_XY, trn_X_Y__txt="4 3\n0:yes\n2:1\n1:1\n0:1\n"), "trn_X_Y.txt", 2,
                         "malformed|finite"),
    # headers
    "header declares zero labels": (with_change(TEXT_XY, trn_X_Y__txt="4 0\n\n\n\n\n", tst_X_Y__txt="2 0\n\n\n"),
                                    "trn_X_Y.txt", 1, "0 labels"),
    "header declares more labels than memory": (
        with_change(TEXT_XY, trn_X_Y__txt="4 10000000000\n0:1\n2:1\n1:1\n0:1\n"), "trn_X_Y.txt", 1, "memory"),
    "header declares more rows than memory": (
        with_change(TEXT_XY, trn_X_Y__txt="10000000000 3\n0:1\n"), "trn_X_Y.txt", 1, "memory"),
    "header implausibly large": (with_change(TEXT_XY, trn_X_Y__txt="4 99999999999999\n"), "trn_X_Y.txt", 1,
                                 "implausibly large"),
    "header not an integer": (with_change(TEXT_XY, trn_X_Y__txt="4 x\n"), "trn_X_Y.txt", 1, "not a non-negative"),
    "header negative": (with_change(TEXT_XY, trn_X_Y__txt="4 -3\n"), "trn_X_Y.txt", 1, "not a non-negative"),
    "header one field": (with_change(TEXT_XY, trn_X_Y__txt="4\n0:1\n"), "trn_X_Y.txt", 1, "header must be 2"),
    "header three fields": (with_change(TEXT_XY, trn_X_Y__txt="4 3 1\n"), "trn_X_Y.txt", 1, "header must be 2"),
    "header not ASCII": (with_change(TEXT_XY, trn_X_Y__txt="４ 3\n".encode()), "trn_X_Y.txt", 1, "not ASCII"),
    "empty label file": (with_change(TEXT_XY, trn_X_Y__txt=""), "trn_X_Y.txt", 1, "empty file"),
    # rows
    "negative label index": (with_change(TEXT_XY, trn_X_Y__txt="4 3\n-1:1\n2:1\n1:1\n0:1\n"), "trn_X_Y.txt", 2,
                             "negative"),
    "label index out of range": (with_change(TEXT_XY, trn_X_Y__txt="4 3\n3:1\n2:1\n1:1\n0:1\n"), "trn_X_Y.txt", 2,
                                 "range"),
    "duplicate label index": (with_change(TEXT_XY, trn_X_Y__txt="4 3\n1:1 1:1\n2:1\n1:1\n0:1\n"), "trn_X_Y.txt",
                              2, "duplicate"),
    "malformed pair": (with_change(TEXT_XY, trn_X_Y__txt="4 3\n0-1\n2:1\n1:1\n0:1\n"), "trn_X_Y.txt", 2,
                       "malformed"),
    "fewer rows than the header": (with_change(TEXT_XY, trn_X_Y__txt="4 3\n0:1\n2:1\n"), "trn_X_Y.txt", 4,
                                   "ends after 2 row"),
    "more rows than the header": (with_change(TEXT_XY, trn_X_Y__txt="4 3\n0:1\n2:1\n1:1\n0:1\n2:1\n"),
                                  "trn_X_Y.txt", 6, "extra row"),
    "train and test label counts differ": (with_change(TEXT_XY, tst_X_Y__txt="2 4\n0:1\n1:1\n"), "tst_X_Y.txt", 1,
                                           "label columns"),
    # texts
    "fewer texts than label rows": (with_change(TEXT_XY, trn_X__txt="a\nb\nc\n"), "trn_X.txt", 4, "lines"),
    "more texts than label rows": (with_change(TEXT_XY, tst_X__txt="a\nb\nc\n"), "tst_X.txt", 3, "lines"),
    "invalid UTF-8 text": (with_change(TEXT_XY, trn_X__txt=b"alpha\nbe\xfft\ngamma\ndelta\n"), "trn_X.txt", 2,
                           "invalid UTF-8"),
    "label texts of another count": (with_change(TEXT_XY, Y__txt="one\ntwo\n"), "Y.txt", 3, "label texts"),
    # files missing or not files
    "label file is a directory": (with_change(TEXT_XY, trn_X_Y__txt=None), "trn_X_Y.txt", None, "directory"),
    "test label file missing": (with_change(TEXT_XY, tst_X_Y__txt=None), "tst_X_Y.txt", None, "file not found"),
    "test text file missing": (with_change(TEXT_XY, tst_X__txt=None), "tst_X.txt", None, "file not found"),
    "train label file missing": (with_change(TEXT_XY, trn_X_Y__txt=None, trn_X_Xf__txt=None), "trn_X_Y.txt", None,
                                 "file not found"),
    "test features missing": (with_change(SPARSE_XY, tst_X_Xf__txt=None), "tst_X_Xf.txt", None, "file not found"),
    "train single file missing": (with_change(SINGLE, trn_data__txt=None), "trn_data.txt", None, "file not found"),
    "train json missing": (with_change(JSONL, trn__json=None), "trn.json", None, "file not found"),
    # features
    "feature value nan": (with_change(SPARSE_XY, trn_X_Xf__txt="4 5\n0:nan\n2:1\n3:1\n1:1\n"), "trn_X_Xf.txt", 2,
                          "malformed|finite"),
    "feature columns differ": (with_change(SPARSE_XY, tst_X_Xf__txt="2 6\n0:1\n2:1\n"), "tst_X_Xf.txt", 1,
                               "feature columns"),
    "feature rows differ": (with_change(SPARSE_XY, tst_X_Xf__txt="3 5\n0:1\n2:1\n1:1\n"), "tst_X_Xf.txt", 1,
                            "rows"),
    # filter files
    "filter label out of range": (with_change(TEXT_XY, filter_labels_test__txt="0 7\n"), "filter_labels_test.txt",
                                  1, "out of range"),
    "filter row out of range": (with_change(TEXT_XY, filter_labels_test__txt="0 1\n5 1\n"),
                                "filter_labels_test.txt", 2, "out of range"),
    "filter negative row": (with_change(TEXT_XY, filter_labels_train__txt="-1 1\n"), "filter_labels_train.txt", 1,
                            "negative"),
    "filter three fields": (with_change(TEXT_XY, filter_labels_test__txt="0 1 2\n"), "filter_labels_test.txt", 1,
                            "field"),
    "filter not an integer": (with_change(TEXT_XY, filter_labels_test__txt="0 x\n"), "filter_labels_test.txt", 1,
                              "not an integer"),
    "filter blank line inside": (with_change(TEXT_XY, filter_labels_test__txt="0 1\n\n1 1\n"),
                                 "filter_labels_test.txt", 2, "blank line"),
    # single-file layout
    "single file header of two fields": (with_change(SINGLE, trn_data__txt="3 4\n"), "trn_data.txt", 1,
                                         "header must be 3"),
    "single file label out of range": (with_change(SINGLE, trn_data__txt="3 4 2\n0 0:1\n5 2:1\n0 3:1\n"),
                                       "trn_data.txt", 3, "range"),
    "single file zero labels": (with_change(SINGLE, trn_data__txt="1 4 0\n 0:1\n", tst_data__txt="1 4 0\n 0:1\n"),
                                "trn_data.txt", 1, "0 labels"),
    "single file bad feature pair": (with_change(SINGLE, trn_data__txt="3 4 2\n0 0:1 1\n1 2:1\n0 3:1\n"),
                                     "trn_data.txt", 2, "malformed"),
    # JSON lines
    "json relevance 0": (with_change(JSONL, trn__json=json.dumps({"title": "a", "target_ind": [0],
                                                                  "target_rel": [0]}) + "\n"),
                         "trn.json", 1, "not positive"),
    "json relevance negative": (with_change(JSONL, tst__json=json.dumps({"title": "a", "target_ind": [0, 1],
                                                                         "target_rel": [1, -1]}) + "\n"),
                                "tst.json", 1, "not positive"),
    "json label index out of range": (with_change(JSONL, trn__json=json.dumps({"title": "a", "target_ind": [3]})
                                                  + "\n"), "trn.json", 1, "out of range"),
    "json not JSON": (with_change(JSONL, trn__json="{title: a}\n"), "trn.json", 1, "JSON"),
    "json missing title": (with_change(JSONL, trn__json=json.dumps({"target_ind": [0]}) + "\n"), "trn.json", 1,
                           "title"),
    "json label index not an integer": (with_change(JSONL, trn__json=json.dumps({"title": "a",
                                                                                 "target_ind": ["0"]}) + "\n"),
                                        "trn.json", 1, "not an integer"),
    "json zero labels": (with_change(JSONL, lbl__json=""), "lbl.json", None, "0 labels"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_malformed_data_file_is_a_clear_error(tmp_path, case):
    files, culprit, line, problem = DATA_CASES[case]
    root = make_dataset(tmp_path / "data", files)
    if case == "label file is a directory":
        (root / culprit).mkdir()
    with pytest.raises(DataFormatError) as err:
        load_dataset(root)
    assert Path(err.value.path).name == culprit, err.value
    assert err.value.line == line, err.value
    assert __import__("re").search(problem, err.value.problem), err.value


def test_a_bom_in_a_filter_file_is_accepted_like_elsewhere(tmp_path):
    plain = load_dataset(make_dataset(tmp_path / "a", with_change(TEXT_XY, filter_labels_test__txt="0 1\n1 2\n")))
    bom = load_dataset(make_dataset(tmp_path / "b", with_change(TEXT_XY,
                                                                filter_labels_test__txt="\ufeff0 1\n1 2\n")))
    assert bom.test.filter_pairs.tolist() == plain.test.filter_pairs.tolist() == [[0, 1], [1, 2]]


@pytest.mark.parametrize("layout", [TEXT_XY, SPARSE_XY, SINGLE, JSONL], ids=["text", "sparse", "single", "jsonl"])
def test_the_valid_templates_load(tmp_path, layout):
    ds = load_dataset(make_dataset(tmp_path / "d", layout))
    assert ds.n_labels == 3 if layout is not SINGLE else ds.n_labels == 2


# ---------------------------------------------------------------------------------------- predictions
def _write_npz(path: Path, **arrays) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _pred_arrays(**changes):
    m = sp.csr_matrix(np.array([[0.9, 0, 0.1], [0, 0.5, 0]], dtype=np.float32))
    arrays = {"format": np.array("csr"), "shape": np.array(m.shape), "data": m.data, "indices": m.indices,
              "indptr": m.indptr}
    arrays.update(changes)
    return arrays


PRED_CASES = {
    "column index out of range": (_pred_arrays(indices=np.array([0, 7, 1])), "column indices"),
    "negative column index": (_pred_arrays(indices=np.array([0, -1, 1])), "column indices"),
    "non-monotonic indptr": (_pred_arrays(indptr=np.array([0, 3, 2])), "indptr"),
    "indptr not starting at 0": (_pred_arrays(indptr=np.array([1, 2, 3])), "indptr"),
    "indptr of the wrong length": (_pred_arrays(indptr=np.array([0, 3])), "indptr"),
    "+inf score": (_pred_arrays(data=np.array([np.inf, 0.1, 0.5], dtype=np.float32)), "NaN or infinite"),
    "-inf score": (_pred_arrays(data=np.array([0.9, -np.inf, 0.5], dtype=np.float32)), "NaN or infinite"),
    "NaN score": (_pred_arrays(data=np.array([0.9, np.nan, 0.5])), "NaN or infinite"),
    "non-numeric scores": (_pred_arrays(data=np.array(["a", "b", "c"])), "dtype"),
    "float column indices": (_pred_arrays(indices=np.array([0.0, 2.0, 1.0])), "dtype"),
    "scores and indices of different lengths": (_pred_arrays(data=np.array([0.9, 0.1])), "values but"),
    "negative shape": (_pred_arrays(shape=np.array([-2, 3])), "negative shape|indptr"),
    "shape of three numbers": (_pred_arrays(shape=np.array([2, 3, 1])), "shape"),
    "unknown sparse format": (_pred_arrays(format=np.array("coo")), "format"),
    "a pickled object array": (_pred_arrays(data=np.array([object()], dtype=object)), "readable"),
    "an array missing": ({k: v for k, v in _pred_arrays().items() if k != "indptr"}, "missing: indptr"),
    "not a zip file": (b"this is not a prediction file", "readable"),
    "an empty file": (b"", "readable"),
    "a truncated file": ("truncated", "readable"),
    "more columns than the dataset's labels": (_pred_arrays(shape=np.array([2, 9])), "shape"),
    "fewer rows than the test split": (_pred_arrays(shape=np.array([1, 3]), indptr=np.array([0, 2]),
                                                    data=np.array([1.0, 0.5]), indices=np.array([0, 2])), "shape"),
}


@pytest.mark.parametrize("case", sorted(PRED_CASES))
def test_malformed_prediction_file_is_a_clear_cli_error(tmp_path, capsys, case):
    content, problem = PRED_CASES[case]
    data = make_dataset(tmp_path / "data", TEXT_XY)
    pred = tmp_path / "pred.npz"
    if isinstance(content, bytes):
        pred.write_bytes(content)
    elif content == "truncated":
        _write_npz(pred, **_pred_arrays())
        pred.write_bytes(pred.read_bytes()[:100])
    else:
        _write_npz(pred, **content)
    assert main(["evaluate", "--data", str(data), "--pred", str(pred)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("xmine: error: ") and "Traceback" not in err
    assert __import__("re").search(problem, err), err
    assert "pred.npz" in err or "shape" in err


# ------------------------------------------------------------------------------------------ CLI values
def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["-q", "train", "--method", "knn", "--data", str(data), "--out", str(out), *extra]


CLI_CASES = {
    "--set lr NaN": (["--method", "ngame", "--set", "siamese.lr=NaN"], "finite number"),
    "--set lr Infinity": (["--method", "ngame", "--set", "siamese.lr=Infinity"], "finite number"),
    "--set lr -Infinity": (["--method", "ngame", "--set", "classifier.lr=-Infinity"], "finite number"),
    "--set fusion weight NaN": (["--method", "ngame", "--set", "fusion.weight=NaN"], "finite number"),
    "--set margin NaN": (["--method", "ngame", "--set", "siamese.margin=NaN"], "finite number"),
    "--set knn power NaN": (["--set", "power=NaN"], "finite number"),
    "--set neighbours NaN": (["--set", "neighbours=NaN"], "integer"),
    "--set neighbours 0": (["--set", "neighbours=0"], "neighbours"),
    "--set unknown key": (["--set", "neighbors=5"], "unknown config key"),
    "--set without =": (["--set", "neighbours"], "key.path=value"),
    "--set a value into a section": (["--method", "ngame", "--set", "siamese=3"], "expected an object"),
    "--device gpu": (["--method", "ngame", "--device", "gpu"], "device must be"),
    "--device cuda:x": (["--method", "ngame", "--device", "cuda:x"], "device must be"),
    "--device empty": (["--method", "ngame", "--device", ""], "device must be"),
    "--epochs -1": (["--method", "ngame", "--epochs", "-1"], "epochs"),
    "--batch-size 0": (["--method", "ngame", "--batch-size", "0"], "batch_size"),
    "--stages 3": (["--method", "ngame", "--stages", "3"], "stages"),
    "--stages on knn": (["--stages", "1"], r"--stages does not apply to --method knn \(it applies to --method ngame\)"),
    "--stages not numbers": (["--method", "ngame", "--stages", "1,x"], "--stages expects 1, 2 or 1,2"),
    "--config missing file": (["--config", "/nonexistent/config.json"], "config file not found"),
    "--config invalid JSON": (["--config", "BADJSON"], "invalid JSON"),
    "--out is a file": (["OUT_IS_FILE"], "not a directory"),
    "--out is a non-model directory": (["OUT_IS_DIR"], "not an xmine model directory"),
    "--features on knn": (["--features", "dense"], "does not apply"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_bad_cli_value_is_a_clear_error_before_training(tmp_path, capsys, case):
    extra, problem = CLI_CASES[case]
    data = make_dataset(tmp_path / "data", TEXT_XY)
    out = tmp_path / "model"
    extra = list(extra)
    if extra == ["OUT_IS_FILE"]:
        out.write_text("x")
        extra = []
    elif extra == ["OUT_IS_DIR"]:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        extra = []
    if "BADJSON" in extra:
        (tmp_path / "c.json").write_text("{\"neighbours\": 5,,}")
        extra[extra.index("BADJSON")] = str(tmp_path / "c.json")
    if "--method" in extra:  # the last --method wins: put the case's after the default knn
        args = _train(data, out)
        args[args.index("--method") + 1] = extra[extra.index("--method") + 1]
        extra = [e for i, e in enumerate(extra) if e != "--method" and (i == 0 or extra[i - 1] != "--method")]
        args += extra
    else:
        args = _train(data, out, *extra)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("xmine: error: ") and "Traceback" not in err, err
    assert __import__("re").search(problem, err), err
    assert not (out / "manifest.json").exists()


PREDICT_CASES = {
    "-k 0": (["-k", "0"], "k must be"),
    "model directory missing": (["MODEL=/nonexistent/model"], "not a model directory"),
    "model directory without manifest": (["NO_MANIFEST"], "older xmine"),
    "--out is a directory": (["OUT_IS_DIR"], "is a directory"),
    "dataset of another label count": (["OTHER_DATA"], "labels"),
}


@pytest.fixture(scope="module")
def knn_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("knn-cli")
    data = make_dataset(root / "data", TEXT_XY)
    assert main(_train(data, root / "model", "--set", "tfidf.min_df=1")) == 0
    return data, root / "model"


@pytest.mark.parametrize("case", sorted(PREDICT_CASES))
def test_bad_predict_arguments_are_clear_errors(tmp_path, capsys, knn_model, case):
    data, model = knn_model
    extra, problem = PREDICT_CASES[case]
    out = tmp_path / "pred.npz"
    args = ["-q", "predict", "--model", str(model), "--data", str(data), "--out", str(out)]
    if extra[0].startswith("MODEL="):
        args[args.index("--model") + 1] = extra[0][6:]
    elif extra == ["NO_MANIFEST"]:
        shutil.copytree(model, tmp_path / "old")
        (tmp_path / "old" / "manifest.json").unlink()
        args[args.index("--model") + 1] = str(tmp_path / "old")
    elif extra == ["OUT_IS_DIR"]:
        out.mkdir()
    elif extra == ["OTHER_DATA"]:
        other = make_dataset(tmp_path / "other", with_change(TEXT_XY, trn_X_Y__txt="4 4\n0:1\n2:1\n1:1\n3:1\n",
                                                             tst_X_Y__txt="2 4\n0:1\n1:1\n"))
        args[args.index("--data") + 1] = str(other)
    else:
        args += extra
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("xmine: error: ") and "Traceback" not in err, err
    assert __import__("re").search(problem, err), err


def test_a_features_only_model_predicts_without_extra_flags(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", SPARSE_XY)
    model, pred = tmp_path / "model", tmp_path / "pred.npz"
    assert main(_train(data, model)) == 0
    assert main(["-q", "predict", "--model", str(model), "--data", str(data), "--out", str(pred), "-k", "2"]) == 0
    assert main(["evaluate", "--data", str(data), "--pred", str(pred), "--json"]) == 0
    capsys.readouterr()


def test_a_closed_pipe_stops_quietly(tmp_path):
    """`xmine ... | head`: the reader closes the pipe; no BrokenPipeError traceback."""
    data = make_dataset(tmp_path / "data", TEXT_XY)
    proc = subprocess.Popen([sys.executable, "-m", "xmine", "data", "stats", str(data)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    proc.wait()
    proc.stderr.close()
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode in (0, 141, -signal.SIGPIPE)


def test_write_sparse_matrix_then_label_value_check_round_trip(tmp_path):
    """Graded relevance (positive values other than 1) stays accepted."""
    files = dict(TEXT_XY)
    make_dataset(tmp_path / "d", files)
    write_sparse_matrix(tmp_path / "d" / "trn_X_Y.txt", sp.csr_matrix(np.array([[2, 0, 0], [0, 0.5, 0], [0, 0, 1],
                                                                                [3, 0, 0]], dtype=np.float32)))
    assert sorted(load_dataset(tmp_path / "d").train.labels.data.tolist()) == [0.5, 1, 2, 3]
