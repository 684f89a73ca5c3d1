"""Changing a trained model's label set without retraining: adding labels by text, disabling and enabling labels.

NGAME can take a new label because a label is a text embedded by the same encoder as the points. Adding labels
(`add_labels(model, texts, ids)`, also `model.add_labels`):

1. the texts are embedded with the model's encoder and added to the label-embedding index (every faiss index
   kind xmine builds accepts added vectors; IVF ones assign them to their existing lists);
2. each new label gets a classifier as stage 2 starts one: its normalised embedding as the dense vector, scaled
   to the trained vectors' median norm so that the classifier index compares like with like, the trained
   labels' median bias, and no sparse weights (the hashed table's buckets belong to trained labels); the vector
   is added to the classifier index;
3. the sparse ranker and the TF-IDF neighbours get an empty column (no training point has the label);
4. the fusion gets a propensity for the label: the trained labels' median.

Labels without training data have no neighbour votes and no ranker weights, and a learned fusion reads
"no vote, rejected by the ranker" as evidence against a label: scored as they are, new labels would rank below
most trained candidates. With `NewLabelsConfig.scores="rank"` (default), the fusion scores the trained
candidates and each new label is placed among them where its encoder score ranks it; with "impute", the sources
that cannot score a new label (classifier, neighbours, ranker) take, per point, the scores of the trained
candidate whose encoder score is nearest to the new label's, then the fusion runs; "as_is" keeps the raw scores
(all three measured in bench/new_labels.py).

Disabled labels stay in the model but are removed from every prediction (from the candidates before fusion and
from encoder-only top-k). Both operations are reversible and stored in the model directory (labels/state.json);
config.json reports the counts.

Thread safety: `add_labels` builds every new component beside the old ones and swaps them in under the write
side of a readers-writer lock; `NGAME.predict` holds the read side for a whole call. A prediction therefore
sees the model before or after a change, never a mix.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp
import torch

from xmine.config import NewLabelsConfig
from xmine.data.text import read_text_lines
from xmine.errors import DataFormatError, ModelError, XmineError
from xmine.utils import atomic_write_text

STATE_DIR = "labels"
STATE_FILE = "state.json"
IMPUTED_SOURCES = ("classifier", "knn", "ranker")  # sources that need training data to score a label

F = TypeVar("F", bound=Callable[..., Any])


# ----------------------------------------------------------------------------------------------- locking
class ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation). Re-entrant for
    readers within a thread, so a prediction that calls another prediction does not deadlock."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer: int | None = None
        self._writers_waiting = 0
        self._local = threading.local()

    @contextmanager
    def read(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        if depth == 0 and self._writer != threading.get_ident():
            with self._cond:
                while self._writer is not None or self._writers_waiting:
                    self._cond.wait()
                self._readers += 1
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0 and self._writer != threading.get_ident():
                with self._cond:
                    self._readers -= 1
                    if self._readers == 0:
                        self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        if getattr(self._local, "depth", 0):
            raise XmineError("cannot change the label set from inside a prediction")
        with self._cond:
            self._writers_waiting += 1
            while self._writer is not None or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = threading.get_ident()
        try:
            yield
        finally:
            with self._cond:
                self._writer = None
                self._cond.notify_all()


def model_lock(model: Any) -> ReadWriteLock:
    """The model's label-state lock (created on first use; dict.setdefault is atomic)."""
    return model.__dict__.setdefault("_label_lock", ReadWriteLock())


def _update_lock(model: Any) -> threading.Lock:
    """Serialises label-set changes (the slow build happens outside the write lock, so two changes must not
    build from the same old state)."""
    return model.__dict__.setdefault("_label_update_lock", threading.Lock())


def reads_labels(method: F) -> F:
    """Decorator: the method runs under the read side of the model's label lock."""

    @wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with model_lock(self).read():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------- state
@dataclass
class LabelState:
    """What changed in a model's label set after training. Labels 0..n_trained-1 were trained; the added ones
    follow in the order they were added."""

    n_trained: int
    added_texts: list[str] = field(default_factory=list)
    added_ids: list[str | None] = field(default_factory=list)
    disabled: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # sorted label ids
    config: NewLabelsConfig = field(default_factory=NewLabelsConfig)

    @property
    def n_added(self) -> int:
        return len(self.added_texts)

    @property
    def n_labels(self) -> int:
        return self.n_trained + self.n_added

    def disabled_mask(self) -> np.ndarray | None:
        if not len(self.disabled):
            return None
        mask = np.zeros(self.n_labels, dtype=bool)
        mask[self.disabled] = True
        return mask

    def summary(self) -> dict[str, Any]:
        """The entries config.json reports."""
        return {"labels_trained": self.n_trained, "labels_added_after_training": self.n_added,
                "labels_disabled": int(len(self.disabled)), "new_label_scores": self.config.scores}

    def to_dict(self) -> dict[str, Any]:
        return {"n_trained": self.n_trained, "added_texts": self.added_texts, "added_ids": self.added_ids,
                "disabled": [int(i) for i in self.disabled], "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path, n_labels: int) -> LabelState:
        try:
            state = cls(int(data["n_trained"]), [str(t) for t in data["added_texts"]],
                        [None if i is None else str(i) for i in data["added_ids"]],
                        np.asarray(data["disabled"], dtype=np.int64), NewLabelsConfig.from_dict(data["config"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{path}: malformed label state ({type(exc).__name__}: {exc})") from None
        if state.n_labels != n_labels or len(state.added_ids) != state.n_added:
            raise ModelError(f"{path}: {state.n_trained} trained + {state.n_added} added labels, but the model has "
                             f"{n_labels}")
        if len(state.disabled) and (state.disabled.min() < 0 or state.disabled.max() >= n_labels):
            raise ModelError(f"{path}: a disabled label id is outside 0..{n_labels - 1}")
        return state


def label_state(model: Any) -> LabelState:
    """The model's label state (a model never changed after training has an empty one)."""
    state = model.__dict__.get("label_state")
    if state is None:
        state = model.__dict__.setdefault("label_state", LabelState(model.n_labels))
    return state


def save_label_state(model: Any, directory: str | Path) -> dict[str, Any]:
    """Write labels/state.json when the label set changed; returns the config.json entries."""
    state = model.__dict__.get("label_state")
    if state is None or (not state.n_added and not len(state.disabled)):
        path = Path(directory) / STATE_DIR / STATE_FILE
        if path.exists():  # saved over a directory whose model had changes: they are gone now
            path.unlink()
        return {}
    atomic_write_text(Path(directory) / STATE_DIR / STATE_FILE, json.dumps(state.to_dict(), indent=1) + "\n")
    return state.summary()


def load_label_state(model: Any, directory: str | Path) -> None:
    path = Path(directory) / STATE_DIR / STATE_FILE
    if not path.exists():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: unreadable label state ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: the label state is not a JSON object")
    state = LabelState.from_dict(data, path, model.n_labels)
    model.label_state = state
    classifiers = getattr(model, "classifiers", None)
    if classifiers is not None:
        classifiers.sparse_trained_labels = state.n_trained


# ----------------------------------------------------------------------------------------- resolving ids
def _id_lookup(model: Any) -> dict[str, int]:
    """String ids of the model's labels: the ids given to labels when they were added."""
    state = label_state(model)
    return {lid: state.n_trained + i for i, lid in enumerate(state.added_ids) if lid is not None}


def resolve_labels(model: Any, labels: Sequence[int | str], source: str | None = None) -> np.ndarray:
    """Label indices of `labels`: ints are indices; strings are label ids, or indices written as digits when no
    label has that id. `source` names the file the strings came from (errors then give its line)."""
    lookup = _id_lookup(model) if any(isinstance(x, str) for x in labels) else {}
    out = np.empty(len(labels), dtype=np.int64)
    for line, item in enumerate(labels, start=1):
        if isinstance(item, str):
            key = item.strip()
            if not key:
                _bad(source, line, "empty line (expected a label id or index)")
            if key in lookup:
                out[line - 1] = lookup[key]
                continue
            if not key.lstrip("-").isdigit():
                _bad(source, line, f"unknown label id {key!r}")
            item = int(key)
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            _bad(source, line, f"a label must be an int index or a str id, got {type(item).__name__}")
        if not 0 <= int(item) < model.n_labels:
            _bad(source, line, f"label index {int(item)} is outside 0..{model.n_labels - 1}")
        out[line - 1] = int(item)
    return out


def _bad(source: str | None, line: int, problem: str) -> None:
    if source is not None:
        raise DataFormatError(source, problem, line)
    raise XmineError(f"label {line}: {problem}")


# --------------------------------------------------------------------------------------- disable/enable
def disable_labels(model: Any, labels: Sequence[int | str]) -> np.ndarray:
    """Stop `labels` (indices or ids) from being predicted; returns the sorted disabled indices."""
    return _set_disabled(model, resolve_labels(model, labels), disable=True)


def enable_labels(model: Any, labels: Sequence[int | str]) -> np.ndarray:
    """Undo `disable_labels` for `labels`; returns the sorted indices that remain disabled."""
    return _set_disabled(model, resolve_labels(model, labels), disable=False)


def _set_disabled(model: Any, ids: np.ndarray, disable: bool) -> np.ndarray:
    with _update_lock(model):
        state = label_state(model)
        disabled = np.union1d(state.disabled, ids) if disable else np.setdiff1d(state.disabled, ids)
        new_state = copy.copy(state)
        new_state.disabled = disabled.astype(np.int64)
        with model_lock(model).write():
            model.label_state = new_state
        return new_state.disabled


# --------------------------------------------------------------------------------------------- adding
def check_texts(texts: Sequence[str], ids: Sequence[str] | None, model: Any) -> tuple[list[str], list[str | None]]:
    if isinstance(texts, str):
        raise XmineError("add_labels takes a list of label texts, got one string")
    texts = list(texts)
    if not texts:
        raise XmineError("no label texts to add")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise XmineError(f"label text {i} is {'empty' if isinstance(text, str) else type(text).__name__}: "
                             "every new label needs a text")
    if ids is None:
        return texts, [None] * len(texts)
    ids = [None if i is None else str(i) for i in ids]
    if len(ids) != len(texts):
        raise XmineError(f"{len(ids)} ids for {len(texts)} label texts")
    known = _id_lookup(model)
    seen: set[str] = set()
    for i, lid in enumerate(ids):
        if lid is None:
            continue
        if not lid.strip() or lid != lid.strip():
            raise XmineError(f"label id {i} ({lid!r}) is empty or has surrounding spaces")
        if lid in known or lid in seen:
            raise XmineError(f"label id {lid!r} is {'already in the model' if lid in known else 'given twice'}")
        seen.add(lid)
    return texts, ids


def add_labels(model: Any, texts: Sequence[str], ids: Sequence[str] | None = None) -> np.ndarray:
    """Add labels by text to a trained NGAME model; returns their label indices (after the existing ones)."""
    from xmine.models.ngame import NGAME

    if not isinstance(model, NGAME):
        raise XmineError(f"adding labels needs a model that embeds label texts (NGAME); a {model.method!r} model "
                         "scores labels with vectors learnt from training points only: retrain it with the new "
                         "labels")
    texts, ids = check_texts(texts, ids, model)
    with _update_lock(model):
        state = label_state(model)
        new = _extended_components(model, texts)
        new_state = copy.copy(state)
        new_state.added_texts = state.added_texts + texts
        new_state.added_ids = state.added_ids + ids
        with model_lock(model).write():
            for name, value in new.items():
                setattr(model, name, value)
            model.label_state = new_state
        return np.arange(state.n_labels, new_state.n_labels)


def _extended_components(model: Any, texts: list[str]) -> dict[str, Any]:
    """Every component of `model` with the labels of `texts` appended, built beside the current ones."""
    n_old = model.n_labels
    n_new = n_old + len(texts)
    emb = np.asarray(model.encoder.encode(texts), dtype=np.float32)
    out: dict[str, Any] = {
        "n_labels": n_new,
        "label_embeddings": np.concatenate([np.asarray(model.label_embeddings, dtype=np.float32), emb]),
        "label_index": model.label_index.with_added(emb),
        # labels.jsonl of the model directory (predict_labels, serve) lists the new labels' texts too
        "label_texts": None if model.label_texts is None else list(model.label_texts) + texts,
    }
    if model.classifiers is not None:
        out["classifiers"], vectors = _extended_classifiers(model.classifiers, emb, label_state(model).n_trained)
        if model.classifier_index is not None and vectors is not None:
            out["classifier_index"] = model.classifier_index.with_added(vectors)
    if model.knn is not None:
        out["knn"] = _extended_knn(model.knn, n_new)
    if model.ranker is not None:
        out["ranker"] = model.ranker.with_labels(n_new)
    if model.fusion is not None:
        fusion = copy.copy(model.fusion)
        trained = model.fusion.inv_propensity[:label_state(model).n_trained]
        fusion.inv_propensity = np.concatenate([model.fusion.inv_propensity,
                                                np.full(len(texts), np.median(trained))])
        out["fusion"] = fusion
    return out


def _extended_classifiers(old: Any, emb: np.ndarray, n_trained: int) -> tuple[Any, np.ndarray | None]:
    from xmine.classifiers import LabelClassifiers

    n_add = emb.shape[0]
    new = LabelClassifiers(old.n_labels + n_add, old.dim_dense, old.features, old.hash_buckets,
                           old.max_sparse_features)
    if old.sparse_table is not None:
        # shared, not copied: never changed after training, and its buckets are keyed by trained labels only
        new.sparse_table = old.sparse_table
    vectors = None
    with torch.no_grad():
        trained_bias = old.bias[:n_trained]
        new.bias.copy_(torch.cat([old.bias, torch.full((n_add,), float(trained_bias.median()))]))
        if old.weight is not None:
            unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            scale = float(old.weight[:n_trained].norm(dim=1).median())
            vectors = (unit * scale).astype(np.float32)
            new.weight.copy_(torch.cat([old.weight, torch.from_numpy(vectors)]))
    new.sparse_trained_labels = n_trained
    new.train(old.training)
    return new, vectors


def _extended_knn(old: Any, n_labels: int) -> Any:
    """The neighbour model with empty columns for the new labels (the arrays are shared, not copied)."""
    knn = copy.copy(old)
    y = old.train_labels
    knn.train_labels = sp.csr_matrix((y.data, y.indices, y.indptr), shape=(y.shape[0], n_labels))
    knn.n_labels = n_labels
    return knn


# --------------------------------------------------------------------------------------------- predicting
def prepare_candidates(model: Any, candidates: np.ndarray, scores: dict[str, np.ndarray]
                       ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Before fusion: disabled labels become padding (-1), and new labels' scores from sources that need
    training data are imputed (NewLabelsConfig.scores)."""
    state = model.__dict__.get("label_state")
    if state is None:
        return candidates, scores
    mask = state.disabled_mask()
    if mask is not None:
        candidates = np.where((candidates >= 0) & mask[np.maximum(candidates, 0)], -1, candidates)
    if state.n_added and state.config.scores == "impute" and "encoder" in scores:
        scores = impute_new_label_scores(candidates, scores, state.n_trained)
    return candidates, scores


def impute_new_label_scores(candidates: np.ndarray, scores: dict[str, np.ndarray], n_trained: int
                            ) -> dict[str, np.ndarray]:
    """For each new-label candidate (id >= n_trained), the classifier, neighbour and ranker scores of the trained
    candidate of the same point whose encoder score is nearest to its own. Points without a trained candidate
    keep the raw scores. Vectorised: rows are laid end to end on one axis (offset by the score span) so that one
    searchsorted finds every nearest neighbour."""
    new = candidates >= n_trained
    if not new.any():
        return scores
    trained = (candidates >= 0) & ~new
    enc = scores["encoder"].astype(np.float64)
    valid = candidates >= 0
    lo, hi = float(enc[valid].min()), float(enc[valid].max())
    span = hi - lo + 1.0
    rows = np.arange(candidates.shape[0], dtype=np.float64)[:, None]
    keyed = (enc - lo) + rows * span  # rows laid end to end: one sorted axis
    t_keys = keyed[trained]
    order = np.argsort(t_keys, kind="stable")
    t_keys = t_keys[order]
    n_keys = keyed[new]
    new_rows = np.nonzero(new)[0].astype(np.float64)
    start = np.searchsorted(t_keys, new_rows * span)
    stop = np.searchsorted(t_keys, (new_rows + 1) * span)
    has = stop > start
    pos = np.searchsorted(t_keys, n_keys)
    left = np.clip(pos - 1, start, np.maximum(stop - 1, start))
    right = np.clip(pos, start, np.maximum(stop - 1, start))
    if len(t_keys):
        left, right = np.minimum(left, len(t_keys) - 1), np.minimum(right, len(t_keys) - 1)
        nearest = np.where(np.abs(t_keys[right] - n_keys) < np.abs(t_keys[left] - n_keys), right, left)
    else:
        nearest = np.zeros(len(n_keys), dtype=np.int64)
    out = dict(scores)
    for name in IMPUTED_SOURCES:
        if name not in scores:
            continue
        values = scores[name].copy()
        source = values[trained][order]
        values[new] = np.where(has, source[nearest] if len(source) else 0.0, values[new])
        out[name] = values
    return out


def fuse(model: Any, scores: dict[str, np.ndarray], candidates: np.ndarray) -> np.ndarray:
    """The fusion's scores, with new labels placed by encoder rank when NewLabelsConfig.scores is "rank"."""
    fused = model.fusion.combine(scores, candidates)
    state = model.__dict__.get("label_state")
    if state is None or not state.n_added or state.config.scores != "rank":
        return fused
    return rank_new_labels(candidates, fused, scores["encoder"], state.n_trained, state.config.rank_margin)


def _row_keys(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """`values` shifted so that row i's lie in [i * span, (i + 1) * span): all rows sorted on one axis."""
    lo, hi = float(values[valid].min()), float(values[valid].max())
    span = hi - lo + 1.0
    return (values.astype(np.float64) - lo + np.arange(values.shape[0], dtype=np.float64)[:, None] * span) / span


def rank_new_labels(candidates: np.ndarray, fused: np.ndarray, encoder: np.ndarray, n_trained: int,
                    margin: float = 0.0) -> np.ndarray:
    """Fused scores where each new label (id >= n_trained) takes the place among its point's trained candidates
    that its encoder score gives it: with r trained candidates above it by encoder score (less `margin`), it is
    scored just above the trained candidate at fused rank r (below the last one when r is all of them)."""
    new = candidates >= n_trained
    trained = (candidates >= 0) & ~new
    if not new.any() or not trained.any():
        return fused
    keys = _row_keys(np.where(new, encoder - np.float32(margin), encoder), candidates >= 0)
    t_keys = np.sort(keys[trained])
    rows = np.nonzero(new)[0]
    n_tr = trained.sum(1)
    # trained candidates of the row with an encoder score above the new label's
    above = np.searchsorted(t_keys, rows + 1.0) - np.searchsorted(t_keys, keys[new], side="right")
    ranked = -np.sort(-np.where(trained, fused, -np.inf), axis=1)  # trained fused scores, best first
    out = fused.astype(np.float64, copy=True)
    has = n_tr[rows] > 0
    at = np.minimum(above, np.maximum(n_tr[rows] - 1, 0))
    ok = has & np.isfinite(ranked[rows, at])
    anchor = np.where(ok, ranked[rows, at], 0.0)
    step = 1e-6 * (1.0 + np.abs(anchor))
    # a tie-break by encoder score keeps several new labels at one place in encoder order
    value = np.where(above < n_tr[rows], anchor + step, anchor - step) + 1e-9 * encoder[new]
    out[new] = np.where(ok, value, out[new])
    return out


def top_k_enabled(model: Any, emb: np.ndarray, k: int, **search: Any) -> tuple[np.ndarray, np.ndarray]:
    """The label index's top-k with disabled labels left out (searches k + the number disabled); `search`:
    LabelIndex.search's per-call settings (ef_search, nprobe)."""
    state = model.__dict__.get("label_state")
    n_disabled = 0 if state is None else len(state.disabled)
    scores, ids = model.label_index.search(emb, min(k + n_disabled, model.n_labels), **search)
    if n_disabled:
        mask = state.disabled_mask()
        drop = (ids >= 0) & mask[np.maximum(ids, 0)]
        keep_first = np.argsort(drop, axis=1, kind="stable")
        scores = np.take_along_axis(np.where(drop, -np.inf, scores), keep_first, axis=1)
        ids = np.take_along_axis(np.where(drop, -1, ids), keep_first, axis=1)
    return scores[:, :k], ids[:, :k]


# ------------------------------------------------------------------------------------------- model dirs
def update_model_dir(model: Any, directory: str | Path) -> None:
    """Save `model` over `directory`: `model.save` writes a sibling directory and swaps it in by renames, so the
    directory holds the old model or the new one, whole."""
    model.save(directory)


def read_label_file(path: str | Path) -> tuple[list[str], list[str | None]]:
    """Label texts from a file: one label per line, either `text` or `id<TAB>text` (all lines the same form).
    Blank lines are errors (a label needs a text)."""
    path = Path(path)
    lines = read_text_lines(path)
    if not lines:
        raise DataFormatError(path, "no labels (the file is empty)")
    with_ids = "\t" in lines[0]
    texts: list[str] = []
    ids: list[str | None] = []
    for number, line in enumerate(lines, start=1):
        parts = line.split("\t")
        if with_ids != (len(parts) > 1):
            raise DataFormatError(path, "mixes `id<TAB>text` lines with plain text lines (line 1 "
                                  f"{'has' if with_ids else 'has no'} tab)", number)
        if len(parts) > 2:
            raise DataFormatError(path, f"{len(parts) - 1} tabs; expected `id<TAB>text`", number)
        text = parts[-1].strip()
        if not text:
            raise DataFormatError(path, "empty label text", number)
        if with_ids:
            if not parts[0].strip():
                raise DataFormatError(path, "empty label id", number)
            if parts[0].strip() in ids:
                raise DataFormatError(path, f"label id {parts[0].strip()!r} given twice", number)
            ids.append(parts[0].strip())
        else:
            ids.append(None)
        texts.append(text)
    return texts, ids


def read_id_file(path: str | Path) -> list[str]:
    """Label ids (or indices), one per line; blank lines are skipped."""
    return read_text_lines(path)


def labels_api(cls: type) -> type:
    """Class decorator: `model.add_labels`, `model.disable_labels`, `model.enable_labels` and
    `model.label_state` as methods/properties of a model class."""
    cls.add_labels = add_labels
    cls.disable_labels = disable_labels
    cls.enable_labels = enable_labels
    return cls
