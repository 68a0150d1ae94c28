"""The `zoobot-torch` command: train on votes, finetune, predict, embed and publish Zoobot models.

The subcommands, their arguments and what they run are those of `zoobot-tf`, written once in
`zoobot.models.cli`; this is the PyTorch command's name and texts. Torch is imported only to run a
command, so `--help` is quick.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from zoobot.models.cli import ModelCommand, run_command
from zoobot.models.cli import build_parser as _build_parser

DESCRIPTION = """\
Zoobot for PyTorch: pretrain an encoder on Galaxy Zoo volunteer votes, finetune it for a new
question, predict a whole catalog, embed galaxies, and publish models in the timm Hub layout.
Catalogs are CSV or Parquet files with id_str and file_loc (image path) columns plus labels.
Run `zoobot-torch COMMAND --help` for what each command reads, writes and an example.
"""


COMMAND = ModelCommand(
    prog="zoobot-torch",
    framework="torch",
    backend="zoobot.torch.backend",
    description=DESCRIPTION,
    help={
        "architecture": "timm architecture, torchvision:resnet50, hf_hub:owner/repo or a folder "
        "to start from",
        "train_precision": "training precision; mixed is bf16 on CPU and fp16 on GPU; bf16 on a "
        "CPU without bf16 instructions trains in float32",
        "devices": "devices to use",
        "train_workers": "image loading processes",
        "predict_input": "the catalog",
        "run_precision": "bf16 runs the model under bfloat16 autocast: much faster on CPUs with "
        "AVX-512 bf16 or AMX and on recent GPUs, with vote fractions within about 0.01; other "
        "CPUs run float32, faster there",
        "channels_last": "channels-last memory layout (default: on for convolutional models)",
        "run_workers": "image decoding processes (default: half the CPUs, 1-8)",
        "device": "cpu, cuda, cuda:1... (default: cpu)",
        "run_devices": "processes on this machine, one per GPU (auto: every GPU); under torchrun "
        "or srun with several tasks, the processes they start",
        "run_strategy": "Lightning's launcher for several devices: ddp_spawn (auto) starts the "
        "processes here, ddp as copies of this command",
    },
)


def build_parser() -> argparse.ArgumentParser:
    """The `zoobot-torch` parser with every subcommand registered."""
    return _build_parser(COMMAND)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `zoobot-torch` with `argv` (default: the command line); return the exit code."""
    return run_command(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
