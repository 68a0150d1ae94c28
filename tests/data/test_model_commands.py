"""The parser zoobot-torch and zoobot-tf share, with a stand-in framework that records each call."""

import argparse

import pytest

from zoobot.data.commands.models import (
    COMMANDS,
    HELP_KEYS,
    ModelCommand,
    build_parser,
    class_labels,
    run_command,
)


def stand_in(calls: list, fail: Exception | None = None) -> ModelCommand:
    def runner(args: argparse.Namespace) -> int:
        calls.append(args)
        if fail is not None:
            raise fail
        return 0

    return ModelCommand(
        prog="zoobot-test",
        framework="TestFramework",
        description="a stand-in",
        epilog="",
        runners=dict.fromkeys(COMMANDS, runner),
        help={key: f"<{key}>" for key in HELP_KEYS},
    )


def test_every_subcommand_runs_its_runner_with_parsed_arguments(tmp_path):
    calls = []
    command = stand_in(calls)
    catalog = str(tmp_path / "catalog.csv")
    assert run_command(command, ["train", catalog, "runs", "--schema", "decals_dr5"]) == 0
    assert (
        run_command(command, ["predict", catalog, "model", "out.parquet", "--precision", "bf16"])
        == 0
    )
    assert (
        run_command(command, ["represent", catalog, "enc", "f.parquet", "--n-components", "0.9"])
        == 0
    )
    train, predict, represent = calls
    assert train.command == "train" and train.schema.name == "decals_dr5" and train.epochs == 100
    assert predict.precision == "bf16" and predict.resume and predict.batch_size == 128
    assert represent.n_components == 0.9


def test_framework_texts_reach_the_help(capsys):
    parser = build_parser(stand_in([]))
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "<run_precision>" in text and "<device>" in text and "(TestFramework)" in text
    assert "zoobot-test predict" in text  # the example names the command


def test_a_missing_runner_or_help_text_is_refused():
    with pytest.raises(ValueError, match="predict_input"):
        ModelCommand("p", "f", "", "", dict.fromkeys(COMMANDS, print), {"device": "x"})


def test_library_errors_are_one_line_with_exit_code_1(tmp_path, capsys):
    command = stand_in([], fail=FileNotFoundError("no catalog at x.csv"))
    assert run_command(command, ["push", "folder", "me/repo", "--dry-run"]) == 1
    assert capsys.readouterr().err == "zoobot-test push: error: no catalog at x.csv\n"
    command = stand_in([], fail=RuntimeError("a bug"))
    with pytest.raises(RuntimeError):
        run_command(command, ["push", "folder", "me/repo"])


def test_class_labels_from_names_or_indices():
    import pandas as pd

    catalog = pd.DataFrame({"kind": ["smooth", "disk", "smooth"]})
    coded, names = class_labels(catalog, "kind")
    assert names == ["disk", "smooth"] and coded["kind"].tolist() == [1, 0, 1]
    coded, names = class_labels(pd.DataFrame({"kind": [2, 0]}), "kind")
    assert names == ["0", "1", "2"] and coded["kind"].tolist() == [2, 0]
