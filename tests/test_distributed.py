"""Data-parallel training on torch.distributed: the sharding of batches across ranks, and real 2-process
runs launched with torchrun (gloo on this CPU) compared with one process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xmine import distributed
from xmine.config import (
    ClassifierConfig,
    ClusterScheduleConfig,
    EncoderConfig,
    MIPSConfig,
    MIPSMethodConfig,
    NGAMEConfig,
    SiameseConfig,
)
from xmine.data import load_dataset
from xmine.metrics import evaluate
from xmine.mining.clusters import ClusterBatchSampler
from xmine.models import NGAME, load_model
from xmine.optim import RowSparseAdam
from xmine.training.siamese import local_batches


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("clustered", [False, True])
def test_each_point_is_seen_exactly_once_per_epoch_across_ranks(world, clustered):
    n = 1003
    sampler = ClusterBatchSampler(n, batch_size=64, seed=3)
    if clustered:
        sampler.update(np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32), cluster_size=8)
    sampler.set_epoch(1)
    seen, steps = [], None
    for r in range(world):
        batches = list(local_batches(sampler, r, world))
        steps = steps or len(batches)
        assert len(batches) == steps  # every rank takes the same number of steps (collectives stay in step)
        for glob, mine in batches:
            assert set(mine) <= set(glob)
            seen.append(mine)
    seen = np.concatenate(seen)
    assert len(seen) == n and len(np.unique(seen)) == n
    if clustered:  # each rank's share is a union of whole clusters
        cluster_of = np.empty(n, dtype=np.int64)
        for c, members in enumerate(sampler.clusters):
            cluster_of[members] = c
        for r in range(world):
            for _, mine in local_batches(sampler, r, world):
                for c in np.unique(cluster_of[mine]):
                    assert set(sampler.clusters[c]) <= set(mine)


def test_whole_cluster_split_balances_ranks():
    parts = [np.arange(i * 10, i * 10 + size) for i, size in enumerate([9, 8, 5, 4, 3, 3])]
    shares = distributed.split_whole_clusters(parts, 2)
    assert sorted(len(s) for s in shares) == [16, 16]
    assert sorted(np.concatenate(shares).tolist()) == sorted(np.concatenate(parts).tolist())


def test_helpers_are_no_ops_in_one_process():
    import torch

    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.is_main()
    x = torch.ones(3, 2, requires_grad=True)
    assert distributed.all_gather_rows(x) is x
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}


def _config(tiny_model_dir: Path, epochs: int) -> NGAMEConfig:
    schedule = ClusterScheduleConfig(unit="epoch", start=1, refresh_every=1, milestones=[1], sizes=[8])
    return NGAMEConfig(encoder=EncoderConfig(kind="bow", model_path=str(tiny_model_dir), head_hidden=32),
                       siamese=SiameseConfig(epochs=epochs, batch_size=256, lr=3e-3, lr_embeddings=1e-2,
                                             temperature=0.1, schedule=schedule),
                       classifier=ClassifierConfig(epochs=2, shortlist_size=50, hash_buckets=1 << 18),
                       stages=[1])


def _torchrun(nproc: int, args: list[str], expect_ok: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "xmine", "-q", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow  # torchrun starts two processes that each import torch
def test_a_method_without_a_training_loop_is_a_clear_error_under_torchrun(small_hpo, tmp_path):
    proc = _torchrun(2, ["--method", "knn", "--data", str(small_hpo), "--out", str(tmp_path / "knn")],
                     expect_ok=False)
    assert proc.returncode != 0
    assert "--method knn has no training loop to run data-parallel" in proc.stdout + proc.stderr


@pytest.mark.slow  # torchrun starts two processes that each import torch
def test_two_gloo_processes_match_one_process_and_resume_with_one(small_hpo, tiny_model_dir, tmp_path):
    """Stage 1 with 2 ranks computes the step of one process with the same global batch: the in-batch
    negatives span both ranks (all-gather) and the gradients are averaged. The losses then agree up to
    float32 re-association (rows gathered in a different order, gradients summed across processes), which
    stays far below 1e-3 relative over these epochs. The 2-rank checkpoint resumes in one process."""
    from xmine.models.ngame import stage1_unseen

    ds = load_dataset(small_hpo)
    labelled = np.diff(ds.train.labels.indptr) > 0
    # every labelled point but those kept unseen for the fusion's leakage check
    n_trained = int(labelled.sum() - labelled[stage1_unseen(ds.train.n_points, _config(tiny_model_dir, 2))].sum())
    config_file = tmp_path / "stage1.json"
    _config(tiny_model_dir, epochs=2).save(config_file)
    _torchrun(2, ["--method", "ngame", "--data", str(small_hpo), "--out", str(tmp_path / "two"),
                  "--config", str(config_file), "--keep-checkpoints"])
    two = json.loads((tmp_path / "two" / "history.json").read_text())["stage1"]
    assert [e["points_seen"] for e in two] == [n_trained] * 2

    one = NGAME.train(ds, _config(tiny_model_dir, epochs=4), out_dir=tmp_path / "one", progress=False)
    ref = [e["loss"] for e in one.history["stage1"]]
    assert np.allclose([e["loss"] for e in two], ref[:2], rtol=1e-3)
    assert ref[-1] < ref[0]  # and it learns

    # the 2-process checkpoint (rank 0 wrote it; it holds no per-rank state) loads in one process with the same
    # configuration (a resume with other hyper-parameters, e.g. more epochs, is refused by the fingerprint)
    resumed = NGAME.train(ds, _config(tiny_model_dir, epochs=2), out_dir=tmp_path / "two", resume=True,
                          progress=False)
    assert resumed.history["stage1"] == two  # epochs 0 and 1 come from the checkpoint, not a re-run


@pytest.mark.slow  # torchrun starts two processes that each import torch
def test_two_gloo_processes_train_the_mips_classifiers(small_hpo, tiny_model_dir, tmp_path):
    config = MIPSMethodConfig(encoder=EncoderConfig(kind="bow", model_path=str(tiny_model_dir), head_hidden=32),
                              classifier=ClassifierConfig(epochs=3, hash_buckets=1 << 18),
                              mips=MIPSConfig(mips_negatives=5, uniform_negatives=50, warmup_epochs=1))
    config.save(tmp_path / "mips.json")
    _torchrun(2, ["--method", "mips", "--data", str(small_hpo), "--out", str(tmp_path / "m"),
                  "--config", str(tmp_path / "mips.json")])
    model = load_model(tmp_path / "m")
    losses = [e["loss"] for e in model.history["epochs"]]
    assert losses[-1] < losses[0]
    ds = load_dataset(small_hpo)
    counts = np.asarray(ds.train.labels.sum(0)).ravel()
    popularity = 100 * float(np.mean(ds.test.labels[:, int(np.argmax(counts))].toarray().ravel() > 0))
    assert evaluate(model.predict(ds.test.texts, k=5), ds.test.labels, ks=(1,))["P@1"] > popularity


def test_bag_encoder_can_train_with_dense_gradients_for_nccl(small_hpo, tiny_model_dir):
    """Under NCCL the bag encoder switches its token table to dense gradients (NCCL all-reduces dense
    tensors only); it must still train."""
    import torch

    from xmine.encoders import build_encoder
    from xmine.training.siamese import train_siamese

    ds = load_dataset(small_hpo)
    encoder = build_encoder(EncoderConfig(kind="bow", model_path=str(tiny_model_dir), head_hidden=32),
                            list(ds.train.texts) + list(ds.label_texts))
    encoder.use_dense_gradients()
    optimizers = encoder.make_optimizers(1e-3, 1e-2)
    assert not any(isinstance(o, (RowSparseAdam, torch.optim.SparseAdam)) for o in optimizers)
    assert not encoder.sparse_parameters()
    before = encoder.embeddings.weight.detach().clone()
    config = SiameseConfig(epochs=3, batch_size=256, lr_embeddings=1e-2, temperature=0.1, batching="random")
    n = 768  # three batches an epoch: every step updates the whole dense token table
    history = train_siamese(encoder, encoder.prepare(ds.train.texts[:n]), encoder.prepare(ds.label_texts),
                            ds.train.labels[:n], config, progress=False)
    assert history.epochs[-1].loss < history.epochs[0].loss
    assert not torch.equal(before, encoder.embeddings.weight)
    assert encoder.embeddings.weight.grad is None or not encoder.embeddings.weight.grad.is_sparse
