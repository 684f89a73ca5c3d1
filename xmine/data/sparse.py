"""Sparse-matrix text formats of the Extreme Classification Repository.

* ``read_sparse_matrix`` / ``write_sparse_matrix``: header ``num_rows num_cols``, then one row per line
  of ``col:value`` pairs (``trn_X_Y.txt``, ``trn_X_Xf.txt``).
* ``read_single_file`` / ``write_single_file``: header ``num_points num_features num_labels``, then
  ``l1,l2,... f:v f:v ...`` per line (``trn_data.txt``).
* ``read_filter_pairs``: ``row label`` per line (``filter_labels_test.txt``).

Parsing is vectorised: the rows are cut into chunks of whole lines, each chunk's layout is checked
with numpy on its bytes and all numbers are parsed by one ``np.fromstring`` call. Only when a chunk
fails a check does a per-line scanner run over that chunk, to name the first bad line and what is
wrong with it. Line numbers are 1-based and count the header as line 1.

Row counting: every row ends with a newline, and a last row without one still counts when it is not
blank. So ``"2 3\\n0:1\\n\\n"`` is two rows (the second empty), ``"2 3\\n0:1\\n"`` is one row (too
few), and blank lines after the declared rows are ignored.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from xmine.data.text import atomic_write_bytes, read_bytes
from xmine.errors import DataFormatError, InvalidArgumentError
from xmine.topk import pair_keys

__all__ = [
    "read_sparse_matrix",
    "write_sparse_matrix",
    "read_single_file",
    "write_single_file",
    "read_filter_pairs",
]

# Chunks of ~8 MiB keep the per-byte temporaries (masks, copies) small next to the result.
_CHUNK_BYTES = 1 << 23

_WS_BYTES = b" \t\r\n"
_PAIR_CHARS = b"0123456789.-+eE:" + _WS_BYTES
_INT_CHARS = b"0123456789" + _WS_BYTES


def _lut(chars: bytes) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[list(chars)] = True
    return table


_IS_WS = _lut(_WS_BYTES)
_IS_DIGIT = _lut(b"0123456789")
# Characters that may appear in a value but never in an index.
_IS_VALUE_ONLY = _lut(b".-+eE")
_IS_LABEL_CHAR = _lut(b"0123456789,")

_DIGIT_VALUE = np.full(256, -1, dtype=np.int8)
_DIGIT_VALUE[48:58] = np.arange(10)
# Decimals with at most this many digits fit a float64 mantissa exactly (10**15 < 2**53).
_MAX_DIGITS = 15

_INDEX_RE = re.compile(rb"-?[0-9]+")
_VALUE_RE = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT64_MAX = np.iinfo(np.int64).max
# Header counts above this are taken as corrupt; it also keeps row * n_cols + col (the duplicate
# check's sort key) far inside int64.
_MAX_DIM = 2**36


def _show(token: bytes, limit: int = 40) -> str:
    text = token.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------- header and row region


def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 2**62


def _read_header(path: str | Path, data: bytes, fields: tuple[str, ...]) -> tuple[list[int], int]:
    """Parse the header line; returns its integers and the offset of the first row."""
    spec = " ".join(fields)
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # some Windows tools start files with a BOM
    if not data or data.isspace():  # isspace: no copy of a large file, unlike strip()
        raise DataFormatError(path, f"empty file (expected a header line '{spec}')", 1)
    end = data.find(b"\n")
    end = len(data) if end < 0 else end
    try:
        text = data[bom:end].decode("ascii").strip()
    except UnicodeDecodeError:
        raise DataFormatError(path, f"header is not ASCII (expected '{spec}')", 1) from None
    parts = text.split()
    if len(parts) != len(fields):
        raise DataFormatError(
            path, f"header must be {len(fields)} integers '{spec}', got {len(parts)} field(s): {text!r}", 1
        )
    for name, part in zip(fields, parts, strict=True):
        if not part.isdigit():
            raise DataFormatError(path, f"header field {name} is not a non-negative integer: {part!r}", 1)
        if int(part) > _MAX_DIM:
            raise DataFormatError(path, f"header field {name} = {part} is implausibly large", 1)
        if int(part) * 8 > _memory_bytes():  # one int64 per row or column is the least any use allocates
            raise DataFormatError(path, f"header field {name} = {part} is more than this machine's memory allows "
                                  f"({int(part) * 8 / 2**30:.0f} GiB for one 8-byte value each, "
                                  f"{_memory_bytes() / 2**30:.0f} GiB of memory)", 1)
    return [int(p) for p in parts], end + 1


def _row_region(path: str | Path, data: bytes, start: int, n_rows: int) -> tuple[int, int]:
    """Byte range [start, end) holding exactly the ``n_rows`` declared rows; raises if the file has
    fewer rows or non-blank lines after them."""
    total_nl = data.count(b"\n", start)
    last_nl = data.rfind(b"\n", start)
    tail = data[max(last_nl + 1, start) :]
    present = total_nl + (1 if tail.strip() else 0)
    if present < n_rows:
        raise DataFormatError(
            path, f"file ends after {present} row(s) but the header declares {n_rows}", present + 2
        )
    if n_rows == 0:
        end = start
    elif total_nl == n_rows:
        end = last_nl + 1
    elif total_nl > n_rows:
        newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8, offset=start) == 10)
        end = start + int(newlines[n_rows - 1]) + 1
    else:  # the last declared row is the unterminated tail
        return start, len(data)
    rest = data[end:]
    if rest.strip():
        for k, line in enumerate(rest.split(b"\n")):
            if line.strip():
                raise DataFormatError(
                    path, f"extra row beyond the {n_rows} declared in the header", n_rows + k + 2
                )
    return start, end


def _chunks(data: bytes, start: int, end: int):
    """Yield (chunk, rows before it) over whole lines; every chunk ends with a newline."""
    pos = start
    rows = 0
    while pos < end:
        cut = end
        if pos + _CHUNK_BYTES < end:
            nl = data.find(b"\n", pos + _CHUNK_BYTES, end)
            if nl >= 0:
                cut = nl + 1
        chunk = data[pos:cut]
        if not chunk.endswith(b"\n"):
            chunk += b"\n"
        yield chunk, rows
        rows += chunk.count(b"\n")
        pos = cut


# --------------------------------------------------------------------------- fast (vectorised) checks


def _fast_pairs(chunk: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Parse ``idx:val`` tokens of a chunk of whole lines. Returns (entries per line, indices,
    values as float64), or None when the layout is not exactly tokens of ``digits:number``
    separated by whitespace (the caller then rescans the chunk line by line)."""
    if chunk.translate(None, _PAIR_CHARS):
        return None
    a = np.frombuffer(chunk, dtype=np.uint8)
    newlines = np.flatnonzero(a == 10)
    colons = np.flatnonzero(a == 58)
    if colons.size == 0:
        # The charset check passed and there is no colon: valid only if nothing but whitespace.
        if not chunk.isspace():
            return None
        return np.zeros(newlines.size, np.int64), np.zeros(0, np.int64), np.zeros(0)
    # Token boundaries from the whitespace mask; the chunk ends with "\n", so every token ends.
    in_tok = ~_IS_WS[a]
    step = np.diff(in_tok.view(np.int8))
    starts = np.flatnonzero(step == 1) + 1
    if in_tok[0]:
        starts = np.concatenate(([0], starts))
    ends = np.flatnonzero(step == -1) + 1
    # Exactly one colon per token, strictly inside it: colon i sits in token i with a non-empty
    # index before it and a non-empty value after it.
    if starts.size != colons.size or not (np.all(starts < colons) and np.all(colons + 1 < ends)):
        return None
    counts = np.diff(np.searchsorted(colons, newlines), prepend=0)
    # Common case: plain decimals ("17:0.25"), parsed column by column without fromstring.
    padded = np.zeros(a.size + _MAX_DIGITS + 2, dtype=np.uint8)
    padded[: a.size] = a
    idx = _parse_decimal(padded, starts, colons, allow_dot=False)
    vals = _parse_decimal(padded, colons + 1, ends, allow_dot=True) if idx is not None else None
    if idx is not None and vals is not None:
        return counts, idx, vals
    # General numbers (signs, exponents). Index parts must still be digits only: '.', '-', '+', 'e'
    # must come after their token's colon.
    special = np.flatnonzero(_IS_VALUE_ONLY[a])
    if special.size:
        owner = np.searchsorted(starts, special, side="right") - 1
        if np.any(special < colons[owner]):
            return None
    try:
        nums = np.fromstring(chunk.replace(b":", b" "), dtype=np.float64, sep=" ")
    except ValueError:  # a value that is no number ("1e", "1-2", "..")
        return None
    if nums.size != 2 * colons.size:
        return None
    return counts, nums[0::2], nums[1::2]


def _parse_decimal(padded: np.ndarray, lo: np.ndarray, hi: np.ndarray, allow_dot: bool) -> np.ndarray | None:
    """Parse the byte spans padded[lo:hi] as unsigned decimals (digits, plus one optional '.' when
    ``allow_dot``), one character column at a time over all spans at once (``padded`` has at least
    _MAX_DIGITS + 1 spare bytes after the data so every column can be gathered). Returns int64 (no
    dot) or float64 values, or None for anything else (signs, exponents, too many digits), which
    callers hand to np.fromstring. mantissa / 10**k with mantissa < 2**53 and k <= 15 divides two
    exact doubles, so the result is correctly rounded, the same value strtod gives."""
    n = lo.size
    if n == 0:
        return np.zeros(0, np.float64 if allow_dot else np.int64)
    # int32 positions (chunks are far below 2 GiB) halve the memory traffic of the column loop.
    length = (hi - lo).astype(np.int32)
    width = int(length.max())
    if int(length.min()) < 1 or width > _MAX_DIGITS + allow_dot:
        return None
    mant = np.zeros(n, np.int64)
    frac = np.zeros(n, np.int8)
    dots = np.zeros(n, np.int8)
    bad = np.zeros(n, bool)
    pos = lo.astype(np.int32)
    for k in range(width):
        ch = padded[pos]
        pos += 1
        dv = _DIGIT_VALUE[ch]
        active = length > k
        is_digit = (dv >= 0) & active
        if allow_dot:
            is_dot = (ch == 46) & active
            bad |= active & ~is_digit & ~is_dot
            frac += is_digit & (dots > 0)
            dots += is_dot
        else:
            bad |= active & ~is_digit
        mant *= np.where(is_digit, 10, 1)
        mant += np.where(is_digit, dv, 0)
    if bad.any():
        return None
    if not allow_dot:
        return mant
    n_digits = length - dots
    if dots.max() > 1 or n_digits.min() < 1 or n_digits.max() > _MAX_DIGITS:
        return None
    return mant / np.power(10.0, frac)


def _entries_ok(counts: np.ndarray, idx: np.ndarray, vals: np.ndarray, n_cols: int) -> tuple[bool, bool]:
    """(valid, sorted): indices in range, values finite, no index twice in a row."""
    if idx.size == 0:
        return True, True
    if idx.max() >= n_cols or not np.isfinite(vals).all():
        return False, False
    key = pair_keys(np.repeat(np.arange(counts.size, dtype=np.int64), counts), idx, n_cols)
    if np.all(key[1:] > key[:-1]):
        return True, True
    return not bool(np.any(np.diff(np.sort(key)) == 0)), False


def _fast_single(chunk: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Vectorised parse of single-file rows: blank out each line's leading label list (first token,
    when the line does not start with whitespace and that token has no colon) and parse the rest as
    feature pairs. Returns (feature counts, feature idx, values, label counts, label idx) or None."""
    a = np.frombuffer(chunk, dtype=np.uint8)
    newlines = np.flatnonzero(a == 10)
    n_lines = newlines.size
    line_starts = np.empty(n_lines, dtype=np.int64)
    line_starts[0] = 0
    line_starts[1:] = newlines[:-1] + 1
    ws = _IS_WS[a]
    ws_pos = np.flatnonzero(ws)
    first_ws = ws_pos[np.searchsorted(ws_pos, line_starts)]  # exists: every line ends with "\n"
    colons = np.flatnonzero(a == 58)
    if colons.size:
        j = np.searchsorted(colons, line_starts)
        first_colon = np.where(j < colons.size, colons[np.minimum(j, colons.size - 1)], a.size)
    else:
        first_colon = np.full(n_lines, a.size)
    has_labels = ~ws[line_starts] & (first_colon > first_ws)
    lab_lo, lab_hi = line_starts[has_labels], first_ws[has_labels]

    # +1 where a list starts, -1 where it ends (a non-blank vs a whitespace byte, never the same
    # position), so the running sum marks the label-list bytes.
    in_label = np.zeros(a.size, dtype=np.int8)
    in_label[lab_lo] = 1
    in_label[lab_hi] = -1
    in_label = np.cumsum(in_label, dtype=np.int8).view(bool)
    if not _IS_LABEL_CHAR[a[in_label]].all():
        return None
    commas = np.flatnonzero((a == 44) & in_label)
    # "1,,2", ",1" and "1," all put a non-digit next to some comma.
    if commas.size and (
        commas[0] == 0 or not (_IS_DIGIT[a[commas - 1]].all() and _IS_DIGIT[a[commas + 1]].all())
    ):
        return None
    lab_counts = np.zeros(n_lines, dtype=np.int64)
    lab_counts[has_labels] = 1
    if commas.size:
        lab_counts += np.bincount(np.searchsorted(newlines, commas), minlength=n_lines)
    n_lab = int(lab_counts.sum())
    if n_lab:
        # Label numbers span from a list start or comma+1 to the next comma or the list end.
        lo = np.sort(np.concatenate((lab_lo, commas + 1)))
        hi = np.sort(np.concatenate((commas, lab_hi)))
        padded = np.zeros(a.size + _MAX_DIGITS + 2, dtype=np.uint8)
        padded[: a.size] = a
        lab_idx = _parse_decimal(padded, lo, hi, allow_dot=False)
        if lab_idx is None:
            return None
    else:
        lab_idx = np.zeros(0, np.int64)

    feat_buf = a.copy()
    feat_buf[in_label] = 32
    feats = _fast_pairs(feat_buf.tobytes())
    if feats is None:
        return None
    return feats[0], feats[1], feats[2], lab_counts, lab_idx


# --------------------------------------------------------------------------- slow (per-line) scanners


def _scan_pairs(
    path: str | Path, tokens: list[bytes], line: int, n_cols: int, what: str
) -> tuple[list[int], list[float]]:
    """Validate ``idx:val`` tokens of one line; raise on the first bad one."""
    idx: list[int] = []
    vals: list[float] = []
    seen: set[int] = set()
    for tok in tokens:
        i_s, sep, v_s = tok.partition(b":")
        if not sep or not _INDEX_RE.fullmatch(i_s) or not _VALUE_RE.fullmatch(v_s):
            raise DataFormatError(path, f"malformed pair '{_show(tok)}' (expected index:value)", line)
        i = int(i_s)
        if i < 0:
            raise DataFormatError(path, f"negative {what} index {i}", line)
        if i >= n_cols:
            raise DataFormatError(
                path, f"{what} index {i} out of range (header declares {n_cols} {what}s)", line
            )
        if i in seen:
            raise DataFormatError(path, f"duplicate index {i}", line)
        v = float(v_s)
        if not math.isfinite(v):
            raise DataFormatError(path, f"value '{_show(v_s)}' is not a finite number", line)
        seen.add(i)
        idx.append(i)
        vals.append(v)
    return idx, vals


def _scan_labels(path: str | Path, token: bytes, line: int, n_labels: int) -> list[int]:
    out: list[int] = []
    seen: set[int] = set()
    for part in token.split(b","):
        if not _INDEX_RE.fullmatch(part):
            raise DataFormatError(path, f"malformed label list '{_show(token)}' (expected l1,l2,...)", line)
        i = int(part)
        if i < 0:
            raise DataFormatError(path, f"negative label index {i}", line)
        if i >= n_labels:
            raise DataFormatError(
                path, f"label index {i} out of range (header declares {n_labels} labels)", line
            )
        if i in seen:
            raise DataFormatError(path, f"duplicate label index {i}", line)
        seen.add(i)
        out.append(i)
    return out


def _slow_pairs(path: str | Path, chunk: bytes, first_line: int, n_cols: int, what: str) -> tuple:
    counts, idx, vals = [], [], []
    for k, raw in enumerate(chunk.split(b"\n")[:-1]):
        i, v = _scan_pairs(path, raw.split(), first_line + k, n_cols, what)
        counts.append(len(i))
        idx.extend(i)
        vals.extend(v)
    return np.array(counts, np.int64), np.array(idx, np.float64), np.array(vals, np.float64)


def _slow_single(path: str | Path, chunk: bytes, first_line: int, n_feat: int, n_lab: int) -> tuple:
    fcounts, fidx, fvals, lcounts, lidx = [], [], [], [], []
    for k, raw in enumerate(chunk.split(b"\n")[:-1]):
        line = first_line + k
        tokens = raw.split()
        labels: list[int] = []
        if tokens and not raw[:1].isspace() and b":" not in tokens[0]:
            labels = _scan_labels(path, tokens[0], line, n_lab)
            tokens = tokens[1:]
        i, v = _scan_pairs(path, tokens, line, n_feat, "feature")
        fcounts.append(len(i))
        fidx.extend(i)
        fvals.extend(v)
        lcounts.append(len(labels))
        lidx.extend(labels)
    return (
        np.array(fcounts, np.int64),
        np.array(fidx, np.float64),
        np.array(fvals, np.float64),
        np.array(lcounts, np.int64),
        np.array(lidx, np.float64),
    )


# --------------------------------------------------------------------------- assembling matrices


class _CsrBuilder:
    """Collects per-chunk (counts, indices, values) and builds one CSR matrix."""

    def __init__(self, n_cols: int, dtype: np.dtype) -> None:
        self.n_cols = n_cols
        self.dtype = dtype
        self.idx_dtype = np.int32 if n_cols <= np.iinfo(np.int32).max else np.int64
        self.counts: list[np.ndarray] = []
        self.indices: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.sorted = True

    def add(self, counts: np.ndarray, idx: np.ndarray, vals: np.ndarray | None, is_sorted: bool) -> None:
        self.counts.append(counts)
        self.indices.append(idx.astype(self.idx_dtype))
        self.values.append(np.ones(idx.size, self.dtype) if vals is None else vals.astype(self.dtype))
        self.sorted &= is_sorted

    def build(self, n_rows: int) -> sp.csr_matrix:
        counts = np.concatenate(self.counts) if self.counts else np.zeros(0, np.int64)
        nnz = int(counts.sum())
        ptr_dtype = np.int32 if nnz <= np.iinfo(np.int32).max and self.idx_dtype == np.int32 else np.int64
        indptr = np.zeros(n_rows + 1, dtype=ptr_dtype)
        np.cumsum(counts, out=indptr[1:])
        indices = np.concatenate(self.indices) if self.indices else np.zeros(0, self.idx_dtype)
        values = np.concatenate(self.values) if self.values else np.zeros(0, self.dtype)
        m = sp.csr_matrix(
            (values, indices.astype(ptr_dtype, copy=False), indptr), shape=(n_rows, self.n_cols)
        )
        if not self.sorted:
            m.sort_indices()
        m.has_canonical_format = True  # no duplicates (checked) and sorted
        return m


def _parse_rows(
    path: str | Path,
    data: bytes,
    start: int,
    n_rows: int,
    fast: Callable[[bytes], tuple | None],
    slow: Callable[[bytes, int], tuple],
    check: Callable[[tuple], tuple[bool, bool]],
    sink: Callable[[tuple, bool], None],
) -> None:
    """Drive the chunked parse: fast path per chunk, per-line rescan of a chunk that fails it."""
    lo, hi = _row_region(path, data, start, n_rows)
    for chunk, rows_before in _chunks(data, lo, hi):
        first_line = rows_before + 2  # line 1 is the header
        parsed = fast(chunk)
        ok, is_sorted = check(parsed) if parsed is not None else (False, False)
        if not ok:
            # The scanner raises on the first bad line; if it finds none (e.g. exotic whitespace the
            # fast path refuses), its own parse is the result.
            parsed = slow(chunk, first_line)
            ok, is_sorted = check(parsed)
            if not ok:
                raise DataFormatError(path, "inconsistent rows", first_line)
        sink(parsed, is_sorted)


# --------------------------------------------------------------------------- public API


def read_sparse_matrix(path: str | Path, n_cols: int | None = None, dtype=np.float32) -> sp.csr_matrix:
    """Read a ``num_rows num_cols`` + ``col:value`` rows file into a CSR matrix.

    ``n_cols``, when given, must equal the header's column count."""
    data = read_bytes(path)
    (n_rows, header_cols), start = _read_header(path, data, ("num_rows", "num_cols"))
    if n_cols is not None and n_cols != header_cols:
        raise DataFormatError(path, f"header declares {header_cols} columns, expected {n_cols}", 1)
    builder = _CsrBuilder(header_cols, np.dtype(dtype))

    def check(p: tuple) -> tuple[bool, bool]:
        return _entries_ok(p[0], p[1], p[2], header_cols)

    _parse_rows(
        path,
        data,
        start,
        n_rows,
        _fast_pairs,
        lambda chunk, line: _slow_pairs(path, chunk, line, header_cols, "column"),
        check,
        lambda p, s: builder.add(p[0], p[1], p[2], s),
    )
    del data  # free the file's bytes before the per-chunk arrays are concatenated (peak memory)
    return builder.build(n_rows)


def read_single_file(path: str | Path, dtype=np.float32) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Read the single-file layout; returns ``(X, Y)`` with Y's values all 1."""
    data = read_bytes(path)
    (n_rows, n_feat, n_lab), start = _read_header(path, data, ("num_points", "num_features", "num_labels"))
    xb = _CsrBuilder(n_feat, np.dtype(dtype))
    yb = _CsrBuilder(n_lab, np.dtype(dtype))

    def check(p: tuple) -> tuple[bool, bool]:
        x_ok, x_sorted = _entries_ok(p[0], p[1], p[2], n_feat)
        y_ok, y_sorted = _entries_ok(p[3], p[4], np.zeros(0), n_lab)
        return x_ok and y_ok, x_sorted and y_sorted

    def sink(p: tuple, is_sorted: bool) -> None:
        xb.add(p[0], p[1], p[2], is_sorted)
        yb.add(p[3], p[4], None, is_sorted)

    _parse_rows(
        path,
        data,
        start,
        n_rows,
        _fast_single,
        lambda chunk, line: _slow_single(path, chunk, line, n_feat, n_lab),
        check,
        sink,
    )
    del data  # free the file's bytes before the per-chunk arrays are concatenated (peak memory)
    return xb.build(n_rows), yb.build(n_rows)


def read_filter_pairs(path: str | Path, n_rows: int | None = None, n_labels: int | None = None) -> np.ndarray:
    """Read ``row label`` lines into an ``(m, 2)`` int64 array, checked against the bounds if given.
    Blank lines are allowed only at the end; an empty file means no pairs."""
    data = read_bytes(path)
    if data.startswith(b"\xef\xbb\xbf"):  # a BOM, as the other readers accept
        data = data[3:]
    body = data.rstrip()
    if not body:
        return np.zeros((0, 2), dtype=np.int64)
    body += b"\n"
    pairs = _fast_filter_pairs(body)
    if pairs is not None and pairs.size:
        bad = pairs.max(axis=0)
        if (n_rows is not None and bad[0] >= n_rows) or (n_labels is not None and bad[1] >= n_labels):
            pairs = None
    if pairs is None:
        pairs = _slow_filter_pairs(path, body, n_rows, n_labels)
    return pairs


def _fast_filter_pairs(body: bytes) -> np.ndarray | None:
    if body.translate(None, _INT_CHARS):
        return None
    a = np.frombuffer(body, dtype=np.uint8)
    newlines = np.flatnonzero(a == 10)
    ws = _IS_WS[a]
    prev_ws = np.empty_like(ws)
    prev_ws[0] = True
    prev_ws[1:] = ws[:-1]
    starts = np.flatnonzero(~ws & prev_ws)
    per_line = np.bincount(np.searchsorted(newlines, starts), minlength=newlines.size)
    if not np.all(per_line == 2):
        return None
    try:
        nums = np.fromstring(body, dtype=np.int64, sep=" ")
    except ValueError:
        return None
    # fromstring saturates out-of-range integers at INT64_MAX instead of failing.
    if nums.size != 2 * newlines.size or (nums.size and (nums.min() < 0 or nums.max() == _INT64_MAX)):
        return None
    return nums.reshape(-1, 2)


def _slow_filter_pairs(path: str | Path, body: bytes, n_rows: int | None, n_labels: int | None) -> np.ndarray:
    out: list[tuple[int, int]] = []
    for k, raw in enumerate(body.split(b"\n")[:-1]):
        line = k + 1
        tokens = raw.split()
        if len(tokens) != 2:
            problem = "blank line" if not tokens else f"expected 'row label', got {len(tokens)} field(s)"
            raise DataFormatError(path, problem, line)
        vals = []
        for name, tok, bound in (("row", tokens[0], n_rows), ("label", tokens[1], n_labels)):
            if not _INDEX_RE.fullmatch(tok):
                raise DataFormatError(path, f"{name} index '{_show(tok)}' is not an integer", line)
            v = int(tok)
            if v < 0:
                raise DataFormatError(path, f"negative {name} index {v}", line)
            if v > _INT64_MAX or (bound is not None and v >= bound):
                limit = f"n_{name}s={bound}" if bound is not None else "beyond int64"
                raise DataFormatError(path, f"{name} index {_show(tok)} out of range ({limit})", line)
            vals.append(v)
        out.append((vals[0], vals[1]))
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def _format_rows(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray | None, fmt: str) -> list[str]:
    """Per-row text ``idx:val idx:val`` (or ``i,j,k`` when values is None). Tokens are built with
    numpy string ufuncs; each distinct value is formatted once."""
    idx_s = indices.astype(np.int64).astype(str)
    if values is None:
        tokens = idx_s.tolist()
        sep = ","
    else:
        uniq, inv = np.unique(values, return_inverse=True)
        val_s = np.array(_format_values(uniq, fmt) or [""], dtype=str)
        tokens = np.strings.add(np.strings.add(idx_s, ":"), val_s[inv.ravel()]).tolist()
        sep = " "
    bounds = indptr.tolist()
    return [sep.join(tokens[s:e]) for s, e in zip(bounds[:-1], bounds[1:], strict=True)]


def _format_values(uniq: np.ndarray, fmt: str) -> list[str]:
    """Format each distinct value. With the default "%g", a value that 6 significant digits would
    not give back exactly (e.g. float32 0.81880003) is written in its shortest exact form instead,
    so write -> read returns the same matrix; any other ``fmt`` is applied as given."""
    out = [fmt % v for v in uniq.tolist()]
    if fmt != "%g" or not out:
        return out
    back = np.array(out, dtype=str).astype(np.float64).astype(uniq.dtype)
    for i in np.flatnonzero(back != uniq).tolist():
        value = uniq[i]
        text = str(value)  # numpy's shortest round-trip repr of a scalar of this dtype
        # The reader goes text -> float64 -> dtype; in the rare case that double rounding spoils the
        # shortest form, 17 significant digits name the float64 (hence also the float32) exactly.
        if uniq.dtype.kind == "f" and uniq.dtype.type(float(text)) != value:
            text = f"{float(value):.17g}"
        out[i] = text
    return out


def _canonical_csr(matrix: sp.spmatrix | sp.sparray, fmt: str) -> sp.csr_matrix:
    m = sp.csr_matrix(matrix)
    if m.dtype.kind not in "iuf":
        m = m.astype(np.float32)
    if not m.has_canonical_format:
        m = m.copy()
        m.sum_duplicates()  # sorts too; the reader rejects duplicate indices
    if m.nnz and not np.isfinite(m.data).all():
        raise InvalidArgumentError("matrix has non-finite values, which the format cannot hold")
    try:
        probe = fmt % 1.5
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"bad value format {fmt!r}: {exc}") from None
    if not _VALUE_RE.fullmatch(probe.encode("ascii", "replace")):
        raise InvalidArgumentError(f"value format {fmt!r} does not produce a plain number (got {probe!r})")
    return m


def write_sparse_matrix(path: str | Path, matrix: sp.spmatrix | sp.sparray, fmt: str = "%g") -> None:
    """Write ``matrix`` in the ``num_rows num_cols`` + ``col:value`` format (atomic).

    The default ``"%g"`` writes short values and switches to the shortest exact form for values it
    would round, so reading the file back gives the same matrix; other formats apply as given."""
    m = _canonical_csr(matrix, fmt)
    rows = _format_rows(m.indptr, m.indices, m.data, fmt)
    text = f"{m.shape[0]} {m.shape[1]}\n" + "".join(r + "\n" for r in rows)
    atomic_write_bytes(path, text.encode("ascii"))


def write_single_file(
    path: str | Path, X: sp.spmatrix | sp.sparray, Y: sp.spmatrix | sp.sparray, fmt: str = "%g"
) -> None:
    """Write ``X`` (features) and ``Y`` (labels; only the pattern is kept) in the single-file layout."""
    Xc = _canonical_csr(X, fmt)
    Yc = _canonical_csr(Y, fmt)
    if Xc.shape[0] != Yc.shape[0]:
        raise InvalidArgumentError(f"X has {Xc.shape[0]} rows but Y has {Yc.shape[0]}")
    feats = _format_rows(Xc.indptr, Xc.indices, Xc.data, fmt)
    labels = _format_rows(Yc.indptr, Yc.indices, None, fmt)
    # A row without labels starts with a space, which is how the reader tells "no labels" apart.
    lines = [f"{lab} {ft}" if ft else lab for lab, ft in zip(labels, feats, strict=True)]
    text = f"{Xc.shape[0]} {Xc.shape[1]} {Yc.shape[1]}\n" + "".join(ln + "\n" for ln in lines)
    atomic_write_bytes(path, text.encode("ascii"))
