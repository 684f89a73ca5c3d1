"""Negative mining: NGAME's cluster batch sampler and the MIPS negative sampler."""

from __future__ import annotations

from xmine.mining.clusters import ClusterBatchSampler, ClusterSchedule, balanced_clusters
from xmine.mining.mips import MIPSNegativeSampler

__all__ = ["ClusterBatchSampler", "ClusterSchedule", "balanced_clusters", "MIPSNegativeSampler"]
