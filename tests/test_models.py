"""Behaviour of the trained models on a small real dataset (2,000 HPO training points), with a tiny
randomly initialised encoder so that the suite stays fast."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from conftest import shared_ngame_config

from xmine.config import (
    ClassifierConfig,
    EncoderConfig,
    KNNConfig,
    MIPSConfig,
    MIPSMethodConfig,
    NGAMEConfig,
    RankerConfig,
    SiameseConfig,
)
from xmine.data import load_dataset
from xmine.errors import ConfigError, XmineError
from xmine.metrics import evaluate
from xmine.models import NGAME, MIPSClassifier, TfidfKNN, load_model


def _p1(pred: sp.csr_matrix, truth: sp.csr_matrix) -> float:
    return evaluate(pred, truth, ks=(1,), recall_ks=())["P@1"]


def _popularity_p1(ds) -> float:
    counts = np.asarray(ds.train.labels.sum(0)).ravel()
    top = int(np.argmax(counts))
    return 100 * float(np.mean(ds.test.labels[:, top].toarray().ravel() > 0))


def _recall10(pred: sp.csr_matrix, truth: sp.csr_matrix) -> float:
    return evaluate(pred, truth, ks=(1,), recall_ks=(10,))["R@10"]


def _popularity_prediction(ds, k: int) -> sp.csr_matrix:
    """The k labels most frequent in training, best first, for every test point."""
    counts = np.asarray(ds.train.labels.sum(0)).ravel()
    top = np.argsort(-counts, kind="stable")[:k]
    n = ds.test.n_points
    return sp.csr_matrix((np.tile(np.arange(k, 0, -1.0), n), np.tile(top, n), np.arange(0, k * n + 1, k)),
                         shape=(n, ds.n_labels))


@pytest.fixture(scope="module")
def ds(small_hpo):
    return load_dataset(small_hpo)


def _encoder(tiny_model_dir, kind: str = "bow") -> EncoderConfig:
    return EncoderConfig(kind=kind, model_path=str(tiny_model_dir), head_hidden=32, num_threads=2)


def _ngame_config(tiny_model_dir, epochs: int = 8, **siamese) -> NGAMEConfig:
    return shared_ngame_config(tiny_model_dir, epochs, **siamese)


@pytest.fixture(scope="module")
def ds_seen(small_hpo_seen):
    """The data the shared tiny NGAME was trained on (small_hpo less a tenth of its labels)."""
    return load_dataset(small_hpo_seen)


def test_knn_baseline_beats_popularity_and_round_trips(ds, tmp_path):
    model = TfidfKNN.train(ds, KNNConfig())
    pred = model.predict(ds.test, k=10)
    assert pred.shape == ds.test.labels.shape and (np.diff(pred.indptr) <= 10).all()
    assert _p1(pred, ds.test.labels) > _popularity_p1(ds) + 5
    model.save(tmp_path / "knn")
    again = load_model(tmp_path / "knn").predict(ds.test, k=10)
    assert (again != pred).nnz == 0


def test_knn_votes_in_threads_equal_the_serial_ones(ds):
    import numba

    model = TfidfKNN.train(ds, KNNConfig())
    x = model.train_features
    threads = numba.get_num_threads()
    votes = {}
    try:
        for n in (1, 2):
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
            votes[n] = model.predict_features(x, 20, batch_size=64, exclude_rows=np.arange(x.shape[0]))
    finally:
        numba.set_num_threads(threads)
    assert x.shape[0] > 3 * 64  # several batches
    assert (votes[1] != votes[2]).nnz == 0 and np.array_equal(votes[1].indices, votes[2].indices)


@pytest.fixture(scope="module")
def ngame(tiny_ngame):
    """The session's shared tiny NGAME (conftest): (model, directory), trained on `ds_seen`."""
    return tiny_ngame


def test_stage1_loss_falls_and_does_not_collapse(ngame):
    model, out = ngame
    assert not (out / "checkpoints").exists()  # training finished: its checkpoints are gone
    history = model.history["stage1"]
    assert history[-1]["loss"] < history[0]["loss"] - 0.1
    # collapse = negatives as similar as positives; a healthy encoder keeps them apart
    assert history[-1]["gap"] > 0.05 and history[-1]["neg_cos"] < 0.95


def test_stage1_beats_the_untrained_encoder(ds_seen, ngame, tiny_model_dir):
    model, _ = ngame
    untrained = NGAME.train(ds_seen, _ngame_config(tiny_model_dir).replace(stages=[1], siamese=SiameseConfig(
        epochs=1, lr=1e-12, lr_embeddings=1e-12, batching="random")), progress=False)
    trained_p1 = _p1(model.predict(ds_seen.test, k=5, scores="encoder"), ds_seen.test.labels)
    untrained_p1 = _p1(untrained.predict(ds_seen.test, k=5, scores="encoder"), ds_seen.test.labels)
    assert trained_p1 > untrained_p1 + 3


def test_fused_scores_beat_encoder_alone_and_save_load_is_identical(ds_seen, ngame):
    model, out = ngame
    fused = model.predict(ds_seen.test, k=10)
    encoder = model.predict(ds_seen.test, k=10, scores="encoder")
    assert _p1(fused, ds_seen.test.labels) > _p1(encoder, ds_seen.test.labels)
    loaded = load_model(out)
    assert loaded.ranker is not None and loaded.ranker.weights.nnz == model.ranker.weights.nnz > 0
    for kind in ("fused", "encoder", "classifier", "ranker"):
        a, b = model.predict(ds_seen.test, k=10, scores=kind), loaded.predict(ds_seen.test, k=10, scores=kind)
        assert np.array_equal(a.indices, b.indices) and np.allclose(a.data, b.data, atol=1e-5)


def test_batched_prediction_equals_one_batch(ds_seen, ngame):
    model, _ = ngame
    whole = model.predict(ds_seen.test, k=10, batch_size=10_000)
    parts = model.predict(ds_seen.test, k=10, batch_size=37)
    assert np.array_equal(whole.indices, parts.indices) and np.allclose(whole.data, parts.data, atol=1e-5)


def test_a_label_absent_from_training_can_be_predicted(ds_seen, ngame):
    model, _ = ngame
    unseen = np.flatnonzero(np.asarray(ds_seen.train.labels.sum(0)).ravel() == 0)
    assert unseen.size > 0
    label = int(unseen[0])
    for kind in ("encoder", "fused"):
        pred = model.predict([ds_seen.label_texts[label]], k=50, scores=kind)
        assert label in set(pred.indices), kind


def test_fusion_keeps_a_combination_no_worse_than_its_sources_on_held_out_points(ngame):
    model, _ = ngame
    selection = model.history["fusion_selection"]  # held-out nDCG@5 of every option tried
    assert {"encoder", "classifier", "ranker", "lr", "tree"} <= set(selection)
    from xmine.fusion import SELECTION_MARGIN

    assert selection[model.fusion.mode] >= max(selection.values()) - SELECTION_MARGIN


@pytest.mark.slow  # a second NGAME training, both stages
def test_some_fusion_points_are_kept_out_of_stage1_and_checked(ds, tiny_model_dir):
    from xmine.config import FusionConfig
    from xmine.models.ngame import fusion_holdout, stage1_unseen

    config = _ngame_config(tiny_model_dir, epochs=1).replace(fusion=FusionConfig(holdout_points=200,
                                                                                 stage1_unseen_points=80))
    config = config.replace(classifier=ClassifierConfig(epochs=1, shortlist_size=20, hash_buckets=1 << 16),
                            ranker=RankerConfig(enabled=False))  # not under test
    model = NGAME.train(ds, config, progress=False)
    labelled = np.diff(ds.train.labels.indptr) > 0
    unseen = stage1_unseen(ds.train.n_points, config)
    assert len(unseen) == 80 and set(unseen) <= set(fusion_holdout(ds.train.n_points, config))
    assert model.history["stage1"][0]["points_seen"] == int(labelled.sum() - labelled[unseen].sum())
    check = model.history["fusion_check"]
    # the fusion is fitted and checked on the 200 held-out training points, 80 of them unseen by stage 1
    assert check["unseen_points"] == 80 and check["seen_points"] == 200 - 80
    # and it is refitted on the unseen ones alone exactly when they beat the seen ones by the margin
    from xmine.fusion import LEAKAGE_MARGIN

    leaks = check["fitted_on_unseen_ndcg5_crossfit"] > check["fitted_on_seen_ndcg5_unseen"] + LEAKAGE_MARGIN
    assert check["fitted_on"] == ("unseen" if leaks else "all")


@pytest.mark.slow  # two stage-1 trainings
def test_resume_gives_the_same_encoder_as_an_uninterrupted_run(ds, tiny_model_dir, tmp_path, monkeypatch):
    import xmine.training.loop as siamese  # the training loops write their checkpoints there

    full = _ngame_config(tiny_model_dir, epochs=4, checkpoint_every_s=0).replace(stages=[1])  # after every epoch
    a = NGAME.train(ds, full, out_dir=tmp_path / "a", progress=False)
    assert not (tmp_path / "a" / "checkpoints").exists()  # deleted once training has finished

    class Crash(Exception):
        pass

    def save_then_crash(path, tensors, meta):  # the run dies right after its epoch-2 checkpoint
        real_save(path, tensors, meta)
        if meta["epoch"] == 1:
            raise Crash

    real_save = siamese.save_checkpoint
    monkeypatch.setattr(siamese, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        NGAME.train(ds, full, out_dir=tmp_path / "b", progress=False)
    monkeypatch.setattr(siamese, "save_checkpoint", real_save)
    assert (tmp_path / "b" / "checkpoints" / "stage1.pt").exists()  # a crashed run keeps its checkpoint
    b = NGAME.train(ds, full, out_dir=tmp_path / "b", resume=True, progress=False)
    assert [e["epoch"] for e in b.history["stage1"]] == [0, 1, 2, 3]
    assert [e["loss"] for e in b.history["stage1"]] == [e["loss"] for e in a.history["stage1"]]
    assert np.array_equal(a.label_embeddings, b.label_embeddings)


def test_checkpoints_are_written_at_most_every_checkpoint_every_s_and_always_after_the_last_epoch(
        ds, tiny_model_dir, tmp_path, monkeypatch):
    import xmine.training.loop as loop

    written = []
    real_save = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", lambda path, tensors, meta: (written.append(
        (path.name, meta["epoch"])), real_save(path, tensors, meta)))
    config = _ngame_config(tiny_model_dir, epochs=2).replace(stages=[1])
    assert config.siamese.checkpoint_every_s > 10  # the default: a run of seconds writes only its last epoch
    a = NGAME.train(ds, config, out_dir=tmp_path / "a", progress=False, keep_checkpoints=True)
    assert written == [("stage1.pt", 1)]
    written.clear()
    every = config.replace(siamese=config.siamese.replace(checkpoint_every_s=0))
    b = NGAME.train(ds, every, out_dir=tmp_path / "b", progress=False)
    assert written == [("stage1.pt", 0), ("stage1.pt", 1)]
    assert np.array_equal(a.label_embeddings, b.label_embeddings)  # when it writes changes nothing trained
    # a finished stage's last checkpoint lets a resumed run skip it, under either setting (a runtime key)
    written.clear()
    resumed = NGAME.train(ds, every, out_dir=tmp_path / "a", resume=True, progress=False)
    assert written == [] and resumed.history["stage1"] == a.history["stage1"]
    assert np.array_equal(a.label_embeddings, resumed.label_embeddings)


@pytest.mark.slow  # a second stage-2 training
def test_stage2_alone_starts_from_a_saved_stage1_model(ds_seen, ngame, tiny_model_dir):
    _, out = ngame
    config = _ngame_config(tiny_model_dir).replace(stages=[2], ranker=RankerConfig(enabled=False))  # not under test
    model = NGAME.train(ds_seen, config, init_from=out, progress=False)
    assert model.classifiers is not None and "stage1" not in model.history
    with pytest.raises(XmineError, match="init_from"):
        NGAME.train(ds_seen, config, progress=False)


@pytest.mark.slow  # two stage-2 trainings
def test_stage2_classifier_index_negatives_come_from_the_configured_index(ds_seen, ngame, tiny_model_dir, monkeypatch):
    """`classifier.negatives_index` picks the index that NGAME stage 2 searches for its classifier-index
    negatives (HNSW above `exact_below` labels, exact below)."""
    import xmine.models.ngame as ngame_module
    from xmine.config import IndexConfig

    built = []

    class Recording(ngame_module.MIPSNegativeSampler):
        def rebuild(self, label_vectors):
            super().rebuild(label_vectors)
            built.append(self.index.kind)

    monkeypatch.setattr(ngame_module, "MIPSNegativeSampler", Recording)
    _, out = ngame
    base = _ngame_config(tiny_model_dir).replace(stages=[2], ranker=RankerConfig(enabled=False))  # not under test
    for exact_below, kind in ((0, "hnsw"), (10**9, "exact")):
        built.clear()
        index = IndexConfig(kind="hnsw", ef_construction=40, ef_search=32, exact_below=exact_below)
        # two epochs: the first epoch's classifiers are the label embeddings, over which no index is built
        # (ClassifierNegatives); the second epoch's start builds one
        config = base.replace(classifier=base.classifier.replace(epochs=2, negatives_index=index))
        NGAME.train(ds_seen, config, init_from=out, progress=False)
        assert built == [kind]


@pytest.mark.slow  # a stage-2 training
def test_the_classifier_index_has_its_own_settings(ds_seen, ngame, tiny_model_dir, tmp_path):
    """`classifier_index` builds the index over the classifier vectors apart from the label index (here HNSW
    against exact); the saved model keeps both kinds."""
    from xmine.config import IndexConfig

    _, out = ngame
    base = _ngame_config(tiny_model_dir).replace(stages=[2], ranker=RankerConfig(enabled=False))  # not under test
    config = base.replace(classifier=base.classifier.replace(epochs=1), index=IndexConfig(kind="exact"),
                          classifier_index=IndexConfig(kind="hnsw", ef_construction=40, exact_below=0))
    model = NGAME.train(ds_seen, config, init_from=out, progress=False)
    assert (model.label_index.kind, model.classifier_index.kind) == ("exact", "hnsw")
    model.save(tmp_path / "m")
    loaded = NGAME.load(tmp_path / "m")
    assert (loaded.label_index.kind, loaded.classifier_index.kind) == ("exact", "hnsw")
    assert loaded.config.classifier_index == config.classifier_index


def test_extra_ranker_rows_come_after_the_points_with_padded_candidates():
    from xmine.models.ngame import RankerRows, with_extra_rows

    features, labels = sp.csr_matrix(np.eye(3, 4, dtype=np.float32)), sp.csr_matrix(np.eye(3, 5, dtype=np.float32))
    candidates = np.array([[0, 1], [1, 2], [2, -1]])
    extra = RankerRows(sp.csr_matrix(np.ones((1, 4), dtype=np.float32)),
                       sp.csr_matrix(([1.0], ([0], [4])), shape=(1, 5), dtype=np.float32), np.array([[4, 3, 0]]))
    x, y, c = with_extra_rows(features, labels, candidates, extra)
    assert x.shape == (4, 4) and np.array_equal(x[:3].toarray(), features.toarray())
    assert y.shape == (4, 5) and y[3].indices.tolist() == [4] and np.array_equal(y[:3].toarray(), labels.toarray())
    assert c.tolist() == [[0, 1, -1], [1, 2, -1], [2, -1, -1], [4, 3, 0]]
    assert with_extra_rows(features, labels, candidates, None)[2] is candidates


@pytest.mark.slow  # two stage-2 trainings
def test_label_text_rows_give_labels_without_points_a_ranker(ds_seen, ngame, tiny_model_dir):
    """`ranker.label_text_rows_below`: a label with fewer training positives also trains the ranker on its own
    text. Without it, a label no training point has gets no ranker weights; with it, its own text ranks it above
    another such label."""
    _, out = ngame
    base = _ngame_config(tiny_model_dir).replace(stages=[2])
    base = base.replace(classifier=base.classifier.replace(epochs=1))
    unseen = np.flatnonzero(np.diff(ds_seen.train.labels.tocsc().indptr) == 0)
    off = NGAME.train(ds_seen, base, init_from=out, progress=False)
    assert len(unseen) >= 20 and off.ranker.weights[unseen].nnz == 0

    on = NGAME.train(ds_seen, base.replace(ranker=base.ranker.replace(label_text_rows_below=1)), init_from=out,
                     progress=False)
    x = on.knn.featurizer.transform([ds_seen.label_texts[j] for j in unseen])
    has_words = np.diff(x.indptr) > 0  # the vocabulary is the training texts': some label texts share no word
    assert on.history["ranker_label_text_rows"] == has_words.sum() < len(unseen)
    assert on.ranker.weights[unseen[~has_words]].nnz == 0 and (on.ranker.bias[unseen[~has_words]] == -10).all()
    own, other = unseen[has_words], np.roll(unseen[has_words], 1)
    scores = on.ranker.score(x[has_words], np.stack([own, other], axis=1))
    assert has_words.sum() >= 10 and (scores[:, 0] > scores[:, 1]).mean() > 0.9


@pytest.mark.slow  # two stage-2 trainings
def test_ranker_trains_on_the_candidates_it_scores_at_prediction(ds_seen, ngame, tiny_model_dir, monkeypatch):
    """The sparse ranker's training shortlist holds the classifier index's candidates as well (matcher-aware
    negatives): at prediction those candidates are scored by the ranker too, so it must have learnt to reject
    them. `ranker.shortlist_with_classifier_index=False` trains it on the label-embedding ANN and neighbours only."""
    import xmine.models.ngame as ngame_module

    seen = []

    class Recording(ngame_module.SparseRanker):
        @classmethod
        def train(cls, features, labels, shortlist, *args, **kwargs):
            seen.append(shortlist)
            return super().train(features, labels, shortlist, *args, **kwargs)

    monkeypatch.setattr(ngame_module, "SparseRanker", Recording)
    _, out = ngame
    base = _ngame_config(tiny_model_dir).replace(stages=[2])
    base = base.replace(classifier=base.classifier.replace(epochs=1))
    model = NGAME.train(ds_seen, base, init_from=out, progress=False)
    assert len(seen) == 2 and seen[0] is seen[1]  # the fit on the training rows, and the refit on all points
    emb = model.encoder.encode(model.encoder.prepare(ds_seen.train.texts))
    from_classifiers = model.classifier_index.search(emb, base.classifier.shortlist_size)[1]
    from_embeddings = model.label_index.search(emb, base.classifier.shortlist_size)[1]
    assert all(set(from_classifiers[i]) <= set(seen[0][i]) for i in range(len(emb)))
    assert any(not set(from_classifiers[i]) <= set(from_embeddings[i]) for i in range(len(emb)))

    seen.clear()
    off = base.replace(ranker=base.ranker.replace(shortlist_with_classifier_index=False))
    NGAME.train(ds_seen, off, init_from=out, progress=False)
    assert not all(set(from_classifiers[i]) <= set(seen[0][i]) for i in range(len(emb)))


def test_empty_label_text_is_a_clear_error(ds, tiny_model_dir):
    ds_bad = load_dataset(ds.path)
    ds_bad.label_texts[3] = "  "
    with pytest.raises(XmineError, match="label 3"):
        NGAME.train(ds_bad, _ngame_config(tiny_model_dir), progress=False)


def test_mips_method_trains_rebuilds_on_schedule_and_round_trips(ds, tiny_model_dir, tmp_path):
    config = MIPSMethodConfig(
        encoder=_encoder(tiny_model_dir),
        classifier=ClassifierConfig(epochs=6, batch_size=256, finetune_encoder=True, hash_buckets=1 << 18),
        mips=MIPSConfig(mips_negatives=5, uniform_negatives=50, reindex_every=3, warmup_epochs=1))
    model = MIPSClassifier.train(ds, config, progress=False)
    epochs = model.history["epochs"]
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    labelled = int((np.diff(ds.train.labels.indptr) > 0).sum())  # points without labels are skipped
    steps_per_epoch = int(np.ceil(labelled / 256))
    # no index during the uniform-only warm-up epoch; then at each epoch start and every 3 steps
    expected = sorted({e * steps_per_epoch for e in range(1, 6)} |
                      {s for s in range(steps_per_epoch, 6 * steps_per_epoch) if s % 3 == 0})
    assert model.history["rebuild_steps"] == expected
    pred = model.predict(ds.test, k=10)
    # on this small set with a tiny random encoder its P@1 is about the most popular label's; its top 10 finds far
    # more of the true labels than the 10 most popular labels do
    assert _recall10(pred, ds.test.labels) > 1.3 * _recall10(_popularity_prediction(ds, 10), ds.test.labels)
    model.save(tmp_path / "mips")
    again = load_model(tmp_path / "mips").predict(ds.test, k=10)
    assert np.array_equal(again.indices, pred.indices) and np.allclose(again.data, pred.data, atol=1e-5)


def test_knn_with_lead_channel_round_trips(ds, tmp_path):
    """A model whose TF-IDF has a lead channel saves and loads it: identical predictions."""
    from xmine.config import TfidfConfig

    model = TfidfKNN.train(ds, KNNConfig(tfidf=TfidfConfig(lead_channel="on", lead_words=2)))
    assert model.featurizer.lead_words == 2
    pred = model.predict(ds.test, k=10)
    model.save(tmp_path / "knn")
    loaded = load_model(tmp_path / "knn")
    assert loaded.featurizer.lead_words == 2
    assert (loaded.predict(ds.test, k=10) != pred).nnz == 0


def test_prediction_settings_are_chosen_per_call(ds_seen, ngame):
    """PredictConfig: its defaults predict exactly as the trained model does; a smaller shortlist and fewer
    candidate sources give predictions drawn from those sources only; explicit arguments override it."""
    from xmine.config import PredictConfig

    model, _ = ngame
    base = model.predict(ds_seen.test, k=10)
    assert (model.predict(ds_seen.test, k=10, config=PredictConfig()) != base).nnz == 0
    assert set(model.last_predict_seconds) == {"encode", "featurize", "search", "score", "fuse"}
    narrow = PredictConfig(shortlist_size=3, knn_shortlist=0, classifier_index=False)
    pred = model.predict(ds_seen.test, k=10, config=narrow)
    emb = model.encode(list(ds_seen.test.texts))
    top3 = model.label_index.search(emb, 3)[1]
    assert all(set(pred[i].indices) <= set(top3[i]) for i in range(pred.shape[0]))
    assert (pred != base).nnz > 0
    ranker = model.predict(ds_seen.test, k=10, scores="ranker", config=PredictConfig(scores="classifier"))
    assert (ranker != model.predict(ds_seen.test, k=10, config=PredictConfig(scores="ranker"))).nnz == 0
    with pytest.raises(ConfigError, match="shortlist_size"):
        PredictConfig.from_dict({"shortlist_size": 0})


def test_cli_predict_set(ds_seen, ngame, small_hpo_seen, tmp_path, capsys):
    """`xmine predict --predict-set key=value`: applied (same predictions as the API), unknown keys are errors."""
    from xmine.cli import load_predictions, main
    from xmine.config import PredictConfig

    model, out = ngame
    cmd = ["-q", "predict", "--model", str(out), "--data", str(small_hpo_seen), "-k", "5", "--out",
           str(tmp_path / "p.npz"), "--predict-set", "shortlist_size=4", "--predict-set", "knn_shortlist=0"]
    assert main(cmd) == 0, capsys.readouterr().err
    expected = model.predict(ds_seen.test, k=5, config=PredictConfig(shortlist_size=4, knn_shortlist=0))
    assert (load_predictions(tmp_path / "p.npz") != expected).nnz == 0
    capsys.readouterr()
    assert main(cmd[:-4] + ["--predict-set", "shortlist=4"]) == 1  # a clear error, not an exception
    assert "shortlist" in capsys.readouterr().err


def _stage1_config(tiny_model_dir, epochs: int, **siamese) -> NGAMEConfig:
    from xmine.config import FusionConfig

    return _ngame_config(tiny_model_dir, epochs=epochs, **siamese).replace(
        stages=[1], fusion=FusionConfig(holdout_points=300, stage1_unseen_points=150))


def _heldout_of(ds, config: NGAMEConfig, model: NGAME):
    from xmine.models.ngame import stage1_heldout, stage1_unseen

    unseen = stage1_unseen(ds.train.n_points, config)
    encoder = model.encoder
    return stage1_heldout(encoder.prepare(ds.train.texts), encoder.prepare(ds.label_texts), ds.train.labels, unseen,
                          config)


def test_stage1_records_its_heldout_curve_without_changing_what_it_trains(ds, tiny_model_dir):
    measured = NGAME.train(ds, _stage1_config(tiny_model_dir, 3, heldout_every=1), progress=False)
    plain = NGAME.train(ds, _stage1_config(tiny_model_dir, 3, heldout_curve=False), progress=False)
    sparse = NGAME.train(ds, _stage1_config(tiny_model_dir, 3, heldout_every=2), progress=False)
    # the curve is a measurement on the side: the same encoder, bit for bit
    assert np.array_equal(measured.label_embeddings, plain.label_embeddings)
    assert np.array_equal(measured.label_embeddings, sparse.label_embeddings)
    curve = [(e["heldout_ndcg5_unseen"], e["heldout_ndcg5_seen"]) for e in measured.history["stage1"]]
    assert len(curve) == 3 and all(0 <= a <= 100 and 0 <= b <= 100 for a, b in curve)
    assert all(e["heldout_ndcg5_unseen"] is None for e in plain.history["stage1"])
    # every second epoch and the last: epochs 2 and 3, with the same values as when measured every epoch
    sparse_curve = [(e["heldout_ndcg5_unseen"], e["heldout_ndcg5_seen"]) for e in sparse.history["stage1"]]
    assert sparse_curve == [(None, None), curve[1], curve[2]]
    # the last epoch's point is the trained encoder's nDCG@5 on those points, measured again from scratch
    again = _heldout_of(ds, _stage1_config(tiny_model_dir, 3), measured)(measured.encoder)
    assert len(_heldout_of(ds, _stage1_config(tiny_model_dir, 3), measured)) == 150
    assert (again.ndcg5_unseen, again.ndcg5_seen) == curve[-1]


def test_early_stopping_stops_after_patience_epochs_without_gain_and_keeps_the_best():
    from xmine.training.siamese import EarlyStopping

    encoder = torch.nn.Linear(2, 1)
    stopper = EarlyStopping(patience=2)
    stopped_at = None
    for epoch, score in enumerate([10.0, 12.0, 11.0, 13.0, 12.5, 13.0, 14.0]):
        with torch.no_grad():
            encoder.weight.fill_(score)
        stopper.observe(epoch, score, encoder)
        if stopper.stopped:
            stopped_at = epoch
            break
    # one epoch without a gain (11.0) is within the patience; 13.0 is the new best; 12.5, then 13.0, which only
    # ties it, are two epochs in a row without a gain
    assert stopped_at == 5 and (stopper.best_epoch, stopper.best_score) == (3, 13.0)
    with torch.no_grad():
        encoder.weight.fill_(0.0)
    assert stopper.restore_best(encoder, last_epoch=5) and encoder.weight[0, 0].item() == 13.0
    assert not EarlyStopping(0).stopped and EarlyStopping(0).tensors() == {}


@pytest.mark.slow  # three stage-1 trainings
def test_early_stopped_stage1_keeps_its_best_epoch_and_resumes_exactly(ds, tiny_model_dir, tmp_path, monkeypatch):
    import xmine.training.loop as loop

    config = _stage1_config(tiny_model_dir, 8, early_stopping_patience=1, heldout_every=1, checkpoint_every_s=0)
    a = NGAME.train(ds, config, progress=False)
    curve = [e["heldout_ndcg5_unseen"] for e in a.history["stage1"]]
    best = int(np.argmax(curve))  # the first best
    # it ran until one epoch did not beat the best so far (or to the end), and kept the best epoch's encoder
    expected_epochs = next((e + 1 for e in range(1, len(curve)) if curve[e] <= max(curve[:e])), 8)
    assert len(curve) == expected_epochs
    assert _heldout_of(ds, config, a)(a.encoder).ndcg5_unseen == curve[best]

    class Crash(Exception):
        pass

    def save_then_crash(path, tensors, meta):
        real_save(path, tensors, meta)
        if meta["epoch"] == len(curve) - 2:
            raise Crash

    real_save = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        NGAME.train(ds, config, out_dir=tmp_path / "b", progress=False)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    b = NGAME.train(ds, config, out_dir=tmp_path / "b", resume=True, progress=False)
    assert [e["heldout_ndcg5_unseen"] for e in b.history["stage1"]] == curve
    assert np.array_equal(a.label_embeddings, b.label_embeddings)
