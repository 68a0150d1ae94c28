"""The `zoobot-tf` command: train on votes, finetune, predict, embed and publish Zoobot models with
TensorFlow / Keras 3.

The subcommands, their arguments and what they run are those of `zoobot-torch`, written once in
`zoobot.models.cli`; this is the Keras command's name and texts, `--backend` (Keras on TensorFlow or
JAX, `choose_backend`) and a quiet TensorFlow start-up (`start_tensorflow`; on JAX TensorFlow still
reads the data). TensorFlow is imported only to run a command, so `--help` is quick.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Sequence

from zoobot.models.cli import ModelCommand, run_command
from zoobot.models.cli import build_parser as _build_parser

DESCRIPTION = """\
Zoobot for Keras 3 on TensorFlow or JAX (--backend): pretrain an encoder on Galaxy Zoo volunteer
votes, finetune it for a new question, predict a whole catalog, embed galaxies, and publish models
in the timm Hub layout (the same weights load in zoobot-torch). Catalogs are CSV or Parquet files
with id_str and file_loc (image path) columns plus labels. Run `zoobot-tf COMMAND --help` for what
each command reads, writes and an example.
"""


# TensorFlow's C++ log lines ("E0000 00:00:1796605211.112482 8205 cuda_platform.cc:52] ...") and
# the notice absl prints before them while its logging is not set up, which TF_CPP_MIN_LOG_LEVEL
# does not filter.
LOG_LINE = re.compile(r"([IWEF])\d{4} [\d:.]+ +\d+ [^\]\s]+\] ")
SEVERITIES = "IWEF"
ABSL_NOTICE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
)
NO_GPU = "failed call to cuInit"


def shown_lines(text: str, min_level: int, gpus: int) -> list[str]:
    """The lines of TensorFlow's start-up output a user should see: its log records at or above
    `min_level` (TF_CPP_MIN_LOG_LEVEL: 0 info, 1 warning, 2 error, 3 fatal) with their continuation
    lines, except the failed CUDA initialisation when no GPU is visible; anything else as it is."""
    shown, keep = [], True
    for line in text.splitlines(keepends=True):
        record = LOG_LINE.match(line)
        if record:
            severity = SEVERITIES.index(record.group(1))
            keep = severity >= min_level and not (gpus == 0 and min_level > 0 and NO_GPU in line)
        elif line.rstrip("\n") == ABSL_NOTICE and min_level > 0:
            continue
        if keep:
            shown.append(line)
    return shown


def start_tensorflow() -> None:
    """Import TensorFlow and let it find its GPUs, showing only what `shown_lines` keeps of what its
    C++ side prints meanwhile: on a machine without a GPU every run otherwise starts with an
    `E0000 ... failed call to cuInit` error line and the notices TF_CPP_MIN_LOG_LEVEL should hide.
    Runtime settings (threads, logical devices) can still be made afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            gpus = len(tf.config.list_physical_devices("GPU"))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode("utf-8", "replace")
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
    sys.stderr.write("".join(shown_lines(text, int(level) if level.isdigit() else 0, gpus)))
    sys.stderr.flush()


KERAS_BACKENDS = ("tensorflow", "jax")


def choose_backend(backend: str | None) -> None:
    """Run Keras on `backend` (None: `KERAS_BACKEND`, else TensorFlow); it must be chosen before
    Keras is imported, so a process whose Keras already runs on another backend is refused."""
    if backend is None:
        return
    keras = sys.modules.get("keras")
    if keras is not None and keras.backend.backend() != backend:
        raise ValueError(
            f"--backend {backend}: Keras already runs on {keras.backend.backend()} in this process"
        )
    os.environ["KERAS_BACKEND"] = backend


def start(args: argparse.Namespace) -> None:
    """The command's start: the Keras backend of `--backend`, then TensorFlow, quietly."""
    choose_backend(getattr(args, "backend", None))
    start_tensorflow()


COMMAND = ModelCommand(
    prog="zoobot-tf",
    framework="TensorFlow",
    backend="zoobot.tf.backend",
    start=start,
    backends=KERAS_BACKENDS,
    description=DESCRIPTION,
    help={
        "architecture": "timm architecture, hf_hub:owner/repo or a folder to start from",
        "train_precision": "training precision (a Keras dtype policy); mixed is bf16 on CPU and "
        "fp16 on GPU; bf16 on a CPU without bf16 instructions trains in float32",
        "devices": "devices to use; several train with tf.distribute.MirroredStrategy "
        "(on JAX: keras.distribution.DataParallel)",
        "train_workers": "images decoded at once by tf.data",
        "predict_input": "the catalog (or TFRecord shard folder)",
        "run_precision": "bf16 runs the encoder under the mixed_bfloat16 policy on CPUs with "
        "AVX-512 bf16 or AMX and on GPUs, slightly less exact; other CPUs run float32",
        "channels_last": "accepted for zoobot-torch compatibility: Keras is always channels-last",
        "run_workers": "images decoded at once (default: half the CPUs, 1-8)",
        "run_devices": "worker processes on this machine, one per GPU (auto: every GPU; on a "
        "CPU they share its cores)",
        "run_strategy": "auto: join the workers of TF_CONFIG or of srun with several tasks if "
        "this process is one, else start --devices workers here; multi_worker: require "
        "TF_CONFIG or srun; workers: always start them here",
        "device": "cpu, cuda, cuda:1... or TensorFlow's /GPU:1 (default: the backend's choice)",
    },
)


def build_parser() -> argparse.ArgumentParser:
    """The `zoobot-tf` parser with every subcommand registered."""
    return _build_parser(COMMAND)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `zoobot-tf` with `argv` (default: the command line); return the exit code."""
    # TensorFlow's C++ start-up chatter (oneDNN notices, ...) is noise for a command-line user;
    # TF_CPP_MIN_LOG_LEVEL=0 shows all of it (see `start_tensorflow`).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run_command(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
