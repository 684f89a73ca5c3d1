"""Score a peer's prediction matrix with xmine's metrics (run with xmine's python).

    python -m bench.score_predictions --data DIR [--text-variant full|title] --pred PRED.npz

Prints one JSON line: P@k, nDCG@k, PSP@k (propensities from the training labels, A=0.55, B=1.5),
with the test split's filter pairs removed from the predictions.
"""

from __future__ import annotations

import argparse
import json

import scipy.sparse as sp


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--text-variant", default="full", choices=["full", "title"])
    ap.add_argument("--pred", required=True)
    args = ap.parse_args(argv)
    from xmine.data import load_dataset
    from xmine.metrics import evaluate, inverse_propensity

    ds = load_dataset(args.data, text_variant=args.text_variant)
    pred = sp.load_npz(args.pred).tocsr()
    m = evaluate(
        pred,
        ds.test.labels,
        ks=(1, 3, 5),
        inv_propensity=inverse_propensity(ds.train.labels),
        filter_pairs=ds.test.filter_pairs,
    )
    print(json.dumps({k: round(float(v), 4) for k, v in m.items()}))


if __name__ == "__main__":
    main()
