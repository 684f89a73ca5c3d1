"""The model interface and the self-describing model directory.

A model directory holds `config.json` ({"method", "xmine_version", "n_labels", "config"}), one subfolder
per component, and `manifest.json`: the model-format version and the size and SHA-256 of every file.
`load_model(dir)` needs nothing else. When the training data named its labels, `labels.jsonl` holds
label i's text as a JSON string on line i+1.

A directory is whole or absent: `save` fills a hidden sibling directory, writes the manifest last, and
swaps it in with renames (old -> backup, new -> final, backup deleted). Loading verifies the manifest, so
a damaged, partly copied or mixed directory is refused rather than loaded. When a save was killed between
its two renames, the final directory is missing and a complete sibling is loaded instead (with a warning);
the next save removes every leftover.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from xmine.config import PredictConfig
from xmine.errors import ModelError, XmineError
from xmine.safeio import json_field, load_json, model_error
from xmine.utils import _fsync_dir, atomic_write_text

log = logging.getLogger(__name__)

MODEL_CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
# 1: directories without a manifest (and the loaders' back-compat shims); 2: manifest + validated loading
MODEL_FORMAT_VERSION = 2
# entries of an existing model directory that a save over it keeps: the training checkpoints
KEPT_ON_SAVE = ("checkpoints",)
_TMP_TAG, _OLD_TAG = "xmine-tmp", "xmine-old"
LABEL_TEXTS_FILE = "labels.jsonl"
# one predicted label: (label id, label text or None when the model has no label texts, score)
LabelPrediction = tuple[int, "str | None", float]
_REGISTRY: dict[str, type[XMCModel]] = {}


@dataclass
class Inputs:
    """What a model predicts from: point texts and/or given sparse features."""

    texts: list[str] | None = None
    features: sp.csr_matrix | None = None

    @classmethod
    def of(cls, data: Any) -> Inputs:
        if isinstance(data, Inputs):
            return data
        if hasattr(data, "texts") and hasattr(data, "features"):  # a data.Split
            return cls(texts=data.texts, features=data.features)
        if isinstance(data, str):
            return cls(texts=[data])
        if isinstance(data, Sequence):
            return cls(texts=list(data))
        if sp.issparse(data):
            return cls(features=sp.csr_matrix(data))
        raise XmineError(f"cannot predict from a {type(data).__name__}: pass texts, a sparse matrix or a Split")

    @property
    def n_points(self) -> int:
        if self.texts is not None:
            return len(self.texts)
        if self.features is not None:
            return self.features.shape[0]
        return 0

    def select(self, rows: Sequence[int] | slice) -> Inputs:
        texts = None
        if self.texts is not None:
            texts = self.texts[rows] if isinstance(rows, slice) else [self.texts[i] for i in rows]
        features = self.features[rows] if self.features is not None else None
        return Inputs(texts=texts, features=features)


class XMCModel:
    """Base class of xmine's models: every method trains and predicts through the same two calls, so that the
    CLI, the server and the benchmarks never branch on a model's type.

      Method.train(dataset, config, out_dir=, resume=, init_from=, progress=, keep_checkpoints=) -> model
      model.predict(inputs, k, config=PredictConfig, progress=) -> (n, L) CSR scores, at most k per row

    A method refuses (XmineError) what it cannot do rather than ignoring it: `init_from` outside NGAME, a
    prediction setting outside its `predict_settings`. Subclasses list their parts in `_components` and read
    them back in `_load_components`; `save` and `load` here make the directory atomic and verified for all."""

    method: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # what training does, in a sentence or two (`xmine demo` says it)
    data_parallel: ClassVar[bool] = False  # whether `train` runs data-parallel under torchrun
    predict_settings: ClassVar[frozenset[str]] = frozenset()  # the PredictConfig fields its `predict` honours
    n_labels: int
    label_texts: list[str] | None = None  # label i's text (name), stored in the model directory
    config: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.method:
            _REGISTRY[cls.method] = cls

    @classmethod
    def train(cls, dataset: Any, config: Any = None, out_dir: str | Path | None = None, resume: bool = False,
              init_from: str | Path | None = None, progress: bool = True, keep_checkpoints: bool = False
              ) -> XMCModel:  # pragma: no cover - interface
        """Train on `dataset.train` with `config` (the method's config dataclass; None: its defaults). With
        `out_dir`, training checkpoints go to out_dir/checkpoints, `resume` continues from them, and they are
        deleted once training has finished unless `keep_checkpoints`. `init_from`: a saved model directory to
        start from (NGAME stage 2). The model is returned, not saved: `model.save(out_dir)`."""
        raise NotImplementedError

    def predict(self, inputs: Any, k: int = 100, config: PredictConfig | None = None, progress: bool = False
                ) -> sp.csr_matrix:  # pragma: no cover - interface
        """Top-k labels of each input (texts, a sparse feature matrix or a data Split) as an (n, n_labels) CSR
        score matrix; `config`: prediction-time settings (see `predict_settings`)."""
        raise NotImplementedError

    @classmethod
    def check_train_options(cls, init_from: str | Path | None = None) -> None:
        """Refuse the training options this method has no use for."""
        if init_from is not None:
            raise XmineError(f"init_from (--init-from) applies to NGAME's stage 2; a {cls.method!r} model trains "
                             "from scratch")

    def check_predict_config(self, config: PredictConfig | None) -> None:
        """Refuse prediction settings that this method does not have, naming them (a silently ignored setting
        would give other predictions than asked for)."""
        if config is None:
            return
        default = PredictConfig()
        foreign = sorted(f.name for f in fields(config)
                         if f.name not in self.predict_settings and getattr(config, f.name) != getattr(default, f.name))
        if foreign:
            own = ", ".join(sorted(self.predict_settings)) or "none"
            raise XmineError(f"prediction setting(s) {', '.join(foreign)} do not apply to {self.method!r} models "
                             f"(theirs: {own}); --scores and --predict-set are NGAME's")

    # ------------------------------------------------------------------ storage
    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write the model to `directory` atomically: afterwards it holds this model, and a crash at any
        moment leaves the old model (or nothing) there. `extra` entries go into config.json."""
        save_model_dir(directory, lambda tmp: self._write_components(tmp, extra))

    @classmethod
    def load(cls, directory: str | Path, **options: Any) -> XMCModel:
        directory = open_model_dir(directory)
        meta = read_model_config(directory)
        if meta["method"] != cls.method:
            raise ModelError(f"{directory}: holds a {meta.get('method')!r} model, not {cls.method!r}; "
                             "use xmine.models.load_model")
        model = cls._load_components(directory, meta, **options)
        model.load_label_texts(directory)
        return model

    def _components(self) -> list[tuple[str, Callable[[Path], None]]]:  # pragma: no cover - interface
        """(name, write) per part: `write(directory / name)` writes that file or subdirectory."""
        raise NotImplementedError

    def _model_meta(self) -> dict[str, Any]:
        """Entries of config.json besides method, version, labels and config."""
        return {}

    @classmethod
    def _load_components(cls, directory: Path, meta: dict[str, Any], **options: Any
                         ) -> XMCModel:  # pragma: no cover - interface
        raise NotImplementedError

    def _write_components(self, directory: Path, extra: dict[str, Any] | None = None) -> None:
        """Every part and config.json into `directory` (also used for a model nested in another)."""
        directory.mkdir(parents=True, exist_ok=True)
        for name, write in self._components():
            write(directory / name)
            _test_save_step(name)
        if self.label_texts is not None:
            write_label_texts(directory, self.label_texts, self.n_labels)
            _test_save_step(LABEL_TEXTS_FILE)
        write_model_config(directory, self.method, self.config.to_dict(), self.n_labels,
                           extra={**self._model_meta(), **(extra or {})})

    @classmethod
    def _read_components(cls, directory: Path, **options: Any) -> XMCModel:
        """A model written by `_write_components` inside another model's (already verified) directory; its
        errors name the subdirectory as the component."""
        meta = read_model_config(directory, directory.name)
        if meta["method"] != cls.method:
            raise ModelError(f"{directory.name}: {directory / MODEL_CONFIG_FILE}: holds a {meta['method']!r} model, "
                             f"expected {cls.method!r}")
        return cls._load_components(directory, meta, component=directory.name, **options)

    def predict_labels(self, texts: str | Sequence[str], k: int = 10, **predict_options: Any
                       ) -> list[list[LabelPrediction]]:
        """Per text, its top-k labels as (label id, label text, score), best first (ties: lower id first).
        Label texts are None when the model was trained without them. `predict_options` go to `predict`
        (e.g. NGAME's `scores=`); what a score means depends on the method (see `score_scale`)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise XmineError("predict_labels expects a list of strings")
        if not texts:
            return []
        if k < 1:
            raise XmineError(f"k must be >= 1, got {k}")
        pred = sp.csr_matrix(self.predict(texts, k=min(k, self.n_labels), **predict_options))
        return ranked_labels(pred, self.label_texts)

    def score_scale(self) -> str:
        """What the scores of `predict` / `predict_labels` mean, in one sentence."""
        return "higher is better; scores are comparable within one model only"

    def load_label_texts(self, directory: str | Path) -> None:
        """Read `labels.jsonl` if the model saved one (a model trained without label texts has none); a file of
        that name added after the save is not part of the model (the manifest does not list it)."""
        manifest = Path(directory) / MANIFEST_FILE
        listed = not manifest.is_file() or LABEL_TEXTS_FILE in load_json(manifest, "model").get("files", {})
        self.label_texts = read_label_texts(directory, self.n_labels) if listed else None


def ranked_labels(pred: sp.csr_matrix, label_texts: list[str] | None) -> list[list[LabelPrediction]]:
    """The rows of a top-k CSR score matrix as lists of (id, text, score), each sorted by score."""
    rows = np.repeat(np.arange(pred.shape[0]), np.diff(pred.indptr))
    # sort all entries at once: by row, then score descending, then label id
    order = np.lexsort((pred.indices, -pred.data.astype(np.float64), rows))
    ids = pred.indices[order].tolist()
    scores = pred.data[order].astype(np.float64).tolist()
    names = [label_texts[i] for i in ids] if label_texts is not None else [None] * len(ids)
    bounds = pred.indptr.tolist()
    return [list(zip(ids[a:b], names[a:b], scores[a:b], strict=True)) for a, b in zip(bounds, bounds[1:], strict=False)]


def write_label_texts(directory: str | Path, label_texts: Sequence[str], n_labels: int) -> None:
    """Store label texts as JSON lines (a name may hold any character, tabs included)."""
    if len(label_texts) != n_labels:
        raise XmineError(f"{len(label_texts)} label texts for a model of {n_labels} labels")
    Path(directory).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(directory) / LABEL_TEXTS_FILE,
                      "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in label_texts))


def read_label_texts(directory: str | Path, n_labels: int) -> list[str] | None:
    """The label texts of a model directory, None when it stores none; checked line by line."""
    path = Path(directory) / LABEL_TEXTS_FILE
    if not path.exists():
        return None
    texts: list[str] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                try:
                    text = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise model_error("model", path, f"line {line_no}: not a JSON string ({exc.msg})") from None
                if not isinstance(text, str):
                    raise model_error("model", path, f"line {line_no}: expected a JSON string, got "
                                      f"{type(text).__name__}")
                texts.append(text)
    except UnicodeDecodeError as exc:
        raise model_error("model", path, f"invalid UTF-8 ({exc.reason})") from None
    if len(texts) != n_labels:
        raise model_error("model", path, f"has {len(texts)} label texts but the model has {n_labels} labels")
    return texts


# ---------------------------------------------------------------------------------- model directories
def _siblings(final: Path, tag: str) -> list[Path]:
    return sorted(final.parent.glob(f".{final.name}.{tag}-*"))


def _pid_of(leftover: Path) -> int | None:
    try:
        return int(leftover.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_model_dir_target(directory: str | Path) -> None:
    """Raise unless `directory` can receive a model: absent, empty, holding only training checkpoints,
    or an xmine model directory (which a save replaces whole). Checked before training starts too."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise ModelError(f"{path}: exists and is not a directory; the model directory must be a new or "
                         "model directory")
    if not path.is_dir():
        return
    entries = {p.name for p in path.iterdir()}
    if entries - set(KEPT_ON_SAVE) and not entries & {MANIFEST_FILE, MODEL_CONFIG_FILE}:
        raise ModelError(f"{path}: is not an xmine model directory and not empty ({len(entries)} entries, e.g. "
                         f"{sorted(entries)[0]!r}); refusing to replace it: choose a new directory")


def save_model_dir(directory: str | Path, fill: Callable[[Path], None]) -> None:
    """Fill a hidden sibling with `fill(tmp)`, add the manifest, then swap it in with renames."""
    final = Path(directory)
    check_model_dir_target(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_save_leftovers(final)
    tmp = final.parent / f".{final.name}.{_TMP_TAG}-{os.getpid()}"
    backup = final.parent / f".{final.name}.{_OLD_TAG}-{os.getpid()}"
    tmp.mkdir()
    _test_save_step("created the temporary directory")
    moved: list[str] = []
    try:
        fill(tmp)
        write_manifest(tmp)
        _test_save_step(MANIFEST_FILE)
        if final.exists():
            for name in KEPT_ON_SAVE:  # the training checkpoints stay with the directory
                if (final / name).exists():
                    os.replace(final / name, tmp / name)
                    moved.append(name)
            os.replace(final, backup)
            _fsync_dir(final.parent)
            _test_save_step("renamed old model to backup")
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        _test_save_step("renamed new model into place")
    except BaseException:
        if backup.exists() and not final.exists():
            os.replace(backup, final)
        for name in moved:
            if (tmp / name).exists() and not (final / name).exists():
                os.replace(tmp / name, final / name)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def remove_save_leftovers(final: str | Path) -> list[Path]:
    """Delete the temporary and backup siblings that interrupted saves of `final` left behind (not those of a
    save still running in another process)."""
    final = Path(final)
    removed = []
    for leftover in _siblings(final, _TMP_TAG) + _siblings(final, _OLD_TAG):
        if not _alive(_pid_of(leftover)):
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    return removed


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
        # the files reach the disk before the rename that publishes them
        os.fsync(fh.fileno())
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    """manifest.json: format version and {relative path: {bytes, sha256}} of every file (the kept checkpoints
    excepted); written last, so a directory with a manifest is complete."""
    from xmine import __version__

    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel.split("/")[0] in KEPT_ON_SAVE or rel == MANIFEST_FILE:
            continue
        files[rel] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    for sub in [directory, *(p for p in directory.rglob("*") if p.is_dir())]:
        _fsync_dir(sub)
    manifest = {"format": "xmine-model", "format_version": MODEL_FORMAT_VERSION, "xmine_version": __version__,
                "files": files}
    atomic_write_text(directory / MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")


def _component_of(rel: str) -> str:
    return rel.split("/")[0] if "/" in rel else "model"


def verify_manifest(directory: Path) -> dict[str, Any]:
    """Check the format version and every file's size and checksum; raise ModelError naming the file."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        if (directory / MODEL_CONFIG_FILE).is_file():
            raise ModelError(f"{directory}: saved by an older xmine (model format 1, no {MANIFEST_FILE}); this "
                             f"version reads format {MODEL_FORMAT_VERSION}: retrain the model with it (xmine train "
                             "...) or keep using the xmine that saved it")
        raise ModelError(f"{directory}: not an xmine model directory (no {MANIFEST_FILE})")
    manifest = load_json(path, "model")
    version = json_field(manifest, "format_version", "model", path, int)
    if version < MODEL_FORMAT_VERSION:
        raise ModelError(f"{directory}: model format {version} is older than this xmine's format "
                         f"{MODEL_FORMAT_VERSION}: retrain the model with this version (xmine train ...)")
    if version > MODEL_FORMAT_VERSION:
        raise ModelError(f"{directory}: model format {version} was written by a newer xmine "
                         f"({manifest.get('xmine_version')}); this version reads format {MODEL_FORMAT_VERSION}: "
                         "upgrade xmine")
    files = json_field(manifest, "files", "model", path, dict)
    root = directory.resolve()
    for rel, entry in files.items():
        target = (directory / rel).resolve()
        if not isinstance(rel, str) or rel.startswith("/") or root not in target.parents:
            raise ModelError(f"model: {path}: file entry {rel!r} points outside the model directory")
        if not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int) or \
                not isinstance(entry.get("sha256"), str):
            raise ModelError(f"model: {path}: bad entry for {rel!r}")
        component = _component_of(rel)
        if not target.is_file():
            raise ModelError(f"{component}: {directory / rel}: missing; the model directory is incomplete "
                             "(the manifest lists it)")
        if target.stat().st_size != entry["bytes"] or _sha256(target) != entry["sha256"]:
            raise ModelError(f"{component}: {directory / rel}: does not match the checksum in {MANIFEST_FILE} "
                             "(damaged or changed after the save)")
    return manifest


def open_model_dir(directory: str | Path) -> Path:
    """The verified model directory to read: `directory` itself or, when a save was killed between its
    renames and `directory` is missing, the complete sibling it left (newest first)."""
    final = Path(directory)
    if final.is_dir():
        verify_manifest(final)
        return final
    if final.exists():
        raise ModelError(f"{final}: is not a directory")
    leftovers = sorted(_siblings(final, _TMP_TAG), key=lambda p: -p.stat().st_mtime) + \
        sorted(_siblings(final, _OLD_TAG), key=lambda p: -p.stat().st_mtime)
    for candidate in leftovers:
        if (candidate / MANIFEST_FILE).is_file():
            try:
                verify_manifest(candidate)
            except ModelError:
                continue
            log.warning("%s is missing: a save into it was interrupted; loading the complete model it left in %s "
                        "(the next save into %s cleans up)", final, candidate, final)
            return candidate
    hint = f"; an interrupted save left only incomplete files: {leftovers[0].name}" if leftovers else ""
    raise ModelError(f"{final}: not a model directory (it does not exist{hint})")


_test_steps = {"done": 0}


def _test_save_step(step: str) -> None:
    """Tests only, inert unless XMINE_TEST_SAVE_TRACE is set: log each finished save step to that file and,
    at step number XMINE_TEST_SAVE_STOP, stop there (sleep) so that a test can kill the process at that step."""
    trace = os.environ.get("XMINE_TEST_SAVE_TRACE")
    if not trace:
        return
    _test_steps["done"] += 1
    with open(trace, "a", encoding="utf-8") as fh:
        fh.write(step + "\n")
    if str(_test_steps["done"]) == os.environ.get("XMINE_TEST_SAVE_STOP"):
        time.sleep(600)


def write_model_config(directory: str | Path, method: str, config: dict[str, Any], n_labels: int,
                       extra: dict[str, Any] | None = None) -> None:
    from xmine import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"method": method, "xmine_version": __version__, "n_labels": int(n_labels), "config": config}
    meta.update(extra or {})
    atomic_write_text(directory / MODEL_CONFIG_FILE, json.dumps(meta, indent=2) + "\n")


def read_model_config(directory: str | Path, component: str = "model") -> dict[str, Any]:
    path = Path(directory) / MODEL_CONFIG_FILE
    if not path.exists():
        raise ModelError(f"{component}: {path}: missing (not a model directory)")
    meta = load_json(path, component)
    json_field(meta, "method", component, path, str)
    json_field(meta, "config", component, path, dict)
    if json_field(meta, "n_labels", component, path, int) < 1:
        raise ModelError(f"{component}: {path}: n_labels must be positive, got {meta['n_labels']}")
    return meta


def model_class(method: str) -> type[XMCModel]:
    """The model class that trains `method` ("ngame", "mips", "knn")."""
    # importing the package registers every model class
    import xmine.models  # noqa: F401

    if method not in _REGISTRY:
        raise XmineError(f"unknown method {method!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[method]


def load_model(directory: str | Path, **options: Any) -> XMCModel:
    """Open any saved xmine model (the manifest verified first)."""
    resolved = open_model_dir(directory)
    meta = read_model_config(resolved)
    # importing the package registers every model class
    import xmine.models  # noqa: F401

    method = meta["method"]
    if method not in _REGISTRY:
        raise ModelError(f"model: {resolved / MODEL_CONFIG_FILE}: unknown model method {method!r}; "
                         f"known: {sorted(_REGISTRY)}")
    model = _REGISTRY[method]._load_components(resolved, meta, **options)
    model.load_label_texts(resolved)
    return model
