"""The compiled sorting primitives give numpy's answers: stable order, ties by position, NaN last."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from xmine.sorting import kth_smallest, sorted_copy, stable_argsort

# few distinct values, both zeros and NaN: ties everywhere, and the orderings numpy defines for them
FLOATS = st.sampled_from([-2.5, -1.0, -0.0, 0.0, 0.5, 1.0, 3.0, np.inf, -np.inf, np.nan])
FLOAT_ARRAYS = hnp.arrays(np.float64, st.integers(0, 80), elements=FLOATS)
INT_ARRAYS = hnp.arrays(np.int64, st.integers(0, 80), elements=st.integers(-5, 5))


@settings(max_examples=200, deadline=None)
@given(FLOAT_ARRAYS)
def test_stable_argsort_equals_numpy_on_floats_with_ties_and_nan(keys):
    assert np.array_equal(stable_argsort(keys), np.argsort(keys, kind="stable"))


@settings(max_examples=200, deadline=None)
@given(INT_ARRAYS)
def test_stable_argsort_and_sorted_copy_equal_numpy_on_ints(keys):
    assert np.array_equal(stable_argsort(keys), np.argsort(keys, kind="stable"))
    assert np.array_equal(sorted_copy(keys), np.sort(keys))


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 33, 1000, 4099])
def test_stable_argsort_across_merge_widths(n):
    rng = np.random.default_rng(n)
    keys = rng.integers(0, max(1, n // 7), size=n).astype(np.float64)  # many ties across run boundaries
    assert np.array_equal(stable_argsort(keys), np.argsort(keys, kind="stable"))
    values = rng.permutation(n).astype(np.int64)
    assert np.array_equal(sorted_copy(values), np.arange(n))


@settings(max_examples=300, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 80), elements=FLOATS), st.data())
def test_kth_smallest_equals_numpy_partition(values, data):
    k = data.draw(st.integers(0, len(values) - 1))
    want = np.partition(values.copy(), k)[k]
    got = kth_smallest(values.copy(), k)
    assert (np.isnan(got) and np.isnan(want)) or got == want


def test_kth_smallest_on_many_equal_values_and_all_nan():
    values = np.repeat([3.0, 1.0, 2.0], 5000)
    for k in (0, 4999, 5000, 9999, 10000, 14999):
        assert kth_smallest(values.copy(), k) == np.sort(values)[k]
    assert np.isnan(kth_smallest(np.full(4, np.nan), 0))
    assert np.isnan(kth_smallest(np.array([1.0, np.nan, np.nan]), 1))  # one number: the second smallest is NaN
