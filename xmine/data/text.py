"""Plain text files (one text per line) and LF-style JSON lines (``trn.json[.gz]``), plus the
file helpers every reader/writer in :mod:`xmine.data` shares (whole-file reads, atomic writes)."""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Sequence
from itertools import chain
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from xmine.errors import DataFormatError, InvalidArgumentError
from xmine.utils import atomic_write

__all__ = ["read_text_lines", "write_text_lines", "read_jsonl", "write_jsonl"]

_GZIP_MAGIC = b"\x1f\x8b"
# Label matrices use int32 column indices.
_MAX_LABEL = np.iinfo(np.int32).max - 1


# --------------------------------------------------------------------------- shared file helpers


def read_bytes(path: str | Path) -> bytes:
    """Whole file as bytes, gunzipped when it starts with the gzip magic; OS errors become
    DataFormatError so callers never see a bare OSError for a bad path."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise DataFormatError(path, "file not found") from None
    except IsADirectoryError:
        raise DataFormatError(path, "is a directory, expected a file") from None
    except OSError as exc:
        raise DataFormatError(path, f"cannot read file: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise DataFormatError(path, f"cannot open: {exc}") from None
    if data.startswith(_GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataFormatError(path, f"corrupt gzip data: {exc}") from None
    return data


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` so that readers see either the old file or the complete new one (xmine.utils.atomic_write:
    a temporary file beside it, fsynced, then renamed)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_write(path, write)


def decode_utf8(path: str | Path, data: bytes) -> str:
    """Strict UTF-8 decode; the error names the 1-based line of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFormatError(
            path, f"invalid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})", line
        ) from None


def split_lines(text: str) -> list[str]:
    """Split on "\\n" only (str.splitlines would also split on \\x85, \\u2028, ... inside texts),
    drop one trailing "\\r" per line, and treat a final "\\n" as a terminator, not an empty line."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text:
        return []
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    if "\r" in text:
        lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    return lines


# --------------------------------------------------------------------------- plain text lines


def read_text_lines(path: str | Path, expected: int | None = None) -> list[str]:
    """One text per line (strict UTF-8); only the line terminator is stripped.

    ``expected`` (e.g. the row count of the matching label matrix) turns a count mismatch into a
    DataFormatError."""
    lines = split_lines(decode_utf8(path, read_bytes(path)))
    if expected is not None and len(lines) != expected:
        if len(lines) > expected:
            raise DataFormatError(path, f"more lines than the expected {expected}", expected + 1)
        raise DataFormatError(
            path, f"expected {expected} lines, file ends after {len(lines)}", len(lines) + 1
        )
    return lines


def _one_line(text: str) -> str:
    # A newline inside a text would silently shift every later text by one line.
    if "\n" in text or "\r" in text:
        text = text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    return text


def write_text_lines(path: str | Path, texts: Sequence[str]) -> None:
    """Write one text per line (UTF-8, atomic); newlines inside a text become spaces."""
    body = "".join(_one_line(t) + "\n" for t in texts)
    atomic_write_bytes(path, body.encode("utf-8"))


# --------------------------------------------------------------------------- LF JSON lines


def _parse_json_lines(path: str | Path, lines: list[str]) -> list[object]:
    """json.loads per line: as fast as one call on a joined array (measured), and a joined parse could
    let a malformed pair of lines merge into one valid object."""
    out = []
    loads = json.loads
    for i, ln in enumerate(lines):
        try:
            out.append(loads(ln))
        except (ValueError, RecursionError) as exc:
            problem = "empty line (expected a JSON object)" if not ln.strip() else f"invalid JSON: {exc}"
            raise DataFormatError(path, problem, i + 1) from None
    return out


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_targets(
    path: str | Path, line: int, ind: object, rel: object, n_labels: int | None
) -> tuple[list[int], list[float] | None]:
    """Per-line validation of target_ind / target_rel; only reached when the vectorised check fails
    or for its message, so it can afford to look at every entry."""
    if not isinstance(ind, list):
        raise DataFormatError(path, f'"target_ind" must be a list, got {type(ind).__name__}', line)
    seen: set[int] = set()
    for v in ind:
        if type(v) is not int:
            raise DataFormatError(path, f'"target_ind" entry {_short(v)} is not an integer', line)
        if v < 0:
            raise DataFormatError(path, f"negative label index {v}", line)
        if v > _MAX_LABEL:
            raise DataFormatError(path, f"label index {_short(v)} is implausibly large", line)
        if n_labels is not None and v >= n_labels:
            raise DataFormatError(path, f"label index {v} out of range (n_labels={n_labels})", line)
        if v in seen:
            raise DataFormatError(path, f"duplicate label index {v}", line)
        seen.add(v)
    if rel is None:
        return ind, None
    if not isinstance(rel, list):
        raise DataFormatError(path, f'"target_rel" must be a list, got {type(rel).__name__}', line)
    if len(rel) != len(ind):
        raise DataFormatError(
            path, f'"target_rel" has {len(rel)} entries but "target_ind" has {len(ind)}', line
        )
    for v in rel:
        try:
            finite = type(v) in (int, float) and math.isfinite(v)
        except OverflowError:  # an int too large for a float
            finite = False
        if not finite:
            raise DataFormatError(path, f'"target_rel" entry {_short(v)} is not a finite number', line)
        if v <= 0:
            raise DataFormatError(path, f'"target_rel" entry {_short(v)} is not positive (a relevance must be > 0; '
                                  "leave irrelevant labels out)", line)
    return ind, rel


def read_jsonl(
    path: str | Path, n_labels: int | None = None, require_targets: bool = True
) -> tuple[list[str], list[str] | None, sp.csr_matrix | None, list[str]]:
    """Read LF JSON lines (plain or gzip, detected by magic bytes).

    Returns ``(titles, contents, Y, uids)``: ``contents`` is None when no line has "content" (missing
    ones are ""), ``Y`` is ``(n, n_labels)`` float32 with target_rel values (default 1.0), or None when
    targets are absent everywhere and not required. ``n_labels`` None means max index + 1."""
    lines = split_lines(decode_utf8(path, read_bytes(path)))
    while lines and not lines[-1].strip():  # blank lines at the very end carry no record
        lines.pop()
    objs = _parse_json_lines(path, lines)

    titles: list[str] = []
    contents: list[str] = []
    uids: list[str] = []
    inds: list[object] = []
    rels: list[object] = []
    any_content = False
    any_targets = False
    for i, obj in enumerate(objs):
        line = i + 1
        if not isinstance(obj, dict):
            raise DataFormatError(path, f"expected a JSON object, got {type(obj).__name__}", line)
        title = obj.get("title")
        if title is None:
            raise DataFormatError(path, 'missing "title"', line)
        if not isinstance(title, str):
            raise DataFormatError(path, f'"title" must be a string, got {type(title).__name__}', line)
        titles.append(title)
        content = obj.get("content")
        if content is not None:
            if not isinstance(content, str):
                raise DataFormatError(path, '"content" must be a string', line)
            any_content = True
        contents.append(content or "")
        uid = obj.get("uid", i)
        if not isinstance(uid, (str, int)) or isinstance(uid, bool):
            raise DataFormatError(path, '"uid" must be a string or an integer', line)
        uids.append(str(uid))
        if "target_ind" in obj:
            any_targets = True
            inds.append(obj["target_ind"])
        elif require_targets:
            raise DataFormatError(path, 'missing "target_ind"', line)
        else:
            inds.append([])
        rels.append(obj.get("target_rel"))

    Y = None
    if any_targets or require_targets:
        Y = _targets_to_csr(path, inds, rels, n_labels)
    return titles, (contents if any_content else None), Y, uids


def _targets_to_csr(
    path: str | Path, inds: list[object], rels: list[object], n_labels: int | None
) -> sp.csr_matrix:
    """Build Y from the per-line target lists with bulk (C-level) operations; any inconsistency
    sends us to the per-line checker, whose only job is a precise message for the first bad line."""
    n = len(inds)
    L = 0
    ok = all(type(x) is list for x in inds)
    if ok:
        flat = list(chain.from_iterable(inds))  # type: ignore[arg-type]
        # type() rather than isinstance: bool is an int subclass, and True is no label index.
        ok = set(map(type, flat)) <= {int}
    if ok:
        counts = np.fromiter(map(len, inds), dtype=np.int64, count=n)  # type: ignore[arg-type]
        try:
            idx = np.array(flat, dtype=np.int64) if flat else np.zeros(0, dtype=np.int64)
        except OverflowError:
            ok = False
    if ok:
        hi = int(idx.max()) + 1 if idx.size else 0
        L = hi if n_labels is None else n_labels
        ok = not idx.size or (int(idx.min()) >= 0 and hi <= L and hi <= _MAX_LABEL + 1)
    if ok:
        vals = np.ones(idx.size, dtype=np.float32)
        if any(r is not None for r in rels):
            cl = counts.tolist()
            ok = all(r is None or (type(r) is list and len(r) == c) for r, c in zip(rels, cl, strict=True))
            if ok:
                ones = [1.0]
                per_row = (r if r is not None else ones * c for r, c in zip(rels, cl, strict=True))
                flat_rel = list(chain.from_iterable(per_row))
                ok = set(map(type, flat_rel)) <= {int, float}
            if ok:
                try:
                    rel64 = np.array(flat_rel, dtype=np.float64)
                    ok = bool(np.isfinite(rel64).all() and (rel64 > 0).all())
                except OverflowError:  # an int beyond float range
                    ok = False
            if ok:
                vals = rel64.astype(np.float32)
    if ok:
        rows = np.repeat(np.arange(n, dtype=np.int64), counts)
        key = rows * max(L, 1) + idx
        if key.size > 1 and not bool(np.all(key[1:] > key[:-1])):
            ok = not bool(np.any(np.diff(np.sort(key)) == 0))
    if not ok:
        for i, (ind, rel) in enumerate(zip(inds, rels, strict=True)):
            _check_targets(path, i + 1, ind, rel, n_labels)
        raise DataFormatError(path, "inconsistent targets")  # unreachable: the checker raises first
    indptr = np.concatenate(([0], np.cumsum(counts)))
    Y = sp.csr_matrix((vals, idx.astype(np.int32), indptr), shape=(n, L))
    Y.sort_indices()
    return Y


def write_jsonl(
    path: str | Path,
    titles: Sequence[str],
    Y: sp.spmatrix | sp.sparray | None = None,
    contents: Sequence[str] | None = None,
    uids: Sequence[str] | None = None,
    gzip_compress: bool | None = None,
) -> None:
    """Write LF JSON lines (atomic). gzip when ``gzip_compress`` or, if None, when the path ends in
    .gz. target_rel is written only when some value differs from 1."""
    n = len(titles)
    for name, seq in (("contents", contents), ("uids", uids)):
        if seq is not None and len(seq) != n:
            raise InvalidArgumentError(f"{name} has {len(seq)} entries, titles has {n}")
    Yc = None
    if Y is not None:
        Yc = sp.csr_matrix(Y)
        if Yc.shape[0] != n:
            raise InvalidArgumentError(f"Y has {Yc.shape[0]} rows, titles has {n}")
        if not Yc.has_canonical_format:
            Yc = Yc.copy()
            Yc.sum_duplicates()
    with_rel = Yc is not None and bool(np.any(Yc.data != 1))
    out = []
    for i in range(n):
        obj: dict[str, object] = {"uid": str(uids[i]) if uids is not None else str(i), "title": titles[i]}
        if contents is not None:
            obj["content"] = contents[i]
        if Yc is not None:
            s, e = Yc.indptr[i], Yc.indptr[i + 1]
            obj["target_ind"] = Yc.indices[s:e].tolist()
            if with_rel:
                obj["target_rel"] = Yc.data[s:e].tolist()
        out.append(json.dumps(obj, ensure_ascii=False))
    data = "".join(s + "\n" for s in out).encode("utf-8")
    if gzip_compress is None:
        gzip_compress = str(path).endswith(".gz")
    if gzip_compress:
        data = gzip.compress(data, mtime=0)
    atomic_write_bytes(path, data)
