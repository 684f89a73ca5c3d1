"""A small, uniform index over label vectors: `index = LabelIndex.build(vectors, config)`,
`scores, ids = index.search(queries, k)`, `index.save(dir)`, `LabelIndex.load(dir)`.

Similarity is the inner product (cosine for L2-normalised vectors). Backends (faiss):
"exact" (flat inner product), "hnsw" (graph; NGAME's choice), "ivf" (inverted lists; the
MIPS-negatives paper's choice) and "ivfpq" (inverted lists of product-quantised codes, `pq_bytes` per
vector, for millions of labels: 10^7 x 384 floats take 14.3 GiB, their 48-byte codes 0.5 GiB). `storage=
"float16"` halves exact/HNSW memory. Results are (n, k) arrays; missing neighbours (k > number of
vectors) have id -1 and score -inf. `LabelIndex.build_streaming` adds vectors chunk by chunk, so that
an index over more vectors than fit in memory as float32 can be built.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np

from xmine.config import IndexConfig
from xmine.errors import XmineError
from xmine.safeio import json_field, load_json, model_error, read_faiss_index
from xmine.topk import pair_dots
from xmine.utils import atomic_write, atomic_write_text


class LabelIndex:
    def __init__(self, index: faiss.Index, config: IndexConfig, kind: str) -> None:
        self._index = index
        self.config = config
        self.kind = kind  # backend actually used ("exact" when the config asked for ANN on few vectors)
        self._half_scan: HalfScan | None = None  # exact kind: built at the first single-query search
        self._half_scan_lock = threading.Lock()

    @property
    def size(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @classmethod
    def build(cls, vectors: np.ndarray, config: IndexConfig | None = None) -> LabelIndex:
        config = config or IndexConfig()
        vectors = _as_float32_matrix(vectors, "vectors")
        n, dim = vectors.shape
        if n == 0:
            raise XmineError("cannot build an index over 0 vectors")
        kind = config.kind if n >= config.exact_below else "exact"
        index = _empty_index(kind, dim, n, config)
        if not index.is_trained:
            index.train(_sample_rows(vectors, config.train_sample))
        index.add(vectors)
        return cls(index, config, kind)

    @classmethod
    def build_streaming(cls, chunks: Iterable[np.ndarray], n_total: int, train_vectors: np.ndarray,
                        config: IndexConfig | None = None) -> LabelIndex:
        """An index over `n_total` vectors that arrive in `chunks` (ids in arrival order), trained on
        `train_vectors` (a sample): peak memory is the index plus one chunk."""
        config = config or IndexConfig()
        train_vectors = _as_float32_matrix(train_vectors, "train_vectors")
        kind = config.kind if n_total >= config.exact_below else "exact"
        index = _empty_index(kind, train_vectors.shape[1], n_total, config)
        if not index.is_trained:
            index.train(_sample_rows(train_vectors, config.train_sample))
        for chunk in chunks:
            index.add(_as_float32_matrix(chunk, "chunk"))
        if index.ntotal != n_total:
            raise XmineError(f"the chunks held {index.ntotal} vectors, expected {n_total}")
        return cls(index, config, kind)

    @property
    def memory_bytes(self) -> int:
        """Size of the serialised index (about its resident size)."""
        return int(faiss.serialize_index(self._index).nbytes)

    def search(self, queries: np.ndarray, k: int, batch_size: int = 8192, ef_search: int | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores (n,k) float32, ids (n,k) int64), best first. `ef_search` (HNSW) and
        `nprobe` (IVF) override the built index's search settings for this call only (None: the index's)."""
        queries = _as_float32_matrix(queries, "queries")
        if queries.shape[1] != self.dim:
            raise XmineError(f"query dimension {queries.shape[1]} does not match the index dimension {self.dim}")
        if k < 1:
            raise XmineError(f"k must be >= 1, got {k}")
        scores = np.empty((queries.shape[0], k), dtype=np.float32)
        ids = np.empty((queries.shape[0], k), dtype=np.int64)
        params = self._search_params(ef_search, nprobe)
        vectors = self._flat_vectors()
        if vectors is not None:
            one_query_on_many = queries.shape[0] == 1 and vectors.shape[0] >= max(HALF_SCAN_MIN_VECTORS, 2 * k + 1)
            if one_query_on_many and self._half_scan_for(vectors).search(queries[0], k, scores[0], ids[0]):
                return scores, ids
            _flat_search(queries, vectors, k, scores, ids)
            return scores, ids
        # batches bound the memory of faiss's result buffers on large query sets
        for start in range(0, queries.shape[0], batch_size):
            stop = start + batch_size
            s, i = self._index.search(queries[start:stop], k, params=params)
            scores[start:stop], ids[start:stop] = s, i
        scores[ids < 0] = -np.inf
        return scores, ids

    def _flat_vectors(self) -> np.ndarray | None:
        """The stored float32 vectors of an exact (flat) index, as a view without a copy; None for other kinds."""
        if not isinstance(self._index, faiss.IndexFlat) or self._index.metric_type != faiss.METRIC_INNER_PRODUCT:
            return None
        n, dim = self.size, self.dim
        if n == 0:
            return np.empty((0, dim), dtype=np.float32)
        return faiss.rev_swig_ptr(self._index.get_xb(), n * dim).reshape(n, dim)

    def _half_scan_for(self, vectors: np.ndarray) -> HalfScan:
        with self._half_scan_lock:
            if self._half_scan is None:
                self._half_scan = HalfScan(vectors)
            return self._half_scan

    def with_added(self, vectors: np.ndarray) -> LabelIndex:
        """A copy of this index with `vectors` appended (ids size, size+1, ...); this one is unchanged, so
        searches running on it are not disturbed. IVF kinds put the vectors in their existing lists."""
        vectors = _as_float32_matrix(vectors, "vectors")
        if vectors.shape[1] != self.dim:
            raise XmineError(f"vector dimension {vectors.shape[1]} does not match the index dimension {self.dim}")
        index = faiss.clone_index(self._index)
        if self.kind == "hnsw":
            index.hnsw.efSearch = self._index.hnsw.efSearch
        index.add(vectors)
        return LabelIndex(index, self.config, self.kind)

    def _search_params(self, ef_search: int | None, nprobe: int | None) -> faiss.SearchParameters | None:
        """Per-call search parameters (faiss reads them per search: no shared state is changed)."""
        for name, value in (("ef_search", ef_search), ("nprobe", nprobe)):
            if value is not None and value < 1:
                raise XmineError(f"{name} must be >= 1, got {value}")
        if self.kind == "hnsw" and ef_search is not None:
            return faiss.SearchParametersHNSW(efSearch=int(ef_search))
        if self.kind in ("ivf", "ivfpq") and nprobe is not None:
            return faiss.SearchParametersIVF(nprobe=int(nprobe))
        return None  # exact search, or nothing overridden

    def save(self, directory: str | Path, vectors_saved_by_owner: bool = False) -> None:
        """Writes index.json and index.faiss. With `vectors_saved_by_owner` (the caller saves the very vectors the
        index was built from, e.g. the label embeddings), an exact float32 index writes no index.faiss: it is its
        vectors, and `load(..., vectors=...)` rebuilds it from the owner's copy instead of storing them twice."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        from_owner = vectors_saved_by_owner and self._flat_vectors() is not None
        if not from_owner:
            atomic_write(directory / "index.faiss", lambda tmp: faiss.write_index(self._index, tmp))
        meta = {"kind": self.kind, "config": self.config.to_dict(),
                "vectors": VECTORS_FROM_OWNER if from_owner else "index.faiss"}
        atomic_write_text(directory / "index.json", json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path, dim: int | None = None, n_vectors: int | None = None,
             component: str = "index", vectors: np.ndarray | None = None) -> LabelIndex:
        """The index saved in `directory`; `dim` and `n_vectors`, when given, must match. `vectors`: the owner's
        copy of the indexed vectors, from which an index saved with `vectors_saved_by_owner` is rebuilt."""
        directory = Path(directory)
        meta_path = directory / "index.json"
        meta = load_json(meta_path, component)
        kind = json_field(meta, "kind", component, meta_path, str)
        if kind not in ("exact", "hnsw", "ivf", "ivfpq"):
            raise model_error(component, meta_path, f"unknown index kind {kind!r}")
        try:
            config = IndexConfig.from_dict(json_field(meta, "config", component, meta_path, dict))
        except XmineError as exc:
            raise model_error(component, meta_path, str(exc)) from None
        source = meta.get("vectors", "index.faiss")
        if source == VECTORS_FROM_OWNER:
            index = _flat_index_of(vectors, kind, config, component, meta_path, dim, n_vectors)
        elif source == "index.faiss":
            index = read_faiss_index(directory / "index.faiss", component, dim, n_vectors)
        else:
            raise model_error(component, meta_path, f"unknown source of the index's vectors {source!r}")
        if kind == "hnsw":
            if not hasattr(index, "hnsw"):
                raise model_error(component, directory / "index.faiss", "index.json says hnsw, the file is not")
            index.hnsw.efSearch = config.ef_search
        return cls(index, config, kind)


# index.json's "vectors" when the index is rebuilt from the vectors its owner saved (see LabelIndex.save)
VECTORS_FROM_OWNER = "owner"


def _flat_index_of(vectors: np.ndarray | None, kind: str, config: IndexConfig, component: str, meta_path: Path,
                   dim: int | None, n_vectors: int | None) -> faiss.Index:
    """The exact float32 index over the owner's `vectors` (as `LabelIndex.build` makes it)."""
    if kind != "exact" or config.storage != "float32":
        raise model_error(component, meta_path, f"only an exact float32 index is rebuilt from its owner's vectors, "
                                                f"this one is {kind} ({config.storage})")
    if vectors is None:
        raise model_error(component, meta_path, "the index is rebuilt from its owner's vectors, and none were given")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or (dim is not None and vectors.shape[1] != dim) or \
            (n_vectors is not None and vectors.shape[0] != n_vectors):
        raise model_error(component, meta_path, f"the owner's vectors have shape {vectors.shape}, expected "
                                                f"({n_vectors}, {dim})")
    index = _empty_index(kind, vectors.shape[1], vectors.shape[0], config)
    index.add(vectors)
    return index


# a single query against at least this many vectors is answered by `HalfScan` (the float32 product reads the whole
# table from memory for one row of results; half the bytes, scanned by faiss, is several times faster)
HALF_SCAN_MIN_VECTORS = 4096
# blocks of fewer queries are multiplied as table @ queries.T: BLAS's kernels for a (few, d) x (d, n) product ran
# several times slower than the transposed form's on both machines measured; from a few dozen rows on, the usual form
# is faster
FEW_QUERIES = 32


class HalfScan:
    """An exact top-k for one query, found through a float16 copy of the vectors: faiss scans the copy for 2k
    candidates, which are re-scored in float32. The answer is certified: rounding to float16 moves a score by at most
    `margin` (2^-11 relative per component, bounded by Cauchy-Schwarz, doubled for the summations), so a vector
    outside the candidates scores at most the last candidate's float16 score + margin; when the k-th re-scored
    candidate beats that, no vector outside can be in the top k. Otherwise `search` says so and the caller searches
    the float32 table."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors
        dim = vectors.shape[1]
        self.usable = bool(np.isfinite(vectors).all()) and float(np.abs(vectors).max(initial=0.0)) < 6e4
        self.max_norm = float(np.linalg.norm(vectors, axis=1).max(initial=0.0))
        self.index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        if self.usable:  # values beyond float16's range would overflow: those tables keep the float32 search
            self.index.add(vectors)

    def search(self, query: np.ndarray, k: int, scores: np.ndarray, ids: np.ndarray) -> bool:
        """Writes the top k of one query into `scores`/`ids` and returns True, or returns False (nothing certain
        written) when the float16 scan cannot prove the answer exact."""
        if not self.usable:
            return False
        n_candidates = min(2 * k, self.vectors.shape[0])
        half_scores, candidates = self.index.search(query[None, :], n_candidates)
        candidates = candidates[0]
        exact = pair_dots(query[None, :], self.vectors, candidates[None, :])[0]
        order = np.argsort(-exact, kind="stable")[:k]
        q_norm = float(np.linalg.norm(query))
        margin = 2.0**-10 * q_norm * self.max_norm + 2.0**-20 * q_norm * math.sqrt(query.shape[0])
        if not exact[order[-1]] >= half_scores[0, -1] + margin:
            return False
        scores[:] = exact[order]
        ids[:] = candidates[order]
        return True


def _flat_search(queries: np.ndarray, vectors: np.ndarray, k: int, scores: np.ndarray, ids: np.ndarray,
                 max_block_bytes: int = 64 * 2**20) -> None:
    """Exact top-k by inner product as one matrix product and `torch.topk` per block of queries, written into
    `scores` and `ids` (k beyond the number of vectors: id -1, score -inf). faiss's flat search keeps a heap per
    query and is several times slower than a GEMM plus top-k for the k (tens to hundreds) used here."""
    import torch

    n = vectors.shape[0]
    kept = min(k, n)
    scores[:, kept:], ids[:, kept:] = -np.inf, -1
    if kept == 0 or queries.shape[0] == 0:
        return
    table = torch.from_numpy(vectors)
    block = max(1, max_block_bytes // (4 * n))  # queries per block: the (block, n) score matrix stays bounded
    with torch.inference_mode():
        for start in range(0, queries.shape[0], block):
            stop = min(start + block, queries.shape[0])
            block_queries = torch.from_numpy(queries[start:stop])
            product = (table @ block_queries.T).T if stop - start < FEW_QUERIES else block_queries @ table.T
            top = torch.topk(product, kept, dim=1, sorted=True)
            scores[start:stop, :kept] = top.values.numpy()
            ids[start:stop, :kept] = top.indices.numpy()


def _empty_index(kind: str, dim: int, n: int, config: IndexConfig) -> faiss.Index:
    ip = faiss.METRIC_INNER_PRODUCT
    fp16 = config.storage == "float16"
    if kind == "exact":
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, ip) if fp16 else faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, config.M, ip) if fp16 else \
            faiss.IndexHNSWFlat(dim, config.M, ip)
        index.hnsw.efConstruction = config.ef_construction
        index.hnsw.efSearch = config.ef_search
        return index
    nlist = min(config.nlist or max(1, int(round(math.sqrt(n)))), n)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, ip)
    elif kind == "ivfpq":
        if dim % config.pq_bytes:
            raise XmineError(f"index.pq_bytes={config.pq_bytes} must divide the vector dimension {dim}")
        # an HNSW coarse quantizer: assigning millions of vectors to lists stays cheap
        index = faiss.IndexIVFPQ(faiss.IndexHNSWFlat(dim, 32, ip), dim, nlist, config.pq_bytes, 8, ip)
    else:
        raise XmineError(f"unknown index kind {kind!r}")
    index.nprobe = min(config.nprobe, nlist)
    return index


def _sample_rows(vectors: np.ndarray, size: int) -> np.ndarray:
    if vectors.shape[0] <= size:
        return vectors
    rows = np.sort(np.random.default_rng(0).choice(vectors.shape[0], size, replace=False))
    return vectors[rows]


def _as_float32_matrix(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise XmineError(f"{name} must be a 2-D array, got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float32)


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product with a full sort (the plain reference for tests), best first, ties
    by lower id; k beyond the number of vectors: id -1, score -inf."""
    queries, vectors = _as_float32_matrix(queries, "queries"), _as_float32_matrix(vectors, "vectors")
    products = queries.astype(np.float64) @ vectors.T.astype(np.float64)
    order = np.argsort(-products, axis=1, kind="stable")[:, :k]
    scores = np.full((queries.shape[0], k), -np.inf, dtype=np.float32)
    ids = np.full((queries.shape[0], k), -1, dtype=np.int64)
    kept = order.shape[1]
    scores[:, :kept] = np.take_along_axis(products, order, axis=1)
    ids[:, :kept] = order
    return scores, ids
