"""A dataset directory in one of the Extreme Classification Repository layouts, loaded into memory,
and the summary statistics the dataset READMEs report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp

from xmine.data.sparse import read_filter_pairs, read_single_file, read_sparse_matrix
from xmine.data.text import read_jsonl, read_text_lines
from xmine.errors import DataFormatError, InvalidArgumentError

__all__ = ["Split", "Dataset", "load_dataset", "dataset_stats"]

_QUANTILES = {"q00": 0.0, "q05": 0.05, "q25": 0.25, "q50": 0.5, "q75": 0.75, "q95": 0.95, "q99": 0.99}


@dataclass
class Split:
    """One split (train or test) of a dataset."""

    labels: sp.csr_matrix  # (n, L) float32, explicit values (1.0 or target_rel)
    texts: list[str] | None = None  # point texts (the chosen variant); None for feature-only data
    features: sp.csr_matrix | None = None  # given sparse features (X_Xf or single-file)
    filter_pairs: np.ndarray | None = None  # (m, 2) int64 (row, label) pairs to drop from predictions

    @property
    def n_points(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Dataset:
    """Train and test splits plus the label space of one dataset directory. `test` is None for a
    dataset with a training split only (no tst_* files): it trains, but cannot be evaluated."""

    path: Path
    train: Split
    test: Split | None
    n_labels: int
    label_texts: list[str] | None  # text of label i, if the dataset has label texts
    text_variant: str  # "full", "title", or "none" when points have no text
    layout: str  # "text+XY", "sparse-XY", "single-file" or "jsonl"

    @property
    def name(self) -> str:
        return self.path.name

    def split(self, name: str) -> Split:
        """The "train" or "test" split; a clear error when the dataset has no test split."""
        if name == "train":
            return self.train
        if name != "test":
            raise InvalidArgumentError(f"split must be 'train' or 'test', got {name!r}")
        if self.test is None:
            raise DataFormatError(self.path, "has no test split (no tst_* files): it can be trained on, but "
                                  "predicting or evaluating a test split needs one")
        return self.test


# --------------------------------------------------------------------------- helpers


def _first_existing(d: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (d / n).is_file():
            return d / n
    return None


def _require(d: Path, name: str, why: str) -> Path:
    p = d / name
    if not p.is_file():
        raise DataFormatError(p, f"file not found ({why})")
    return p


# Line numbers in consistency errors: 1 when the count comes from a header, otherwise the first
# line (text files: one item per line) where the two files stop matching.


def _check_rows(path: Path, n: int, other: Path, n_other: int, what: str, header: bool = False) -> None:
    if n != n_other:
        line = 1 if header else min(n, n_other) + 1
        raise DataFormatError(path, f"has {n} {what} but {other.name} has {n_other} rows", line)


def _check_label_count(trn: Path, L_trn: int, tst: Path, L_tst: int) -> None:
    if L_trn != L_tst:
        raise DataFormatError(tst, f"has {L_tst} label columns but {trn.name} has {L_trn}", 1)
    if L_trn == 0:
        raise DataFormatError(trn, "declares 0 labels; a dataset needs at least one label", 1)


def _check_label_values(path: Path, labels: sp.csr_matrix, header: bool = True) -> None:
    """Label files list each point's relevant labels with a positive value (1, or a graded relevance);
    a 0 or negative value is not a relevant label and would be counted as one."""
    bad = np.flatnonzero(~(labels.data > 0))
    if bad.size:
        row = int(np.searchsorted(labels.indptr, bad[0], side="right") - 1)
        raise DataFormatError(path, f"label {int(labels.indices[bad[0]])} has value {labels.data[bad[0]]:g}; label "
                              "values must be positive (1 marks a relevant label; leave irrelevant labels out)",
                              row + (2 if header else 1))


def _read_label_matrices(trn_y: Path, tst_y: Path | None) -> tuple[sp.csr_matrix, sp.csr_matrix | None]:
    """The training label matrix and, where the dataset has a test split, the test one; label counts and
    values checked."""
    Ytr = read_sparse_matrix(trn_y)
    Yte = read_sparse_matrix(tst_y) if tst_y is not None else None
    if Yte is not None:
        _check_label_count(trn_y, Ytr.shape[1], tst_y, Yte.shape[1])
    _check_label_values(trn_y, Ytr)
    if Yte is not None:
        _check_label_values(tst_y, Yte)
    return Ytr, Yte


def _load_texts(path: Path, labels_path: Path, n: int) -> list[str]:
    texts = read_text_lines(path)
    _check_rows(path, len(texts), labels_path, n, "lines")
    return texts


def _load_label_texts(path: Path | None, n_labels: int, labels_path: Path) -> list[str] | None:
    if path is None:
        return None
    texts = read_text_lines(path)
    if len(texts) != n_labels:
        raise DataFormatError(
            path,
            f"has {len(texts)} label texts but {labels_path.name} has {n_labels} labels",
            min(len(texts), n_labels) + 1,
        )
    return texts


def _load_features(d: Path, trn_rows: int, tst_rows: int | None, trn_y: Path, tst_y: Path):
    """trn_X_Xf.txt / tst_X_Xf.txt if present (both or neither), checked against the label rows;
    `tst_rows` None: a training split only."""
    trn_f, tst_f = d / "trn_X_Xf.txt", d / "tst_X_Xf.txt"
    if tst_rows is None:
        if not trn_f.is_file():
            return None, None
        Xtr = read_sparse_matrix(trn_f)
        _check_rows(trn_f, Xtr.shape[0], trn_y, trn_rows, "rows", header=True)
        return Xtr, None
    if not trn_f.is_file() and not tst_f.is_file():
        return None, None
    missing = tst_f if trn_f.is_file() else trn_f
    if not missing.is_file():
        raise DataFormatError(missing, "file not found (the other split has sparse features)")
    Xtr = read_sparse_matrix(trn_f)
    Xte = read_sparse_matrix(tst_f)
    _check_rows(trn_f, Xtr.shape[0], trn_y, trn_rows, "rows", header=True)
    _check_rows(tst_f, Xte.shape[0], tst_y, tst_rows, "rows", header=True)
    if Xtr.shape[1] != Xte.shape[1]:
        raise DataFormatError(
            tst_f, f"has {Xte.shape[1]} feature columns but {trn_f.name} has {Xtr.shape[1]}", 1
        )
    return Xtr, Xte


def _load_filters(d: Path, trn_rows: int, tst_rows: int | None, n_labels: int):
    out = []
    for name, rows in (("filter_labels_train.txt", trn_rows), ("filter_labels_test.txt", tst_rows)):
        p = d / name
        out.append(read_filter_pairs(p, rows, n_labels) if p.is_file() and rows is not None else None)
    return out


def _test_split(labels: sp.csr_matrix | None, texts: list[str] | None, features: sp.csr_matrix | None,
                filters: np.ndarray | None) -> Split | None:
    return None if labels is None else Split(labels, texts, features, filters)


def _json_file(d: Path, stem: str) -> Path | None:
    return _first_existing(d, (f"{stem}.json", f"{stem}.json.gz"))


# --------------------------------------------------------------------------- layouts


def _load_text_xy(d: Path, text_variant: str, label_text_variant: str, with_test: bool = True) -> Dataset:
    trn_y, tst_y = d / "trn_X_Y.txt", d / "tst_X_Y.txt"
    Ytr, Yte = _read_label_matrices(trn_y, tst_y if with_test else None)
    L = Ytr.shape[1]
    suffix = "_title" if text_variant == "title" else ""
    why = f"text_variant={text_variant!r}"
    trn_t = _require(d, f"trn_X{suffix}.txt", why)
    Ttr = _load_texts(trn_t, trn_y, Ytr.shape[0])
    Tte = None
    if Yte is not None:
        Tte = _load_texts(_require(d, f"tst_X{suffix}.txt", why), tst_y, Yte.shape[0])
    n_test = None if Yte is None else Yte.shape[0]

    names = ("Y_def.txt", "Y.txt", "lbl_X.txt") if label_text_variant == "def" else ("Y.txt", "lbl_X.txt")
    lbl_path = _first_existing(d, names)
    if lbl_path is not None:
        label_texts = _load_label_texts(lbl_path, L, trn_y)
    else:
        label_texts = _label_texts_from_json(d, L, trn_y, label_text_variant)

    Xtr, Xte = _load_features(d, Ytr.shape[0], n_test, trn_y, tst_y)
    Ftr, Fte = _load_filters(d, Ytr.shape[0], n_test, L)
    return Dataset(
        path=d,
        train=Split(Ytr, Ttr, Xtr, Ftr),
        test=_test_split(Yte, Tte, Xte, Fte),
        n_labels=L,
        label_texts=label_texts,
        text_variant=text_variant,
        layout="text+XY",
    )


def _load_sparse_xy(d: Path) -> Dataset:
    trn_y, tst_y = d / "trn_X_Y.txt", d / "tst_X_Y.txt"
    with_test = tst_y.is_file() or (d / "tst_X_Xf.txt").is_file()  # neither: a training split only
    if with_test:
        _require(d, "tst_X_Y.txt", "tst_X_Xf.txt is present")
        _require(d, "tst_X_Xf.txt", "tst_X_Y.txt is present")
    Ytr, Yte = _read_label_matrices(trn_y, tst_y if with_test else None)
    L = Ytr.shape[1]
    n_test = None if Yte is None else Yte.shape[0]
    Xtr, Xte = _load_features(d, Ytr.shape[0], n_test, trn_y, tst_y)
    label_texts = _load_label_texts(_first_existing(d, ("Y.txt", "lbl_X.txt")), L, trn_y)
    Ftr, Fte = _load_filters(d, Ytr.shape[0], n_test, L)
    return Dataset(
        d, Split(Ytr, None, Xtr, Ftr), _test_split(Yte, None, Xte, Fte), L, label_texts, "none", "sparse-XY"
    )


def _load_single_file(d: Path) -> Dataset:
    trn, tst = d / "trn_data.txt", d / "tst_data.txt"
    Xtr, Ytr = read_single_file(trn)
    Xte = Yte = None
    if tst.is_file():
        Xte, Yte = read_single_file(tst)
        _check_label_count(trn, Ytr.shape[1], tst, Yte.shape[1])
        if Xtr.shape[1] != Xte.shape[1]:
            raise DataFormatError(tst, f"has {Xte.shape[1]} features but {trn.name} has {Xtr.shape[1]}", 1)
    L = Ytr.shape[1]
    label_texts = _load_label_texts(_first_existing(d, ("Y.txt", "lbl_X.txt")), L, trn)
    Ftr, Fte = _load_filters(d, Ytr.shape[0], None if Yte is None else Yte.shape[0], L)
    return Dataset(
        d, Split(Ytr, None, Xtr, Ftr), _test_split(Yte, None, Xte, Fte), L, label_texts, "none", "single-file"
    )


def _join_text(titles: list[str], contents: list[str] | None, variant: str) -> list[str]:
    if variant == "title" or contents is None:
        return titles
    return [f"{t} {c}" if c else t for t, c in zip(titles, contents, strict=True)]


def _label_texts_from_json(d: Path, n_labels: int, ref: Path, variant: str) -> list[str] | None:
    lbl = _json_file(d, "lbl")
    if lbl is None:
        return None
    titles, contents, _, _ = read_jsonl(lbl, require_targets=False)
    if len(titles) != n_labels:
        raise DataFormatError(
            lbl,
            f"has {len(titles)} label records but {ref.name} has {n_labels} labels",
            min(len(titles), n_labels) + 1,
        )
    return _join_text(titles, contents, "full" if variant == "def" else "title")


def _load_jsonl(d: Path, trn: Path, tst: Path | None, text_variant: str, label_text_variant: str) -> Dataset:
    lbl = _json_file(d, "lbl")
    n_labels = None
    if lbl is not None:
        lbl_titles, lbl_contents, _, _ = read_jsonl(lbl, require_targets=False)
        n_labels = len(lbl_titles)
        if n_labels == 0:
            raise DataFormatError(lbl, "declares 0 labels (no records); a dataset needs at least one label")
    trn_titles, trn_contents, Ytr, _ = read_jsonl(trn, n_labels=n_labels)
    Yte = tst_texts = None
    if tst is not None:
        tst_titles, tst_contents, Yte, _ = read_jsonl(tst, n_labels=n_labels)
        tst_texts = _join_text(tst_titles, tst_contents, text_variant)
    assert Ytr is not None  # require_targets=True
    if n_labels is None and max(Ytr.shape[1], 0 if Yte is None else Yte.shape[1]) == 0:
        raise DataFormatError(trn, "has no labels in any record; a dataset needs at least one label")
    if n_labels is None:
        # Without lbl.json the label space is what the splits use; widen the narrower matrix.
        n_labels = max(Ytr.shape[1], Yte.shape[1] if Yte is not None else 0)
        Ytr.resize((Ytr.shape[0], n_labels))
        if Yte is not None:
            Yte.resize((Yte.shape[0], n_labels))
        label_texts = None
    else:
        variant = "full" if label_text_variant == "def" else "title"
        label_texts = _join_text(lbl_titles, lbl_contents, variant)
    Ftr, Fte = _load_filters(d, Ytr.shape[0], None if Yte is None else Yte.shape[0], n_labels)
    return Dataset(
        path=d,
        train=Split(Ytr, _join_text(trn_titles, trn_contents, text_variant), None, Ftr),
        test=_test_split(Yte, tst_texts, None, Fte),
        n_labels=n_labels,
        label_texts=label_texts,
        text_variant=text_variant,
        layout="jsonl",
    )


def load_dataset(
    path: str | Path,
    text_variant: Literal["full", "title"] = "full",
    label_text_variant: Literal["name", "def"] = "name",
) -> Dataset:
    """Load a dataset directory, detecting its layout (first match wins):

    1. ``trn_X.txt``, ``tst_X.txt``, ``trn_X_Y.txt``, ``tst_X_Y.txt`` (text + sparse labels; also
       ``trn_X_Xf.txt`` features and ``Y.txt``/``lbl_X.txt`` label texts when present);
    2. ``trn_X_Xf.txt`` + ``trn_X_Y.txt`` (sparse features, no text);
    3. ``trn_data.txt`` + ``tst_data.txt`` (single-file);
    4. ``trn.json[.gz]`` + ``tst.json[.gz]`` (+ ``lbl.json[.gz]``) (LF JSON lines).

    Each layout may come without its test files (tst_*): the dataset then has ``test=None`` and can be
    trained on but not evaluated.

    ``text_variant="title"`` picks ``*_X_title.txt`` / JSON titles only; ``label_text_variant="def"``
    picks ``Y_def.txt`` (or JSON title + content) when available. ``filter_labels_{train,test}.txt``
    become the splits' ``filter_pairs``."""
    if text_variant not in ("full", "title"):
        raise InvalidArgumentError(f"text_variant must be 'full' or 'title', got {text_variant!r}")
    if label_text_variant not in ("name", "def"):
        raise InvalidArgumentError(f"label_text_variant must be 'name' or 'def', got {label_text_variant!r}")
    d = Path(path)
    if not d.exists():
        raise DataFormatError(d, "dataset directory not found")
    if not d.is_dir():
        raise DataFormatError(d, "not a directory")

    def has(*names: str) -> bool:
        return all((d / n).is_file() for n in names)

    def absent(*names: str) -> bool:
        return not any((d / n).exists() for n in names)

    if has("trn_X.txt", "tst_X.txt", "trn_X_Y.txt", "tst_X_Y.txt"):
        return _load_text_xy(d, text_variant, label_text_variant)
    if has("trn_X.txt", "trn_X_Y.txt"):
        if absent("tst_X.txt", "tst_X_Y.txt", "tst_X_Xf.txt"):
            return _load_text_xy(d, text_variant, label_text_variant, with_test=False)
        if not has("trn_X_Xf.txt"):  # half a test split: name the missing file
            missing = "tst_X_Y.txt" if has("tst_X.txt") else "tst_X.txt"
            raise DataFormatError(d / missing, "file not found (the test split's other file is present; remove "
                                  "both tst_* files to train without a test split)")
    if has("trn_X_Xf.txt", "trn_X_Y.txt"):
        return _load_sparse_xy(d)
    if has("trn_data.txt"):
        return _load_single_file(d)
    trn_json, tst_json = _json_file(d, "trn"), _json_file(d, "tst")
    if trn_json is not None:
        return _load_jsonl(d, trn_json, tst_json, text_variant, label_text_variant)
    _name_the_missing_file(d)
    raise DataFormatError(
        d,
        "no known dataset layout; looked for trn_X.txt + trn_X_Y.txt (+ tst_X.txt + tst_X_Y.txt), "
        "or trn_X_Xf.txt + trn_X_Y.txt, or trn_data.txt, or trn.json[.gz] (each with optional test files)",
    )


_LAYOUT_FILES = (("trn_X.txt", "tst_X.txt", "trn_X_Y.txt", "tst_X_Y.txt"), ("trn_X_Xf.txt", "trn_X_Y.txt"),
                 ("trn_data.txt", "tst_data.txt"), ("trn.json", "tst.json"))


def _name_the_missing_file(d: Path) -> None:
    """When no layout is complete but files of one are there, the error names the file that is missing or
    is not a regular file (a directory in its place, say), rather than only 'no known layout'."""
    best = None
    for names in _LAYOUT_FILES:
        present = [n for n in names if (d / n).exists() or (n.endswith(".json") and (d / f"{n}.gz").exists())]
        if present and (best is None or len(present) > len(best[1])):
            best = (names, present)
    if best is None:
        return
    names, present = best
    for n in names:
        p = d / n
        if p.exists() and not p.is_file():
            raise DataFormatError(p, "is a directory (or not a regular file), expected a data file")
    missing = next(n for n in names if n not in present)
    raise DataFormatError(d / missing, f"file not found (the dataset has {', '.join(present)}; this layout also "
                          f"needs {' + '.join(n for n in names if n not in present)})")


# --------------------------------------------------------------------------- statistics


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {k: 0.0 for k in (*_QUANTILES, "max")}
    qs = np.quantile(values, list(_QUANTILES.values()))
    out = {k: float(q) for k, q in zip(_QUANTILES, qs, strict=True)}
    out["max"] = float(values.max())
    return out


def _words(texts: list[str]) -> np.ndarray:
    return np.fromiter((len(t.split()) for t in texts), dtype=np.int64, count=len(texts))


def dataset_stats(ds: Dataset) -> dict:
    """Summary statistics of a dataset (counts, label frequencies, quantiles) as a JSON-able dict."""
    L = ds.n_labels
    Ytr = ds.train.labels
    Yte = ds.test.labels if ds.test is not None else sp.csr_matrix((0, L), dtype=np.float32)
    train_freq = np.diff(Ytr.tocsc().indptr) if L else np.zeros(0, np.int64)
    test_freq = np.diff(Yte.tocsc().indptr) if L else np.zeros(0, np.int64)
    train_lpp = np.diff(Ytr.indptr)
    test_lpp = np.diff(Yte.indptr)
    stats: dict = {
        "name": ds.name,
        "layout": ds.layout,
        "text_variant": ds.text_variant,
        "n_train": ds.train.n_points,
        "n_test": ds.test.n_points if ds.test is not None else 0,
        "n_labels": L,
    }
    if ds.train.features is not None:
        stats["n_features"] = int(ds.train.features.shape[1])
    stats.update(
        {
            "train_nnz": int(Ytr.nnz),
            "test_nnz": int(Yte.nnz),
            "train_avg_labels_per_point": float(Ytr.nnz / max(Ytr.shape[0], 1)),
            "test_avg_labels_per_point": float(Yte.nnz / max(Yte.shape[0], 1)),
            "train_avg_points_per_label": float(Ytr.nnz / max(L, 1)),
            "test_avg_points_per_label": float(Yte.nnz / max(L, 1)),
            "train_labels_with_zero_points": int(np.count_nonzero(train_freq == 0)),
            "test_labels_unseen_in_train": int(np.count_nonzero((train_freq == 0) & (test_freq > 0))),
            "train_points_with_zero_labels": int(np.count_nonzero(train_lpp == 0)),
            "train_label_freq_quantiles": _quantiles(train_freq),
            "train_labels_per_point_quantiles": _quantiles(train_lpp),
            "test_labels_per_point_quantiles": _quantiles(test_lpp),
        }
    )
    if ds.train.texts is not None:
        stats["train_words_per_text_quantiles"] = _quantiles(_words(ds.train.texts))
    if ds.test is not None and ds.test.texts is not None:
        stats["test_words_per_text_quantiles"] = _quantiles(_words(ds.test.texts))
    if ds.label_texts is not None:
        stats["label_words_per_text_quantiles"] = _quantiles(_words(ds.label_texts))
    for split_name, split in (("train", ds.train), ("test", ds.test)):
        if split is not None and split.filter_pairs is not None:
            stats[f"{split_name}_filter_pairs"] = int(split.filter_pairs.shape[0])
    return stats
