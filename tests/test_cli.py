"""The command line end to end, in-process (xmine.cli.main) on a small real dataset."""

from __future__ import annotations

import json

import pytest

from xmine.cli import main
from xmine.errors import XmineError


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_predict_evaluate_knn(small_hpo, tmp_path, capsys):
    model = tmp_path / "model"
    code, out, _ = run(capsys, "-q", "train", "--method", "knn", "--data", str(small_hpo), "--out", str(model))
    assert code == 0 and "trained knn" in out
    meta = json.loads((model / "config.json").read_text())
    assert meta["method"] == "knn" and meta["xmine_version"] and meta["config"]["neighbours"] == 50
    pred = tmp_path / "pred.npz"
    code, out, _ = run(capsys, "-q", "predict", "--model", str(model), "--data", str(small_hpo), "--out", str(pred),
                       "-k", "20")
    assert code == 0 and pred.exists()
    code, out, _ = run(capsys, "evaluate", "--data", str(small_hpo), "--pred", str(pred), "--json")
    metrics = json.loads(out)
    assert code == 0 and {"P@1", "P@3", "P@5", "nDCG@5", "PSP@5", "R@10"} <= set(metrics)
    assert "R@100" not in metrics  # only 20 predictions per point were asked for
    assert metrics["P@1"] > 20
    # NGAME's prediction settings are refused by a kNN model, with a clear error and no predictions file
    for flags, setting in ((["--scores", "encoder"], "scores"),
                           (["--predict-set", "shortlist_size=5"], "shortlist_size")):
        code, _, err = run(capsys, "-q", "predict", "--model", str(model), "--data", str(small_hpo), "--out",
                           str(tmp_path / "other.npz"), *flags)
        assert code == 1 and setting in err and "'knn' models" in err and not (tmp_path / "other.npz").exists()
    echo = tmp_path / "texts.txt"
    echo.write_text("Marfan syndrome\n")
    code, _, err = run(capsys, "predict", "--model", str(model), "--input", str(echo), "--scores", "ranker")
    assert code == 1 and "scores" in err


def test_every_method_trains_and_predicts_through_one_signature():
    """`XMCModel.train` / `predict` are the signature of every method (the CLI calls them without knowing the
    method): the same parameter names with the same defaults."""
    import inspect

    from xmine.models.base import XMCModel, model_class

    for name in ("train", "predict"):
        common = inspect.signature(getattr(XMCModel, name)).parameters
        for method in ("knn", "mips", "ngame"):
            own = inspect.signature(getattr(model_class(method), name)).parameters
            for param in common.values():
                assert param.name in own, (method, name, param.name)
                assert own[param.name].default == param.default, (method, name, param.name)
    with pytest.raises(XmineError, match="unknown method 'nope'"):
        model_class("nope")


@pytest.mark.parametrize("method", ["knn", "mips"])
def test_init_from_is_refused_by_methods_without_stages(method, small_hpo, tmp_path, capsys):
    code, _, err = run(capsys, "-q", "train", "--method", method, "--data", str(small_hpo), "--out",
                       str(tmp_path / "m"), "--init-from", str(tmp_path))
    assert code == 1 and "init_from" in err and not (tmp_path / "m").exists()


def test_data_stats_prints_the_counts(small_hpo, capsys):
    code, out, _ = run(capsys, "data", "stats", str(small_hpo), "--json")
    stats = json.loads(out)
    assert code == 0 and stats["n_train"] == 2000 and stats["n_test"] == 500


def test_print_default_config_applies_flags_and_overrides(capsys):
    code, out, _ = run(capsys, "train", "--print-default-config", "--epochs", "3", "--set", "siamese.lr=0.01",
                       "--batching", "random", "--stages", "1")
    config = json.loads(out)
    assert code == 0
    assert config["siamese"]["epochs"] == 3 and config["siamese"]["lr"] == 0.01
    assert config["siamese"]["batching"] == "random" and config["stages"] == [1]


@pytest.mark.parametrize("method", ["ngame", "mips", "knn"])
def test_lead_channel_flag_sets_the_tfidf_config(capsys, method):
    code, out, _ = run(capsys, "train", "--method", method, "--print-default-config", "--lead-channel", "off")
    assert code == 0 and json.loads(out)["tfidf"]["lead_channel"] == "off"
    with pytest.raises(SystemExit):  # argparse: usage line + "invalid choice", exit status 2
        main(["train", "--print-default-config", "--lead-channel", "sometimes"])
    assert "invalid choice: 'sometimes'" in capsys.readouterr().err


def test_paper_preset_by_name(capsys):
    code, out, _ = run(capsys, "train", "--config", "ngame-paper", "--print-default-config")
    assert code == 0 and json.loads(out)["siamese"]["batch_size"] == 1600


@pytest.mark.parametrize("argv, message", [
    (["train", "--print-default-config", "--set", "siamese.nope=1"], "unknown config key"),
    (["train", "--print-default-config", "--set", "siamese.loss=hinge"], "not one of"),
    (["train", "--method", "knn", "--print-default-config", "--epochs", "3"], "does not apply"),
    (["evaluate", "--data", "/nonexistent-dir", "--pred", "x.npz"], "nonexistent-dir"),
])
def test_bad_input_is_a_one_line_error_not_a_traceback(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 1 and message in err and "Traceback" not in err


def test_bad_prediction_file_is_a_clear_error(small_hpo, tmp_path, capsys):
    bad = tmp_path / "pred.npz"
    bad.write_text("not a zip")
    code, _, err = run(capsys, "evaluate", "--data", str(small_hpo), "--pred", str(bad))
    assert code == 1 and "not a prediction file" in err


def test_data_demo_unpacks_into_xmine_cache_and_prints_the_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XMINE_CACHE", str(tmp_path / "cache"))
    code, out, _ = run(capsys, "data", "demo")
    folder = out.strip()
    assert code == 0 and folder == str(tmp_path / "cache" / "demo" / "hpo-disease-phenotype")
    assert (tmp_path / "cache" / "demo" / "hpo-disease-phenotype" / "trn_X_Y.txt").exists()
    code, out, _ = run(capsys, "data", "demo")  # the second call reuses the unpacked folder
    assert code == 0 and out.strip() == folder


def test_version_flag(capsys):
    from xmine import __version__

    for flag in ("-V", "--version"):
        with pytest.raises(SystemExit) as exit_info:
            main([flag])
        assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"xmine {__version__}"


def test_train_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "what to train (default: ngame)" in out
    assert "(config default: ngame 20, mips 5)" in out  # --epochs: the dataclasses' defaults, per method
    assert "--keep-checkpoints" in out


def test_demo_says_where_the_data_is_what_the_metrics_mean_and_what_to_run_next(tmp_path, monkeypatch, capsys):
    import shlex

    monkeypatch.setenv("XMINE_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "demo-model"
    code, out, _ = run(capsys, "-q", "demo", "--method", "knn", "--out", str(model))
    data = tmp_path / "cache" / "demo" / "hpo-disease-phenotype"
    assert code == 0 and f"data:  {data}" in out and "XMINE_CACHE" in out
    assert "P@k    precision at k" in out and "PSP@k  propensity-scored" in out
    assert "P@1" in out and (model / "test_predictions.npz").exists()
    commands = [line.split("#")[0].strip() for line in out.splitlines() if line.startswith("  xmine ")]
    predict = next(c for c in commands if c.startswith("xmine predict"))
    evaluate = next(c for c in commands if c.startswith("xmine evaluate"))
    monkeypatch.chdir(tmp_path)  # the suggested commands run as printed
    assert run(capsys, "-q", *shlex.split(predict)[1:])[0] == 0
    code, out, _ = run(capsys, *shlex.split(evaluate)[1:])
    assert code == 0 and "P@1" in out
