"""Trained models. Every model has the signature of `XMCModel` (xmine/models/base.py): `train(dataset, config,
out_dir=, resume=, init_from=, progress=, keep_checkpoints=)`, `predict(inputs, k, config=, progress=) -> CSR`,
`save(dir)` and `load(dir)`; `model_class(method)` is the class that trains a method, `load_model(dir)` opens
any saved model."""

from __future__ import annotations

from xmine.models.base import Inputs, XMCModel, load_model, model_class
from xmine.models.knn import TfidfKNN
from xmine.models.mips import MIPSClassifier
from xmine.models.ngame import NGAME

__all__ = ["Inputs", "XMCModel", "load_model", "model_class", "TfidfKNN", "NGAME", "MIPSClassifier"]
