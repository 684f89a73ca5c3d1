"""A model directory is whole or absent, and resume is exact and refuses the wrong checkpoint.

Kill tests: a real `xmine train` (kNN) or saving process is killed with SIGKILL, by its own pid, while it
saves into a fresh directory or over an existing model, at every step of the save (the test hook
XMINE_TEST_SAVE_STOP holds the process after step N; it is inert unless XMINE_TEST_SAVE_TRACE is set).
After every kill the directory loads as the old model, loads as the new one, or is refused clearly; and the
next save cleans up. The default run kills at two steps; the whole matrix is marked slow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from xmine.config import FusionConfig, KNNConfig, RankerConfig
from xmine.data import load_dataset
from xmine.errors import ModelError
from xmine.models import NGAME, TfidfKNN, load_model
from xmine.models.base import MANIFEST_FILE

REPO = Path(__file__).resolve().parents[1]
KNN_FRESH_STEPS = ["created the temporary directory", "tfidf", "train.npz", "labels.jsonl", MANIFEST_FILE,
                   "renamed new model into place"]
KNN_OVER_STEPS = KNN_FRESH_STEPS[:-1] + ["renamed old model to backup", "renamed new model into place"]


def _env(trace: Path, stop: int) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), XMINE_TEST_SAVE_TRACE=str(trace), XMINE_TEST_SAVE_STOP=str(stop),
               TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    return env


def kill_during_save(command: list[str], trace: Path, stop: int, timeout: float = 300) -> list[str]:
    """Run `command`, wait until its save has finished step `stop`, SIGKILL it by pid; the steps done."""
    trace.unlink(missing_ok=True)
    proc = subprocess.Popen(command, env=_env(trace, stop), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while True:
            steps = trace.read_text().splitlines() if trace.exists() else []
            if len(steps) >= stop:
                break
            if proc.poll() is not None:
                raise AssertionError(f"process ended before step {stop}: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"step {stop} not reached in {timeout}s (steps: {steps})")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return steps


def outcome(model_dir: Path, old: str | None, new: str) -> str:
    """"old", "new" or "refused: <message>" for the directory after a kill; anything else fails the test."""
    try:
        model = load_model(model_dir)
    except ModelError as exc:
        return f"refused: {exc}"
    signature = describe(model)
    assert signature in (old, new), f"loaded a model that is neither the old nor the new: {signature}"
    return "old" if signature == old else "new"


def describe(model) -> str:
    return f"{model.method}/{json.dumps(model.config.to_dict(), sort_keys=True)}"


def train_knn_command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "xmine", "-q", "train", "--method", "knn", "--data", str(data), "--out", str(out)]


def _check_kill(tmp_path: Path, small_hpo: Path, existing: Path | None, stop: int) -> tuple[str, str]:
    out = tmp_path / "model"
    old = None
    if existing is not None:
        shutil.copytree(existing, out)
        old = describe(load_model(out))
    new = describe(TfidfKNN.train(load_dataset(small_hpo), KNNConfig()))
    steps = kill_during_save(train_knn_command(small_hpo, out), tmp_path / "trace", stop)
    result = outcome(out, old, new)
    # the next save replaces whatever the kill left, and removes the leftovers
    TfidfKNN.train(load_dataset(small_hpo), KNNConfig(neighbours=7)).save(out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "trace") == ["model"]
    assert load_model(out).config.neighbours == 7
    return steps[-1], result


EXPECTED_FRESH = {1: "refused", 2: "refused", 3: "refused", 4: "refused", 5: "new", 6: "new"}
EXPECTED_OVER = {1: "old", 2: "old", 3: "old", 4: "old", 5: "old", 6: "new", 7: "new"}


@pytest.fixture(scope="module")
def old_knn(small_hpo, tmp_path_factory):
    out = tmp_path_factory.mktemp("old") / "model"
    TfidfKNN.train(load_dataset(small_hpo), KNNConfig(neighbours=10)).save(out)
    return out


@pytest.mark.parametrize("stop", [pytest.param(s, marks=[] if s == 3 else pytest.mark.slow) for s in EXPECTED_FRESH])
def test_kill_during_training_save_into_a_fresh_directory(small_hpo, tmp_path, stop):
    step, result = _check_kill(tmp_path, small_hpo, None, stop)
    assert step == KNN_FRESH_STEPS[stop - 1]
    assert result.split(":")[0] == EXPECTED_FRESH[stop], result
    if result.startswith("refused"):
        assert "not a model directory (it does not exist" in result


@pytest.mark.parametrize("stop", [pytest.param(s, marks=[] if s == 6 else pytest.mark.slow) for s in EXPECTED_OVER])
def test_kill_during_training_save_over_an_existing_model(small_hpo, old_knn, tmp_path, stop):
    step, result = _check_kill(tmp_path, small_hpo, old_knn, stop)
    assert step == KNN_OVER_STEPS[stop - 1]
    assert result == EXPECTED_OVER[stop], result


SAVE_SCRIPT = "import sys; from xmine.models import load_model; load_model(sys.argv[1]).save(sys.argv[2])"
# the nested kNN model's own parts ("tfidf", "train.npz") are steps too, before its directory ("tfidf") is done
NGAME_STEPS = ["created the temporary directory", "encoder", "label_embeddings", "tfidf", "train.npz", "tfidf",
               "classifiers", "ranker",
               "fusion", "history.json", "labels.jsonl", MANIFEST_FILE, "renamed old model to backup",
               "renamed new model into place"]


@pytest.mark.slow
@pytest.mark.parametrize("stop", range(1, len(NGAME_STEPS) + 1))
def test_kill_while_saving_an_ngame_model_over_a_knn_model(ngame_model_dir, old_knn, tmp_path, stop):
    out = tmp_path / "model"
    shutil.copytree(old_knn, out)
    old, new = describe(load_model(out)), describe(load_model(ngame_model_dir))
    steps = kill_during_save([sys.executable, "-c", SAVE_SCRIPT, str(ngame_model_dir), str(out)],
                             tmp_path / "trace", stop)
    assert steps[-1] == NGAME_STEPS[stop - 1]
    assert outcome(out, old, new) == ("old" if stop <= NGAME_STEPS.index(MANIFEST_FILE) + 1 else "new")


@pytest.fixture(scope="module")
def ngame_model_dir(tiny_ngame_dir):
    """The session's shared tiny NGAME model directory (conftest)."""
    return tiny_ngame_dir


# ------------------------------------------------------------------------------------------------ resume
def _crash_after(monkeypatch, module, epoch: int) -> type[Exception]:
    """Make `module.save_checkpoint` raise right after writing the checkpoint of `epoch` (a crash there)."""
    class Crash(Exception):
        pass

    real = module.save_checkpoint

    def save_then_crash(path, tensors, meta):
        real(path, tensors, meta)
        if meta["epoch"] == epoch:
            monkeypatch.setattr(module, "save_checkpoint", real)
            raise Crash

    monkeypatch.setattr(module, "save_checkpoint", save_then_crash)
    return Crash


def _same_ngame(a: NGAME, b: NGAME, ds) -> None:
    assert torch.equal(a.classifiers.weight, b.classifiers.weight) and torch.equal(a.classifiers.bias,
                                                                                   b.classifiers.bias)
    pa, pb = a.predict(ds.test, k=10), b.predict(ds.test, k=10)
    assert np.array_equal(pa.indices, pb.indices) and np.array_equal(pa.data, pb.data)


def test_stage2_crashed_and_resumed_is_bit_identical(small_hpo, tiny_model_dir, tiny_ngame_dir, tmp_path,
                                                     monkeypatch):
    """Stage 2 alone, from the shared model's stage 1 (the whole run, killed, is the slow CLI test below)."""
    from test_reliability import tiny_ngame_config

    import xmine.training.loop as classifier_training  # the training loops write their checkpoints there

    ds = load_dataset(small_hpo)
    # the fixed fusion needs no fit: what is under test is the classifier loop's checkpoint
    config = tiny_ngame_config(tiny_model_dir, ranker=RankerConfig(enabled=False), stages=[2],
                               fusion=FusionConfig(kind="fixed"))
    config = config.replace(classifier=config.classifier.replace(epochs=3, checkpoint_every_s=0))
    train = {"init_from": tiny_ngame_dir, "progress": False}
    whole = NGAME.train(ds, config, out_dir=tmp_path / "a", **train)
    crash = _crash_after(monkeypatch, classifier_training, epoch=0)
    with pytest.raises(crash):
        NGAME.train(ds, config, out_dir=tmp_path / "b", **train)
    resumed = NGAME.train(ds, config, out_dir=tmp_path / "b", resume=True, **train)
    assert [e["epoch"] for e in resumed.history["stage2"]] == [0, 1, 2]
    _same_ngame(whole, resumed, ds)


@pytest.mark.slow
def test_stage2_killed_by_sigkill_and_resumed_from_the_cli_is_bit_identical(small_hpo, tiny_model_dir, tmp_path):
    from test_reliability import tiny_ngame_config

    config = tiny_ngame_config(tiny_model_dir)
    config = config.replace(classifier=config.classifier.replace(epochs=3, checkpoint_every_s=0))
    config.save(tmp_path / "config.json")
    train = [sys.executable, "-m", "xmine", "-q", "train", "--data", str(small_hpo), "--config",
             str(tmp_path / "config.json")]
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1")
    subprocess.run(train + ["--out", str(tmp_path / "a")], env=env, check=True, capture_output=True)
    killed = subprocess.run(train + ["--out", str(tmp_path / "b")], capture_output=True,
                            env={**env, "XMINE_TEST_KILL_AFTER_CHECKPOINT": "stage2.pt:1"})
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "b" / MANIFEST_FILE).exists()
    subprocess.run(train + ["--out", str(tmp_path / "b"), "--resume"], env=env, check=True, capture_output=True)
    _same_ngame(load_model(tmp_path / "a"), load_model(tmp_path / "b"), load_dataset(small_hpo))


@pytest.mark.slow  # the NGAME stage-2 test above covers the shared training loop's resume in the default run
def test_mips_crashed_and_resumed_is_bit_identical(small_hpo, tiny_model_dir, tmp_path, monkeypatch):
    import xmine.training.loop as classifier_training  # the training loops write their checkpoints there
    from xmine.config import ClassifierConfig, EncoderConfig, MIPSConfig, MIPSMethodConfig
    from xmine.models import MIPSClassifier

    ds = load_dataset(small_hpo)
    config = MIPSMethodConfig(encoder=EncoderConfig(kind="bow", model_path=str(tiny_model_dir), head_hidden=32,
                                                    num_threads=2),
                              classifier=ClassifierConfig(epochs=3, features="dense", finetune_encoder=False,
                                                          checkpoint_every_s=0),
                              mips=MIPSConfig(mips_negatives=3, uniform_negatives=20, warmup_epochs=1))
    whole = MIPSClassifier.train(ds, config, out_dir=tmp_path / "a", progress=False)
    crash = _crash_after(monkeypatch, classifier_training, epoch=1)
    with pytest.raises(crash):
        MIPSClassifier.train(ds, config, out_dir=tmp_path / "b", progress=False)
    resumed = MIPSClassifier.train(ds, config, out_dir=tmp_path / "b", resume=True, progress=False)
    assert torch.equal(whole.classifiers.weight, resumed.classifiers.weight)


@pytest.mark.slow  # the fingerprint's comparison itself is tested fast below
def test_resume_refuses_another_dataset_and_changed_hyper_parameters(small_hpo, tiny_model_dir, tmp_path):
    from test_reliability import tiny_ngame_config

    ds = load_dataset(small_hpo)
    config = tiny_ngame_config(tiny_model_dir, stages=[1])
    NGAME.train(ds, config, out_dir=tmp_path, progress=False, keep_checkpoints=True)
    other = load_dataset(small_hpo)
    other.train.labels = other.train.labels[::-1].tocsr()  # same shape, other labels
    with pytest.raises(ModelError, match="stage1.pt: checkpoint was written for other training data"):
        NGAME.train(other, config, out_dir=tmp_path, resume=True, progress=False)
    changed = config.replace(siamese=config.siamese.replace(lr=0.5))
    with pytest.raises(ModelError, match=r"other hyper-parameters \(siamese.lr: 0.003 -> 0.5\)"):
        NGAME.train(ds, changed, out_dir=tmp_path, resume=True, progress=False)
    # runtime settings (threads, device) may change on resume
    NGAME.train(ds, config.replace(encoder=config.encoder.replace(num_threads=1)), out_dir=tmp_path, resume=True,
                progress=False, keep_checkpoints=True)


def test_checkpoint_fingerprint_names_the_difference():
    from xmine.training.checkpoint import check_fingerprint, config_fingerprint, data_fingerprint

    labels = np.eye(4)[[0, 1, 2, 3, 0]]
    import scipy.sparse as sp

    fp = {"data": data_fingerprint(sp.csr_matrix(labels)), "config": config_fingerprint({"a": {"lr": 1, "device": 0}})}
    check_fingerprint("ck", json.loads(json.dumps(fp)), fp)
    moved = sp.csr_matrix(labels[::-1])
    with pytest.raises(ModelError, match="other training data"):
        check_fingerprint("ck", fp, {**fp, "data": data_fingerprint(moved)})
    with pytest.raises(ModelError, match="a.lr: 1 -> 2"):
        check_fingerprint("ck", fp, {**fp, "config": config_fingerprint({"a": {"lr": 2, "device": 1}})})
    with pytest.raises(ModelError, match="no fingerprint"):
        check_fingerprint("ck", None, fp)
