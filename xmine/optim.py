"""Optimisers the training loops share.

`RowSparseAdam` is "lazy" Adam over the rows that a step's sparse gradient holds, the update of
`torch.optim.SparseAdam`: rows without a gradient keep their values and moments. SparseAdam computes it through
sparse-tensor arithmetic, which costs several times more per row than updating each row in place in one pass, as
this does on CPU (a compiled kernel, parallel over rows; elsewhere: gather the rows' moments, update them densely,
write them back). It trains the classifiers' weights with
`classifier.row_sparse_updates`, and the bag encoder's token-embedding table (a batch touches a few thousand of its
30k rows) with `siamese.embedding_optimizer=row_sparse_adam`.

`CompiledSparseAdam` is torch's SparseAdam itself, operation by operation in the same float32 arithmetic, in one
compiled pass over the gradient's rows: the stage-1 token table's default optimiser, bit for bit torch's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numba
import numpy as np
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
        loss = _closure_loss(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise RuntimeError("RowSparseAdam takes sparse row gradients; use torch.optim.Adam for dense ones")
                rows, values = _distinct_rows(param.grad)
                state = self.state[param]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                step = float(state["step"])
                step_size = group["lr"] * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
                update_rows(param.detach(), state["exp_avg"], state["exp_avg_sq"], rows, values, beta1, beta2,
                            group["eps"], step_size)
        return loss


class CompiledSparseAdam(torch.optim.SparseAdam):
    """`torch.optim.SparseAdam` with its step computed by one compiled pass over the gradient's rows on CPU float32
    tables: the same operations in the same order and precision (moment updates as `(g - m) * (1 - beta1)` added
    to m, `sqrt(v_new) + eps` with torch's own square root, the step as `-step_size * (m_new / denom)` added to the
    parameter), so the same floats bit for bit, without SparseAdam's sparse-mask gathers and its three sparse-into-dense
    additions. Its state is SparseAdam's, so checkpoints of either load into the other. Elsewhere, torch's own step."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        if not all(_compiled_rows_apply(p) for group in self.param_groups for p in group["params"]
                   if p.grad is not None):  # dense gradients too: torch's step raises its own error for them
            return super().step(closure)
        loss = _closure_loss(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:  # as torch.optim.SparseAdam initialises it
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                rows, values = _distinct_rows(param.grad)
                if values.numel() == 0:
                    continue
                if group.get("maximize", False):
                    values = -values
                step = state["step"]
                step_size = group["lr"] * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
                rows_np = rows.numpy()
                numer = np.empty((rows_np.shape[0], param.shape[1]), dtype=np.float32)
                second = np.empty_like(numer)
                _sparse_adam_moments(state["exp_avg"].numpy(), state["exp_avg_sq"].numpy(), rows_np,
                                     np.ascontiguousarray(values.numpy()), np.float32(1 - beta1),
                                     np.float32(1 - beta2), numer, second)
                # torch's own square root: its CPU kernel is not correctly rounded everywhere, and numba's is
                root = torch.from_numpy(second).sqrt_().numpy()
                _sparse_adam_step(param.detach().numpy(), rows_np, numer, root, np.float32(group["eps"]),
                                  np.float32(-step_size))
        return loss


def _closure_loss(closure: Callable[[], float] | None) -> float | None:
    """The loss of an optimiser's `closure` (re-evaluated with gradients enabled), or None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _compiled_rows_apply(param: torch.Tensor) -> bool:
    return (param.device.type == "cpu" and param.dtype == torch.float32 and param.dim() == 2
            and param.is_contiguous() and param.grad is not None and param.grad.is_sparse
            and param.grad.dtype == torch.float32)


def update_rows(param: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, rows: torch.Tensor,
                values: torch.Tensor, beta1: float, beta2: float, eps: float, step_size: float) -> None:
    """Adam's step on rows `rows` (distinct) of `param` and of its two moments, in place: on CPU float32 tables
    the compiled one-pass kernel, otherwise torch gathers, updates and writes back the rows."""
    tensors = (param, exp_avg, exp_avg_sq, values)
    if all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() and t.dim() == 2
           for t in tensors):
        param_np, avg_np, avg_sq_np, values_np = (t.numpy() for t in tensors)
        _row_sparse_adam_kernel(param_np, avg_np, avg_sq_np, rows.numpy(), values_np, np.float32(beta1),
                                np.float32(beta2), np.float32(eps), np.float32(step_size))
    else:
        update_rows_gathered(param, exp_avg, exp_avg_sq, rows, values, beta1, beta2, eps, step_size)


def update_rows_gathered(param: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, rows: torch.Tensor,
                         values: torch.Tensor, beta1: float, beta2: float, eps: float, step_size: float) -> None:
    """`update_rows` in torch operations (any device and dtype): gather the rows' moments, update them, write
    them back, add the step into the rows."""
    new_avg = exp_avg.index_select(0, rows).lerp_(values, 1 - beta1)
    new_avg_sq = exp_avg_sq.index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
    exp_avg.index_copy_(0, rows, new_avg)
    exp_avg_sq.index_copy_(0, rows, new_avg_sq)
    update = new_avg.div_(new_avg_sq.sqrt_().add_(eps))  # in place on the gathered copies
    param.index_add_(0, rows, update, alpha=-step_size)


def _distinct_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, values) of a sparse row gradient with one entry per row, repeated rows' gradients summed. Autograd
    hands a gradient over without its "coalesced" flag even when its rows are already distinct and sorted (the
    classifiers' pair kernel builds it so); strictly increasing rows are taken as they are, which spares a sort."""
    if not grad.is_coalesced():
        rows = grad._indices()[0]
        if rows.numel() < 2 or not bool((rows[1:] > rows[:-1]).all()):
            grad = grad.coalesce()
        else:
            return rows, grad._values()
    return grad.indices()[0], grad.values()


@numba.njit(cache=True, nogil=True, parallel=True)
def _row_sparse_adam_kernel(param: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray, rows: np.ndarray,
                            values: np.ndarray, beta1: np.float32, beta2: np.float32, eps: np.float32,
                            step_size: np.float32) -> None:
    """Adam's update of rows `rows` (distinct) of `param` and its moments, in place, one pass per row. The same
    arithmetic as `update_rows_gathered` in float32 (moments as lerp / multiply-add, then m / (sqrt(v) + eps)); it may
    round differently in the last bit, where torch's vector kernels fuse a multiply and an add."""
    one = np.float32(1.0)
    for k in numba.prange(rows.shape[0]):
        r = rows[k]
        for t in range(param.shape[1]):
            g = values[k, t]
            m = exp_avg[r, t]
            m = m + (one - beta1) * (g - m)
            v = exp_avg_sq[r, t] * beta2 + (one - beta2) * g * g
            exp_avg[r, t] = m
            exp_avg_sq[r, t] = v
            param[r, t] = param[r, t] - step_size * (m / (np.sqrt(v) + eps))


@numba.njit(cache=True, nogil=True, parallel=True)
def _sparse_adam_moments(exp_avg: np.ndarray, exp_avg_sq: np.ndarray, rows: np.ndarray, values: np.ndarray,
                         one_minus_beta1: np.float32, one_minus_beta2: np.float32, numer: np.ndarray,
                         second: np.ndarray) -> None:
    """SparseAdam's moment updates of rows `rows` (distinct), in its order of operations: u1 = (g - m) * (1 - beta1),
    m += u1; u2 = (g * g - v) * (1 - beta2), v += u2; and its numerator u1 + m_old and u2 + v_old (whose square root
    is the denominator), each rounded to float32."""
    for k in numba.prange(rows.shape[0]):
        r = rows[k]
        for t in range(exp_avg.shape[1]):
            g = values[k, t]
            m = exp_avg[r, t]
            v = exp_avg_sq[r, t]
            u1 = (g - m) * one_minus_beta1
            u2 = (g * g - v) * one_minus_beta2
            exp_avg[r, t] = m + u1
            exp_avg_sq[r, t] = v + u2
            numer[k, t] = u1 + m
            second[k, t] = u2 + v


@numba.njit(cache=True, nogil=True, parallel=True)
def _sparse_adam_step(param: np.ndarray, rows: np.ndarray, numer: np.ndarray, root: np.ndarray, eps: np.float32,
                      neg_step_size: np.float32) -> None:
    """SparseAdam's parameter step: p += -step_size * (numer / (root + eps)), each operation rounded to float32."""
    for k in numba.prange(rows.shape[0]):
        r = rows[k]
        for t in range(param.shape[1]):
            param[r, t] = param[r, t] + neg_step_size * (numer[k, t] / (root[k, t] + eps))
