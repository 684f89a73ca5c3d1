"""Trained models. Every model has `train(dataset, config)`, `predict(inputs, k) -> CSR`,
`save(dir)` and `load(dir)`; `load_model(dir)` opens any saved model."""

from __future__ import annotations

from xmine.models.base import Inputs, XMCModel, load_model
from xmine.models.knn import TfidfKNN
from xmine.models.mips import MIPSClassifier
from xmine.models.ngame import NGAME

__all__ = ["Inputs", "XMCModel", "load_model", "TfidfKNN", "NGAME", "MIPSClassifier"]
