"""A small, uniform index over label vectors: `index = LabelIndex.build(vectors, config)`,
`scores, ids = index.search(queries, k)`, `index.save(dir)`, `LabelIndex.load(dir)`.

Similarity is the inner product (cosine for L2-normalised vectors). Backends (faiss):
"exact" (flat inner product), "hnsw" (graph; NGAME's choice) and "ivf" (inverted lists; the
MIPS-negatives paper's choice). Results are (n, k) arrays; missing neighbours (k > number of
vectors) have id -1 and score -inf.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import faiss
import numpy as np

from xmine.config import IndexConfig
from xmine.errors import ModelError, XmineError
from xmine.utils import atomic_write, atomic_write_text


class LabelIndex:
    def __init__(self, index: faiss.Index, config: IndexConfig, kind: str) -> None:
        self._index = index
        self.config = config
        self.kind = kind  # backend actually used ("exact" when the config asked for ANN on few vectors)

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
        if kind == "exact":
            index: faiss.Index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, config.M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = config.ef_construction
            index.hnsw.efSearch = config.ef_search
        else:
            nlist = config.nlist or max(1, int(round(math.sqrt(n))))
            nlist = min(nlist, n)
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
            index.nprobe = min(config.nprobe, nlist)
        index.add(vectors)
        return cls(index, config, kind)

    def search(self, queries: np.ndarray, k: int, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores (n,k) float32, ids (n,k) int64), best first."""
        queries = _as_float32_matrix(queries, "queries")
        if queries.shape[1] != self.dim:
            raise XmineError(f"query dimension {queries.shape[1]} does not match the index dimension {self.dim}")
        if k < 1:
            raise XmineError(f"k must be >= 1, got {k}")
        scores = np.empty((queries.shape[0], k), dtype=np.float32)
        ids = np.empty((queries.shape[0], k), dtype=np.int64)
        # batches bound the memory of faiss's result buffers on large query sets
        for start in range(0, queries.shape[0], batch_size):
            stop = start + batch_size
            s, i = self._index.search(queries[start:stop], k)
            scores[start:stop], ids[start:stop] = s, i
        scores[ids < 0] = -np.inf
        return scores, ids

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / "index.faiss", lambda tmp: faiss.write_index(self._index, tmp))
        meta = {"kind": self.kind, "config": self.config.to_dict()}
        atomic_write_text(directory / "index.json", json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> LabelIndex:
        directory = Path(directory)
        if not (directory / "index.faiss").exists() or not (directory / "index.json").exists():
            raise ModelError(f"{directory}: no index found (expected index.faiss and index.json)")
        meta = json.loads((directory / "index.json").read_text())
        index = faiss.read_index(str(directory / "index.faiss"))
        config = IndexConfig.from_dict(meta["config"])
        if meta["kind"] == "hnsw":
            index.hnsw.efSearch = config.ef_search
        return cls(index, config, meta["kind"])


def _as_float32_matrix(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise XmineError(f"{name} must be a 2-D array, got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float32)


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product (reference for recall tests)."""
    return LabelIndex.build(vectors, IndexConfig(kind="exact")).search(queries, k)
