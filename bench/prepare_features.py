"""Write the TF-IDF features and labels that the peer libraries train on (bench.peers).

Run with xmine's python (the main environment):

    python -m bench.prepare_features --data DIR [--text-variant full|title] [--lead-channel off|on|auto]
        --out FEATURES_DIR

Loads the dataset with xmine, fits xmine's TfidfFeaturizer (TfidfConfig: word 1-2 grams, min_df 2,
sublinear tf, rows L2-normalised; given features for Delicious/Bibtex) on the training split and writes
X_trn.npz, X_tst.npz, Y_trn.npz (binary), Y_tst.npz (binary) and meta.json. The peers' standard
features have no lead channel (`--lead-channel off`, the default here); `auto` gives them the features
xmine's own models use.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def _binary(y: sp.csr_matrix) -> sp.csr_matrix:
    y = sp.csr_matrix(y, dtype=np.float32, copy=True)
    y.eliminate_zeros()
    y.data[:] = 1.0
    y.sort_indices()
    return y


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset directory")
    ap.add_argument("--text-variant", default="full", choices=["full", "title"])
    ap.add_argument("--lead-channel", default="off", choices=["off", "on", "auto"],
                    help="TF-IDF of each text's first words as a second channel (TfidfConfig.lead_channel)")
    ap.add_argument("--out", required=True, help="output features directory")
    args = ap.parse_args(argv)
    from xmine.config import TfidfConfig
    from xmine.data import load_dataset
    from xmine.features import TfidfFeaturizer

    t0 = time.perf_counter()
    ds = load_dataset(args.data, text_variant=args.text_variant)
    cfg = TfidfConfig(lead_channel=args.lead_channel)
    feat = TfidfFeaturizer(cfg).fit(ds.train.texts, ds.train.features)
    x_trn = feat.transform(ds.train.texts, ds.train.features)
    x_tst = feat.transform(ds.test.texts, ds.test.features)
    y_trn = _binary(ds.train.labels)
    y_tst = _binary(ds.test.labels)
    seconds = time.perf_counter() - t0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sp.save_npz(out / "X_trn.npz", x_trn)
    sp.save_npz(out / "X_tst.npz", x_tst)
    sp.save_npz(out / "Y_trn.npz", y_trn)
    sp.save_npz(out / "Y_tst.npz", y_tst)
    meta = {
        "dataset": ds.name,
        "data_dir": str(Path(args.data).resolve()),
        "text_variant": ds.text_variant,
        "feature_source": feat.source,
        "n_features": feat.n_features,
        "lead_words": feat.lead_words,
        "n_labels": ds.n_labels,
        "n_train": ds.train.n_points,
        "n_test": ds.test.n_points,
        "train_nnz": int(x_trn.nnz),
        "tfidf": cfg.to_dict(),
        "seconds": round(seconds, 3),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
