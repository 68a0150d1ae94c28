"""Where both frameworks are installed, `zoobot-torch train` never imports TensorFlow: its
TensorBoard logger writes with tensorboardX (Lightning's would import TensorFlow through
tensorboard's file layer: seconds at start and TensorFlow's start-up messages)."""

import subprocess
import sys
import textwrap

from zoobot.data.synthetic import make_survey

TRAIN = textwrap.dedent(
    """
    import sys
    sys.modules["triton"] = None  # see tests/parity/conftest.py
    from zoobot.torch.cli import main
    code = main(sys.argv[1:])
    print("exit", code, "tensorflow imported:", "tensorflow" in sys.modules)
    """
)


def test_zoobot_torch_train_logs_to_tensorboard_without_tensorflow(tmp_path):
    make_survey(24, tmp_path / "survey", image_size=32, seed=2, progress=False)
    argv = [
        "train", str(tmp_path / "survey" / "catalog.parquet"), str(tmp_path / "run"),
        "--schema", "decals_dr5", "--architecture", "test_resnet", "--epochs", "1",
        "--accelerator", "cpu", "--image-size", "32", "--batch-size", "8", "--num-workers", "0",
        "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", TRAIN, *argv], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exit 0 tensorflow imported: False" in done.stdout
    assert list((tmp_path / "run" / "tensorboard" / "version_0").glob("events.out.tfevents.*"))
