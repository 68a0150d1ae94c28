"""The `zoobot-tf` command: train on votes, finetune, predict, embed and publish Zoobot models with
TensorFlow / Keras 3. The same subcommands and options as `zoobot-torch`.

Each subcommand parses its arguments and calls one library function. Errors the library reports about
inputs, files or the Hub are printed as one message on stderr with exit code 1 (2 for a bad command
line), not a traceback; `--debug` shows the traceback. TensorFlow is imported only to run a command,
so `--help` is quick.
"""

from __future__ import annotations

import argparse
import os
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


def tf_device(name: str | None) -> str | None:
    """A TensorFlow device name from torch-style `cpu`, `cuda`, `cuda:1` (or `/GPU:1` as it is).

    Also what `predict(device=...)` accepts; here so that the command line needs no TensorFlow.
    """
    if name is None or name.startswith("/"):
        return name
    kind, _, index = name.lower().partition(":")
    kinds = {"cpu": "CPU", "cuda": "GPU", "gpu": "GPU"}
    if kind not in kinds or (index and not index.isdigit()):
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N or a TensorFlow name")
    return f"/{kinds[kind]}:{index or 0}"


def _add_training_options(parser: argparse.ArgumentParser, epochs: int, batch: int) -> None:
    """Training options shared by `train` and `finetune`."""
    parser.add_argument("--epochs", type=positive_int, default=epochs, help="maximum epochs")
    parser.add_argument("--batch-size", type=positive_int, default=batch, help="images per batch")
    parser.add_argument("--image-size", type=positive_int, default=224, help="pixels per side")
    parser.add_argument("--learning-rate", type=float, help="peak learning rate (default: model's)")
    parser.add_argument(
        "--precision",
        default="32",
        choices=["32", "bf16-mixed", "16-mixed", "mixed"],
        help="training precision (a Keras dtype policy); mixed is bf16 on CPU and fp16 on GPU "
        "(default: %(default)s)",
    )
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    parser.add_argument(
        "--devices",
        type=devices_type,
        default="auto",
        help="devices to use; several train with tf.distribute.MirroredStrategy",
    )
    parser.add_argument(
        "--num-workers", type=int, default=4, help="images decoded at once by tf.data"
    )
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
        "--num-workers", type=int, help="images decoded at once (default: half the CPUs, 1-8)"
    )
    parser.add_argument("--image-size", type=positive_int, default=224, help="pixels per side")
    parser.add_argument(
        "--precision",
        default="32",
        choices=["32", "bf16"],
        help="bf16 runs the encoder under the mixed_bfloat16 policy: faster on CPUs with AVX-512 "
        "bf16 or AMX and on recent GPUs, slightly less exact (default: %(default)s)",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="accepted for zoobot-torch compatibility: Keras is always channels-last",
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
        "--device", help="cpu, cuda, cuda:1... or /GPU:1 (default: TensorFlow's choice)"
    )
    parser.add_argument("--threads", type=positive_int, help="compute threads (TensorFlow)")
    add_no_progress(parser)


def _set_threads(threads: int | None) -> None:
    """TensorFlow's compute threads (only possible before its runtime starts)."""
    if threads:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            print(
                "zoobot-tf: --threads ignored: TensorFlow had already started in this process",
                file=sys.stderr,
            )


def _run_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of `predict` / `get_representations` from the shared options."""
    _set_threads(args.threads)
    options = {name: getattr(args, name) for name in RUN_OPTIONS}
    return options | {
        "chunk_rows": args.chunk_rows,
        "resume": args.resume,
        "progress": args.progress,
        "device": tf_device(args.device),
    }


def _strategy(args: argparse.Namespace):
    """The `tf.distribute` strategy for --accelerator and --devices."""
    import tensorflow as tf

    accelerator = args.accelerator.lower()
    if accelerator not in ("auto", "cpu", "gpu", "cuda"):
        raise ValueError(f"unknown accelerator {args.accelerator!r}; use cpu, gpu or auto")
    if accelerator == "cpu":
        tf.config.set_visible_devices([], "GPU")
    gpus = tf.config.list_physical_devices("GPU")
    if accelerator in ("gpu", "cuda") and not gpus:
        raise ValueError("--accelerator gpu, but TensorFlow sees no GPU")
    if args.devices == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if args.devices == 1:
        return tf.distribute.get_strategy()
    if gpus:
        if args.devices > len(gpus):
            raise ValueError(f"--devices {args.devices}, but TensorFlow sees {len(gpus)} GPU(s)")
        return tf.distribute.MirroredStrategy([f"/GPU:{i}" for i in range(args.devices)])
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * args.devices
    )
    return tf.distribute.MirroredStrategy([f"/CPU:{i}" for i in range(args.devices)])


def _datasets(args: argparse.Namespace, catalog, label_cols: list[str], channels: int = 3):
    """(train, validation) `tf.data` datasets of the catalog's splits, batched, with labels."""
    from zoobot.tf.data import eval_dataset, train_dataset

    parallel = max(1, args.num_workers)
    common = {
        "image_size": args.image_size,
        "channels": channels,
        "batch_size": args.batch_size,
        "splits": splits_of(args),
        "split_seed": args.seed,
        "num_parallel_calls": parallel,
    }
    train = train_dataset(catalog, label_cols, seed=args.seed, split="train", **common)
    validation = eval_dataset(
        catalog, label_cols=label_cols, split="validation", as_tuples=True, **common
    )
    return train, validation


def _fit_options(args: argparse.Namespace) -> dict:
    return {"verbose": 1 if args.progress else 2}


def run_train(args: argparse.Namespace) -> int:
    """Pretrain a ZoobotTree on the catalog's vote counts."""
    import keras

    from zoobot.tf.training import train

    catalog = load_input_catalog(args, args.schema)
    strategy = _strategy(args)
    keras.utils.set_random_seed(args.seed)
    data = _datasets(args, catalog, list(args.schema.label_cols))
    model_kwargs = {} if args.learning_rate is None else {"learning_rate": args.learning_rate}
    train(
        data,
        args.schema,
        args.save_dir,
        architecture=args.architecture,
        epochs=args.epochs,
        batch_size=args.batch_size,
        image_size=args.image_size,
        precision=args.precision,
        strategy=strategy,
        patience=args.patience,
        seed=args.seed,
        model_kwargs=model_kwargs,
        **_fit_options(args),
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
    from zoobot.tf.finetune import (
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
        len(names), label_smoothing=args.label_smoothing, **options
    )
    return model, catalog, args.label_col, names


def run_finetune(args: argparse.Namespace) -> int:
    """Finetune a pretrained encoder as a classifier, regressor or decision tree."""
    import keras

    from zoobot.tf.streaming import input_channels
    from zoobot.tf.training import dtype_policy, fit

    schema = args.schema if args.task == "tree" else None
    catalog = load_input_catalog(args, schema)
    strategy = _strategy(args)
    keras.utils.set_random_seed(args.seed)
    with dtype_policy(args.precision), strategy.scope():
        model, catalog, label_cols, names = _finetune_model(args, catalog)
        model.compile(gradient_clip_val=1.0)  # inside the strategy's scope; as zoobot-torch clips
    train, validation = _datasets(args, catalog, label_cols, input_channels(model))
    fit(
        model,
        train,
        validation,
        save_dir=args.save_dir,
        epochs=args.epochs,
        patience=args.patience,
        **_fit_options(args),
    )
    print(f"finetuned weights (Hub layout): {Path(args.save_dir) / 'best'}")
    if names is not None:
        print(f"classes in output order: {' '.join(names)}")
        print(
            f"predict with: zoobot-tf predict CATALOG {Path(args.save_dir) / 'best'} OUT "
            f"--label-cols {' '.join(names)}"
        )
    return 0


def _catalog_or_shards(args: argparse.Namespace):
    """A shard folder as it is (predict and represent read shards too), else the loaded catalog."""
    from zoobot.data.shards import SIDECAR

    path = Path(args.catalog)
    if path.is_dir() and (path / SIDECAR).is_file():
        return path
    return load_input_catalog(args)


def run_predict(args: argparse.Namespace) -> int:
    """Predict every galaxy of the catalog and write the prediction tables."""
    options = _run_options(args)
    from zoobot.tf.predictions import predict

    files = predict(
        _catalog_or_shards(args),
        args.model,
        args.save_loc,
        args.n_samples,
        label_cols=args.label_cols,
        friendly_loc=args.friendly_loc,
        seed=args.seed,
        **options,
    )
    print(f"{files.n_predicted} galaxies predicted: {files.predictions}")
    if files.friendly is not None:
        print(f"friendly table: {files.friendly}")
    print(f"{files.n_failed} unreadable image(s) listed in {files.failed}")
    return 0


def run_represent(args: argparse.Namespace) -> int:
    """Write every galaxy's representation (optionally PCA-compressed)."""
    options = _run_options(args)
    from zoobot.tf.representations import get_representations

    files = get_representations(
        _catalog_or_shards(args),
        args.encoder,
        args.save_loc,
        n_components=args.n_components,
        pca_fit_rows=args.pca_fit_rows,
        **options,
    )
    print(f"{files.n_represented} galaxies embedded: {files.representations}")
    if files.pca is not None:
        print(f"PCA projection: {files.pca}")
    print(f"{files.n_failed} unreadable image(s) listed in {files.failed}")
    return 0


def run_push(args: argparse.Namespace) -> int:
    """Upload a saved model folder to the Hugging Face Hub (or list what would be uploaded)."""
    from zoobot.tf.hub import load_from_name, push_to_hub

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
        "--schema with Keras fit. The catalog is split into train/validation/test (its split\n"
        "column, or --splits). Writes to SAVE_DIR: checkpoints/, logs/ (CSV), tensorboard/, and\n"
        "best/: the best validation weights in the timm Hub layout, ready for predict, finetune,\n"
        "push and zoobot-torch.",
        "  zoobot-tf train data/survey/catalog.parquet runs/pretrain --schema decals_dr5 \\\n"
        "      --architecture convnext_nano --epochs 50 --precision bf16-mixed",
    )
    add_catalog_input(parser)
    parser.add_argument("save_dir", metavar="SAVE_DIR", type=Path, help="output folder")
    parser.add_argument("--schema", type=schema_type, required=True, help="decision tree name")
    parser.add_argument(
        "--architecture",
        default="convnext_nano",
        help="timm architecture, hf_hub:owner/repo or a folder to start from "
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
        "  zoobot-tf finetune rings.csv runs/rings --pretrained \\\n"
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
        "Predict every galaxy of the catalog (or of a TFRecord shard folder) with MODEL (a folder\n"
        "saved by train/finetune of either framework, or hf_hub:owner/repo), streaming chunks to\n"
        "SAVE_LOC.parts/ and assembling at the end; run the same command again to resume an\n"
        "interrupted run. A tree model writes SAVE_LOC (every answer's Dirichlet concentrations\n"
        "per pass) and <stem>_friendly.parquet (vote fractions with credible intervals); a\n"
        "classifier <class>_probability columns; a regressor <label>_prediction columns.\n"
        "Unreadable images are listed in SAVE_LOC.failed.csv.",
        "  zoobot-tf predict data/survey/catalog.parquet runs/pretrain/best preds.parquet \\\n"
        "      --n-samples 5",
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
        "  zoobot-tf represent data/survey/catalog.parquet \\\n"
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
        "  zoobot-tf push runs/pretrain/best my-name/zoobot-convnext-nano --private",
    )
    parser.add_argument("folder", metavar="FOLDER", type=Path, help="saved model folder")
    parser.add_argument("repo_id", metavar="REPO_ID", help="owner/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", help="branch to commit to (created if needed)")
    parser.add_argument("--token", help="Hub token (default: the logged-in one or HF_TOKEN)")
    parser.add_argument("--dry-run", action="store_true", help="list the files, upload nothing")
    parser.set_defaults(run=run_push)


def build_parser() -> argparse.ArgumentParser:
    """The `zoobot-tf` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="zoobot-tf", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
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
    """Run `zoobot-tf` with `argv` (default: the command line); return the exit code."""
    args = build_parser().parse_args(argv)
    # TensorFlow's C++ start-up chatter (oneDNN notices, ...) is noise for a command-line user.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"zoobot-tf {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug or not _is_reported(err):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"zoobot-tf {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
