"""The bundled demo dataset: hpo-disease-phenotype (disease name -> HPO phenotype terms), shipped
compressed inside the package so that the README's first command works on any machine."""

from __future__ import annotations

import tarfile
from pathlib import Path

from xmine.encoders.cached import cache_dir
from xmine.errors import XmineError

ARCHIVE = Path(__file__).with_name("hpo-disease-phenotype.tar.gz")
NAME = "hpo-disease-phenotype"


def demo_dataset_path(target: str | Path | None = None) -> Path:
    """Unpack the demo dataset (once) and return its directory."""
    root = Path(target) if target is not None else cache_dir() / "demo"
    out = root / NAME
    if (out / "tst_X_Y.txt").exists():
        return out
    if not ARCHIVE.exists():
        raise XmineError(f"the demo dataset archive is missing from the installation ({ARCHIVE})")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{NAME}.partial"
    with tarfile.open(ARCHIVE, "r:gz") as tar:
        tar.extractall(tmp, filter="data")
    (tmp / NAME).rename(out)
    tmp.rmdir()
    return out
