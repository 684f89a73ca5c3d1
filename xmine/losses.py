"""Siamese losses over in-batch similarities. Each is a small module with a pure
`forward(similarity, positive_mask)`, testable on random tensors.

similarity: (B, B) cosine between point i and the label sampled for point j (positives on the diagonal).
positive_mask: (B, B) bool, True where label j is ALSO a positive of point i (diagonal included);
those entries are never used as negatives (multi-label data).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xmine.errors import ConfigError


class TripletOHNMLoss(nn.Module):
    """NGAME's triplet margin loss with online hard-negative mining: for each point, the `k`
    most similar in-batch negatives; hinge max(0, s_neg - s_pos + margin), weighted by a softmax
    over the violating negatives' similarities / tau (the paper's "aggressive" weighting)."""

    def __init__(self, margin: float = 0.3, k: int = 10, tau: float = 0.1, softmax_weighting: bool = True) -> None:
        super().__init__()
        self.margin, self.k, self.tau, self.softmax_weighting = margin, k, tau, softmax_weighting

    def forward(self, similarity: torch.Tensor, positive_mask: torch.Tensor) -> torch.Tensor:
        sim_pos = similarity.diagonal().unsqueeze(1)  # (B, 1)
        k = min(self.k, similarity.shape[1] - 1)
        if k < 1:
            return similarity.sum() * 0.0
        # positives can never be picked: push them below any cosine
        candidates = similarity.masked_fill(positive_mask, -10.0)
        sim_neg, _ = candidates.topk(k, dim=1)  # (B, k)
        valid = sim_neg > -10.0  # rows with fewer than k true negatives
        hinge = torch.relu(sim_neg - sim_pos + self.margin) * valid
        if self.softmax_weighting:
            violating = hinge > 0
            weights = torch.softmax((sim_neg / self.tau) * violating, dim=1)
            hinge = hinge * weights
        return hinge.mean()

    def get_config_dict(self) -> dict[str, Any]:
        return {"margin": self.margin, "k": self.k, "tau": self.tau, "softmax_weighting": self.softmax_weighting}


class InfoNCELoss(nn.Module):
    """Softmax cross-entropy of each point over all in-batch labels (its own label is the target),
    other positives of the point masked out."""

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, similarity: torch.Tensor, positive_mask: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(similarity.shape[0], dtype=torch.bool, device=similarity.device)
        logits = (similarity / self.temperature).masked_fill(positive_mask & ~eye, float("-inf"))
        target = torch.arange(similarity.shape[0], device=similarity.device)
        return nn.functional.cross_entropy(logits, target)

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature}


def build_siamese_loss(name: str, margin: float = 0.3, num_negatives: int = 10, softmax_tau: float = 0.1,
                       temperature: float = 0.05) -> nn.Module:
    if name == "triplet":
        return TripletOHNMLoss(margin=margin, k=num_negatives, tau=softmax_tau)
    if name == "infonce":
        return InfoNCELoss(temperature=temperature)
    raise ConfigError(f"unknown Siamese loss {name!r}; choose 'triplet' or 'infonce'")


def in_batch_spread(similarity: torch.Tensor, positive_mask: torch.Tensor) -> dict[str, float]:
    """Diagnostics: mean positive and negative in-batch cosine and their gap. A collapsed encoder
    has negatives as similar as positives (gap ~ 0, negative cosine ~ 1)."""
    with torch.no_grad():
        neg = similarity[~positive_mask]
        pos = similarity.diagonal()
        neg_mean = float(neg.mean()) if neg.numel() else float("nan")
        return {"pos_cos": float(pos.mean()), "neg_cos": neg_mean, "gap": float(pos.mean()) - neg_mean}
