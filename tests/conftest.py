"""Shared fixtures: a tiny randomly initialised transformer (built in code, saved with the real
MiniLM tokenizer so that every encoder kind runs through its real code path) and a small real
dataset cut from the bundled HPO demo data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist's workers share the machine's cores: one thread per compute pool in each, so that two workers'
    # thread teams (torch, faiss, numba, BLAS) do not oversubscribe the cores and spin against each other. Tests of
    # threaded code set their own thread counts.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        from xmine.utils import set_threads

        set_threads(1)


def shared_dataset(name: str) -> Path:
    """A real benchmark dataset from ../shared/data beside the checkout. Skipped where it is absent, except
    under CI (env CI set), where its absence is a failure: CI must run these tests."""
    path = SHARED_DATA / name
    if not path.is_dir():
        message = f"real dataset {name} not found in {SHARED_DATA}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: tests on real data must run)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from xmine.config import EncoderConfig
    from xmine.encoders.base import default_model_path

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path(EncoderConfig()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from xmine.demo import demo_dataset_path

    return demo_dataset_path(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def small_hpo(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 train / 500 test points of the real HPO data, labels restricted to those seen in this
    train subset plus 50 test-only ones (a small, fast, real dataset)."""
    import scipy.sparse as sp

    from xmine.data import load_dataset, write_sparse_matrix, write_text_lines

    ds = load_dataset(demo_dir)
    rng = np.random.default_rng(0)
    trn = np.sort(rng.choice(ds.train.n_points, 2000, replace=False))
    tst = np.sort(rng.choice(ds.test.n_points, 500, replace=False))
    y_trn, y_tst = ds.train.labels[trn], ds.test.labels[tst]
    seen = np.flatnonzero(np.asarray(y_trn.sum(0)).ravel() > 0)
    test_only = np.setdiff1d(np.flatnonzero(np.asarray(y_tst.sum(0)).ravel() > 0), seen)[:50]
    keep = np.concatenate([seen, test_only])
    out = tmp_path_factory.mktemp("small-hpo")
    write_text_lines(out / "trn_X.txt", [ds.train.texts[i] for i in trn])
    write_text_lines(out / "tst_X.txt", [ds.test.texts[i] for i in tst])
    write_text_lines(out / "Y.txt", [ds.label_texts[i] for i in keep])
    write_sparse_matrix(out / "trn_X_Y.txt", sp.csr_matrix(y_trn[:, keep]))
    write_sparse_matrix(out / "tst_X_Y.txt", sp.csr_matrix(y_tst[:, keep]))
    return out


# ------------------------------------------------------------------------------- one shared tiny NGAME
def held_back_labels(labels) -> np.ndarray:
    """A tenth of the labels seen in training (fixed seed): hidden from the shared model's training, so that the
    tests of adding labels have labels to add by text."""
    seen = np.flatnonzero(np.asarray(labels.sum(0)).ravel() > 0)
    return np.sort(np.random.default_rng(0).choice(seen, len(seen) // 10, replace=False))


def without_labels(ds, hidden: np.ndarray):
    """`ds` with the label columns `hidden` removed (their texts too)."""
    import scipy.sparse as sp

    from xmine.data import Dataset, Split

    kept = np.setdiff1d(np.arange(ds.n_labels), hidden)
    return Dataset(ds.path, Split(sp.csr_matrix(ds.train.labels[:, kept]), ds.train.texts),
                   Split(sp.csr_matrix(ds.test.labels[:, kept]), ds.test.texts), len(kept),
                   [ds.label_texts[i] for i in kept], ds.text_variant, ds.layout)


def shared_ngame_config(tiny_model_dir: Path, epochs: int = 8, **siamese):
    """The shared tiny NGAME's configuration: the tiny bag-of-words encoder, 8 stage-1 epochs with clustered
    batches from epoch 2, 2 classifier epochs: enough for an encoder that clearly beats the untrained one and embeds
    a label text next to the texts that name it."""
    from xmine.config import ClassifierConfig, ClusterScheduleConfig, EncoderConfig, NGAMEConfig, SiameseConfig

    schedule = ClusterScheduleConfig(unit="epoch", start=2, refresh_every=1, milestones=[2, 4], sizes=[8, 16])
    return NGAMEConfig(encoder=EncoderConfig(kind="bow", model_path=str(tiny_model_dir), head_hidden=32,
                                             num_threads=2),
                       siamese=SiameseConfig(epochs=epochs, batch_size=256, lr=3e-3, lr_embeddings=1e-2,
                                             temperature=0.1, schedule=schedule, **siamese),
                       classifier=ClassifierConfig(epochs=2, shortlist_size=50, hash_buckets=1 << 18))


@pytest.fixture(scope="session")
def hidden_labels(small_hpo: Path) -> np.ndarray:
    """The labels of small_hpo that the shared tiny NGAME never saw (see `held_back_labels`)."""
    from xmine.data import load_dataset

    return held_back_labels(load_dataset(small_hpo).train.labels)


@pytest.fixture(scope="session")
def small_hpo_seen(small_hpo: Path, hidden_labels: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """small_hpo without `hidden_labels` (their columns and texts), as a dataset folder: what the shared tiny NGAME
    is trained and evaluated on."""
    from xmine.data import load_dataset, write_sparse_matrix, write_text_lines

    ds = without_labels(load_dataset(small_hpo), hidden_labels)
    out = tmp_path_factory.mktemp("small-hpo-seen")
    write_text_lines(out / "trn_X.txt", ds.train.texts)
    write_text_lines(out / "tst_X.txt", ds.test.texts)
    write_text_lines(out / "Y.txt", ds.label_texts)
    write_sparse_matrix(out / "trn_X_Y.txt", ds.train.labels)
    write_sparse_matrix(out / "tst_X_Y.txt", ds.test.labels)
    return out


@pytest.fixture(scope="session")
def tiny_ngame(small_hpo_seen: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One tiny NGAME, both stages, trained once per test session on `small_hpo_seen` (checkpoints in its directory
    while it trains) and saved there: (model, directory). For every test that needs *a* trained NGAME (quality,
    prediction settings, loading, damage, serving, adding labels, a stage-1 model to start stage 2 from). Tests
    must not change either: load the directory, or copy it, and change that."""
    from xmine.data import load_dataset
    from xmine.models import NGAME

    out = tmp_path_factory.mktemp("tiny-ngame") / "model"
    model = NGAME.train(load_dataset(small_hpo_seen), shared_ngame_config(tiny_model_dir), out_dir=out,
                        progress=False)
    model.save(out)
    return model, out


@pytest.fixture(scope="session")
def tiny_ngame_dir(tiny_ngame) -> Path:
    """The shared tiny NGAME's model directory (see `tiny_ngame`)."""
    return tiny_ngame[1]
