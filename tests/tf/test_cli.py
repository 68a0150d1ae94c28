"""The `zoobot-tf` command's training wiring: train and finetune hand the library Keras models built
in the strategy's scope and `tf.data` pipelines of the catalog's splits (the command line itself,
written once, is tested in tests/contract/test_cli.py; training in test_training.py), and
`--backend`, which chooses Keras's backend."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest
from keras_backend import jax_only

from zoobot.data.synthetic import make_survey
from zoobot.shared import get_schema
from zoobot.tf.cli import main, shown_lines
from zoobot.tf.finetune import FinetuneableZoobotClassifier
from zoobot.tf.pretrained import save_pretrained
from zoobot.tf.tree import ZoobotTree

SMALL = ["--image-size", "32", "--batch-size", "16", "--num-workers", "1", "--no-progress"]


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


def test_train_and_finetune_call_the_library(catalog_file, tree_dir, tmp_path, capsys, monkeypatch):
    from zoobot.tf import training

    calls = []
    monkeypatch.setattr(training, "fit", lambda *a, **k: calls.append((a, k)))
    code, out, _ = run(
        capsys, "train", catalog_file, tmp_path / "pretrain", "--schema", "decals_dr5",
        "--architecture", "test_convnext", "--epochs", "2", "--learning-rate", "0.01",
        "--accelerator", "cpu", "--splits", "train=0.5,validation=0.5", *SMALL,
    )  # fmt: skip
    assert code == 0 and str(tmp_path / "pretrain" / "best") in out
    (tree, train, validation), options = calls[0]
    assert isinstance(tree, ZoobotTree) and tree.schema.name == "decals_dr5"
    assert tree.settings.learning_rate == 0.01 and tree.compiled
    assert options["save_dir"] == tmp_path / "pretrain" and options["epochs"] == 2
    assert train.element_spec[0].shape.as_list()[1:] == [32, 32, 3]
    assert validation.element_spec[1].shape.as_list()[1:] == [34]

    code, out, _ = run(
        capsys, "finetune", catalog_file, tmp_path / "kinds", "--pretrained", tree_dir,
        "--task", "classifier", "--label-col", "true_kind", "--epochs", "1", "--n-blocks", "1",
        "--accelerator", "cpu", *SMALL,
    )  # fmt: skip
    assert code == 0 and "classes in output order: disk smooth" in out
    (model, train, validation), options = calls[1]
    assert isinstance(model, FinetuneableZoobotClassifier) and model.num_classes == 2
    assert options["save_dir"] == tmp_path / "kinds" and options["epochs"] == 1
    assert train.element_spec[1].shape.as_list()[1:] == [1]


@jax_only
def test_backend_option_runs_keras_on_jax(tree_dir):
    """`--backend jax` chooses Keras's backend before Keras is imported, whatever the environment
    said (KERAS_BACKEND removed here), and zoobot.tf's backend is then named "jax"."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    code = (
        "from zoobot.tf.cli import main\n"
        f"code = main(['push', {str(tree_dir)!r}, 'me/x', '--dry-run', '--backend', 'jax'])\n"
        "import keras\n"
        "from zoobot.tf.backend import BACKEND\n"
        "print('exit', code, keras.backend.backend(), BACKEND.name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "exit 0 jax jax"


def test_backend_option_refuses_a_keras_already_on_another_backend(tree_dir, capsys):
    other = "tensorflow" if keras.backend.backend() == "jax" else "jax"
    code, _, err = run(capsys, "push", tree_dir, "me/x", "--dry-run", "--backend", other)
    assert code == 1 and f"Keras already runs on {keras.backend.backend()}" in err


def test_the_backend_is_named_after_keras_s():
    from zoobot.tf.backend import BACKEND

    assert BACKEND.name == ("jax" if keras.backend.backend() == "jax" else "tf")
