"""Loading never runs code, never crashes natively, and refuses damaged or mixed model directories.

Exploits: a pickle whose __reduce__ runs a shell command, placed in every file a model or checkpoint is read
from. Damage: every file of a saved NGAME model (and a kNN model) truncated, emptied or overwritten with
garbage, both as plain damage (the manifest's checksum catches it) and re-signed with a fresh manifest (as an
attacker who controls the directory would), so the loaders' own validation is exercised too."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xmine.config import (
    ClassifierConfig,
    ClusterScheduleConfig,
    EncoderConfig,
    FusionConfig,
    KNNConfig,
    NGAMEConfig,
    SiameseConfig,
)
from xmine.data import load_dataset
from xmine.errors import ModelError, XmineError
from xmine.models import NGAME, TfidfKNN, load_model
from xmine.models.base import MANIFEST_FILE, MODEL_FORMAT_VERSION, write_manifest


class Exploit:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_exploit_pt(path: Path, marker: Path) -> None:
    torch.save({"state": Exploit(marker), "n_labels": 3}, path)


def write_exploit_npy(path: Path, marker: Path) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.array([Exploit(marker)], dtype=object), allow_pickle=True)


def test_the_exploit_works_when_unpickled(tmp_path):
    """The payload is real: an unsafe load runs it (so the tests below can fail)."""
    marker = tmp_path / "ran"
    write_exploit_pt(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ds(small_hpo):
    return load_dataset(small_hpo)


def tiny_ngame_config(tiny_model_dir: Path, **changes) -> NGAMEConfig:
    schedule = ClusterScheduleConfig(unit="epoch", start=1, refresh_every=1, milestones=[1], sizes=[8])
    config = NGAMEConfig(encoder=EncoderConfig(kind="bow", model_path=str(tiny_model_dir), head_hidden=32,
                                               num_threads=2),
                         siamese=SiameseConfig(epochs=2, batch_size=256, schedule=schedule),
                         classifier=ClassifierConfig(epochs=2, shortlist_size=20, hash_buckets=1 << 12),
                         fusion=FusionConfig(holdout_points=300, stage1_unseen_points=100))
    return config.replace(**changes)


@pytest.fixture(scope="module")
def ngame_dir(tiny_ngame_dir):
    """The session's shared tiny NGAME model directory (conftest); tests damage copies of it."""
    return tiny_ngame_dir


@pytest.fixture(scope="module")
def knn_dir(ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("rel-knn") / "model"
    TfidfKNN.train(ds, KNNConfig(neighbours=10)).save(out)
    return out


def copy_model(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def manifest_files(model: Path) -> list[str]:
    return sorted(json.loads((model / MANIFEST_FILE).read_text())["files"])


# ------------------------------------------------------------------------------------------- exploits
PT_TARGETS = ["encoder/weights.pt", "classifiers/classifiers.pt"]
NPY_TARGETS = ["label_embeddings/embeddings.npy", "tfidf/tfidf/idf.npy", "ranker/bias.npy",
               "fusion/inv_propensity.npy", "fusion/tree_left.npy", "fusion/tree_threshold.npy"]


@pytest.mark.parametrize("target", PT_TARGETS + NPY_TARGETS)
def test_a_pickle_exploit_in_a_model_file_never_runs(ngame_dir, tmp_path, target):
    model = copy_model(ngame_dir, tmp_path)
    marker = tmp_path / "pwned"
    (write_exploit_pt if target.endswith(".pt") else write_exploit_npy)(model / target, marker)
    write_manifest(model)  # the attacker controls the whole directory, manifest included
    with pytest.raises(ModelError) as err:
        load_model(model)
    assert not marker.exists()
    component = target.split("/")[0]
    assert str(err.value).startswith(f"{component}: ") or f"{component}:" in str(err.value), err.value
    assert target.rsplit("/", 1)[1] in str(err.value)


@pytest.mark.parametrize("target", ["tfidf/train.npz", "ranker/weights.npz"])
def test_a_pickle_exploit_in_an_npz_never_runs(ngame_dir, tmp_path, target):
    model = copy_model(ngame_dir, tmp_path)
    marker = tmp_path / "pwned"
    with np.load(model / target, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    first = sorted(arrays)[0]
    arrays[first] = np.array([Exploit(marker)], dtype=object)
    with open(model / target, "wb") as fh:
        np.savez(fh, **arrays)
    write_manifest(model)
    with pytest.raises(ModelError, match=target.rsplit("/", 1)[1]):
        load_model(model)
    assert not marker.exists()


@pytest.mark.parametrize("checkpoint", ["stage1.pt", "stage2.pt"])
def test_a_pickle_exploit_in_a_checkpoint_never_runs_on_resume(ds, tiny_model_dir, ngame_dir, tmp_path, checkpoint):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "pwned"
    write_exploit_pt(out / "checkpoints" / checkpoint, marker)
    config = tiny_ngame_config(tiny_model_dir)
    if checkpoint == "stage2.pt":  # stage 2 alone, from a saved model's stage 1
        stage1 = ngame_dir
        config = config.replace(stages=[2])
    else:
        stage1 = None
    with pytest.raises(ModelError, match=f"checkpoint: .*{checkpoint}: refused"):
        NGAME.train(ds, config, out_dir=out, resume=True, init_from=stage1, progress=False)
    assert not marker.exists()


def test_a_pickle_exploit_in_a_mips_checkpoint_never_runs(ds, tiny_model_dir, tmp_path):
    from xmine.config import MIPSMethodConfig
    from xmine.models import MIPSClassifier

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "pwned"
    write_exploit_pt(out / "checkpoints" / "mips.pt", marker)
    config = MIPSMethodConfig(encoder=EncoderConfig(kind="bow", model_path=str(tiny_model_dir), head_hidden=32),
                              classifier=ClassifierConfig(epochs=1, features="dense", hash_buckets=1 << 12))
    with pytest.raises(ModelError, match="checkpoint: .*mips.pt: refused"):
        MIPSClassifier.train(ds, config, out_dir=out, resume=True, progress=False)
    assert not marker.exists()


def test_a_pickle_exploit_as_a_prediction_file_never_runs(small_hpo, tmp_path, capsys):
    from xmine.cli import main

    marker = tmp_path / "pwned"
    pred = tmp_path / "pred.npz"
    with open(pred, "wb") as fh:
        np.savez(fh, data=np.array([Exploit(marker)], dtype=object), indices=np.zeros(1), indptr=np.zeros(2),
                 shape=np.array([1, 1]), format=np.array("csr"))
    assert main(["evaluate", "--data", str(small_hpo), "--pred", str(pred)]) == 1
    assert not marker.exists() and "pred.npz" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- manifest
def test_saved_model_has_a_manifest_of_every_file(ngame_dir):
    manifest = json.loads((ngame_dir / MANIFEST_FILE).read_text())
    on_disk = sorted(p.relative_to(ngame_dir).as_posix() for p in ngame_dir.rglob("*")
                     if p.is_file() and p.name != MANIFEST_FILE)
    assert manifest["format_version"] == MODEL_FORMAT_VERSION and sorted(manifest["files"]) == on_disk
    assert {"encoder/weights.pt", "classifiers/classifiers.pt", "fusion/fusion.json", "config.json"} <= set(on_disk)


@pytest.mark.parametrize("component", ["classifiers", "fusion", "ranker", "tfidf", "encoder", "label_embeddings"])
def test_a_deleted_component_is_an_error_not_a_smaller_model(ngame_dir, tmp_path, component):
    model = copy_model(ngame_dir, tmp_path)
    shutil.rmtree(model / component)
    with pytest.raises(ModelError, match=f"^{component}: .*missing; the model directory is incomplete"):
        load_model(model)


def test_a_model_without_manifest_is_an_older_format_with_advice(knn_dir, tmp_path):
    model = copy_model(knn_dir, tmp_path)
    (model / MANIFEST_FILE).unlink()
    with pytest.raises(ModelError, match="older xmine .*retrain"):
        load_model(model)
    manifest = {"format": "xmine-model", "format_version": 1, "files": {}}
    (model / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="model format 1 is older .*retrain"):
        load_model(model)
    manifest["format_version"] = MODEL_FORMAT_VERSION + 1
    (model / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="newer xmine.*upgrade"):
        load_model(model)


def test_manifest_entries_cannot_point_outside_the_directory(knn_dir, tmp_path):
    model = copy_model(knn_dir, tmp_path)
    manifest = json.loads((model / MANIFEST_FILE).read_text())
    manifest["files"]["../outside"] = {"bytes": 1, "sha256": "0" * 64}
    (model / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="outside the model directory"):
        load_model(model)


def test_save_refuses_to_replace_a_directory_that_is_not_a_model(knn_dir, tmp_path):
    model = TfidfKNN.load(knn_dir)
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(ModelError, match="not an xmine model directory.*refusing"):
        model.save(precious)
    assert (precious / "thesis.tex").read_text() == "years of work"
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ModelError, match="not a directory"):
        model.save(afile)


def test_save_over_a_model_keeps_checkpoints_and_drops_stale_files(knn_dir, tmp_path):
    model = TfidfKNN.load(knn_dir)
    out = copy_model(knn_dir, tmp_path)
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "stage1.pt").write_bytes(b"ckpt")
    (out / "stale.txt").write_text("from before")
    (tmp_path / ".copy.xmine-tmp-999999999").mkdir()  # leftover of a killed save
    model.save(out)
    assert (out / "checkpoints" / "stage1.pt").read_bytes() == b"ckpt" and not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]
    assert load_model(out).n_labels == model.n_labels


# ------------------------------------------------------------------------------- damaged model files
DAMAGE = {
    "truncated": lambda b: b[: len(b) // 2],
    "empty": lambda b: b"",
    "garbage": lambda b: bytes(np.random.default_rng(len(b)).integers(0, 256, max(len(b), 64), dtype=np.uint8)),
}


def _damage_cases(model_fixture: str, files: list[str]) -> list:
    """Every (file, damage, re-signed or not); for the NGAME model only the re-signed garbage runs by default (the
    loaders' checks; the manifest's checksum is the same code for every file), the rest is marked slow."""
    def marks(damage: str, resign: bool) -> list:
        return [] if model_fixture == "knn_dir" or (damage == "garbage" and resign) else [pytest.mark.slow]

    return [pytest.param(model_fixture, f, d, resign, marks=marks(d, resign)) for f in files for d in DAMAGE
            for resign in (False, True)]


# every file of the saved models (listed once here so that the count of cases is visible in the test ids)
NGAME_FILES = [
    "config.json", "history.json", "encoder/encoder.json", "encoder/weights.pt", "label_embeddings/embeddings.npy",
    "label_embeddings/index/index.json", "tfidf/config.json",
    "tfidf/train.npz", "tfidf/tfidf/tfidf.json", "tfidf/tfidf/vocabulary.json", "tfidf/tfidf/idf.npy",
    "classifiers/classifiers.pt", "classifiers/index/index.json",
    "ranker/weights.npz", "ranker/bias.npy", "ranker/config.json", "fusion/fusion.json",
    "fusion/inv_propensity.npy", "fusion/tree_left.npy", "fusion/tree_right.npy", "fusion/tree_feature.npy",
    "fusion/tree_threshold.npy", "fusion/tree_proba.npy", "fusion/tree_depth.npy", "labels.jsonl",
]
KNN_FILES = ["config.json", "train.npz", "tfidf/tfidf.json", "tfidf/vocabulary.json", "tfidf/idf.npy", "labels.jsonl"]


def test_the_damage_table_lists_every_file(ngame_dir, knn_dir):
    tokenizer = [f for f in manifest_files(ngame_dir) if f.startswith("encoder/tokenizer/")]
    assert sorted(NGAME_FILES + tokenizer) == manifest_files(ngame_dir)
    assert sorted(KNN_FILES) == manifest_files(knn_dir)


@pytest.mark.parametrize("fixture,target,damage,resign",
                         _damage_cases("ngame_dir", NGAME_FILES) + _damage_cases("knn_dir", KNN_FILES))
def test_a_damaged_file_is_a_model_error_naming_component_and_file(request, tmp_path, fixture, target, damage,
                                                                     resign):
    model = copy_model(request.getfixturevalue(fixture), tmp_path)
    path = model / target
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    if resign:
        write_manifest(model)
    with pytest.raises(ModelError) as err:
        load_model(model)
    message = str(err.value)
    component = target.split("/")[0] if "/" in target else "model"
    assert message.startswith(f"{component}: "), message
    assert path.name in message, message


def test_tokenizer_damage_is_caught_by_the_manifest_and_never_a_traceback(ngame_dir, tmp_path):
    model = copy_model(ngame_dir, tmp_path)
    for path in sorted((model / "encoder" / "tokenizer").iterdir()):
        original = path.read_bytes()
        path.write_bytes(original[: len(original) // 2])
        with pytest.raises(ModelError, match=f"encoder: .*{path.name}: does not match the checksum"):
            load_model(model)
        write_manifest(model)
        try:
            load_model(model)
        except ModelError as exc:  # re-signed: refused by the loader, with the encoder named
            assert str(exc).startswith("encoder: ")
        path.write_bytes(original)
        write_manifest(model)


# --------------------------------------------------------------------------- crafted (well-formed) arrays
def _rewrite_npz(path: Path, **changes) -> None:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(changes)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _knn_train(model: Path) -> dict[str, np.ndarray]:
    with np.load(model / "train.npz") as data:
        return {k: data[k] for k in data.files}


CRAFTED = {
    # label indices beyond the label count: scipy's native code would write out of bounds (heap corruption)
    "label index beyond the label count": (
        "train.npz", lambda m: _rewrite_npz(m / "train.npz", y_indices=_knn_train(m)["y_indices"] + 10**6),
        "column indices has values outside"),
    "negative label index": (
        "train.npz", lambda m: _rewrite_npz(m / "train.npz", y_indices=_knn_train(m)["y_indices"] - 10**6),
        "column indices has values outside"),
    "non-monotonic indptr": (
        "train.npz", lambda m: _rewrite_npz(m / "train.npz", x_indptr=_knn_train(m)["x_indptr"][::-1].copy()),
        "indptr runs from|indptr decreases"),
    "indptr decreasing inside": (
        "train.npz", lambda m: _rewrite_npz(m / "train.npz", x_indptr=np.r_[0, 5, 3, _knn_train(m)["x_indptr"][3:]]),
        "indptr decreases"),
    "indptr too short": (
        "train.npz", lambda m: _rewrite_npz(m / "train.npz", y_indptr=_knn_train(m)["y_indptr"][:-5]),
        "indptr has shape"),
    "nnz mismatch": (
        "train.npz", lambda m: _rewrite_npz(m / "train.npz", y_data=_knn_train(m)["y_data"][:-1]),
        "values but"),
    "negative shape": (
        "train.npz", lambda m: _rewrite_npz(m / "train.npz", y_shape=np.array([-1, 5])),
        "indptr has shape|negative shape"),
    "NaN feature values": (
        "train.npz", lambda m: _rewrite_npz(m / "train.npz", x_data=np.full_like(_knn_train(m)["x_data"], np.nan)),
        "NaN or infinite"),
    "labels of another label count": (
        "train.npz", lambda m: _rewrite_npz(m / "train.npz", y_shape=_knn_train(m)["y_shape"] + [0, 7]),
        "do not fit"),
    "float indices": (
        "train.npz", lambda m: _rewrite_npz(m / "train.npz", y_indices=_knn_train(m)["y_indices"].astype(float)),
        "dtype float64"),
    "idf of the wrong length": (
        "tfidf/idf.npy", lambda m: np.save(m / "tfidf/idf.npy", np.ones(3)), "shape"),
    "negative idf": (
        "tfidf/idf.npy", lambda m: np.save(m / "tfidf/idf.npy", -np.load(m / "tfidf/idf.npy")), "positive"),
    "vocabulary with a repeated column": (
        "tfidf/vocabulary.json", lambda m: (m / "tfidf/vocabulary.json").write_text(json.dumps({"a": 0, "b": 0})),
        "columns 0..n-1"),
    "vocabulary beyond the idf": (
        "tfidf/vocabulary.json", lambda m: (m / "tfidf/vocabulary.json").write_text(json.dumps({"a": 0, "b": 10**9})),
        "columns 0..n-1"),
    "n_labels not a number": (
        "config.json", lambda m: (m / "config.json").write_text(json.dumps(
            {**json.loads((m / "config.json").read_text()), "n_labels": "many"})), "n_labels"),
    "unknown config key": (
        "config.json", lambda m: (m / "config.json").write_text(json.dumps(
            {**json.loads((m / "config.json").read_text()), "config": {"neighbors": 3}})), "unknown config key"),
    "unknown method": (
        "config.json", lambda m: (m / "config.json").write_text(json.dumps(
            {**json.loads((m / "config.json").read_text()), "method": "evil"})), "unknown model method"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_knn_arrays_are_refused_before_scipy(knn_dir, tmp_path, case):
    target, craft, message = CRAFTED[case]
    model = copy_model(knn_dir, tmp_path)
    craft(model)
    write_manifest(model)
    with pytest.raises(ModelError, match=message):
        load_model(model)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array)


NGAME_CRAFTED = {
    "embeddings with NaN": lambda m: _save_npy(m / "label_embeddings/embeddings.npy", np.full_like(
        np.load(m / "label_embeddings/embeddings.npy"), np.nan)),
    "embeddings of another dimension": lambda m: _save_npy(m / "label_embeddings/embeddings.npy", np.zeros(
        (np.load(m / "label_embeddings/embeddings.npy").shape[0], 3), dtype=np.float32)),
    "tree child beyond the tree": lambda m: _save_npy(m / "fusion/tree_left.npy", np.load(m / "fusion/tree_left.npy")
                                                      + 10**6),
    "tree feature beyond the features": lambda m: _save_npy(m / "fusion/tree_feature.npy", np.full_like(
        np.load(m / "fusion/tree_feature.npy"), 99)),
    "propensity of another label count": lambda m: _save_npy(m / "fusion/inv_propensity.npy", np.ones(3)),
    "ranker weights beyond the features": lambda m: _rewrite_npz(m / "ranker/weights.npz", shape=np.array(
        [int(np.load(m / "ranker/bias.npy").shape[0]), 10**6])),
    "ranker column index out of range": lambda m: _rewrite_npz(m / "ranker/weights.npz", indices=np.full_like(
        np.load(m / "ranker/weights.npz")["indices"], 10**8)),
    "classifier weights of another shape": lambda m: torch.save(
        {**torch.load(m / "classifiers/classifiers.pt", weights_only=True), "n_labels": 5},
        m / "classifiers/classifiers.pt"),
    "encoder weights with an extra tensor": lambda m: torch.save(
        {**torch.load(m / "encoder/weights.pt", weights_only=True), "extra": torch.zeros(2)},
        m / "encoder/weights.pt"),
    "encoder vocabulary larger than its weights": lambda m: (m / "encoder/encoder.json").write_text(json.dumps(
        {**json.loads((m / "encoder/encoder.json").read_text()), "extra": {"vocab_size": 10**9, "dim": 32}})),
    "label index from an unknown source": lambda m: (m / "label_embeddings/index/index.json").write_text(json.dumps(
        {**json.loads((m / "label_embeddings/index/index.json").read_text()), "vectors": "elsewhere"})),
    "fusion mode unknown": lambda m: (m / "fusion/fusion.json").write_text(json.dumps(
        {**json.loads((m / "fusion/fusion.json").read_text()), "mode": "oracle"})),
    "fusion coef of the wrong length": lambda m: (m / "fusion/fusion.json").write_text(json.dumps(
        {**json.loads((m / "fusion/fusion.json").read_text()), "coef": [1.0, 2.0]})),
}


@pytest.mark.parametrize("case", sorted(NGAME_CRAFTED))
def test_crafted_ngame_files_are_refused_clearly(ngame_dir, tmp_path, case):
    model = copy_model(ngame_dir, tmp_path)
    NGAME_CRAFTED[case](model)
    write_manifest(model)
    with pytest.raises(ModelError):
        load_model(model)


def test_validated_loading_keeps_predictions_identical(ds, ngame_dir):
    model = load_model(ngame_dir)
    again = load_model(ngame_dir)
    a, b = model.predict(ds.test, k=10), again.predict(ds.test, k=10)
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.data, b.data)


def test_loading_refuses_a_model_of_another_method(knn_dir):
    with pytest.raises(ModelError, match="holds a 'knn' model"):
        NGAME.load(knn_dir)


def test_sparse_validation_accepts_what_scipy_writes(tmp_path):
    from xmine.safeio import load_sparse_npz

    matrix = sp.random(20, 30, density=0.2, format="csr", random_state=0, dtype=np.float32)
    for fmt in ("csr", "csc"):
        sp.save_npz(tmp_path / f"{fmt}.npz", matrix.asformat(fmt))
        assert (load_sparse_npz(tmp_path / f"{fmt}.npz", "x") != matrix).nnz == 0
    with pytest.raises(XmineError, match="coo"):
        sp.save_npz(tmp_path / "coo.npz", matrix.tocoo())
        load_sparse_npz(tmp_path / "coo.npz", "x")


def test_atomic_writes_give_files_the_umask_mode_not_mkstemps_0600(tmp_path):
    from xmine.utils import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "out.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644
