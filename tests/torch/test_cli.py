"""The `zoobot-torch` command: every subcommand run in-process on a tiny synthetic survey, its help,
and library errors as one line with exit code 1."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from zoobot.data.synthetic import make_survey
from zoobot.shared.tables import read_predictions_full
from zoobot.torch import FinetuneableZoobotClassifier, ZoobotTree, from_pretrained
from zoobot.torch.cli import main

COMMANDS = ["train", "finetune", "predict", "represent", "push"]
SMALL = ["--image-size", "32", "--batch-size", "16", "--num-workers", "0", "--no-progress"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `zoobot-torch argv`, usage errors included."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def catalog_file(tmp_path_factory) -> Path:
    """A catalog file of 48 synthetic galaxies (32 px) with votes and a true_kind column."""
    out = tmp_path_factory.mktemp("survey")
    make_survey(48, out, image_size=32, seed=4, progress=False)
    return out / "catalog.parquet"


def test_train_finetune_predict_represent_push(catalog_file, tmp_path, capsys):
    code, out, _ = run(
        capsys, "train", catalog_file, tmp_path / "pretrain", "--schema", "decals_dr5",
        "--architecture", "resnet10t", "--epochs", "1", "--accelerator", "cpu", *SMALL,
    )  # fmt: skip
    best = tmp_path / "pretrain" / "best"
    assert code == 0 and str(best) in out
    assert isinstance(from_pretrained(best), ZoobotTree)

    code, out, _ = run(
        capsys, "finetune", catalog_file, tmp_path / "kinds", "--pretrained", best,
        "--task", "classifier", "--label-col", "true_kind", "--epochs", "1", "--accelerator", "cpu",
        *SMALL,
    )  # fmt: skip
    assert code == 0 and "classes in output order: disk smooth" in out
    classifier = tmp_path / "kinds" / "best"
    assert isinstance(from_pretrained(classifier), FinetuneableZoobotClassifier)

    code, out, _ = run(
        capsys, "predict", catalog_file, classifier, tmp_path / "kinds.parquet",
        "--label-cols", "disk", "smooth", "--n-samples", "2", "--threads", "1", *SMALL,
    )  # fmt: skip
    assert code == 0 and "48 galaxies predicted" in out
    table = pd.read_parquet(tmp_path / "kinds.parquet")
    assert table.columns[:3].tolist() == ["id_str", "disk_probability", "smooth_probability"]

    code, out, _ = run(capsys, "predict", catalog_file, best, tmp_path / "votes.parquet", *SMALL)
    assert code == 0 and (tmp_path / "votes_friendly.parquet").is_file()
    assert read_predictions_full(tmp_path / "votes.parquet").concentrations.shape[0] == 48

    code, out, _ = run(
        capsys, "represent", catalog_file, best, tmp_path / "features.parquet",
        "--n-components", "3", "--precision", "bf16", *SMALL,
    )  # fmt: skip
    assert code == 0 and "PCA projection" in out
    features = pd.read_parquet(tmp_path / "features.parquet")
    assert features.columns.tolist() == ["id_str", "feat_pca_0", "feat_pca_1", "feat_pca_2"]

    code, out, _ = run(capsys, "push", classifier, "me/zoobot-kinds", "--dry-run")
    assert code == 0 and out.startswith("would upload to me/zoobot-kinds: ")
    assert "head.safetensors" in out and "model.safetensors" in out


def test_library_errors_are_one_line_with_exit_code_1(catalog_file, tmp_path, capsys):
    code, _, err = run(capsys, "predict", tmp_path / "none.csv", tmp_path, tmp_path / "p.parquet")
    assert code == 1
    assert err.startswith("zoobot-torch predict: error: ") and err.count("\n") == 1
    code, _, err = run(
        capsys, "predict", catalog_file, tmp_path / "nothing", tmp_path / "p.parquet"
    )
    assert code == 1 and "nothing" in err and "Traceback" not in err
    code, _, err = run(
        capsys, "finetune", catalog_file, tmp_path / "f", "--pretrained", "resnet10t",
        "--task", "regressor", "--label-col", "no_such_column",
    )  # fmt: skip
    assert code == 1 and "no_such_column" in err


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_explains_itself_with_an_example(command, capsys):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert f"usage: zoobot-torch {command}" in out and f"example:\n  zoobot-torch {command}" in out


def test_the_installed_command_runs():
    script = Path(sys.executable).parent / "zoobot-torch"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: zoobot-torch")
    assert all(command in result.stdout for command in COMMANDS)
