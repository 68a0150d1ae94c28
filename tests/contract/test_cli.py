"""The `zoobot-torch` / `zoobot-tf` command, the same in every framework: each subcommand run
in-process on a tiny synthetic survey, its help (without importing the framework), and library
errors as one line with exit code 1."""

import importlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from zoobot.data.synthetic import make_survey
from zoobot.models.cli import COMMANDS
from zoobot.shared.tables import read_predictions_full

SMALL = ["--image-size", "32", "--batch-size", "16", "--num-workers", "1", "--no-progress"]
FRAMEWORK_IMPORTS = {
    "torch": ("torch", "pytorch_lightning", "timm"),
    "tf": ("tensorflow", "keras"),
    "jax": ("tensorflow", "keras", "jax"),
}


def prog(fw) -> str:
    return fw.prog


def run(fw, capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the command with `argv` (and the framework's backend
    option, as a user would give it), usage errors included."""
    main = importlib.import_module(f"{fw.package.__name__}.cli").main
    options = fw.backend_args if "--help" not in argv else ()
    try:
        code = main([str(a) for a in (*argv, *options)])
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


def test_train_finetune_predict_represent_push(fw, catalog_file, tmp_path, capsys):
    code, out, _ = run(
        fw, capsys, "train", catalog_file, tmp_path / "pretrain", "--schema", "decals_dr5",
        "--architecture", "resnet10t", "--epochs", "1", "--accelerator", "cpu", *SMALL,
    )  # fmt: skip
    best = tmp_path / "pretrain" / "best"
    assert code == 0 and str(best) in out
    assert isinstance(fw.package.from_pretrained(best), fw.package.ZoobotTree)

    code, out, _ = run(
        fw, capsys, "finetune", catalog_file, tmp_path / "kinds", "--pretrained", best,
        "--task", "classifier", "--label-col", "true_kind", "--epochs", "1", "--n-blocks", "1",
        "--accelerator", "cpu", *SMALL,
    )  # fmt: skip
    assert code == 0 and "classes in output order: disk smooth" in out
    classifier = fw.package.FinetuneableZoobotClassifier.from_pretrained(tmp_path / "kinds/best")
    assert classifier.class_names == ["disk", "smooth"] and classifier.settings.n_blocks == 1

    code, out, _ = run(
        fw, capsys, "predict", catalog_file, tmp_path / "kinds" / "best", tmp_path / "k.parquet",
        "--n-samples", "2", *SMALL,
    )  # fmt: skip
    assert code == 0 and "48 galaxies predicted" in out
    table = pd.read_parquet(tmp_path / "k.parquet")
    assert table.columns[:3].tolist() == ["id_str", "disk_probability", "smooth_probability"]

    code, out, _ = run(fw, capsys, "predict", catalog_file, best, tmp_path / "v.parquet", *SMALL)
    assert code == 0 and (tmp_path / "v_friendly.parquet").is_file()
    assert read_predictions_full(tmp_path / "v.parquet").concentrations.shape[0] == 48

    code, out, _ = run(
        fw, capsys, "represent", catalog_file, best, tmp_path / "features.parquet",
        "--n-components", "3", *SMALL,
    )  # fmt: skip
    assert code == 0 and "PCA projection" in out and "48 galaxies embedded" in out
    features = pd.read_parquet(tmp_path / "features.parquet")
    assert features.columns.tolist() == ["id_str", "feat_pca_0", "feat_pca_1", "feat_pca_2"]

    code, out, _ = run(fw, capsys, "push", tmp_path / "kinds" / "best", "me/kinds", "--dry-run")
    assert code == 0 and out.startswith("would upload to me/kinds: ")
    assert "head.safetensors" in out and "model.safetensors" in out


def test_library_errors_are_one_line_with_exit_code_1(fw, catalog_file, tmp_path, capsys):
    code, _, err = run(
        fw, capsys, "predict", tmp_path / "none.csv", tmp_path, tmp_path / "p.parquet"
    )
    assert code == 1
    assert err.startswith(f"{prog(fw)} predict: error: ") and err.count("\n") == 1
    code, _, err = run(
        fw, capsys, "predict", catalog_file, tmp_path / "nothing", tmp_path / "p.parquet"
    )
    assert code == 1 and "nothing" in err and "Traceback" not in err
    code, _, err = run(
        fw, capsys, "finetune", catalog_file, tmp_path / "f", "--pretrained", "resnet10t",
        "--task", "regressor", "--label-col", "no_such_column",
    )  # fmt: skip
    assert code == 1 and "no_such_column" in err
    code, _, err = run(
        fw, capsys, "predict", catalog_file, tmp_path, tmp_path / "p.parquet", "--n-samples", "0"
    )
    assert code == 2 and "n-samples" in err


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_explains_itself_with_an_example(fw, command, capsys):
    code, out, _ = run(fw, capsys, command, "--help")
    assert code == 0
    assert f"usage: {prog(fw)} {command}" in out and f"example:\n  {prog(fw)} {command}" in out


def test_the_installed_command_runs_without_importing_the_framework(fw):
    script = Path(sys.executable).parent / prog(fw)
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: {prog(fw)}")
    assert all(command in result.stdout for command in COMMANDS)
    code = (
        f"import sys, {fw.package.__name__}, {fw.package.__name__}.cli\n"
        f"try:\n    {fw.package.__name__}.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print([m for m in {FRAMEWORK_IMPORTS[fw.name]!r} if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"
