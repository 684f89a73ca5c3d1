"""The configuration reference (docs/configuration.md), generated from the dataclasses in xmine.config: every
field with its type, its default and the comment written next to it, so the page cannot drift from the code.

    python -m xmine.config_docs            # rewrite the generated block of docs/configuration.md
    python -m xmine.config_docs --check    # exit 1 when the page is out of date
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import json
import sys
import tokenize
import types
import typing
from pathlib import Path
from typing import Any

from xmine import config as config_module
from xmine.config import METHOD_CONFIGS, Params

# what a field is, for the fields whose line in xmine/config.py carries no comment
NOTES: dict[tuple[str, str], str] = {
    ("EncoderConfig", "kind"): "bow: bag of WordPiece embeddings initialised from MiniLM + residual head (fast on "
                               "CPU); transformer: MiniLM or any Hugging Face encoder directory, mean-pooled; "
                               "cached: frozen transformer features computed once + a trainable head",
    ("EncoderConfig", "head_hidden"): "bow/cached: hidden width of the residual head",
    ("EncoderConfig", "encode_batch_size"): "texts per batch when embedding",
    ("IndexConfig", "kind"): "exact search, HNSW graph, IVF lists, or IVF with product-quantised codes",
    ("IndexConfig", "M"): "HNSW: links per node",
    ("IndexConfig", "ef_construction"): "HNSW: search width while building",
    ("IndexConfig", "ef_search"): "HNSW: search width per query (recall against speed)",
    ("IndexConfig", "nprobe"): "IVF: lists searched per query (recall against speed)",
    ("ClusterScheduleConfig", "unit"): "whether `start` and `milestones` count epochs or fractions of the run",
    ("ClusterScheduleConfig", "start"): "random batches before this point",
    ("ClusterScheduleConfig", "refresh_every"): "epochs between re-embedding and re-clustering the points",
    ("ClusterScheduleConfig", "milestones"): "when the cluster size changes",
    ("ClusterScheduleConfig", "sizes"): "points per cluster from each milestone on",
    ("SiameseConfig", "epochs"): "stage-1 epochs",
    ("SiameseConfig", "batch_size"): "points per batch (the global batch when data-parallel)",
    ("SiameseConfig", "weight_decay"): "AdamW weight decay",
    ("SiameseConfig", "loss"): "in-batch InfoNCE, the paper's triplet loss with online hard-negative mining, or "
                               "InfoNCE first and then triplet",
    ("SiameseConfig", "margin"): "triplet: margin",
    ("SiameseConfig", "num_negatives"): "triplet: hardest in-batch negatives per point",
    ("SiameseConfig", "softmax_tau"): "triplet: temperature of the softmax over the hardest negatives",
    ("SiameseConfig", "batching"): "negative-mining-aware batches of clustered points, or random batches",
    ("SiameseConfig", "schedule"): "when to cluster and with which cluster sizes",
    ("SiameseConfig", "grad_clip"): "gradient-norm clipping (null: none)",
    ("SiameseConfig", "seed"): "random seed of stage 1",
    ("TfidfConfig", "ngram_max"): "longest word n-gram",
    ("TfidfConfig", "min_df"): "n-grams in fewer training texts are dropped",
    ("TfidfConfig", "max_features"): "keep the most frequent n-grams only (null: all)",
    ("TfidfConfig", "sublinear_tf"): "1 + log(tf) instead of tf",
    ("TfidfConfig", "lead_words"): "words of each text in the lead channel",
    ("ClassifierConfig", "features"): "what the classifiers see: the embedding, the TF-IDF features, or both",
    ("ClassifierConfig", "loss"): "binary cross-entropy over the candidates, or NGAME's triplet loss",
    ("ClassifierConfig", "margin"): "triplet: margin",
    ("ClassifierConfig", "triplet_positives"): "triplet: hardest positives per point",
    ("ClassifierConfig", "triplet_negatives"): "triplet: hardest negatives per point",
    ("ClassifierConfig", "epochs"): "classifier epochs",
    ("ClassifierConfig", "batch_size"): "points per batch",
    ("ClassifierConfig", "hash_buckets"): "size of the hashed (label, feature) weight table of the sparse part",
    ("ClassifierConfig", "finetune_encoder"): "train the encoder with the classifiers (the MIPS method does)",
    ("ClassifierConfig", "seed"): "random seed of the classifiers (and of the fusion's held-out points)",
    ("RankerConfig", "enabled"): "train the sparse ranker",
    ("RankerConfig", "loss"): "liblinear's loss",
    ("RankerConfig", "C"): "inverse regularisation strength",
    ("RankerConfig", "prune_below"): "weights smaller in magnitude are dropped",
    ("FusionConfig", "kind"): "a fusion fitted on held-out training points, or a fixed weighted sum",
    ("FusionConfig", "weight"): "fixed: weight of the classifier score",
    ("FusionConfig", "max_depth"): "learned: depth of NGAME's single decision tree (boosting_rounds=0)",
    ("FusionConfig", "holdout_points"): "training points held out of the classifiers to fit the fusion on "
                                        "(at most a fifth of the training set)",
    ("FusionConfig", "propensity_A"): "A of the inverse-propensity feature (Jain et al. 2016)",
    ("FusionConfig", "propensity_B"): "B of the inverse-propensity feature",
    ("MIPSConfig", "mips_negatives"): "hard negatives per point from the search over the classifier vectors",
    ("MIPSConfig", "uniform_negatives"): "uniformly drawn negatives per point",
    ("KNNConfig", "neighbours"): "nearest training points that vote",
    ("KNNConfig", "power"): "a neighbour's vote is its similarity to this power",
    ("NGAMEConfig", "stages"): "the stages to train: 1 (encoder), 2 (classifiers, ranker, fusion) or both",
}

START, END = "<!-- CONFIG:START -->", "<!-- CONFIG:END -->"
DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def field_comments() -> dict[tuple[str, str], str]:
    """(class name, field name) -> the comment on the field's line, or the comment lines just above it."""
    source = inspect.getsource(config_module)
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    out = dict(NOTES)
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
                continue
            text = comments.get(stmt.end_lineno or stmt.lineno, "")
            if not text:  # a comment block directly above the field
                above, line = [], stmt.lineno - 1
                while line >= 1 and lines[line - 1].strip().startswith("#"):
                    above.insert(0, comments.get(line, ""))
                    line -= 1
                text = " ".join(above)
            if text:
                out[(node.name, stmt.target.id)] = text
    return out


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{json.dumps(a)}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    return getattr(hint, "__name__", str(hint))


def _section(obj: Params, path: str, comments: dict[tuple[str, str], str], out: list[str],
             seen: set[type] | None = None, full_doc: bool = False) -> None:
    cls = type(obj)
    if seen is not None:
        seen.add(cls)
    doc = inspect.cleandoc(cls.__doc__ or "")
    doc = (doc if full_doc else doc.split("\n\n")[0]).replace("\n\n", "\0").replace("\n", " ").replace("\0", "\n\n")
    title = cls.__name__ if path == cls.__name__ else f"`{path}` ({cls.__name__})" if path else \
        f"top level ({cls.__name__})"
    out += [f"### {title}", "", doc, "",
            "| key | type | default | what it is |", "|---|---|---|---|"]
    nested = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        key = f"{path}.{f.name}" if path else f.name
        if isinstance(value, Params):
            nested.append((value, key))
            summary = inspect.cleandoc(type(value).__doc__ or "").split("\n")[0]
            out.append(f"| `{key}` | {type(value).__name__} | see below | "
                       f"{comments.get((cls.__name__, f.name), summary)} |")
            continue
        default = json.dumps(value)
        note = comments.get((cls.__name__, f.name), "").replace("|", "\\|")
        if not note and full_doc and f"{f.name}:" in doc:
            note = "described above"
        out.append(f"| `{key}` | {_type_name(hints[f.name])} | `{default}` | {note} |")
    out.append("")
    for value, key in nested:
        _section(value, key, comments, out, seen)


def generate() -> str:
    """The generated block: per method, every section of its configuration."""
    comments = field_comments()
    out: list[str] = []
    seen: set[type] = set()
    for method, cls in METHOD_CONFIGS.items():
        out += [f"## `--method {method}` ({cls.__name__})", ""]
        _section(cls(), "", comments, out, seen)
    # the configurations outside the methods' training configs (prediction, labels added later, ...)
    others = [c for _, c in inspect.getmembers(config_module, inspect.isclass)
              if issubclass(c, Params) and c is not Params and c.__module__ == config_module.__name__ and c not in seen]
    if others:
        out += ["## Other configurations", ""]
        for cls in others:
            _section(cls(), cls.__name__, comments, out, seen, full_doc=True)
    return "\n".join(out).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the page is up to date")
    args = parser.parse_args(argv)
    content = DOC.read_text()
    head, rest = content.split(START, 1)
    new = head + START + "\n" + generate() + "\n" + END + rest.split(END, 1)[1]
    if args.check:
        if new != content:
            print(f"{DOC} is out of date: run python -m xmine.config_docs", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
