"""Optimisers the training loops share.

`RowSparseAdam` is "lazy" Adam over the rows that a step's sparse gradient holds, the update of
`torch.optim.SparseAdam`: rows without a gradient keep their values and moments. SparseAdam computes it through
sparse-tensor arithmetic, which costs several times more per row than gathering the rows' moments, updating them
densely and writing them back, as this does. It trains the classifiers' weights with
`classifier.row_sparse_updates`, and the bag encoder's token-embedding table (a batch touches a few thousand of its
30k rows) with `siamese.embedding_optimizer=row_sparse_adam`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch


class RowSparseAdam(torch.optim.Optimizer):
    """Adam over the rows of a parameter that its sparse gradient (e.g. `nn.Embedding(sparse=True)`) holds."""

    def __init__(self, params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if lr <= 0 or eps <= 0 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"RowSparseAdam needs lr > 0, eps > 0 and betas in [0, 1), got {lr}, {eps}, {betas}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise RuntimeError("RowSparseAdam takes sparse row gradients; use torch.optim.Adam for dense ones")
                grad = param.grad.coalesce()  # one entry per row: repeated rows' gradients summed
                rows, values = grad.indices()[0], grad.values()
                state = self.state[param]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                step = float(state["step"])
                exp_avg = state["exp_avg"].index_select(0, rows).lerp_(values, 1 - beta1)
                exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(values, values,
                                                                                             value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, exp_avg)
                state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
                step_size = group["lr"] * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
                update = exp_avg.div_(exp_avg_sq.sqrt_().add_(group["eps"]))  # in place on the gathered copies
                param.index_add_(0, rows, update, alpha=-step_size)
        return loss
