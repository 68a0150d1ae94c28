"""The `zoobot-torch` command: train on votes, finetune, predict, embed and publish Zoobot models.

Each subcommand parses its arguments and calls one library function. Errors the library reports about
inputs, files or the Hub are printed as one message on stderr with exit code 1 (2 for a bad command
line), not a traceback; `--debug` shows the traceback. Torch is imported only to run a command, so
`--help` is quick.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from zoobot.data.commands.common import (
    HelpFormatter,
    add_catalog_input,
    add_no_progress,
    add_split_options,
    add_subcommand,
    load_input_catalog,
    positive_int,
    schema_type,
    splits_of,
)

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

RUN_OPTIONS = ("batch_size", "num_workers", "image_size", "precision", "channels_last")


def devices_type(text: str) -> int | str:
    """`auto`, or a number of devices."""
    return text if text == "auto" else positive_int(text)


def components_type(text: str) -> int | float:
    """A number of PCA components, or a fraction of variance in (0, 1)."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number of components or a fraction in (0, 1), got {text!r}"
            ) from None


def _add_training_options(parser: argparse.ArgumentParser, epochs: int, batch: int) -> None:
    """Trainer options shared by `train` and `finetune`."""
    parser.add_argument("--epochs", type=positive_int, default=epochs, help="maximum epochs")
    parser.add_argument("--batch-size", type=positive_int, default=batch, help="images per batch")
    parser.add_argument("--image-size", type=positive_int, default=224, help="pixels per side")
    parser.add_argument("--learning-rate", type=float, help="peak learning rate (default: model's)")
    parser.add_argument(
        "--precision",
        default="32",
        choices=["32", "bf16-mixed", "16-mixed", "mixed"],
        help="training precision; mixed is bf16 on CPU and fp16 on GPU (default: %(default)s)",
    )
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    parser.add_argument("--devices", type=devices_type, default="auto", help="devices to use")
    parser.add_argument("--num-workers", type=int, default=4, help="image loading processes")
    parser.add_argument(
        "--patience",
        type=positive_int,
        default=8,
        help="epochs without improvement before stopping",
    )
    add_split_options(parser)
    add_no_progress(parser)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `predict` and `represent`: speed, numerics, resuming."""
    parser.add_argument("--batch-size", type=positive_int, default=128, help="images per batch")
    parser.add_argument(
        "--num-workers", type=int, help="image decoding processes (default: half the CPUs, 1-8)"
    )
    parser.add_argument("--image-size", type=positive_int, default=224, help="pixels per side")
    parser.add_argument(
        "--precision",
        default="32",
        choices=["32", "bf16"],
        help="bf16 runs the model under bfloat16 autocast: much faster on CPUs with AVX-512 bf16 "
        "or AMX and on recent GPUs, with vote fractions within about 0.01 (default: %(default)s)",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="channels-last memory layout (default: on for convolutional models)",
    )
    parser.add_argument(
        "--chunk-rows", type=positive_int, default=4096, help="galaxies per part file"
    )
    parser.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="discard the parts of an interrupted run instead of carrying on from them",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1... (default: cpu)")
    parser.add_argument("--threads", type=positive_int, help="compute threads (torch)")
    add_no_progress(parser)


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


def _class_labels(catalog, column: str):
    """The catalog with `column` as class indices, and the class names in index order."""
    import pandas as pd

    values = catalog[column]
    if pd.api.types.is_integer_dtype(values):
        names = [str(i) for i in range(int(values.max()) + 1)]
        return catalog, names
    codes, names = pd.factorize(values.astype(str), sort=True)
    return catalog.assign(**{column: codes}), [str(n) for n in names]


def _finetune_model(args: argparse.Namespace, catalog):
    """(model, catalog, label columns, class names or None) for the chosen task."""
    from zoobot.torch import (
        FinetuneableZoobotClassifier,
        FinetuneableZoobotRegressor,
        FinetuneableZoobotTree,
    )

    options = {"name": args.pretrained, "n_blocks": args.n_blocks, "lr_decay": args.lr_decay}
    if args.learning_rate is not None:
        options["learning_rate"] = args.learning_rate
    if args.task == "tree":
        if args.schema is None:
            raise ValueError("--task tree needs --schema")
        model = FinetuneableZoobotTree(args.schema, **options)
        return model, catalog, list(args.schema.label_cols), None
    missing = [c for c in args.label_col or () if c not in catalog.columns]
    if not args.label_col or missing:
        raise ValueError(
            f"--task {args.task} needs --label-col columns of the catalog (missing: {missing})"
        )
    if args.task == "regressor":
        model = FinetuneableZoobotRegressor(
            num_outputs=len(args.label_col),
            loss=args.loss,
            unit_interval=args.unit_interval,
            **options,
        )
        return model, catalog, args.label_col, None
    if len(args.label_col) != 1:
        raise ValueError("--task classifier takes one --label-col (the class of each galaxy)")
    catalog, names = _class_labels(catalog, args.label_col[0])
    model = FinetuneableZoobotClassifier(
        len(names), label_smoothing=args.label_smoothing, class_names=names, **options
    )
    return model, catalog, args.label_col, names


def run_finetune(args: argparse.Namespace) -> int:
    """Finetune a pretrained encoder as a classifier, regressor or decision tree."""
    from zoobot.torch import get_trainer

    schema = args.schema if args.task == "tree" else None
    catalog = load_input_catalog(args, schema)
    model, catalog, label_cols, names = _finetune_model(args, catalog)
    trainer = get_trainer(
        args.save_dir,
        epochs=args.epochs,
        devices=args.devices,
        precision=args.precision,
        patience=args.patience,
        **_trainer_options(args),
    )
    trainer.fit(model, _datamodule(args, catalog, label_cols))
    print(f"finetuned weights (Hub layout): {Path(args.save_dir) / 'best'}")
    if names is not None:
        print(f"classes in output order: {' '.join(names)}")
        print(
            f"predict with: zoobot-torch predict CATALOG {Path(args.save_dir) / 'best'} OUT "
            f"--label-cols {' '.join(names)}"
        )
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
    print(f"{files.n_predicted} galaxies predicted: {files.predictions}")
    if files.friendly is not None:
        print(f"friendly table: {files.friendly}")
    print(f"{files.n_failed} unreadable image(s) listed in {files.failed}")
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
    print(f"{files.n_represented} galaxies embedded: {files.representations}")
    if files.pca is not None:
        print(f"PCA projection: {files.pca}")
    print(f"{files.n_failed} unreadable image(s) listed in {files.failed}")
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
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} to {result.repo_id}: {', '.join(result.files)}")
    if result.commit_url:
        print(result.commit_url)
    return 0


def _register_train(commands) -> None:
    parser = add_subcommand(
        commands,
        "train",
        "pretrain an encoder on Galaxy Zoo volunteer votes",
        "Train a ZoobotTree (encoder + Dirichlet head) on the vote counts of every answer of\n"
        "--schema. The catalog is split into train/validation/test (its split column, or\n"
        "--splits). Writes to SAVE_DIR: checkpoints/, logs/ (CSV), tensorboard/, and best/: the\n"
        "best validation weights in the timm Hub layout, ready for predict, finetune and push.",
        "  zoobot-torch train data/survey/catalog.parquet runs/pretrain --schema decals_dr5 \\\n"
        "      --architecture convnext_nano --epochs 50 --precision bf16-mixed",
    )
    add_catalog_input(parser)
    parser.add_argument("save_dir", metavar="SAVE_DIR", type=Path, help="output folder")
    parser.add_argument("--schema", type=schema_type, required=True, help="decision tree name")
    parser.add_argument(
        "--architecture",
        default="convnext_nano",
        help="timm architecture, torchvision:resnet50, hf_hub:owner/repo or a folder to start from "
        "(default: %(default)s)",
    )
    _add_training_options(parser, epochs=100, batch=128)
    parser.set_defaults(run=run_train)


def _register_finetune(commands) -> None:
    parser = add_subcommand(
        commands,
        "finetune",
        "finetune a pretrained encoder for a new question",
        "Train a head (and the last --n-blocks encoder blocks) on top of a pretrained encoder:\n"
        "a classifier of the --label-col column (class names or indices), a regressor of one or\n"
        "more --label-col columns, or a new decision tree (--schema, vote counts). Writes to\n"
        "SAVE_DIR as train does; best/ holds the finetuned model for predict and push.",
        "  zoobot-torch finetune rings.csv runs/rings --pretrained \\\n"
        "      hf_hub:mwalmsley/zoobot-encoder-convnext_nano --task classifier --label-col ring",
    )
    add_catalog_input(parser)
    parser.add_argument("save_dir", metavar="SAVE_DIR", type=Path, help="output folder")
    parser.add_argument(
        "--pretrained",
        required=True,
        help="encoder: hf_hub:owner/repo, a saved folder, or timm name",
    )
    parser.add_argument("--task", choices=["classifier", "regressor", "tree"], default="classifier")
    parser.add_argument("--label-col", nargs="+", metavar="COLUMN", help="label column(s)")
    parser.add_argument("--schema", type=schema_type, help="decision tree of a tree task")
    parser.add_argument(
        "--n-blocks", type=int, default=0, help="encoder blocks to train (0: linear probe, -1: all)"
    )
    parser.add_argument(
        "--lr-decay", type=float, default=0.75, help="learning-rate decay per block"
    )
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="classifier only")
    parser.add_argument("--loss", choices=["mse", "mae"], default="mse", help="regressor only")
    parser.add_argument(
        "--unit-interval", action="store_true", help="regressor outputs in (0, 1) (fractions)"
    )
    _add_training_options(parser, epochs=30, batch=64)
    parser.set_defaults(run=run_finetune)


def _register_predict(commands) -> None:
    parser = add_subcommand(
        commands,
        "predict",
        "predict a whole catalog with a trained model",
        "Predict every galaxy of the catalog with MODEL (a folder saved by train/finetune or\n"
        "hf_hub:owner/repo), streaming chunks to SAVE_LOC.parts/ and assembling at the end; run\n"
        "the same command again to resume an interrupted run. A tree model writes SAVE_LOC (every\n"
        "answer's Dirichlet concentrations per pass) and <stem>_friendly.parquet (vote fractions\n"
        "with credible intervals); a classifier <class>_probability columns; a regressor\n"
        "<label>_prediction columns. Unreadable images are listed in SAVE_LOC.failed.csv.",
        "  zoobot-torch predict data/survey/catalog.parquet runs/pretrain/best preds.parquet \\\n"
        "      --n-samples 5 --precision bf16",
    )
    add_catalog_input(parser)
    parser.add_argument("model", metavar="MODEL", help="saved model folder or hf_hub:owner/repo")
    parser.add_argument("save_loc", metavar="SAVE_LOC", type=Path, help="output parquet file")
    parser.add_argument(
        "--n-samples", type=positive_int, default=1, help="forward passes (MC dropout if > 1)"
    )
    parser.add_argument("--label-cols", nargs="+", metavar="NAME", help="class or output names")
    parser.add_argument("--friendly-loc", type=Path, help="friendly table path (.parquet or .csv)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MC dropout passes")
    _add_run_options(parser)
    parser.set_defaults(run=run_predict)


def _register_represent(commands) -> None:
    parser = add_subcommand(
        commands,
        "represent",
        "write each galaxy's representation (embedding)",
        "Embed every galaxy with ENCODER's pooled features (a saved folder, hf_hub:owner/repo, or a\n"
        "timm name for random weights) into SAVE_LOC: id_str and feat_0, feat_1... columns, or\n"
        "feat_pca_0... with --n-components (projection saved as SAVE_LOC.pca.npz). Resumes and\n"
        "reports unreadable images as predict does.",
        "  zoobot-torch represent data/survey/catalog.parquet \\\n"
        "      hf_hub:mwalmsley/zoobot-encoder-convnext_nano features.parquet --n-components 40",
    )
    add_catalog_input(parser)
    parser.add_argument(
        "encoder", metavar="ENCODER", help="saved folder, hf_hub:owner/repo or timm"
    )
    parser.add_argument("save_loc", metavar="SAVE_LOC", type=Path, help="output parquet file")
    parser.add_argument(
        "--n-components", type=components_type, help="PCA components (or variance fraction)"
    )
    parser.add_argument(
        "--pca-fit-rows", type=positive_int, default=50_000, help="galaxies the PCA is fitted on"
    )
    _add_run_options(parser)
    parser.set_defaults(run=run_represent)


def _register_push(commands) -> None:
    parser = add_subcommand(
        commands,
        "push",
        "upload a saved model folder to the Hugging Face Hub",
        "Upload FOLDER (written by train, finetune or save_pretrained) to REPO_ID in the timm Hub\n"
        "layout as one commit. --dry-run lists the files without touching the network.",
        "  zoobot-torch push runs/pretrain/best my-name/zoobot-convnext-nano --private",
    )
    parser.add_argument("folder", metavar="FOLDER", type=Path, help="saved model folder")
    parser.add_argument("repo_id", metavar="REPO_ID", help="owner/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", help="branch to commit to (created if needed)")
    parser.add_argument("--token", help="Hub token (default: the logged-in one or HF_TOKEN)")
    parser.add_argument("--dry-run", action="store_true", help="list the files, upload nothing")
    parser.set_defaults(run=run_push)


def build_parser() -> argparse.ArgumentParser:
    """The `zoobot-torch` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="zoobot-torch", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback when a command fails"
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True
    for register in (
        _register_train,
        _register_finetune,
        _register_predict,
        _register_represent,
        _register_push,
    ):
        register(commands)
    return parser


def _is_reported(err: Exception) -> bool:
    """Whether `err` is a failure to report in one message rather than a bug to trace back."""
    return isinstance(err, (ValueError, OSError, ImportError, KeyError))


def main(argv: Sequence[str] | None = None) -> int:
    """Run `zoobot-torch` with `argv` (default: the command line); return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"zoobot-torch {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug or not _is_reported(err):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"zoobot-torch {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
