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
