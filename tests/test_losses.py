from __future__ import annotations

import torch

from xmine.losses import InfoNCELoss, TripletOHNMLoss, in_batch_spread


def _batch(b: int = 8, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    return p @ q.T, torch.eye(b, dtype=torch.bool)


def test_triplet_matches_hand_computation():
    sim = torch.tensor([[0.5, 0.6, 0.1], [0.0, 0.9, 0.2], [0.3, 0.3, 0.4]])
    mask = torch.eye(3, dtype=torch.bool)
    loss = TripletOHNMLoss(margin=0.3, k=1, softmax_weighting=False)(sim, mask)
    # hardest negatives: 0.6 (row 0), 0.2 (row 1), 0.3 (row 2); hinge: 0.4, 0, 0.2 -> mean 0.2
    assert torch.isclose(loss, torch.tensor(0.2))


def test_co_positives_are_never_negatives():
    sim = torch.tensor([[0.1, 0.95, 0.0], [0.0, 0.9, 0.0], [0.0, 0.0, 0.9]])
    mask = torch.eye(3, dtype=torch.bool)
    mask[0, 1] = True  # label of point 1 is also a positive of point 0
    for loss_fn in (TripletOHNMLoss(margin=0.3, k=2), InfoNCELoss(0.05)):
        sim_var = sim.clone().requires_grad_(True)
        loss_fn(sim_var, mask).backward()
        assert sim_var.grad[0, 1] == 0  # no gradient pushes the co-positive away


def test_triplet_softmax_weights_only_violators_and_falls_to_zero_when_separated():
    sim, mask = _batch()
    loss = TripletOHNMLoss(margin=0.3, k=3)
    assert loss(sim, mask) > 0
    separated = torch.full((4, 4), -0.5).fill_diagonal_(0.9)
    assert loss(separated, torch.eye(4, dtype=torch.bool)) == 0


def test_infonce_matches_cross_entropy_without_co_positives():
    sim, mask = _batch()
    expected = torch.nn.functional.cross_entropy(sim / 0.1, torch.arange(8))
    assert torch.isclose(InfoNCELoss(0.1)(sim, mask), expected)


def test_spread_diagnostic_detects_collapse():
    collapsed = torch.full((6, 6), 0.99)
    spread = in_batch_spread(collapsed, torch.eye(6, dtype=torch.bool))
    assert abs(spread["gap"]) < 1e-6 and spread["neg_cos"] > 0.98
