"""The `zoobot-tf` command: the same subcommands and options as `zoobot-torch`, help without
importing TensorFlow, predict / represent / push run in-process on a tiny synthetic survey, train and
finetune wired to the library (training itself is tested in test_training.py: a real epoch costs
most of a minute here), and library errors as one line with exit code 1."""

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import keras
import pandas as pd
import pytest

from zoobot.data.synthetic import make_survey
from zoobot.shared import get_schema
from zoobot.shared.tables import read_predictions_full
from zoobot.tf.cli import build_parser, main, shown_lines, tf_device
from zoobot.tf.finetune import FinetuneableZoobotClassifier
from zoobot.tf.hub import save_pretrained
from zoobot.tf.tree import ZoobotTree

COMMANDS = ["train", "finetune", "predict", "represent", "push"]
SMALL = ["--image-size", "32", "--batch-size", "16", "--num-workers", "1", "--no-progress"]
TORCH_CLI = Path(__file__).parents[2] / "packages/zoobot-torch/src/zoobot/torch/cli.py"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `zoobot-tf argv`, usage errors included."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def catalog_file(tmp_path_factory) -> Path:
    """A catalog file of 32 synthetic galaxies (32 px) with votes and a true_kind column."""
    out = tmp_path_factory.mktemp("survey")
    make_survey(32, out, image_size=32, seed=4, progress=False)
    return out / "catalog.parquet"


@pytest.fixture(scope="module")
def tree_dir(tmp_path_factory) -> Path:
    """A small ZoobotTree saved in the Hub layout."""
    keras.utils.set_random_seed(0)
    tree = ZoobotTree(get_schema("decals_dr5"), "test_convnext")
    return save_pretrained(tree, tmp_path_factory.mktemp("models") / "tree")


def test_help_does_not_import_tensorflow():
    script = (
        "import sys\n"
        "from zoobot.tf.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('imported:', 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "usage: zoobot-tf" in result.stdout
    assert all(command in result.stdout for command in COMMANDS)
    assert result.stdout.strip().endswith("imported: False False")


START_UP = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796605246.929553    8371 port.cc:153] oneDNN custom operations are on.\n"
    "I0000 00:00:1796605246.949553    8371 cpu_feature_guard.cc:210] This TensorFlow binary is "
    "optimized to use available CPU instructions.\n"
    "To enable the following instructions: AVX512_BF16, rebuild TensorFlow.\n"
    "W0000 00:00:1796605247.000000    8371 some.cc:1] a warning\n"
    "E0000 00:00:1796605251.555699    8371 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n"
    "E0000 00:00:1796605251.600000    8371 other.cc:7] a real error\n"
    "a line of some library\n"
)


def test_start_up_lines_follow_the_log_level_and_hide_cuinit_only_without_a_gpu():
    def kept(level, gpus):
        return [line.split("] ")[-1].strip() for line in shown_lines(START_UP, level, gpus)]

    assert kept(2, gpus=0) == ["a real error", "a line of some library"]
    assert kept(1, gpus=0) == ["a warning", "a real error", "a line of some library"]
    with_gpu = kept(2, gpus=1)
    assert any("failed call to cuInit" in line for line in with_gpu)
    assert len(shown_lines(START_UP, 0, gpus=0)) == len(START_UP.splitlines()), "level 0: all"


def test_a_command_starts_without_tensorflow_start_up_noise(tree_dir):
    """`zoobot-tf push --dry-run` in a fresh process: stderr holds no C++ start-up lines (on a
    machine with a GPU TensorFlow prints no cuInit failure either)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, "-m", "zoobot.tf.cli", "push", str(tree_dir), "me/x", "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "would upload to me/x" in result.stdout
    assert "cuInit" not in result.stderr and "I0000" not in result.stderr, result.stderr
    assert "absl::InitializeLog" not in result.stderr


def _options(parser: argparse.ArgumentParser) -> dict[str, set]:
    """Per subcommand: its option strings and positional names."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: {s for action in sub._actions for s in (action.option_strings or [action.dest])}
        for name, sub in commands.choices.items()
    }


@pytest.mark.skipif(not TORCH_CLI.is_file(), reason="the zoobot-torch sources are not here")
def test_subcommands_and_options_are_those_of_zoobot_torch():
    # zoobot.torch.cli imports no torch at module level, so its parser loads without torch.
    spec = importlib.util.spec_from_file_location("zoobot_torch_cli", TORCH_CLI)
    torch_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(torch_cli)
    ours, theirs = _options(build_parser()), _options(torch_cli.build_parser())
    assert sorted(ours) == sorted(theirs) == sorted(COMMANDS)
    for command in COMMANDS:
        assert ours[command] == theirs[command], command


def test_predict_represent_push(catalog_file, tree_dir, tmp_path, capsys):
    code, out, _ = run(
        capsys, "predict", catalog_file, tree_dir, tmp_path / "votes.parquet",
        "--n-samples", "2", "--device", "cpu", "--threads", "1", *SMALL,
    )  # fmt: skip
    assert code == 0 and "32 galaxies predicted" in out
    assert (tmp_path / "votes_friendly.parquet").is_file()
    assert read_predictions_full(tmp_path / "votes.parquet").concentrations.shape == (32, 34, 2)
    assert pd.read_csv(tmp_path / "votes.parquet.failed.csv").empty

    code, out, _ = run(
        capsys, "represent", catalog_file, tree_dir, tmp_path / "features.parquet",
        "--n-components", "3", "--chunk-rows", "16", *SMALL,
    )  # fmt: skip
    assert code == 0 and "PCA projection" in out and "32 galaxies embedded" in out
    features = pd.read_parquet(tmp_path / "features.parquet")
    assert features.columns.tolist() == ["id_str", "feat_pca_0", "feat_pca_1", "feat_pca_2"]

    code, out, _ = run(capsys, "push", tree_dir, "me/zoobot-tree", "--dry-run")
    assert code == 0 and out.startswith("would upload to me/zoobot-tree: ")
    assert "head.safetensors" in out and "model.safetensors" in out


def test_train_and_finetune_call_the_library(catalog_file, tree_dir, tmp_path, capsys, monkeypatch):
    from zoobot.tf import training

    calls = {}
    monkeypatch.setattr(training, "train", lambda *a, **k: calls.setdefault("train", (a, k)))
    monkeypatch.setattr(training, "fit", lambda *a, **k: calls.setdefault("fit", (a, k)))
    code, out, _ = run(
        capsys, "train", catalog_file, tmp_path / "pretrain", "--schema", "decals_dr5",
        "--architecture", "test_convnext", "--epochs", "2", "--learning-rate", "0.01",
        "--accelerator", "cpu", "--splits", "train=0.5,validation=0.5", *SMALL,
    )  # fmt: skip
    assert code == 0 and str(tmp_path / "pretrain" / "best") in out
    (train, validation), schema, save_dir = calls["train"][0]
    options = calls["train"][1]
    assert schema.name == "decals_dr5" and save_dir == tmp_path / "pretrain"
    assert options["architecture"] == "test_convnext" and options["epochs"] == 2
    assert options["model_kwargs"] == {"learning_rate": 0.01} and options["image_size"] == 32
    assert train.element_spec[0].shape.as_list()[1:] == [32, 32, 3]
    assert validation.element_spec[1].shape.as_list()[1:] == [34]

    code, out, _ = run(
        capsys, "finetune", catalog_file, tmp_path / "kinds", "--pretrained", tree_dir,
        "--task", "classifier", "--label-col", "true_kind", "--epochs", "1", "--n-blocks", "1",
        "--accelerator", "cpu", *SMALL,
    )  # fmt: skip
    assert code == 0 and "classes in output order: disk smooth" in out
    model, train, validation = calls["fit"][0]
    assert isinstance(model, FinetuneableZoobotClassifier) and model.num_classes == 2
    assert calls["fit"][1]["save_dir"] == tmp_path / "kinds" and calls["fit"][1]["epochs"] == 1
    assert train.element_spec[1].shape.as_list()[1:] == [1]


def test_errors_are_one_line_with_exit_code_1(tmp_path, tree_dir, capsys):
    code, out, err = run(capsys, "predict", tmp_path / "nope.csv", tree_dir, tmp_path / "p.parquet")
    assert code == 1 and err.startswith("zoobot-tf predict: error:") and len(err.splitlines()) == 1
    code, _, err = run(capsys, "predict", tmp_path / "nope.csv", "--n-samples", "0")
    assert code == 2 and "n-samples" in err
    code, _, err = run(capsys, "finetune", tmp_path / "x.csv", tmp_path / "o", "--task", "tree")
    assert code == 2 and "--pretrained" in err
    assert tf_device("cuda:1") == "/GPU:1" and tf_device("cpu") == "/CPU:0"
    with pytest.raises(ValueError, match="unknown device"):
        tf_device("tpu")
