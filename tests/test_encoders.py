from __future__ import annotations

import numpy as np
import pytest
import torch

from xmine.config import EncoderConfig
from xmine.encoders import build_encoder, load_encoder
from xmine.errors import XmineError

TEXTS = ["Marfan syndrome", "Ehlers-Danlos syndrome, classic type", "cystic fibrosis", "", "aortic root dilatation"]


@pytest.fixture(params=["bow", "transformer", "cached"])
def encoder(request, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XMINE_CACHE", str(tmp_path / "cache"))
    config = EncoderConfig(kind=request.param, model_path=str(tiny_model_dir), head_hidden=16, max_length=16)
    return build_encoder(config, TEXTS)


def test_encode_gives_normalised_float32_rows(encoder):
    emb = encoder.encode(TEXTS)
    assert emb.shape == (len(TEXTS), encoder.dim) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_batched_and_single_encoding_agree(encoder):
    whole = encoder.encode(TEXTS, batch_size=64)
    ones = np.vstack([encoder.encode([t]) for t in TEXTS])
    assert np.allclose(whole, ones, atol=1e-5)


def test_save_load_identical_embeddings(encoder, tmp_path):
    encoder.save(tmp_path / "enc")
    loaded = load_encoder(tmp_path / "enc")
    assert loaded.kind == encoder.kind
    assert np.allclose(loaded.encode(TEXTS), encoder.encode(TEXTS), atol=1e-5)


def test_gradients_reach_the_trainable_parameters(encoder):
    prepared = encoder.prepare(TEXTS)
    encoder.train()
    encoder(prepared.select(np.arange(3))).sum().backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad and p.grad is not None]
    assert grads and any(float(g.abs().sum() if not g.is_sparse else g.coalesce().values().abs().sum()) > 0
                         for g in grads)


def test_cached_encoder_writes_its_feature_cache(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XMINE_CACHE", str(tmp_path / "cache"))
    config = EncoderConfig(kind="cached", model_path=str(tiny_model_dir), head_hidden=16)
    encoder = build_encoder(config)
    first = encoder.encode(TEXTS)
    assert len(list((tmp_path / "cache").glob("features-*.npy"))) == 1
    assert np.allclose(encoder.encode(TEXTS), first)  # second time from the cache
    # the frozen transformer is not a trainable parameter
    assert all(not n.startswith("backbone") for n, _ in encoder.named_parameters())


def test_bad_inputs(tiny_model_dir):
    encoder = build_encoder(EncoderConfig(kind="bow", model_path=str(tiny_model_dir)), TEXTS)
    with pytest.raises(XmineError, match="list of texts"):
        encoder.encode("a single string")
    with pytest.raises(XmineError, match="not a Hugging Face model directory"):
        build_encoder(EncoderConfig(kind="transformer", model_path=str(tiny_model_dir / "nope")))
    assert torch.is_tensor(encoder(encoder.prepare(["x"])))


@pytest.mark.parametrize("model", ["tiny", "default"])
def test_the_token_table_read_from_safetensors_is_the_models_input_embeddings(model, tiny_model_dir, tmp_path):
    from transformers import AutoModel

    from xmine.encoders.base import default_model_path
    from xmine.encoders.bow import pretrained_token_table

    path = str(tiny_model_dir) if model == "tiny" else default_model_path(EncoderConfig())
    expected = AutoModel.from_pretrained(path).get_input_embeddings().weight.detach()
    table = pretrained_token_table(path)
    assert table.dtype == torch.float32 and torch.equal(table, expected)


def test_a_token_table_under_another_name_comes_from_the_model_transformers_builds(tmp_path):
    from transformers import AutoModel, GPT2Config, GPT2Model

    from xmine.encoders.bow import pretrained_token_table

    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=500, n_embd=16, n_layer=1, n_head=2, n_positions=32)).save_pretrained(tmp_path)
    expected = AutoModel.from_pretrained(tmp_path).get_input_embeddings().weight.detach()  # GPT-2's is "wte.weight"
    assert torch.equal(pretrained_token_table(tmp_path), expected)


@pytest.mark.parametrize("sparse", [True, False])
def test_the_bag_encoders_training_path_equals_the_embedding_bag(sparse, tiny_model_dir):
    """With distinct_token_gradients, training mixes the batch's distinct token rows with a sparse matrix; inference
    uses torch's embedding bag.
    Same means, and the same table gradient, up to float summation order (one row per distinct token)."""
    config = EncoderConfig(kind="bow", model_path=str(tiny_model_dir), head_hidden=16, max_length=16,
                           distinct_token_gradients=True)
    encoder = build_encoder(config, TEXTS)
    if not sparse:
        encoder.use_dense_gradients()
    bags = encoder.prepare(TEXTS + ["syndrome syndrome syndrome type", "Marfan"])
    with torch.no_grad():
        reference = encoder._bag_mean(bags)
    mean = encoder._bag_mean(bags)
    assert mean.requires_grad and torch.allclose(mean, reference, atol=1e-6)
    assert torch.equal(reference[3], torch.zeros_like(reference[3]))  # the empty text: the zero bag, as before

    upstream = torch.randn_like(mean)
    (mean * upstream).sum().backward()
    grad = encoder.embeddings.weight.grad
    # the embedding bag's gradient of the same function
    reference_table = encoder.embeddings.weight.detach().clone().requires_grad_(True)
    counts = bags.counts
    indices = torch.from_numpy(counts.indices.astype(np.int64))
    weights = torch.from_numpy(counts.data) * encoder.token_weights[indices]
    totals = torch.from_numpy(np.add.reduceat(weights.numpy(), counts.indptr[:-1]) if counts.nnz else np.zeros(0))
    lengths = torch.from_numpy(np.diff(counts.indptr))
    summed = torch.nn.functional.embedding_bag(indices, reference_table, torch.from_numpy(counts.indptr[:-1]),
                                               mode="sum", per_sample_weights=weights)
    expected_mean = summed / torch.where(lengths > 0, totals, torch.ones_like(totals)).clamp_min(1e-6).unsqueeze(1)
    (expected_mean * upstream).sum().backward()
    if sparse:
        assert grad.is_sparse and grad._nnz() == len(np.unique(counts.indices))
        grad = grad.to_dense()
    assert torch.allclose(grad, reference_table.grad, atol=1e-6)


def test_the_bag_encoder_trains_through_the_embedding_bag_by_default(tiny_model_dir):
    encoder = build_encoder(EncoderConfig(kind="bow", model_path=str(tiny_model_dir), head_hidden=16), TEXTS)
    bags = encoder.prepare(TEXTS)
    encoder._bag_mean(bags).sum().backward()
    assert encoder.embeddings.weight.grad._nnz() == bags.counts.nnz  # one gradient row per (text, token) entry
