"""RowSparseAdam: the update of torch.optim.SparseAdam ("lazy" Adam over the rows a sparse gradient holds), and
a resumable state; CompiledSparseAdam: torch's SparseAdam bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch

from xmine.optim import CompiledSparseAdam, RowSparseAdam, update_rows, update_rows_gathered


def sparse_steps(optimizer_class: type[torch.optim.Optimizer], init: torch.Tensor, n_steps: int,
                 seed: int = 0) -> tuple[torch.Tensor, torch.optim.Optimizer]:
    """`n_steps` steps on gradients of random rows, with repeats (the embedding-bag case: a token twice in a
    batch) and never touching the last 10 rows."""
    param = torch.nn.Parameter(init.clone())
    optimizer = optimizer_class([param], lr=0.01)
    rng = torch.Generator().manual_seed(seed)
    for _ in range(n_steps):
        rows = torch.randint(0, init.shape[0] - 10, (40,), generator=rng)
        values = torch.randn(40, init.shape[1], generator=rng)
        param.grad = torch.sparse_coo_tensor(rows[None], values, init.shape)
        optimizer.step()
    return param.detach(), optimizer


def test_row_sparse_adam_gives_sparse_adams_update() -> None:
    init = torch.randn(200, 16, generator=torch.Generator().manual_seed(1))
    ours, _ = sparse_steps(RowSparseAdam, init, 25)
    reference, _ = sparse_steps(torch.optim.SparseAdam, init, 25)
    # the same arithmetic in another order: equal to float rounding
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    assert not torch.equal(ours[:190], init[:190])
    assert torch.equal(ours[190:], init[190:])  # rows never in a gradient are untouched


def test_compiled_sparse_adam_is_torchs_sparse_adam_bit_for_bit() -> None:
    """Parameters and both moments, bitwise, over steps whose gradients repeat rows and span magnitudes (torch's CPU
    square root is not correctly rounded, so a kernel computing its own would differ in the last bit here)."""
    init = torch.randn(300, 48, generator=torch.Generator().manual_seed(2))
    for seed in range(3):
        ours, ours_opt = sparse_steps(CompiledSparseAdam, init, 12, seed=seed)
        reference, reference_opt = sparse_steps(torch.optim.SparseAdam, init, 12, seed=seed)
        assert torch.equal(ours, reference)
        ours_state, reference_state = next(iter(ours_opt.state.values())), next(iter(reference_opt.state.values()))
        assert ours_state["step"] == reference_state["step"] == 12
        assert torch.equal(ours_state["exp_avg"], reference_state["exp_avg"])
        assert torch.equal(ours_state["exp_avg_sq"], reference_state["exp_avg_sq"])
        assert torch.equal(ours[290:], init[290:])


def test_compiled_sparse_adam_refuses_dense_gradients_as_torch_does() -> None:
    param = torch.nn.Parameter(torch.zeros(3, 2))
    param.grad = torch.ones(3, 2)
    with pytest.raises(RuntimeError, match="does not support dense gradients"):
        CompiledSparseAdam([param]).step()


def test_compiled_sparse_adam_continues_from_torchs_state_identically() -> None:
    """A checkpoint written with torch's SparseAdam loads into CompiledSparseAdam, and the next steps match."""
    init = torch.randn(100, 8, generator=torch.Generator().manual_seed(3))
    start, torch_opt = sparse_steps(torch.optim.SparseAdam, init, 5)
    rng = torch.Generator().manual_seed(9)
    grads = [torch.sparse_coo_tensor(torch.randint(0, 100, (30,), generator=rng)[None],
                                     torch.randn(30, 8, generator=rng), init.shape) for _ in range(4)]
    finals = []
    for optimizer_class in (torch.optim.SparseAdam, CompiledSparseAdam):
        param = torch.nn.Parameter(start.clone())
        optimizer = optimizer_class([param], lr=0.01)
        optimizer.load_state_dict(copy.deepcopy(torch_opt.state_dict()))  # loading shares the moment tensors
        for grad in grads:
            param.grad = grad.clone()
            optimizer.step()
        finals.append(param.detach())
    assert torch.equal(finals[0], finals[1]) and not torch.equal(finals[0], start)


def test_the_compiled_row_update_equals_the_gathered_one() -> None:
    """The CPU kernel (one pass per row) against torch's gather / update / write-back, over several steps with
    moments that build up; rows outside `rows` must not move in either."""
    gen = torch.Generator().manual_seed(4)
    tables = [torch.randn(300, 24, generator=gen), torch.zeros(300, 24), torch.zeros(300, 24)]
    fast, plain = [t.clone() for t in tables], [t.clone() for t in tables]
    for step in range(1, 8):
        rows = torch.randperm(280, generator=gen)[:90].sort().values
        values = torch.randn(90, 24, generator=gen)
        size = 0.01 * (1 - 0.999 ** step) ** 0.5 / (1 - 0.9 ** step)
        update_rows(*fast, rows, values, 0.9, 0.999, 1e-8, size)
        update_rows_gathered(*plain, rows, values, 0.9, 0.999, 1e-8, size)
    # float32 rounding only: torch's vector kernels fuse some multiply-adds, the kernel does not
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert torch.equal(fast[0][280:], tables[0][280:])


def test_rows_already_distinct_are_taken_as_they_are_and_repeats_are_summed() -> None:
    from xmine.optim import _distinct_rows

    values = torch.arange(8.0).reshape(4, 2)
    rows, got = _distinct_rows(torch.sparse_coo_tensor(torch.tensor([[1, 3, 4, 9]]), values, (10, 2)))
    assert rows.tolist() == [1, 3, 4, 9] and torch.equal(got, values)
    rows, got = _distinct_rows(torch.sparse_coo_tensor(torch.tensor([[4, 1, 4, 2]]), values, (10, 2)))
    assert rows.tolist() == [1, 2, 4] and got.tolist() == [[2.0, 3.0], [6.0, 7.0], [4.0, 6.0]]


def test_row_sparse_adam_resumes_exactly_from_its_state() -> None:
    init = torch.randn(100, 8, generator=torch.Generator().manual_seed(2))
    straight, _ = sparse_steps(RowSparseAdam, init, 10, seed=3)
    # 4 steps, state saved and loaded into a new optimizer, then the remaining 6 steps of the same sequence
    param = torch.nn.Parameter(init.clone())
    optimizer = RowSparseAdam([param], lr=0.01)
    rng = torch.Generator().manual_seed(3)
    for step in range(10):
        if step == 4:
            state = optimizer.state_dict()
            optimizer = RowSparseAdam([param], lr=0.01)
            optimizer.load_state_dict(state)
        rows = torch.randint(0, 90, (40,), generator=rng)
        param.grad = torch.sparse_coo_tensor(rows[None], torch.randn(40, 8, generator=rng), init.shape)
        optimizer.step()
    assert torch.equal(param.detach(), straight)


def test_row_sparse_adam_refuses_dense_gradients_and_bad_settings() -> None:
    param = torch.nn.Parameter(torch.zeros(3, 2))
    param.grad = torch.ones(3, 2)
    with pytest.raises(RuntimeError, match="sparse row gradients"):
        RowSparseAdam([param]).step()
    with pytest.raises(ValueError, match="betas"):
        RowSparseAdam([param], betas=(0.9, 1.0))


@pytest.mark.parametrize(("name", "expected"), [("sparse_adam", CompiledSparseAdam),
                                                ("row_sparse_adam", RowSparseAdam)])
def test_the_token_tables_optimiser_is_the_configured_one(tiny_model_dir, name, expected) -> None:
    from xmine.config import EncoderConfig
    from xmine.encoders import build_encoder

    encoder = build_encoder(EncoderConfig(kind="bow", model_path=str(tiny_model_dir), head_hidden=32),
                            ["a few words", "some other words"])
    optimizers = encoder.make_optimizers(1e-3, 1e-2, embedding_optimizer=name)
    assert isinstance(optimizers[-1], expected)
    assert optimizers[-1].param_groups[0]["params"] == encoder.sparse_parameters()
