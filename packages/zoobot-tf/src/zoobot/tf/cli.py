"""The `zoobot-tf` command: train on votes, finetune, predict, embed and publish Zoobot models with
TensorFlow / Keras 3.

The subcommands, their arguments and what they run are those of `zoobot-torch`, written once in
`zoobot.models.cli`; this is the Keras command's name and texts. TensorFlow is imported only to run
a command, so `--help` is quick.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from zoobot.models.cli import ModelCommand, run_command
from zoobot.models.cli import build_parser as _build_parser

DESCRIPTION = """\
Zoobot for TensorFlow / Keras 3: pretrain an encoder on Galaxy Zoo volunteer votes, finetune it for
a new question, predict a whole catalog, embed galaxies, and publish models in the timm Hub layout
(the same weights load in zoobot-torch). Catalogs are CSV or Parquet files with id_str and file_loc
(image path) columns plus labels. Run `zoobot-tf COMMAND --help` for what each command reads,
writes and an example.
"""

EPILOG = """\
a typical run on the synthetic survey of zoobot-data:
  zoobot-data survey 2000 data/survey --image-size 128
  zoobot-tf train data/survey/catalog.parquet runs/pretrain --schema decals_dr5 --image-size 128
  zoobot-tf predict data/survey/catalog.parquet runs/pretrain/best preds/votes.parquet
  zoobot-tf represent data/survey/catalog.parquet runs/pretrain/best preds/features.parquet
  zoobot-tf push runs/pretrain/best my-name/zoobot-synthetic --dry-run
"""


COMMAND = ModelCommand(
    prog="zoobot-tf",
    framework="TensorFlow",
    backend="zoobot.tf.backend",
    description=DESCRIPTION,
    epilog=EPILOG,
    help={
        "architecture": "timm architecture, hf_hub:owner/repo or a folder to start from",
        "train_precision": "training precision (a Keras dtype policy); mixed is bf16 on CPU and "
        "fp16 on GPU",
        "devices": "devices to use; several train with tf.distribute.MirroredStrategy",
        "train_workers": "images decoded at once by tf.data",
        "predict_input": "the catalog (or TFRecord shard folder)",
        "run_precision": "bf16 runs the encoder under the mixed_bfloat16 policy: faster on CPUs "
        "with AVX-512 bf16 or AMX and on recent GPUs, slightly less exact",
        "channels_last": "accepted for zoobot-torch compatibility: Keras is always channels-last",
        "run_workers": "images decoded at once (default: half the CPUs, 1-8)",
        "device": "cpu, cuda, cuda:1... or /GPU:1 (default: TensorFlow's choice)",
    },
)


def build_parser() -> argparse.ArgumentParser:
    """The `zoobot-tf` parser with every subcommand registered."""
    return _build_parser(COMMAND)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `zoobot-tf` with `argv` (default: the command line); return the exit code."""
    # TensorFlow's C++ start-up chatter (oneDNN notices, ...) is noise for a command-line user.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run_command(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
