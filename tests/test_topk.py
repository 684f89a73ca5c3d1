from __future__ import annotations

import numpy as np
import pytest

from xmine.models.ngame import _gathered_products
from xmine.topk import unique_ids


@pytest.mark.parametrize("shape", [(1, 1), (7, 30), (64, 200)])
def test_unique_ids_equals_numpy_unique(shape):
    rng = np.random.default_rng(shape[1])
    ids = rng.integers(0, 500, size=shape)
    unique, inverse = unique_ids(ids, 500)
    want_unique, want_inverse = np.unique(ids, return_inverse=True)
    assert np.array_equal(unique, want_unique)
    assert np.array_equal(inverse, want_inverse.reshape(shape))
    assert np.array_equal(unique[inverse], ids)


def test_gathered_products_equal_the_plain_gather():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(300, 16)).astype(np.float32)
    queries = rng.normal(size=(9, 16)).astype(np.float32)
    ids = rng.integers(0, 300, size=(9, 40))
    plain = np.einsum("nd,ncd->nc", queries, table[ids])
    assert np.allclose(_gathered_products(queries, table, ids), plain, atol=1e-5)
