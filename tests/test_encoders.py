from __future__ import annotations

import numpy as np
import pytest
import torch

from xmine.config import EncoderConfig
from xmine.encoders import build_encoder, load_encoder
from xmine.encoders.base import Encoder
from xmine.encoders.bow import BowEncoder
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


def plain_pair_gradient(encoder, points, labels, upstream_points, upstream_labels) -> torch.Tensor:
    """The token table's gradient as torch's two sparse embedding-bag calls give it, coalesced as the optimiser does."""
    encoder.zero_grad(set_to_none=True)
    a, b = Encoder.forward_pair(encoder, points, labels)
    ((a * upstream_points).sum() + (b * upstream_labels).sum()).backward()
    return encoder.embeddings.weight.grad.coalesce()


def test_the_bag_encoders_paired_training_path_gives_torchs_gradient_bit_for_bit(tiny_model_dir):
    """forward_pair's compiled backward replays torch's merge and coalesce: the same embeddings and the same table
    gradient, bitwise, for batches that share tokens, repeat a text and hold an empty one."""
    config = EncoderConfig(kind="bow", model_path=str(tiny_model_dir), head_hidden=16, max_length=16)
    encoder = build_encoder(config, TEXTS)
    rng = np.random.default_rng(0)
    words = ["syndrome", "type", "classic", "marfan", "aortic", "root", "cystic", "fibrosis", "dilatation", "danlos"]
    texts = [" ".join(rng.choice(words, rng.integers(0, 9))) for _ in range(300)]  # includes empty texts
    for n_points, n_labels in [(3, 2), (40, 40), (300, 120)]:
        points = encoder.prepare(texts[:n_points] + texts[:1])
        labels = encoder.prepare(list(rng.choice(texts, n_labels)))
        paired = encoder.forward_pair(points, labels)
        up_points, up_labels = torch.randn_like(paired[0]), torch.randn_like(paired[1])
        expected = plain_pair_gradient(encoder, points, labels, up_points, up_labels)
        plain = Encoder.forward_pair(encoder, points, labels)
        assert torch.equal(paired[0], plain[0]) and torch.equal(paired[1], plain[1])
        encoder.zero_grad(set_to_none=True)
        ((paired[0] * up_points).sum() + (paired[1] * up_labels).sum()).backward()
        grad = encoder.embeddings.weight.grad
        assert grad.is_sparse and grad._nnz() == expected._nnz()  # one row per distinct token already
        # (autograd drops the coalesced flag on the way to .grad)
        grad = grad.coalesce()
        assert torch.equal(grad.indices(), expected.indices())
        assert torch.equal(grad.values(), expected.values())


def test_stage_one_trains_bit_for_bit_as_with_torchs_embedding_bag_gradients(small_hpo, tiny_model_dir, monkeypatch):
    """A whole stage 1 (random then clustered batches, SparseAdam) through the paired path ends with exactly the
    weights the plain embedding-bag path gives."""
    from xmine.config import SiameseConfig
    from xmine.data import load_dataset
    from xmine.training.siamese import train_siamese

    ds = load_dataset(small_hpo)
    n = 1200
    config = SiameseConfig(epochs=3, batch_size=256, heldout_curve=False, seed=3)

    def train() -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        encoder = build_encoder(EncoderConfig(kind="bow", model_path=str(tiny_model_dir), head_hidden=32),
                                list(ds.train.texts) + list(ds.label_texts))
        train_siamese(encoder, encoder.prepare(ds.train.texts[:n]), encoder.prepare(ds.label_texts),
                      ds.train.labels[:n], config, progress=False)
        return encoder.state_dict()

    paired = train()
    monkeypatch.setattr(BowEncoder, "forward_pair", Encoder.forward_pair)
    plain = train()
    assert all(torch.equal(paired[k], plain[k]) for k in plain)


def test_the_retired_distinct_token_gradients_key_still_loads(caplog):
    config = EncoderConfig.from_dict({"kind": "bow", "distinct_token_gradients": True}, "encoder")
    assert config.kind == "bow" and "distinct_token_gradients" not in config.to_dict()
    assert "retired" in caplog.text


def test_the_bag_encoder_trains_through_the_embedding_bag_by_default(tiny_model_dir):
    encoder = build_encoder(EncoderConfig(kind="bow", model_path=str(tiny_model_dir), head_hidden=16), TEXTS)
    bags = encoder.prepare(TEXTS)
    encoder._bag_mean(bags).sum().backward()
    assert encoder.embeddings.weight.grad._nnz() == bags.counts.nnz  # one gradient row per (text, token) entry


def test_the_bag_encoders_token_ids_are_the_tokenizer_calls(tiny_model_dir, demo_dir):
    """The bag encoder reads token ids from the fast tokenizer's backend directly: the same ids as the tokenizer's
    own call with truncation at max_length, on real texts and on edge cases (empty, blank, accents, CJK, a
    ligature, a text far beyond max_length, one just at it). A slow tokenizer goes through its call."""
    from transformers import AutoTokenizer

    from xmine.data import load_dataset
    from xmine.encoders.bow import TokenIdReader

    ds = load_dataset(demo_dir)
    texts = list(ds.train.texts[:2000]) + list(ds.label_texts[:2000]) + [
        "", "   ", "naïve café Ærøskøbing", "日本語のテキスト", "ﬁnance ﬂow", "word " * 500, "a " * 50, "a " * 51]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=50)["input_ids"]
    assert max(map(len, expected)) == 50

    class WithoutBackend:  # a tokenizer without a Rust backend (transformers 5 builds none of those for BERT)
        is_fast = False

        def __call__(self, *args, **kwargs):
            return tokenizer(*args, **kwargs)

    for tok, fast in ((tokenizer, True), (WithoutBackend(), False)):
        reader = TokenIdReader(tok, 50)
        assert (reader.backend is not None) == fast
        assert reader(texts) == expected
    # the reader's own backend: a call through the tokenizer with other settings does not leak into it
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    reader = TokenIdReader(tokenizer, 50)
    tokenizer(texts[:3], truncation=True, max_length=4, padding="max_length")
    assert reader(texts[-3:]) == tokenizer(texts[-3:], add_special_tokens=False, truncation=True,
                                           max_length=50)["input_ids"]


def test_fitting_on_prepared_points_and_labels_equals_fitting_on_their_texts(tiny_model_dir):
    """NGAME tokenizes its points and labels once: the IDF weights and centring vector fitted on the two prepared
    parts are those fitted on the texts one after the other."""
    config = EncoderConfig(kind="bow", model_path=str(tiny_model_dir), head_hidden=16)
    points, labels = TEXTS[:3], TEXTS[3:] + ["Marfan syndrome type 2"]
    from_texts = build_encoder(config, points + labels)
    from_parts = build_encoder(config)
    from_parts.fit_inputs(from_parts.prepare(points), from_parts.prepare(labels))
    assert torch.equal(from_parts.token_weights, from_texts.token_weights)
    assert torch.equal(from_parts.center_vector, from_texts.center_vector)
    assert not torch.equal(from_parts.token_weights, build_encoder(config, points).token_weights)
    with pytest.raises(XmineError, match="at least one prepared input"):
        from_parts.fit_inputs()
    with pytest.raises(XmineError, match="0 texts"):
        from_parts.fit_inputs(from_parts.prepare([]))
