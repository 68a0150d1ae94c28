"""The `zoobot-torch` command: train on votes, finetune, predict, embed and publish Zoobot models.

The subcommands and their arguments are those of `zoobot-tf` (`zoobot.data.commands.models` builds
both parsers); each calls one library function here. Torch is imported only to run a command, so
`--help` is quick.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from zoobot.data.commands.common import load_input_catalog, splits_of
from zoobot.data.commands.models import (
    RUN_OPTIONS,
    ModelCommand,
    finetune_model,
    report_finetuned,
    report_predictions,
    report_push,
    report_representations,
    run_command,
)
from zoobot.data.commands.models import build_parser as _build_parser

DESCRIPTION = """\
Zoobot for PyTorch: pretrain an encoder on Galaxy Zoo volunteer votes, finetune it for a new
question, predict a whole catalog, embed galaxies, and publish models in the timm Hub layout.
Catalogs are CSV or Parquet files with id_str and file_loc (image path) columns plus labels.
Run `zoobot-torch COMMAND --help` for what each command reads, writes and an example.
"""

EPILOG = """\
a typical run on the synthetic survey of zoobot-data:
  zoobot-data survey 2000 data/survey --image-size 128
  zoobot-torch train data/survey/catalog.parquet runs/pretrain --schema decals_dr5 --image-size 128
  zoobot-torch predict data/survey/catalog.parquet runs/pretrain/best preds/votes.parquet
  zoobot-torch represent data/survey/catalog.parquet runs/pretrain/best preds/features.parquet
  zoobot-torch push runs/pretrain/best my-name/zoobot-synthetic --dry-run
"""


def _run_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of `predict` / `get_representations` from the shared options."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    options = {name: getattr(args, name) for name in RUN_OPTIONS}
    return options | {
        "chunk_rows": args.chunk_rows,
        "resume": args.resume,
        "progress": args.progress,
        "device": args.device,
    }


def _datamodule(args: argparse.Namespace, catalog, label_cols: list[str]):
    """A GalaxyDataModule over the catalog with the command's batch, image and split options."""
    from zoobot.torch import GalaxyDataModule

    return GalaxyDataModule(
        catalog,
        label_cols,
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        splits=splits_of(args),
        seed=args.seed,
    )


def _trainer_options(args: argparse.Namespace) -> dict:
    return {"enable_progress_bar": args.progress, "accelerator": args.accelerator}


def run_train(args: argparse.Namespace) -> int:
    """Pretrain a ZoobotTree on the catalog's vote counts."""
    from zoobot.torch import train

    catalog = load_input_catalog(args, args.schema)
    model_kwargs = {} if args.learning_rate is None else {"learning_rate": args.learning_rate}
    train(
        _datamodule(args, catalog, args.schema.label_cols),
        args.schema,
        args.save_dir,
        architecture=args.architecture,
        epochs=args.epochs,
        devices=args.devices,
        precision=args.precision,
        patience=args.patience,
        seed=args.seed,
        model_kwargs=model_kwargs,
        **_trainer_options(args),
    )
    print(f"best weights (Hub layout): {Path(args.save_dir) / 'best'}")
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    """Finetune a pretrained encoder as a classifier, regressor or decision tree."""
    from zoobot.torch import finetune as tasks
    from zoobot.torch import get_trainer

    schema = args.schema if args.task == "tree" else None
    catalog = load_input_catalog(args, schema)
    model, catalog, label_cols, names = finetune_model(args, catalog, tasks)
    trainer = get_trainer(
        args.save_dir,
        epochs=args.epochs,
        devices=args.devices,
        precision=args.precision,
        patience=args.patience,
        **_trainer_options(args),
    )
    trainer.fit(model, _datamodule(args, catalog, label_cols))
    report_finetuned(args.save_dir, names)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Predict every galaxy of the catalog and write the prediction tables."""
    from zoobot.torch.predictions import predict

    catalog = load_input_catalog(args)
    files = predict(
        catalog,
        args.model,
        args.save_loc,
        args.n_samples,
        label_cols=args.label_cols,
        friendly_loc=args.friendly_loc,
        seed=args.seed,
        **_run_options(args),
    )
    report_predictions(files)
    return 0


def run_represent(args: argparse.Namespace) -> int:
    """Write every galaxy's representation (optionally PCA-compressed)."""
    from zoobot.torch.representations import get_representations

    catalog = load_input_catalog(args)
    files = get_representations(
        catalog,
        args.encoder,
        args.save_loc,
        n_components=args.n_components,
        pca_fit_rows=args.pca_fit_rows,
        **_run_options(args),
    )
    report_representations(files)
    return 0


def run_push(args: argparse.Namespace) -> int:
    """Upload a saved model folder to the Hugging Face Hub (or list what would be uploaded)."""
    from zoobot.torch import load_from_name, push_to_hub

    result = push_to_hub(
        load_from_name(Path(args.folder)),
        args.repo_id,
        private=args.private,
        revision=args.revision,
        token=args.token,
        dry_run=args.dry_run,
    )
    report_push(result, args.dry_run)
    return 0


COMMAND = ModelCommand(
    prog="zoobot-torch",
    framework="torch",
    description=DESCRIPTION,
    epilog=EPILOG,
    runners={
        "train": run_train,
        "finetune": run_finetune,
        "predict": run_predict,
        "represent": run_represent,
        "push": run_push,
    },
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
