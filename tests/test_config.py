from __future__ import annotations

import pytest

from xmine.config import (
    METHOD_CONFIGS,
    ClusterScheduleConfig,
    MIPSMethodConfig,
    NGAMEConfig,
    SiameseConfig,
    paper_presets,
)
from xmine.errors import ConfigError


def test_every_method_config_round_trips_through_json(tmp_path):
    for cls in METHOD_CONFIGS.values():
        config = cls()
        path = tmp_path / f"{cls.__name__}.json"
        config.save(path)
        assert cls.load(path) == config


def test_unknown_key_is_rejected_with_its_name():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['epochz'\] in NGAMEConfig\.siamese"):
        NGAMEConfig.from_dict({"siamese": {"epochz": 3}})


def test_bad_literal_and_type_are_rejected():
    with pytest.raises(ConfigError, match="not one of"):
        SiameseConfig.from_dict({"loss": "hinge"})
    with pytest.raises(ConfigError, match="expected an integer"):
        SiameseConfig.from_dict({"epochs": "ten"})
    with pytest.raises(ConfigError, match="must be > 0"):
        SiameseConfig.from_dict({"batch_size": 0})


def test_fusion_unseen_points_must_not_be_negative():
    from xmine.config import FusionConfig

    with pytest.raises(ConfigError, match="stage1_unseen_points.*>= 0"):
        FusionConfig.from_dict({"stage1_unseen_points": -1})


def test_heldout_curve_interval_must_be_positive():
    with pytest.raises(ConfigError, match=r"SiameseConfig\.heldout_every must be > 0, got 0"):
        SiameseConfig.from_dict({"heldout_every": 0})


def test_checkpoint_intervals_must_not_be_negative():
    from xmine.config import ClassifierConfig, SiameseConfig

    for params in (SiameseConfig, ClassifierConfig):
        with pytest.raises(ConfigError, match="checkpoint_every_s.*>= 0"):
            params.from_dict({"checkpoint_every_s": -1})


def test_ranker_and_fusion_selection_values_are_checked():
    from xmine.config import FusionConfig, RankerConfig

    with pytest.raises(ConfigError, match="C"):
        RankerConfig.from_dict({"C": -1.0})
    with pytest.raises(ConfigError, match="loss"):
        RankerConfig.from_dict({"loss": "hinge"})
    with pytest.raises(ConfigError, match="selection_folds"):
        FusionConfig.from_dict({"selection_folds": 0})


def test_schedule_validation():
    with pytest.raises(ConfigError, match="equal length"):
        ClusterScheduleConfig.from_dict({"milestones": [0.1], "sizes": [2, 4]})
    with pytest.raises(ConfigError, match="<= 1"):
        ClusterScheduleConfig.from_dict({"unit": "fraction", "milestones": [2], "sizes": [4]})


def test_paper_presets_load_and_hold_the_papers_values():
    presets = paper_presets()
    ngame = NGAMEConfig.from_dict(presets["ngame-paper"])
    assert ngame.siamese.lr == 2e-4 and ngame.siamese.batch_size == 1600 and ngame.siamese.epochs == 300
    assert ngame.siamese.margin == 0.3 and ngame.siamese.num_negatives == 10 and ngame.siamese.loss == "triplet"
    assert ngame.siamese.schedule.sizes[-1] == 512 and ngame.siamese.schedule.milestones[0] == 10
    assert ngame.index.M == 100 and ngame.index.ef_search == 300
    assert not ngame.ranker.enabled  # the sparse ranker is xmine's addition, not NGAME's
    mips = MIPSMethodConfig.from_dict(presets["mips-paper"])
    assert mips.mips.mips_negatives == 5 and mips.mips.mips_negatives + mips.mips.uniform_negatives == 3000


def test_invalid_json_file_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n "siamese": {\n  "epochs": ,\n }\n}')
    with pytest.raises(ConfigError, match=r"bad\.json, line 3: invalid JSON"):
        NGAMEConfig.load(path)


def test_configuration_doc_is_generated_from_the_dataclasses_and_up_to_date():
    from xmine.config_docs import generate, main

    text = generate()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert "| `siamese.schedule.sizes` | list of int | `[8, 16, 32]` |" in text
    assert "| `classifier.finetune_encoder` | bool | `true` |" in text  # the MIPS method's own default
    undocumented = [row.split("|")[1].strip() for row in rows if row.rstrip().endswith("|  |")]
    assert not undocumented, f"fields without a description (comment them in xmine/config.py): {undocumented}"
    assert main(["--check"]) == 0, "docs/configuration.md is out of date: run python -m xmine.config_docs"


def test_the_fast_preset_is_the_default_with_a_cheaper_schedule():
    from xmine.cli import build_config

    fast, default = build_config("ngame", "fast", [], {}), NGAMEConfig()
    assert fast.siamese.epochs < default.siamese.epochs and fast.classifier.epochs < default.classifier.epochs
    assert not fast.ranker.refit_on_all and default.ranker.refit_on_all
    assert fast.replace(siamese=default.siamese, classifier=default.classifier, ranker=default.ranker) == default
    assert build_config("ngame", "fast", ["siamese.epochs=2"], {}).siamese.epochs == 2  # --set still wins


def test_set_threads_limits_every_blas_pool_too():
    """numpy's BLAS runs scikit-learn's fits and numpy products: a model run with threads=1 must not use more."""
    import numba
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from xmine.utils import set_threads

    before = (torch.get_num_threads(), numba.get_num_threads(),
              max(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"))
    try:
        set_threads(1)
        blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas and all(n == 1 for n in blas)
        assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1
    finally:  # the other tests of this worker keep their threads
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])
        threadpool_limits(limits=before[2], user_api="blas")


def test_a_partial_section_keeps_the_fields_own_defaults():
    """`--set classifier.seed=1` must change the seed only: NGAME's classifier section defaults to 3 epochs (not
    ClassifierConfig's 5), MIPS's to a fine-tuned encoder, the MIPS index to IVF, the negatives index to HNSW."""
    from xmine.cli import build_config
    from xmine.config import MIPSMethodConfig, NGAMEConfig

    ngame = NGAMEConfig.from_dict({"classifier": {"seed": 1, "negatives_index": {"ef_search": 100}}})
    default = NGAMEConfig()
    assert ngame.classifier.seed == 1 and ngame.classifier.negatives_index.ef_search == 100
    assert ngame.classifier.epochs == default.classifier.epochs == 3
    assert ngame.classifier.negatives_index.kind == default.classifier.negatives_index.kind == "hnsw"
    assert ngame.classifier.replace(seed=0, negatives_index=default.classifier.negatives_index) == default.classifier
    mips = MIPSMethodConfig.from_dict({"classifier": {"lr": 0.01}, "mips": {"index": {"nprobe": 8}}})
    assert mips.classifier.finetune_encoder and mips.mips.index.kind == "ivf" and mips.mips.index.nprobe == 8
    assert build_config("ngame", None, ["classifier.seed=2"], {}).classifier.epochs == 3
    with pytest.raises(ConfigError, match="epochz"):
        NGAMEConfig.from_dict({"classifier": {"epochz": 3}})


def test_the_classifier_index_has_its_own_default_and_follows_the_label_index_when_null():
    from xmine.cli import build_config

    default = build_config("ngame", None, [], {})
    assert default.index.kind == "exact"  # the label index stays exact: a graph there loses tail labels
    assert (default.classifier_index_config().kind, default.classifier_index_config().exact_below) == ("hnsw", 20_000)
    both = build_config("ngame", None, ["index.kind=hnsw", "classifier_index=null"], {})
    assert both.classifier_index is None and both.classifier_index_config() == both.index
    paper = build_config("ngame", "ngame-paper", [], {})
    assert paper.classifier_index is None and paper.classifier_index_config().M == 100
    apart = build_config("ngame", None, ["classifier_index.kind=hnsw", "classifier_index.M=64"], {})
    assert apart.index.kind == "exact"
    assert (apart.classifier_index_config().kind, apart.classifier_index_config().M) == ("hnsw", 64)
