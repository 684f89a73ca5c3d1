"""How well stage 1's encoder ranks labels for training points it does not train on, measured after each epoch.

NGAME keeps a few of the fusion's held-out points out of stage 1 (`fusion.stage1_unseen_points`). Ranking all
labels by embedding similarity for those points, and for as many points stage 1 does train on, gives two curves over
the epochs: the unseen one says how the encoder generalises, the gap to the seen one how much it memorises. Stage 1
records both per epoch, and can stop when the unseen curve stops rising (`siamese.early_stopping_patience`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from xmine.config import IndexConfig
from xmine.encoders.base import Encoder, Prepared
from xmine.index import LabelIndex
from xmine.metrics import evaluate
from xmine.topk import csr_from_topk


@dataclass
class HeldOutScores:
    ndcg5_unseen: float
    ndcg5_seen: float | None
    seconds: float


class EncoderHeldOut:
    """nDCG@5 of the encoder's exact top labels on `unseen_rows` of the points (not trained on) and on `seen_rows`
    (trained on; may be empty), against their rows of `labels`."""

    def __init__(self, point_inputs: Prepared, label_inputs: Prepared, labels: sp.csr_matrix,
                 unseen_rows: np.ndarray, seen_rows: np.ndarray) -> None:
        self.label_inputs = label_inputs
        self.parts = [(point_inputs.select(rows), sp.csr_matrix(labels[rows])) for rows in (unseen_rows, seen_rows)]
        self.n_labels = labels.shape[1]

    def __len__(self) -> int:
        return self.parts[0][1].shape[0]

    def __call__(self, encoder: Encoder) -> HeldOutScores:
        start = time.perf_counter()
        index = LabelIndex.build(encoder.encode(self.label_inputs, progress=False), IndexConfig(kind="exact"))
        ndcg = []
        for inputs, true in self.parts:
            if true.shape[0] == 0:
                ndcg.append(None)
                continue
            scores, ids = index.search(encoder.encode(inputs, progress=False), min(5, self.n_labels))
            pred = csr_from_topk(scores, ids, self.n_labels)
            ndcg.append(evaluate(pred, true, ks=(5,), recall_ks=())["nDCG@5"])
        return HeldOutScores(ndcg5_unseen=ndcg[0], ndcg5_seen=ndcg[1], seconds=time.perf_counter() - start)
