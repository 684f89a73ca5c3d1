"""Training losses, each a small module with a pure forward, testable on random tensors: the Siamese losses over
in-batch similarities (`forward(similarity, positive_mask)`, `build_siamese_loss`) and the classifiers' losses
over candidate scores (`forward(scores, is_positive, valid)`, `build_shortlist_loss`).

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


class ShortlistBCE(nn.Module):
    """The classifiers' default loss: binary cross-entropy of every valid (point, candidate) score, averaged.

    forward(scores (B, C) logits, is_positive (B, C) bool, valid (B, C) bool: False on padding) -> scalar."""

    def forward(self, scores: torch.Tensor, is_positive: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.binary_cross_entropy_with_logits(scores, is_positive.float(), reduction="none")
        return (loss * valid).sum() / valid.sum().clamp_min(1)


class ShortlistTriplet(nn.Module):
    """NGAME stage 2's classifier loss: a hinge with `margin` over the `n_positives` lowest-scored positives x the
    `n_negatives` highest-scored negatives of each point's candidates (the same forward as `ShortlistBCE`)."""

    def __init__(self, margin: float, n_positives: int, n_negatives: int) -> None:
        super().__init__()
        self.margin, self.n_positives, self.n_negatives = margin, n_positives, n_negatives

    def forward(self, scores: torch.Tensor, is_positive: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        big = 1e4
        pos_scores = scores.masked_fill(~(is_positive & valid), big)
        neg_scores = scores.masked_fill(~(~is_positive & valid), -big)
        hard_pos, _ = pos_scores.topk(min(self.n_positives, scores.shape[1]), dim=1, largest=False)
        hard_neg, _ = neg_scores.topk(min(self.n_negatives, scores.shape[1]), dim=1)
        pair_valid = (hard_pos < big / 2).unsqueeze(2) & (hard_neg > -big / 2).unsqueeze(1)
        hinge = torch.relu(hard_neg.unsqueeze(1) - hard_pos.unsqueeze(2) + self.margin) * pair_valid
        return hinge.sum() / pair_valid.sum().clamp_min(1)


def build_shortlist_loss(config: Any) -> nn.Module:
    """The classifier loss that `config.loss` (ClassifierConfig) names."""
    if config.loss == "bce":
        return ShortlistBCE()
    if config.loss == "triplet":
        return ShortlistTriplet(config.margin, config.triplet_positives, config.triplet_negatives)
    raise ConfigError(f"unknown classifier loss {config.loss!r}; choose 'bce' or 'triplet'")


def in_batch_spread(similarity: torch.Tensor, positive_mask: torch.Tensor) -> dict[str, float]:
    """Diagnostics: mean positive and negative in-batch cosine and their gap. A collapsed encoder
    has negatives as similar as positives (gap ~ 0, negative cosine ~ 1)."""
    with torch.no_grad():
        neg = similarity[~positive_mask]
        pos = similarity.diagonal()
        neg_mean = float(neg.mean()) if neg.numel() else float("nan")
        return {"pos_cos": float(pos.mean()), "neg_cos": neg_mean, "gap": float(pos.mean()) - neg_mean}
