"""Sorting and selection for xmine's compiled kernels: a stable argsort and a k-th smallest value, with numpy's
results (NaN after every number).

Why not numba's own `np.argsort(kind="mergesort")`, `np.sort` and `np.partition`: they are generic implementations
that numba compiles anew for every kernel and key type that calls them, and that compilation dominated a new
install's first training (np.partition alone took seconds to compile). These are small loops that compile in a
fraction of that time and run about as fast on the row lengths xmine sorts (tens to thousands of entries).

For the same reason, xmine's kernels copy and combine arrays element by element rather than with array assignments
(`a[:] = b`) or array arithmetic (`a += b`): those bring in numba's shape-mismatch errors, whose code (message
formatting included) took seconds to compile.
"""

from __future__ import annotations

import numba
import numpy as np

INSERTION_RUN = 16  # entries per run sorted by insertion before the merges


@numba.njit(cache=True, nogil=True, inline="always")
def _before(a: float, b: float) -> bool:
    """a sorts strictly before b: numpy's order, NaN after every number (two NaNs, like equal numbers, are tied)."""
    return a < b or (b != b and a == a)


@numba.njit(cache=True, nogil=True)
def stable_argsort(keys: np.ndarray) -> np.ndarray:
    """`np.argsort(keys, kind="stable")` for a 1-D array: ties keep their positions' order, NaN last. A bottom-up
    merge sort over runs sorted by insertion."""
    n = keys.shape[0]
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        order[i] = i
    for start in range(0, n, INSERTION_RUN):
        stop = min(start + INSERTION_RUN, n)
        for i in range(start + 1, stop):
            item = order[i]
            key = keys[item]
            j = i - 1
            while j >= start and _before(key, keys[order[j]]):
                order[j + 1] = order[j]
                j -= 1
            order[j + 1] = item
    source = order
    target = np.empty(n, dtype=np.int64)
    width = INSERTION_RUN
    while width < n:
        for low in range(0, n, 2 * width):
            middle = min(low + width, n)
            high = min(low + 2 * width, n)
            i, j, out = low, middle, low
            while i < middle and j < high:
                if _before(keys[source[j]], keys[source[i]]):  # only strictly smaller right entries go first
                    target[out] = source[j]
                    j += 1
                else:
                    target[out] = source[i]
                    i += 1
                out += 1
            while i < middle:
                target[out] = source[i]
                i += 1
                out += 1
            while j < high:
                target[out] = source[j]
                j += 1
                out += 1
        source, target = target, source
        width *= 2
    return source


@numba.njit(cache=True, nogil=True)
def sorted_copy(values: np.ndarray) -> np.ndarray:
    """`np.sort(values)` for a 1-D array."""
    return values[stable_argsort(values)]


@numba.njit(cache=True, nogil=True)
def kth_smallest(values: np.ndarray, k: int) -> float:
    """`np.partition(values, k)[k]` for a 1-D float array (0 <= k < len): the k-th smallest, NaN when fewer than
    k + 1 values are numbers. `values` is used as scratch: its contents are overwritten. A quickselect with a
    three-way partition, so that the many equal values of vote sums cost no more than distinct ones."""
    n = 0
    for i in range(values.shape[0]):  # the numbers first; NaN sorts after all of them
        if values[i] == values[i]:
            values[n] = values[i]
            n += 1
    if k >= n:
        return np.nan
    low, high = 0, n - 1
    while True:
        if low == high:
            return values[low]
        a, b, c = values[low], values[(low + high) // 2], values[high]
        pivot = max(min(a, b), min(max(a, b), c))  # the median of three
        # values[low:less] < pivot, values[less:i] == pivot, values[greater + 1:high + 1] > pivot
        less, i, greater = low, low, high
        while i <= greater:
            value = values[i]
            if value < pivot:
                values[i], values[less] = values[less], value
                less += 1
                i += 1
            elif value > pivot:
                values[i], values[greater] = values[greater], value
                greater -= 1
            else:
                i += 1
        if k < less:
            high = less - 1
        elif k <= greater:
            return pivot
        else:
            low = greater + 1
