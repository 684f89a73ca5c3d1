"""The token table's gradient from two batches of weighted token bags (a step's points and labels), computed in
one compiled pass and handed over coalesced: one row per distinct token, in increasing token order.

torch's sparse embedding bag writes one gradient row per (bag, token) entry of each batch; autograd then merges the
two batches' gradients (`add` of two sparse tensors) and the optimiser coalesces them (sorts the tokens and sums each
token's rows). Those three passes over (entries x dim) floats were most of a bag-encoder training step on CPU.
This computes the same sums in the same order: the merge is replayed on the token ids alone, the permutation is
taken from the same `torch.sort` call `coalesce` makes (which is not a stable sort for small inputs), and each
token's rows are summed in that order, in float32, as `coalesce` does. So the optimiser gets the gradient the plain
path would have given it, bit for bit; `tests/test_encoders.py` checks it on whole training runs. It mirrors torch's
CPU code (pinned: torch 2.13); a torch that merged or coalesced otherwise would still get a correct gradient, and
those tests would report that it is no longer the identical one.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch
from torch.nn import functional


class PairedBagSums(torch.autograd.Function):
    """(sums of batch a, sums of batch b): each bag's `sum_e weight_e * table[token_e]`, as torch's embedding bag
    computes it; the table's gradient comes back as a coalesced sparse tensor."""

    @staticmethod
    def forward(ctx: Any, table: torch.Tensor, tokens_a: torch.Tensor, offsets_a: torch.Tensor,
                weights_a: torch.Tensor, bags_a: torch.Tensor, tokens_b: torch.Tensor, offsets_b: torch.Tensor,
                weights_b: torch.Tensor, bags_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sums_a = functional.embedding_bag(tokens_a, table, offsets_a, mode="sum", per_sample_weights=weights_a)
        sums_b = functional.embedding_bag(tokens_b, table, offsets_b, mode="sum", per_sample_weights=weights_b)
        ctx.save_for_backward(tokens_a, weights_a, bags_a, tokens_b, weights_b, bags_b)
        ctx.table_shape = tuple(table.shape)
        return sums_a, sums_b

    @staticmethod
    def backward(ctx: Any, grad_a: torch.Tensor | None, grad_b: torch.Tensor | None) -> tuple[Any, ...]:
        tokens_a, weights_a, bags_a, tokens_b, weights_b, bags_b = ctx.saved_tensors
        n_rows, dim = ctx.table_shape
        grad_a = _float32_rows(grad_a, len(bags_a) and int(bags_a.max()) + 1, dim)
        grad_b = _float32_rows(grad_b, len(bags_b) and int(bags_b.max()) + 1, dim)
        rows, values = paired_bag_gradient(tokens_a.numpy(), weights_a.numpy(), bags_a.numpy(), grad_a,
                                           tokens_b.numpy(), weights_b.numpy(), bags_b.numpy(), grad_b)
        grad_table = torch.sparse_coo_tensor(torch.from_numpy(rows).unsqueeze(0), torch.from_numpy(values),
                                             (n_rows, dim), is_coalesced=True, check_invariants=False)
        return (grad_table,) + (None,) * 8


def _float32_rows(grad: torch.Tensor | None, n_bags: int, dim: int) -> np.ndarray:
    if grad is None:  # an output that did not reach the loss
        return np.zeros((n_bags, dim), dtype=np.float32)
    return np.ascontiguousarray(grad.detach().numpy(), dtype=np.float32)


def paired_bag_gradient(tokens_a: np.ndarray, weights_a: np.ndarray, bags_a: np.ndarray, grad_a: np.ndarray,
                        tokens_b: np.ndarray, weights_b: np.ndarray, bags_b: np.ndarray, grad_b: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(distinct tokens ascending, their float32 gradient rows) of two batches of bags: entry e of batch a adds
    `weights_a[e] * grad_a[bags_a[e]]` to token `tokens_a[e]`'s row, and likewise for batch b. The sums are taken
    in the order torch's merge-then-coalesce takes them (module docstring)."""
    merged, from_a, from_b = _merge_like_sparse_add(tokens_a, tokens_b)
    order = torch.from_numpy(merged).sort(0)[1].numpy()  # the very call `coalesce` makes on these indices
    ordered = merged[order]
    starts = np.flatnonzero(np.diff(ordered, prepend=-1))
    values = np.empty((starts.shape[0], grad_a.shape[1]), dtype=np.float32)
    _sum_runs(order, np.append(starts, merged.shape[0]), from_a, from_b, weights_a, bags_a, grad_a, weights_b, bags_b,
              grad_b, values)
    return ordered[starts], values


@numba.njit(cache=True, nogil=True)
def _merge_like_sparse_add(tokens_a: np.ndarray, tokens_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entry list torch's CPU `add` of two sparse tensors with contiguous values builds from their index lists
    (coalesced or not): walk both, take the smaller head, and both heads into one entry when they are equal. Returns
    each merged entry's token and the entry of a and of b it holds (-1: none)."""
    n_a, n_b = tokens_a.shape[0], tokens_b.shape[0]
    merged = np.empty(n_a + n_b, dtype=np.int64)
    from_a = np.full(n_a + n_b, -1, dtype=np.int64)
    from_b = np.full(n_a + n_b, -1, dtype=np.int64)
    i = j = k = 0
    while i < n_a or j < n_b:
        if i >= n_a:
            take_a, take_b = False, True
        elif j >= n_b:
            take_a, take_b = True, False
        else:
            take_a, take_b = tokens_a[i] <= tokens_b[j], tokens_a[i] >= tokens_b[j]
        if take_a:
            merged[k] = tokens_a[i]
            from_a[k] = i
            i += 1
        if take_b:
            merged[k] = tokens_b[j]
            from_b[k] = j
            j += 1
        k += 1
    return merged[:k], from_a[:k], from_b[:k]


@numba.njit(cache=True, nogil=True, parallel=True)
def _sum_runs(order: np.ndarray, bounds: np.ndarray, from_a: np.ndarray, from_b: np.ndarray, weights_a: np.ndarray,
              bags_a: np.ndarray, grad_a: np.ndarray, weights_b: np.ndarray, bags_b: np.ndarray, grad_b: np.ndarray,
              out: np.ndarray) -> None:
    """out[r] = the merged entries order[bounds[r]:bounds[r + 1]] summed left to right. A merged entry is
    0 + (a's row) + (b's row), as the merge accumulates it into a zeroed buffer; each entry's row is its weight
    times its bag's gradient row (the embedding bag's backward), all in float32."""
    dim = out.shape[1]
    zero = np.float32(0.0)
    for r in numba.prange(out.shape[0]):
        for p in range(bounds[r], bounds[r + 1]):
            k = order[p]
            a, b = from_a[k], from_b[k]
            for t in range(dim):
                value = zero
                if a >= 0:
                    value = value + grad_a[bags_a[a], t] * weights_a[a]
                if b >= 0:
                    value = value + grad_b[bags_b[b], t] * weights_b[b]
                if p == bounds[r]:
                    out[r, t] = value
                else:
                    out[r, t] = out[r, t] + value
