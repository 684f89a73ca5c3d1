"""Safe reading of the files in a model directory or a training checkpoint.

Every reader here takes the component it reads for (e.g. "classifiers") and the file, and turns any
failure into a `ModelError` naming both. Nothing is unpickled: tensors go through
`torch.load(weights_only=True)`, arrays through `np.load(allow_pickle=False)`, numbers through JSON.
Arrays are validated (dtype, shape, index ranges, monotonic indptr, finite values) before they reach
scipy, faiss or torch, whose native code trusts them.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from xmine.errors import ModelError

# rows checked per step when scanning a (possibly memory-mapped) array for non-finite values
_FINITE_CHUNK_ROWS = 65536


def model_error(component: str, path: str | Path, problem: str) -> ModelError:
    return ModelError(f"{component}: {path}: {problem}", component, path, problem)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def require_file(path: str | Path, component: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise model_error(component, path, "is a directory, expected a file")
    if not path.is_file():
        raise model_error(component, path, "file missing")
    return path


# ------------------------------------------------------------------------------------------ readers
def load_json(path: str | Path, component: str, expect: type = dict) -> Any:
    path = require_file(path, component)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise model_error(component, path, f"corrupt JSON ({exc.msg}, line {exc.lineno})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise model_error(component, path, f"unreadable ({_first_line(exc)})") from exc
    if not isinstance(value, expect):
        raise model_error(component, path, f"expected a JSON {expect.__name__}, got {type(value).__name__}")
    return value


def json_field(meta: dict[str, Any], key: str, component: str, path: str | Path, expect: type | tuple[type, ...]
               ) -> Any:
    """meta[key], which must exist and be of type `expect`."""
    if key not in meta:
        raise model_error(component, path, f"field {key!r} missing")
    value = meta[key]
    expected = expect if isinstance(expect, tuple) else (expect,)
    if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
        raise model_error(component, path, f"field {key!r} has type {type(value).__name__}")
    return value


def load_tensors(path: str | Path, component: str) -> Any:
    """A file written by `torch.save` holding only tensors and plain containers/numbers/strings.
    `weights_only=True` refuses anything else (any pickled object or callable) without running it."""
    import torch

    path = require_file(path, component)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - zip, pickle and storage errors all mean: not a safe tensor file
        text = str(exc)
        if "Weights only load failed" in text:  # torch's advice in that message (weights_only=False) is not ours
            globals_ = [line.strip() for line in text.splitlines() if "GLOBAL" in line]
            problem = (f"refused: it holds Python objects, not only tensors ({globals_[0]}); xmine never unpickles "
                       "code from a file") if globals_ else "not a readable tensor file (unsupported pickle content)"
        else:
            problem = f"not a readable tensor file ({_first_line(exc)})"
        raise model_error(component, path, problem) from None


def load_npy(path: str | Path, component: str, *, kind: str = "f", ndim: int | None = None,
             shape: Sequence[int | None] | None = None, finite: bool = True, mmap: bool = False) -> np.ndarray:
    """A .npy array of dtype kind `kind` ("f" float, "i" integer: signed or unsigned), checked for shape
    (None entries are free) and, for floats, finite values."""
    path = require_file(path, component)
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except Exception as exc:  # noqa: BLE001 - truncated/garbage files raise ValueError, OSError, EOFError...
        raise model_error(component, path, f"not a readable .npy array ({_first_line(exc)})") from None
    return check_array(array, component, path, kind=kind, ndim=ndim, shape=shape, finite=finite)


def check_array(array: Any, component: str, path: str | Path, *, kind: str = "f", ndim: int | None = None,
                shape: Sequence[int | None] | None = None, finite: bool = True, name: str = "array") -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise model_error(component, path, f"{name} is not an array")
    kinds = "iu" if kind == "i" else kind
    if array.dtype.kind not in kinds:
        raise model_error(component, path, f"{name} has dtype {array.dtype}, expected "
                          f"{'an integer' if kind == 'i' else 'a floating-point'} type")
    if ndim is None and shape is not None:
        ndim = len(shape)
    if ndim is not None and array.ndim != ndim:
        raise model_error(component, path, f"{name} has {array.ndim} dimension(s), expected {ndim}")
    if shape is not None:
        for axis, want in enumerate(shape):
            if want is not None and array.shape[axis] != want:
                raise model_error(component, path, f"{name} has shape {array.shape}, expected "
                                  f"{tuple('*' if s is None else s for s in shape)}")
    if finite and array.dtype.kind == "f" and not _all_finite(array):
        raise model_error(component, path, f"{name} holds NaN or infinite values")
    return array


def _all_finite(array: np.ndarray) -> bool:
    if array.ndim == 0 or array.shape[0] <= _FINITE_CHUNK_ROWS:
        return bool(np.isfinite(array).all())
    return all(bool(np.isfinite(array[i:i + _FINITE_CHUNK_ROWS]).all())
               for i in range(0, array.shape[0], _FINITE_CHUNK_ROWS))


def check_index_range(values: np.ndarray, low: int, high: int, component: str, path: str | Path, name: str) -> None:
    """Every value in [low, high)."""
    if values.size and (int(values.min()) < low or int(values.max()) >= high):
        raise model_error(component, path, f"{name} has values outside [{low}, {high}) "
                          f"(min {int(values.min())}, max {int(values.max())})")


def load_npz(path: str | Path, component: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The named arrays of an .npz file (no pickled object arrays)."""
    path = require_file(path, component)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise model_error(component, path, f"arrays missing: {', '.join(missing)}")
            return {k: np.asarray(data[k]) for k in keys}
    except ModelError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise model_error(component, path, f"not a readable .npz archive ({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - zlib errors etc. of a damaged member
        raise model_error(component, path, f"not a readable .npz archive ({_first_line(exc)})") from None


def csr_from_arrays(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: Any, component: str,
                    path: str | Path, name: str = "matrix", finite: bool = True) -> sp.csr_matrix:
    """A CSR matrix from raw arrays, after checking what scipy's native code assumes: a 2-d non-negative
    shape, len(indptr) = rows + 1, indptr from 0 to nnz and non-decreasing, column indices in range."""
    shape_arr = check_array(np.asarray(shape), component, path, kind="i", shape=(2,), name=f"{name} shape")
    n_rows, n_cols = (int(s) for s in shape_arr)
    if n_rows < 0 or n_cols < 0:
        raise model_error(component, path, f"{name} has a negative shape {(n_rows, n_cols)}")
    indptr = check_array(indptr, component, path, kind="i", shape=(n_rows + 1,), name=f"{name} indptr")
    indices = check_array(indices, component, path, kind="i", ndim=1, name=f"{name} indices")
    data = check_array(data, component, path, kind="fiub", ndim=1, finite=finite, name=f"{name} data")
    if data.shape[0] != indices.shape[0]:
        raise model_error(component, path, f"{name} has {data.shape[0]} values but {indices.shape[0]} indices")
    if int(indptr[0]) != 0 or int(indptr[-1]) != indices.shape[0]:
        raise model_error(component, path, f"{name} indptr runs from {int(indptr[0])} to {int(indptr[-1])}, "
                          f"expected 0 to {indices.shape[0]}")
    if np.any(np.diff(indptr) < 0):
        raise model_error(component, path, f"{name} indptr decreases (row {int(np.argmax(np.diff(indptr) < 0))})")
    check_index_range(indices, 0, n_cols, component, path, f"{name} column indices")
    return sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols))


def load_sparse_npz(path: str | Path, component: str, finite: bool = True) -> sp.csr_matrix:
    """A matrix written by `scipy.sparse.save_npz` (CSR or CSC), validated and returned as CSR."""
    arrays = load_npz(path, component, ("format", "shape", "data", "indices", "indptr"))
    fmt = arrays["format"]
    fmt = fmt.item() if fmt.shape == () else None
    if isinstance(fmt, bytes):
        fmt = fmt.decode("ascii", "replace")
    if fmt not in ("csr", "csc"):
        raise model_error(component, path, f"sparse format {fmt!r} is not csr or csc")
    shape = arrays["shape"]
    if fmt == "csc":  # a CSC matrix is the CSR matrix of its transpose
        shape = shape[::-1]
    matrix = csr_from_arrays(arrays["data"], arrays["indices"], arrays["indptr"], shape, component, path,
                             finite=finite)
    return matrix.T.tocsr() if fmt == "csc" else matrix


def read_faiss_index(path: str | Path, component: str, dim: int | None = None, n_vectors: int | None = None) -> Any:
    """A faiss index file, checked against the dimension and vector count the model expects."""
    import faiss

    path = require_file(path, component)
    try:
        index = faiss.read_index(str(path))
    except Exception as exc:  # noqa: BLE001 - faiss raises RuntimeError with a C++ trace
        raise model_error(component, path, f"not a readable faiss index ({_first_line(exc)})") from None
    if dim is not None and index.d != dim:
        raise model_error(component, path, f"index has dimension {index.d}, expected {dim}")
    if n_vectors is not None and index.ntotal != n_vectors:
        raise model_error(component, path, f"index holds {index.ntotal} vectors, expected {n_vectors}")
    return index


def load_state_dict_into(module: Any, state: Any, component: str, path: str | Path) -> None:
    """`module.load_state_dict(state)` with a clear error for a state of the wrong layout or shapes."""
    import torch

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise model_error(component, path, "not a state dict of tensors")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise model_error(component, path, f"tensor {bad[0]!r} holds NaN or infinite values")
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise model_error(component, path, f"weights do not fit the model ({_first_line(exc)})") from None


def params_from(cls: Any, data: Any, component: str, path: str | Path) -> Any:
    """A config dataclass (`xmine.config.Params`) from a dict read out of a model file."""
    from xmine.errors import ConfigError

    if not isinstance(data, dict):
        raise model_error(component, path, "configuration is not a JSON object")
    try:
        return cls.from_dict(data, where=f"{component} configuration")
    except ConfigError as exc:
        raise model_error(component, path, str(exc)) from None
