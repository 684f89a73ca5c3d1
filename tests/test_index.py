from __future__ import annotations

import numpy as np
import pytest

from xmine.config import IndexConfig
from xmine.errors import XmineError
from xmine.index import LabelIndex, exact_top_k


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_index_matches_brute_force():
    rng = np.random.default_rng(0)
    vectors, queries = _unit(rng, 500, 16), _unit(rng, 20, 16)
    scores, ids = LabelIndex.build(vectors, IndexConfig(kind="exact")).search(queries, 10)
    ref = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    assert np.array_equal(ids, ref)
    assert np.allclose(scores, np.take_along_axis(queries @ vectors.T, ref, axis=1), atol=1e-5)


@pytest.mark.parametrize("n_queries", [1, 7, 64])
def test_exact_search_equals_faiss_flat_search(n_queries):
    """The exact kind searches with a GEMM + top-k; it must give faiss's own flat-search answer (scores within
    float32 rounding of two summation orders, ids equal where the scores are not tied), also with k > vectors
    and in several query blocks."""
    from xmine.index import _flat_search

    rng = np.random.default_rng(6)
    vectors, queries = _unit(rng, 3000, 24), _unit(rng, n_queries, 24)
    index = LabelIndex.build(vectors, IndexConfig(kind="exact"))
    got_scores, got_ids = index.search(queries, 50)
    want_scores, want_ids = index._index.search(queries, 50)
    assert np.allclose(got_scores, want_scores, atol=1e-5)
    assert np.array_equal(got_ids, want_ids)
    blocked_scores = np.empty((n_queries, 50), dtype=np.float32)
    blocked_ids = np.empty((n_queries, 50), dtype=np.int64)
    _flat_search(queries, vectors, 50, blocked_scores, blocked_ids, max_block_bytes=4 * 3000 * 3)  # 3 per block
    assert np.array_equal(blocked_ids, got_ids) and np.allclose(blocked_scores, got_scores, atol=1e-6)
    small = LabelIndex.build(vectors[:5], IndexConfig(kind="exact"))
    scores, ids = small.search(queries, 8)
    assert np.array_equal(ids[:, :5], small._index.search(queries, 5)[1])
    assert (ids[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()


@pytest.mark.parametrize("k", [10, 100])
def test_single_query_float16_scan_equals_float32_search(k):
    """One query against a large table goes through HalfScan; its certified answers must be the float32 search's:
    the same ids, scores within float32 rounding (the re-scoring sums in another order)."""
    from xmine.index import HALF_SCAN_MIN_VECTORS, HalfScan, _flat_search

    rng = np.random.default_rng(8)
    vectors = _unit(rng, HALF_SCAN_MIN_VECTORS + 500, 32) * rng.uniform(0.5, 3.0, size=(1, 1)).astype(np.float32)
    queries = _unit(rng, 30, 32)
    index = LabelIndex.build(vectors, IndexConfig(kind="exact"))
    scan = HalfScan(vectors)
    for query in queries:
        scores, ids = np.empty(k, dtype=np.float32), np.empty(k, dtype=np.int64)
        assert scan.search(query, k, scores, ids)  # random unit vectors: every answer is provable
        want_scores, want_ids = np.empty((1, k), dtype=np.float32), np.empty((1, k), dtype=np.int64)
        _flat_search(query[None, :], vectors, k, want_scores, want_ids)
        assert np.array_equal(ids, want_ids[0])
        assert np.allclose(scores, want_scores[0], rtol=1e-6, atol=1e-6)
        got_scores, got_ids = index.search(query[None, :], k)
        assert np.array_equal(got_ids, want_ids) and np.allclose(got_scores, want_scores, rtol=1e-6, atol=1e-6)


def test_float16_scan_refuses_answers_it_cannot_prove():
    """Scores closer together than float16 can tell apart, and values beyond float16's range, are left to the float32
    search, which then gives the answer."""
    from xmine.index import HALF_SCAN_MIN_VECTORS, HalfScan

    rng = np.random.default_rng(9)
    n = HALF_SCAN_MIN_VECTORS + 100
    # every vector the same up to 1e-5: the scores differ far below float16's resolution
    close = np.ones((n, 16), dtype=np.float32) + rng.normal(scale=1e-5, size=(n, 16)).astype(np.float32)
    query = np.ones(16, dtype=np.float32)
    assert not HalfScan(close).search(query, 10, np.empty(10, np.float32), np.empty(10, np.int64))
    scores, ids = LabelIndex.build(close, IndexConfig(kind="exact")).search(query[None, :], 10)
    assert np.allclose(scores[0], np.sort(close @ query)[::-1][:10], rtol=0, atol=1e-5)
    assert np.allclose(close[ids[0]] @ query, scores[0], rtol=0, atol=1e-5)
    # the true best vector rounds, in float16, to the score of 20 others that come before it: only the margin keeps
    # the scan from answering without it
    tied = _unit(rng, n, 16) * 0.5
    tied[:, 0] = np.minimum(tied[:, 0], 0.4)
    tied[:20] = 0.0
    tied[:20, 0] = 1.0 + 2.0**-13
    tied[-1] = 0.0
    tied[-1, 0] = 1.0 + 3 * 2.0**-13
    axis = np.eye(16, dtype=np.float32)[0]
    assert LabelIndex.build(tied, IndexConfig(kind="exact")).search(axis[None, :], 10)[1][0, 0] == n - 1
    huge = _unit(rng, n, 16) * 1e5
    assert not HalfScan(huge).usable
    scores, ids = LabelIndex.build(huge, IndexConfig(kind="exact")).search(query[None, :], 10)
    assert np.array_equal(ids[0], np.argsort(-(huge @ query))[:10])


def test_exact_search_sees_vectors_added_later():
    rng = np.random.default_rng(7)
    vectors = _unit(rng, 100, 8)
    index = LabelIndex.build(vectors[:60], IndexConfig(kind="exact")).with_added(vectors[60:])
    _, ids = index.search(vectors[60:], 1)
    assert np.array_equal(ids[:, 0], np.arange(60, 100))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_ann_recall_against_exact(kind):
    rng = np.random.default_rng(1)
    vectors, queries = _unit(rng, 5000, 32), _unit(rng, 200, 32)
    config = IndexConfig(kind=kind, exact_below=0, M=32, ef_search=200, nprobe=32)
    index = LabelIndex.build(vectors, config)
    assert index.kind == kind
    _, ids = index.search(queries, 10)
    _, ref = exact_top_k(queries, vectors, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ref, strict=True)])
    assert recall > 0.9


def test_small_label_sets_fall_back_to_exact_and_pad_missing():
    rng = np.random.default_rng(2)
    index = LabelIndex.build(_unit(rng, 5, 8), IndexConfig(kind="hnsw"))
    assert index.kind == "exact"
    scores, ids = index.search(_unit(rng, 3, 8), 8)
    assert (ids[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()


def test_save_load_same_results(tmp_path):
    rng = np.random.default_rng(3)
    vectors, queries = _unit(rng, 3000, 16), _unit(rng, 50, 16)
    index = LabelIndex.build(vectors, IndexConfig(kind="hnsw", exact_below=0))
    index.save(tmp_path / "idx")
    loaded = LabelIndex.load(tmp_path / "idx")
    assert loaded.kind == "hnsw"
    assert np.array_equal(index.search(queries, 5)[1], loaded.search(queries, 5)[1])


def test_an_exact_index_saved_without_its_vectors_is_rebuilt_from_the_owners_copy(tmp_path):
    """The owner (label embeddings, classifier weights) saves the vectors; the exact index is not stored twice."""
    from xmine.errors import ModelError

    rng = np.random.default_rng(6)
    vectors, queries = _unit(rng, 500, 16), _unit(rng, 20, 16)
    exact = LabelIndex.build(vectors, IndexConfig(kind="exact"))
    exact.save(tmp_path / "exact", vectors_saved_by_owner=True)
    assert not (tmp_path / "exact" / "index.faiss").exists()
    loaded = LabelIndex.load(tmp_path / "exact", 16, 500, vectors=vectors)
    for a, b in zip(exact.search(queries, 7), loaded.search(queries, 7), strict=True):
        assert np.array_equal(a, b)
    with pytest.raises(ModelError, match="index.json: the index is rebuilt from its owner's vectors"):
        LabelIndex.load(tmp_path / "exact", 16, 500)
    with pytest.raises(ModelError, match=r"shape \(499, 16\), expected \(500, 16\)"):
        LabelIndex.load(tmp_path / "exact", 16, 500, vectors=vectors[:499])
    # an index that is more than its vectors (a graph, lists, fp16 codes) is written whatever the flag says
    for config in (IndexConfig(kind="hnsw", exact_below=0), IndexConfig(kind="exact", storage="float16")):
        index = LabelIndex.build(vectors, config)
        index.save(tmp_path / config.kind / config.storage, vectors_saved_by_owner=True)
        assert (tmp_path / config.kind / config.storage / "index.faiss").exists()
        again = LabelIndex.load(tmp_path / config.kind / config.storage)
        assert np.array_equal(index.search(queries, 5)[1], again.search(queries, 5)[1])


def test_bad_queries_raise_clear_errors():
    index = LabelIndex.build(np.eye(4, dtype=np.float32))
    with pytest.raises(XmineError, match="dimension 3 does not match the index dimension 4"):
        index.search(np.ones((2, 3), dtype=np.float32), 1)
    with pytest.raises(XmineError, match="2-D"):
        index.search(np.ones(4, dtype=np.float32), 1)


def _clustered(rng: np.random.Generator, n: int, d: int, topics: int = 50) -> np.ndarray:
    """Vectors around topic centres, like real label embeddings (PQ codebooks need structure to learn)."""
    centres = _unit(rng, topics, d)
    x = centres[rng.integers(0, topics, n)] + 0.3 * rng.normal(size=(n, d)) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_compact_indexes_keep_recall_and_save_memory(tmp_path):
    rng = np.random.default_rng(4)
    # fewer than faiss's 39 per centroid for the PQ's 256 centroids per sub-vector (it warns), but enough for the
    # recall below; training the PQ is this test's cost, and it grows with the vectors
    vectors = _clustered(rng, 5000, 64)
    queries = vectors[rng.choice(5000, 200, replace=False)] + 0.05 * rng.normal(size=(200, 64)).astype(np.float32)
    _, ref = exact_top_k(queries, vectors, 10)
    full = LabelIndex.build(vectors, IndexConfig(kind="exact"))
    half = LabelIndex.build(vectors, IndexConfig(kind="exact", storage="float16"))
    assert half.memory_bytes < 0.6 * full.memory_bytes
    assert np.mean(half.search(queries, 10)[1] == ref) > 0.95
    pq = LabelIndex.build(vectors, IndexConfig(kind="ivfpq", pq_bytes=16, nprobe=32, exact_below=0))
    assert pq.kind == "ivfpq" and pq.memory_bytes < 0.4 * full.memory_bytes
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pq.search(queries, 10)[1], ref, strict=True)])
    assert recall > 0.5  # product quantisation trades recall for 16x less memory; measured in bench/scale.py
    pq.save(tmp_path / "pq")
    assert np.array_equal(LabelIndex.load(tmp_path / "pq").search(queries, 5)[1], pq.search(queries, 5)[1])


def test_streaming_build_equals_one_shot_build():
    rng = np.random.default_rng(5)
    vectors = _clustered(rng, 6000, 32)
    config = IndexConfig(kind="ivf", exact_below=0, nprobe=8)
    one = LabelIndex.build(vectors, config)
    streamed = LabelIndex.build_streaming((vectors[i:i + 1000] for i in range(0, 6000, 1000)), 6000, vectors, config)
    queries = vectors[:50]
    assert np.array_equal(one.search(queries, 10)[1], streamed.search(queries, 10)[1])
    with pytest.raises(XmineError, match="expected 7000"):
        LabelIndex.build_streaming([vectors], 7000, vectors, config)
    with pytest.raises(XmineError, match="divide"):
        LabelIndex.build(vectors, IndexConfig(kind="ivfpq", pq_bytes=5, exact_below=0))


def test_search_breadth_is_set_per_call_without_changing_the_index():
    """ef_search (HNSW) / nprobe (IVF) given to one search equal the index built with that setting, and the next
    plain search uses the built one again."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    queries = rng.standard_normal((50, 16)).astype(np.float32)
    for kind, key, narrow in (("hnsw", "ef_search", 4), ("ivf", "nprobe", 1)):
        index = LabelIndex.build(vectors, IndexConfig(kind=kind, exact_below=0, ef_search=200, nprobe=32, nlist=32))
        wide = index.search(queries, 10)[1]
        once = index.search(queries, 10, **{key: narrow})[1]
        if kind == "hnsw":
            index._index.hnsw.efSearch = narrow
        else:
            index._index.nprobe = narrow
        assert np.array_equal(once, index.search(queries, 10)[1])
        assert not np.array_equal(once, wide)  # the narrow search misses some of the wide one's labels
    with pytest.raises(XmineError, match="ef_search"):
        index.search(queries, 10, ef_search=0)
