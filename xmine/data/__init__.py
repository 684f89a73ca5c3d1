"""Readers and writers for extreme-classification data files, and whole-dataset loading."""

from __future__ import annotations

from xmine.data.dataset import Dataset, Split, dataset_stats, load_dataset
from xmine.data.sparse import (
    read_filter_pairs,
    read_single_file,
    read_sparse_matrix,
    write_single_file,
    write_sparse_matrix,
)
from xmine.data.text import read_jsonl, read_text_lines, write_jsonl, write_text_lines

__all__ = [
    "Dataset",
    "Split",
    "dataset_stats",
    "load_dataset",
    "read_filter_pairs",
    "read_jsonl",
    "read_single_file",
    "read_sparse_matrix",
    "read_text_lines",
    "write_jsonl",
    "write_single_file",
    "write_sparse_matrix",
    "write_text_lines",
]
