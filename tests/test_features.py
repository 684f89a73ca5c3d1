"""TF-IDF featurizer: the full-text channel, the lead channel (first words of each text) and their persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import shared_dataset

from xmine.config import LEAD_AUTO_MIN_RATIO, TfidfConfig
from xmine.errors import ConfigError, ModelError
from xmine.features import TfidfFeaturizer, lead_texts


def _texts(n: int, body_words: int) -> list[str]:
    """'name: summary' titles followed by a body of `body_words` words shared across many texts."""
    rng = np.random.default_rng(0)
    body_vocab = [f"body{j}" for j in range(60)]
    return [f"pkg{i % 37}: tool for topic{i % 11} " + " ".join(rng.choice(body_vocab, body_words)) for i in range(n)]


def test_lead_texts_takes_the_first_words() -> None:
    assert lead_texts(["a  b\tc d e", "one", ""], 3) == ["a b c", "one", ""]


def test_auto_adds_the_lead_channel_for_long_texts_only() -> None:
    n = TfidfConfig().lead_words
    long_texts = _texts(300, body_words=LEAD_AUTO_MIN_RATIO * n + 5)
    short_texts = _texts(300, body_words=2)
    assert TfidfFeaturizer().fit(long_texts).lead_words == n
    assert TfidfFeaturizer().fit(short_texts).lead_words == 0
    assert TfidfFeaturizer(TfidfConfig(lead_channel="on")).fit(short_texts).lead_words == n
    assert TfidfFeaturizer(TfidfConfig(lead_channel="off")).fit(long_texts).lead_words == 0


def test_lead_channel_is_the_tfidf_of_the_first_words_beside_the_full_text() -> None:
    texts = _texts(300, body_words=40)
    with_lead = TfidfFeaturizer(TfidfConfig(lead_channel="on", lead_words=4)).fit(texts)
    full_only = TfidfFeaturizer(TfidfConfig(lead_channel="off")).fit(texts)
    lead_only = TfidfFeaturizer(TfidfConfig(lead_channel="off")).fit(lead_texts(texts, 4))
    x = with_lead.transform(texts)
    f = full_only.n_features
    assert with_lead.n_features == f + lead_only.n_features == x.shape[1]
    np.testing.assert_allclose(x[:, :f].toarray(), full_only.transform(texts).toarray(), atol=1e-6)
    np.testing.assert_allclose(x[:, f:].toarray(), lead_only.transform(lead_texts(texts, 4)).toarray(), atol=1e-6)
    # each channel is L2-normalised on its own: the title words are not diluted by the body
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    np.testing.assert_allclose(norms, np.sqrt(2), rtol=1e-5)
    # a body word's weight is smaller than the same text's title word in the lead channel
    row = x[0].toarray().ravel()
    assert row[f:].max() > row[:f].max()


def test_save_load_keeps_the_lead_channel(tmp_path: Path) -> None:
    texts = _texts(200, body_words=40)
    feat = TfidfFeaturizer(TfidfConfig(lead_channel="on")).fit(texts)
    feat.save(tmp_path / "tfidf")
    loaded = TfidfFeaturizer.load(tmp_path / "tfidf")
    assert loaded.lead_words == feat.lead_words
    assert (loaded.transform(texts) != feat.transform(texts)).nnz == 0
    (tmp_path / "tfidf" / "idf_lead.npy").unlink()
    with pytest.raises(ModelError, match="idf_lead.npy: file missing"):
        TfidfFeaturizer.load(tmp_path / "tfidf")


def test_featurizer_saved_without_lead_field_is_refused(tmp_path: Path) -> None:
    """Featurizers saved before the lead channel existed have no 'lead_words': no silent default."""
    import json

    texts = _texts(200, body_words=40)
    TfidfFeaturizer(TfidfConfig(lead_channel="off")).fit(texts).save(tmp_path)
    meta = json.loads((tmp_path / "tfidf.json").read_text())
    del meta["lead_words"]
    (tmp_path / "tfidf.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="tfidf.json: field 'lead_words' missing"):
        TfidfFeaturizer.load(tmp_path)


def test_given_features_have_no_lead_channel() -> None:
    x = sp.random(50, 30, density=0.2, format="csr", random_state=0, dtype=np.float32)
    feat = TfidfFeaturizer(TfidfConfig(lead_channel="on")).fit(None, x)
    assert feat.lead_words == 0 and feat.transform(None, x).shape == (50, 30)


def test_lead_words_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="lead_words"):
        TfidfConfig(lead_words=0).validate()


def test_auto_lead_channel_on_real_texts() -> None:
    """debian full texts ('name: summary' + long description, median 51 words) get the channel; titles do not."""
    from xmine.data import load_dataset

    full = load_dataset(shared_dataset("debian-related")).train.texts[:3000]
    titles = load_dataset(shared_dataset("debian-related"), text_variant="title").train.texts[:3000]
    assert TfidfFeaturizer().fit(full).lead_words == TfidfConfig().lead_words
    assert TfidfFeaturizer().fit(titles).lead_words == 0


@pytest.mark.parametrize("sublinear_tf", [True, False])
def test_transform_equals_scikit_learns_tfidf_then_l2(sublinear_tf: bool) -> None:
    """The weighting done on the count arrays equals TfidfVectorizer.transform followed by L2 normalisation, on
    real texts (debian full texts: both channels), with texts that share no word with the vocabulary (zero rows)."""
    from sklearn.preprocessing import normalize

    from xmine.data import load_dataset

    ds = load_dataset(shared_dataset("debian-related"))
    config = TfidfConfig(sublinear_tf=sublinear_tf, lead_channel="on")
    feat = TfidfFeaturizer(config).fit(ds.train.texts[:2000])
    texts = ds.test.texts[:500] + ["", "zzqx qqzx", "the the the"]
    got = feat.transform(texts)
    full = normalize(feat._vectorizer.transform(texts), norm="l2")
    lead = normalize(feat._lead_vectorizer.transform(lead_texts(texts, feat.lead_words)), norm="l2")
    expected = sp.hstack([full, lead], format="csr")
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert got.nnz == expected.nnz and got.nnz > 0
    np.testing.assert_allclose(got.toarray(), expected.toarray(), rtol=1e-5, atol=1e-7)
    assert got[500].nnz == 0 and got[501].nnz == 0  # no known word: an all-zero row, not NaN
