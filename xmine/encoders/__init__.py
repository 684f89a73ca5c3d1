"""Encoders: one interface (texts -> L2-normalised float32 (n, d)), three kinds selected by
`EncoderConfig.kind`: "bow", "transformer", "cached"."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from xmine.config import EncoderConfig
from xmine.encoders.base import Encoder, load_state, pick_device, read_encoder_meta
from xmine.encoders.bow import BowEncoder
from xmine.encoders.cached import CachedTransformerEncoder
from xmine.encoders.transformer import TransformerEncoder
from xmine.errors import ConfigError, ModelError, XmineError

_KINDS = {"bow": BowEncoder, "transformer": TransformerEncoder, "cached": CachedTransformerEncoder}


def build_encoder(config: EncoderConfig, fit_texts: Sequence[str] | None = None) -> Encoder:
    """A fresh pretrained encoder of the configured kind. `fit_texts` (training point and label
    texts) fits the bag-of-embeddings encoder's IDF weights and centring vector."""
    if config.kind == "bow":
        return BowEncoder.from_pretrained(config, fit_texts)
    if config.kind == "transformer":
        return TransformerEncoder.from_pretrained(config)
    return CachedTransformerEncoder.from_pretrained(config)


def load_encoder(directory: str | Path, device: str | None = None) -> Encoder:
    directory = Path(directory)
    meta = read_encoder_meta(directory)
    if meta["kind"] not in _KINDS:
        raise ModelError(f"encoder: {directory / 'encoder.json'}: unknown encoder kind {meta['kind']!r}")
    try:
        config = EncoderConfig.from_dict(meta["config"], where=f"encoder: {directory / 'encoder.json'}")
    except ConfigError as exc:
        raise ModelError(str(exc)) from None
    if device is not None:
        config = config.replace(device=device)
    try:
        encoder = _KINDS[meta["kind"]].from_saved(config, directory, meta["extra"])
    except XmineError:
        raise
    except Exception as exc:  # noqa: BLE001 - tokenizer/transformer files: JSON, vocab, safetensors errors
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelError(f"encoder: {directory}: the tokenizer or transformer files are unreadable "
                         f"({type(exc).__name__}: {first})") from None
    load_state(encoder, directory)
    return encoder.to(pick_device(config))


__all__ = ["Encoder", "BowEncoder", "TransformerEncoder", "CachedTransformerEncoder", "build_encoder",
           "load_encoder"]
