"""The `zoobot-torch` and `zoobot-tf` commands, written once: train, finetune, predict, represent,
merge, push, models.

Both commands take the same arguments and run the same code; each framework package supplies only a
`ModelCommand`: its name, the module of its `Backend`, and the few help texts that differ. The
parser needs no deep-learning framework (so `--help` is quick); the backend is imported to run a
subcommand. Errors a library reports about inputs, files or the Hub are printed as one message on
stderr with exit code 1 (2 for a bad command line), not a traceback; `--debug` shows the traceback.
Zoobot's own informational log lines (which fast path a run takes, resuming) go to stderr as
`<prog>: <message>`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoobot.data.augmentation import AUGMENTATIONS
from zoobot.data.commands.common import (
    HelpFormatter,
    add_catalog_input,
    add_no_progress,
    add_split_options,
    add_subcommand,
    as_flags,
    load_input_catalog,
    positive_int,
    schema_type,
    splits_of,
)

COMMANDS = ("train", "finetune", "predict", "represent", "merge", "push", "models")
FRAMEWORK_FREE = ("merge", "models")
"""Subcommands that run without importing the framework."""
RUN_OPTIONS = ("batch_size", "num_workers", "image_size", "precision", "channels_last")
"""Options of predict and represent passed to the library under the same names."""
TRAINING_OPTIONS = (
    "epochs",
    "batch_size",
    "image_size",
    "precision",
    "accelerator",
    "devices",
    "num_workers",
    "patience",
    "seed",
    "progress",
    "augment",
)
"""Options of train and finetune passed to `Backend.fit_catalog` (plus `splits`)."""
FLAGS = {
    "resume=False": "--no-resume",
    "overwrite=True": "--overwrite",
    "hash_images=True": "--hash-images",
    "num_workers=": "--num-workers ",
    "n_components=": "--n-components ",
    "pca_fit_rows=": "--pca-fit-rows ",
    "device=": "--device ",
    "accelerator=": "--accelerator ",
}
"""How the library's messages name options (Python arguments), and the flags that set them."""
HELP_KEYS = (
    "architecture",  # --architecture of train
    "train_precision",  # --precision of train and finetune
    "devices",  # --devices of train and finetune
    "train_workers",  # --num-workers of train and finetune
    "predict_input",  # what predict reads, in its description
    "run_precision",  # --precision of predict and represent
    "channels_last",  # --channels-last of predict and represent
    "run_workers",  # --num-workers of predict and represent
    "device",  # --device of predict and represent
    "run_devices",  # --devices of predict and represent
    "run_strategy",  # --strategy of predict and represent
)


def typical_run(prog: str) -> str:
    """The help's closing example: a run of `prog` on the synthetic survey of zoobot-data."""
    return f"""\
a typical run on the synthetic survey of zoobot-data:
  zoobot-data survey 2000 data/survey --image-size 128
  {prog} train data/survey/catalog.parquet runs/pretrain --schema decals_dr5 --image-size 128
  {prog} predict data/survey/catalog.parquet runs/pretrain/best preds/votes.parquet
  {prog} represent data/survey/catalog.parquet runs/pretrain/best preds/features.parquet
  {prog} push runs/pretrain/best my-name/zoobot-synthetic --dry-run
"""


@dataclass(frozen=True)
class ModelCommand:
    """One framework's command: its name, texts, and its `Backend` (or the module holding it as
    `BACKEND`, imported only to run a subcommand)."""

    prog: str
    framework: str
    backend: str | Any
    description: str
    help: Mapping[str, str]
    epilog: str | None = None
    """Text after the subcommand list (default: `typical_run(prog)`)."""
    start: Callable[[argparse.Namespace], None] | None = None
    """Called with the parsed arguments before the backend is imported (e.g. to choose the Keras
    backend and start the framework quietly)."""
    backends: Sequence[str] = ()
    """Backends the framework runs on, chosen with `--backend` (none: no such option)."""

    def __post_init__(self):
        missing = set(HELP_KEYS) - set(self.help)
        if missing:
            raise ValueError(f"{self.prog}: no help text for {sorted(missing)}")

    def load_backend(self, args: argparse.Namespace | None = None):
        """The framework's `Backend` (imports the framework, after `start(args)`)."""
        if self.start is not None:
            self.start(args if args is not None else argparse.Namespace())
        if isinstance(self.backend, str):
            return importlib.import_module(self.backend).BACKEND
        return self.backend


def devices_type(text: str) -> int | str:
    """`auto`, or a number of devices."""
    return text if text == "auto" else positive_int(text)


def non_negative_int(text: str) -> int:
    """An integer of at least 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 0, got {text!r}")
    return value


def components_type(text: str) -> int | float:
    """A number of PCA components (at least 1), or a fraction of variance in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value.is_integer() and value >= 1 and "." not in text:
        return int(value)
    if 0 < value < 1:
        return value
    raise argparse.ArgumentTypeError(
        f"expected a whole number of components (at least 1) or a fraction in (0, 1), got {text!r}"
    )


def class_labels(catalog, column: str):
    """The catalog with `column` as class indices, and the class names in index order."""
    import pandas as pd

    values = catalog[column]
    missing = values.isna().to_numpy()
    if missing.any():
        from zoobot.data.rows import CatalogError, describe_rows

        raise CatalogError(
            f"--label-col {column} has no class in {describe_rows(catalog, missing)}"
        )
    if pd.api.types.is_integer_dtype(values):
        names = [str(i) for i in range(int(values.max()) + 1)]
        return catalog, names
    codes, names = pd.factorize(values.astype(str), sort=True)
    return catalog.assign(**{column: codes}), [str(n) for n in names]


def finetune_model(args: argparse.Namespace, catalog, tasks):
    """(model factory, catalog, label columns, class names or None) for `finetune --task`: the
    factory builds a `FinetuneableZoobot{Classifier,Regressor,Tree}` from the backend's `tasks`
    registry (called where the framework wants models built, e.g. inside a distribution scope)."""
    options = {"name": args.pretrained, "n_blocks": args.n_blocks, "lr_decay": args.lr_decay}
    if args.learning_rate is not None:
        options["learning_rate"] = args.learning_rate
    if args.task == "tree":
        if args.schema is None:
            raise ValueError("--task tree needs --schema")
        cls = tasks.lookup("finetuneable_tree", "finetune")
        return lambda: cls(args.schema, **options), catalog, list(args.schema.label_cols), None
    missing = [c for c in args.label_col or () if c not in catalog.columns]
    if not args.label_col or missing:
        raise ValueError(
            f"--task {args.task} needs --label-col columns of the catalog (missing: {missing})"
        )
    if args.task == "regressor":
        cls = tasks.lookup("regressor", "finetune")
        options |= {"loss": args.loss, "unit_interval": args.unit_interval}
        return (
            lambda: cls(num_outputs=len(args.label_col), **options),
            catalog,
            args.label_col,
            None,
        )
    if len(args.label_col) != 1:
        raise ValueError("--task classifier takes one --label-col (the class of each galaxy)")
    catalog, names = class_labels(catalog, args.label_col[0])
    cls = tasks.lookup("classifier", "finetune")
    options |= {"label_smoothing": args.label_smoothing, "class_names": names}
    return lambda: cls(len(names), **options), catalog, args.label_col, names


def report_predictions(files) -> None:
    """What `predict` wrote."""
    print(f"{files.n_predicted} galaxies predicted: {files.predictions}")
    if files.friendly is not None:
        print(f"friendly table: {files.friendly}")
    print(f"{files.n_failed} unreadable image(s) listed in {files.failed}")


def report_run(result, report: Callable) -> None:
    """`report(result)` for a merged run; what is left to do for a `PendingRun` (a process that
    finished its share of a run but did not merge it)."""
    from zoobot.models.distributed import PendingRun

    if isinstance(result, PendingRun):
        print(result)
    else:
        report(result)


def report_representations(files) -> None:
    """What `get_representations` wrote."""
    print(f"{files.n_represented} galaxies embedded: {files.representations}")
    if files.pca is not None:
        print(f"PCA projection: {files.pca}")
    print(f"{files.n_failed} unreadable image(s) listed in {files.failed}")


def report_push(result, dry_run: bool) -> None:
    """What `push_to_hub` uploaded (or would)."""
    verb = "would upload" if dry_run else "uploaded"
    print(f"{verb} to {result.repo_id}: {', '.join(result.files)}")
    if result.commit_url:
        print(result.commit_url)


def report_finetuned(save_dir: Path, names: list[str] | None) -> None:
    """Where the finetuned model is, and a classifier's classes (its prediction columns)."""
    print(f"finetuned weights (Hub layout): {Path(save_dir) / 'best'}")
    if names is not None:
        print(f"classes in output order: {' '.join(names)}")


def _training_options(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in TRAINING_OPTIONS} | {"splits": splits_of(args)}


def _run_options(args: argparse.Namespace, backend) -> dict:
    """Keyword arguments of `predict` / `get_representations` from the shared options."""
    if args.threads:
        backend.set_threads(args.threads)
    options = {name: getattr(args, name) for name in RUN_OPTIONS}
    return options | {
        "chunk_rows": args.chunk_rows,
        "resume": args.resume,
        "progress": args.progress,
        "device": backend.device(args.device),
        "overwrite": args.overwrite,
        "hash_images": args.hash_images,
        "devices": args.devices,
        "nodes": args.nodes,
        "strategy": args.strategy,
        "catalog_slice": args.slice,
    }


def run_train(args: argparse.Namespace, backend) -> int:
    """Pretrain a ZoobotTree on the catalog's vote counts."""
    catalog = load_input_catalog(args, args.schema)
    settings = {} if args.learning_rate is None else {"learning_rate": args.learning_rate}
    tree = backend.tasks.lookup("tree", "train")
    backend.fit_catalog(
        lambda: tree(args.schema, args.architecture, **settings),
        catalog,
        list(args.schema.label_cols),
        args.save_dir,
        _training_options(args),
    )
    print(f"best weights (Hub layout): {Path(args.save_dir) / 'best'}")
    return 0


def run_finetune(args: argparse.Namespace, backend) -> int:
    """Finetune a pretrained encoder as a classifier, regressor or decision tree."""
    schema = args.schema if args.task == "tree" else None
    catalog = load_input_catalog(args, schema)
    build, catalog, label_cols, names = finetune_model(args, catalog, backend.tasks)
    backend.fit_catalog(build, catalog, label_cols, args.save_dir, _training_options(args))
    report_finetuned(args.save_dir, names)
    return 0


def _catalog_or_rows(args: argparse.Namespace, backend):
    """What predict and represent read: a source the backend opens itself (e.g. a TFRecord shard
    folder for zoobot-tf), a catalog file or folder streamed a batch at a time, or else the
    registered data set loaded."""
    if backend.reads_natively(args.catalog):
        return Path(args.catalog)
    if Path(args.catalog).expanduser().exists():
        from zoobot.data.streaming import open_catalog_rows

        return open_catalog_rows(args.catalog, args.root)
    return load_input_catalog(args)


def run_predict(args: argparse.Namespace, backend) -> int:
    """Predict every galaxy of the catalog and write the prediction tables."""
    from zoobot.models.inference import predict

    options = _run_options(args, backend)
    files = predict(
        backend,
        _catalog_or_rows(args, backend),
        args.model,
        args.save_loc,
        args.n_samples,
        label_cols=args.label_cols,
        friendly_loc=args.friendly_loc,
        seed=args.seed,
        **options,
    )
    report_run(files, report_predictions)
    return 0


def run_represent(args: argparse.Namespace, backend) -> int:
    """Write every galaxy's representation (optionally PCA-compressed)."""
    from zoobot.models.inference import get_representations

    options = _run_options(args, backend)
    files = get_representations(
        backend,
        _catalog_or_rows(args, backend),
        args.encoder,
        args.save_loc,
        n_components=args.n_components,
        pca_fit_rows=args.pca_fit_rows,
        **options,
    )
    report_run(files, report_representations)
    return 0


def run_merge(args: argparse.Namespace, backend) -> int:
    """Merge the parts of a run whose slices have all finished into its final files."""
    from zoobot.models.distributed import merge
    from zoobot.models.runner import RepresentationFiles

    files = merge(args.save_loc)
    if files is None:
        print(f"{args.save_loc} is already complete: nothing to merge")
    elif isinstance(files, RepresentationFiles):
        report_representations(files)
    else:
        report_predictions(files)
    return 0


def run_push(args: argparse.Namespace, backend) -> int:
    """Upload a saved model folder to the Hugging Face Hub (or list what would be uploaded)."""
    from zoobot.models.pretrained import from_pretrained, push_to_hub

    result = push_to_hub(
        backend,
        from_pretrained(backend, Path(args.folder)),
        args.repo_id,
        private=args.private,
        revision=args.revision,
        token=args.token,
        dry_run=args.dry_run,
    )
    report_push(result, args.dry_run)
    return 0


def run_models(args: argparse.Namespace, backend=None) -> int:
    """Print the published Zoobot encoders."""
    from zoobot.models import catalogue

    if args.format == "json":
        print(json.dumps(catalogue.records(), indent=2))
    else:
        print(catalogue.markdown_table() if args.format == "markdown" else catalogue.format_table())
    return 0


RUNNERS = {
    "train": run_train,
    "finetune": run_finetune,
    "predict": run_predict,
    "represent": run_represent,
    "merge": run_merge,
    "push": run_push,
    "models": run_models,
}


def _add_training_options(
    parser: argparse.ArgumentParser, command: ModelCommand, epochs: int, batch: int
) -> None:
    """Options shared by `train` and `finetune`."""
    parser.add_argument("--epochs", type=positive_int, default=epochs, help="maximum epochs")
    parser.add_argument("--batch-size", type=positive_int, default=batch, help="images per batch")
    parser.add_argument("--image-size", type=positive_int, default=224, help="pixels per side")
    parser.add_argument("--learning-rate", type=float, help="peak learning rate (default: model's)")
    parser.add_argument(
        "--precision",
        default="32",
        choices=["32", "bf16-mixed", "16-mixed", "mixed"],
        help=command.help["train_precision"] + " (default: %(default)s)",
    )
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    parser.add_argument(
        "--devices", type=devices_type, default="auto", help=command.help["devices"]
    )
    parser.add_argument(
        "--num-workers", type=non_negative_int, default=4, help=command.help["train_workers"]
    )
    parser.add_argument(
        "--patience",
        type=positive_int,
        default=8,
        help="epochs without improvement before stopping",
    )
    parser.add_argument(
        "--augment",
        choices=AUGMENTATIONS,
        help="training augmentation (default: dihedral for vote trees, whose labels blur, noise "
        "and zoom would change; full for classifiers and regressors)",
    )
    add_split_options(parser)
    add_no_progress(parser)


def _add_run_options(parser: argparse.ArgumentParser, command: ModelCommand) -> None:
    """Options shared by `predict` and `represent`: speed, numerics, resuming."""
    parser.add_argument("--batch-size", type=positive_int, default=128, help="images per batch")
    parser.add_argument("--num-workers", type=non_negative_int, help=command.help["run_workers"])
    parser.add_argument(
        "--image-size",
        type=positive_int,
        help="pixels per side (default: the size the model was trained at, else 224)",
    )
    parser.add_argument(
        "--precision",
        default="32",
        choices=["32", "bf16"],
        help=command.help["run_precision"] + " (default: %(default)s)",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help=command.help["channels_last"],
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
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of an earlier run in SAVE_LOC (and the files it wrote beside)",
    )
    parser.add_argument(
        "--hash-images",
        action="store_true",
        help="resume only if every image's content is unchanged (default: size and time)",
    )
    parser.add_argument("--device", help=command.help["device"])
    parser.add_argument(
        "--threads", type=positive_int, help=f"compute threads ({command.framework})"
    )
    parser.add_argument(
        "--devices",
        type=devices_type,
        default=1,
        help=command.help["run_devices"] + " (default: %(default)s)",
    )
    parser.add_argument(
        "--nodes", type=positive_int, default=1, help="machines the run is spread over"
    )
    parser.add_argument(
        "--strategy", default="auto", help=command.help["run_strategy"] + " (default: auto)"
    )
    parser.add_argument(
        "--slice",
        metavar="I/N",
        help="compute only slice I (0-based) of N of the catalog's chunks, as one of N "
        "independent tasks (e.g. a SLURM array: `slurm` reads the task from SLURM's variables); "
        "the last to finish merges the run, else run `merge SAVE_LOC`",
    )
    add_no_progress(parser)


def _add_backend_option(parser: argparse.ArgumentParser, command: ModelCommand) -> None:
    """`--backend` where the framework runs on several (Keras: TensorFlow or JAX)."""
    if command.backends:
        parser.add_argument(
            "--backend",
            choices=list(command.backends),
            help=f"backend to run on (default: KERAS_BACKEND, else {command.backends[0]})",
        )


def _register_train(commands, command: ModelCommand) -> None:
    parser = add_subcommand(
        commands,
        "train",
        "pretrain an encoder on Galaxy Zoo volunteer votes",
        "Train a ZoobotTree (encoder + Dirichlet head) on the vote counts of every answer of\n"
        "--schema. The catalog is split into train/validation/test (its split column, or\n"
        "--splits). Writes to SAVE_DIR: checkpoints/, logs/ (CSV), tensorboard/, and best/: the\n"
        "best validation weights in the timm Hub layout, ready for predict, finetune and push in\n"
        "zoobot-torch or zoobot-tf.",
        f"  {command.prog} train data/survey/catalog.parquet runs/pretrain --schema decals_dr5 \\\n"
        "      --architecture convnext_nano --epochs 50 --precision bf16-mixed",
    )
    add_catalog_input(parser)
    parser.add_argument("save_dir", metavar="SAVE_DIR", type=Path, help="output folder")
    parser.add_argument("--schema", type=schema_type, required=True, help="decision tree name")
    parser.add_argument(
        "--architecture",
        default="convnext_nano",
        help=command.help["architecture"] + " (default: %(default)s)",
    )
    _add_training_options(parser, command, epochs=100, batch=128)


def _register_finetune(commands, command: ModelCommand) -> None:
    parser = add_subcommand(
        commands,
        "finetune",
        "finetune a pretrained encoder for a new question",
        "Train a head (and the last --n-blocks encoder blocks) on top of a pretrained encoder:\n"
        "a classifier of the --label-col column (class names or indices), a regressor of one or\n"
        "more --label-col columns, or a new decision tree (--schema, vote counts). Writes to\n"
        "SAVE_DIR as train does; best/ holds the finetuned model for predict and push.",
        f"  {command.prog} finetune rings.csv runs/rings --pretrained \\\n"
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
    _add_training_options(parser, command, epochs=30, batch=64)


def _register_predict(commands, command: ModelCommand) -> None:
    parser = add_subcommand(
        commands,
        "predict",
        "predict a whole catalog with a trained model",
        f"Predict every galaxy of {command.help['predict_input']} with MODEL (a folder saved by\n"
        "train/finetune of either framework, or hf_hub:owner/repo), streaming chunks to\n"
        "SAVE_LOC.parts/ and assembling at the end; run the same command again to resume an\n"
        "interrupted run. A tree model writes SAVE_LOC (every answer's Dirichlet concentrations\n"
        "per pass) and <stem>_friendly.parquet (vote fractions with credible intervals); a\n"
        "classifier <class>_probability columns; a regressor <label>_prediction columns.\n"
        "Unreadable images are listed in SAVE_LOC.failed.csv. An earlier run's files are\n"
        "replaced only with --overwrite; files zoobot did not write are never replaced.",
        f"  {command.prog} predict data/survey/catalog.parquet runs/pretrain/best preds.parquet \\\n"
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
    _add_run_options(parser, command)


def _register_represent(commands, command: ModelCommand) -> None:
    parser = add_subcommand(
        commands,
        "represent",
        "write each galaxy's representation (embedding)",
        "Embed every galaxy with ENCODER's pooled features (a saved folder, hf_hub:owner/repo, or a\n"
        "timm name for random weights) into SAVE_LOC: id_str and feat_0, feat_1... columns, or\n"
        "feat_pca_0... with --n-components (projection saved as SAVE_LOC.pca.npz). Resumes and\n"
        "reports unreadable images as predict does.",
        f"  {command.prog} represent data/survey/catalog.parquet \\\n"
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
    _add_run_options(parser, command)


def _register_merge(commands, command: ModelCommand) -> None:
    parser = add_subcommand(
        commands,
        "merge",
        "merge the parts of a run computed in slices into its final files",
        "Assemble SAVE_LOC (and its friendly table, failure list or PCA projection, as the run\n"
        "was asked to write) from SAVE_LOC.parts/ once every chunk is done: after the tasks of a\n"
        "SLURM array (predict/represent --slice) have all finished. The last task to finish\n"
        "usually merges already; then this says so and exits 0. Needs no model, catalog or GPU.",
        f"  {command.prog} merge preds/votes.parquet",
    )
    parser.add_argument("save_loc", metavar="SAVE_LOC", type=Path, help="the run's output file")


def _register_push(commands, command: ModelCommand) -> None:
    parser = add_subcommand(
        commands,
        "push",
        "upload a saved model folder to the Hugging Face Hub",
        "Upload FOLDER (written by train, finetune or save_pretrained) to REPO_ID in the timm Hub\n"
        "layout as one commit. --dry-run lists the files without touching the network.",
        f"  {command.prog} push runs/pretrain/best my-name/zoobot-convnext-nano --private",
    )
    parser.add_argument("folder", metavar="FOLDER", type=Path, help="saved model folder")
    parser.add_argument("repo_id", metavar="REPO_ID", help="owner/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", help="branch to commit to (created if needed)")
    parser.add_argument("--token", help="Hub token (default: the logged-in one or HF_TOKEN)")
    parser.add_argument("--dry-run", action="store_true", help="list the files, upload nothing")


def _register_models(commands, command: ModelCommand) -> None:
    parser = add_subcommand(
        commands,
        "models",
        "list the published pretrained encoders",
        "List every pretrained Zoobot encoder published on the Hugging Face Hub: its name (load it\n"
        "by that name or as hf_hub:mwalmsley/<name>), timm architecture, input channels and size,\n"
        "parameters, licence and training data. --format json gives every field of\n"
        "list_pretrained(), including the files each repo holds and which fields are inferred.",
        f"  {command.prog} models\n  {command.prog} models --format markdown",
    )
    parser.add_argument(
        "--format",
        choices=["table", "markdown", "json"],
        default="table",
        help="output format (default: %(default)s)",
    )


_REGISTER = {
    "train": _register_train,
    "finetune": _register_finetune,
    "predict": _register_predict,
    "represent": _register_represent,
    "merge": _register_merge,
    "push": _register_push,
    "models": _register_models,
}


def build_parser(command: ModelCommand) -> argparse.ArgumentParser:
    """The parser of `command` with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog=command.prog,
        description=command.description,
        epilog=typical_run(command.prog) if command.epilog is None else command.epilog,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback when a command fails"
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True
    for name in COMMANDS:
        _REGISTER[name](commands, command)
        _add_backend_option(commands.choices[name], command)
        commands.choices[name].set_defaults(run=RUNNERS[name])
    return parser


def _is_reported(err: Exception) -> bool:
    """Whether `err` is a failure to report in one message rather than a bug to trace back."""
    return isinstance(err, (ValueError, OSError, ImportError, KeyError, FloatingPointError))


@contextlib.contextmanager
def zoobot_log_lines(prog: str):
    """Within the block, Zoobot's INFO and higher log records go to stderr as `prog: ...`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prog}: %(message)s"))
    logger = logging.getLogger("zoobot")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # printed once, here, whatever the root logger does
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def run_command(command: ModelCommand, argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: the command line) and run the subcommand; return the exit code."""
    args = build_parser(command).parse_args(argv)
    try:
        with zoobot_log_lines(command.prog):
            framework_free = args.command in FRAMEWORK_FREE
            return args.run(args, None if framework_free else command.load_backend(args))
    except KeyboardInterrupt:
        print(f"{command.prog} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug or not _is_reported(err):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        message = as_flags(str(message), FLAGS)
        print(f"{command.prog} {args.command}: error: {message}", file=sys.stderr)
        return 1
