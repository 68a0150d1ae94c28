"""The `zoobot-tf` command: train on votes, finetune, predict, embed and publish Zoobot models with
TensorFlow / Keras 3.

The subcommands and their arguments are those of `zoobot-torch` (`zoobot.data.commands.models`
builds both parsers); each calls one library function here. TensorFlow is imported only to run a
command, so `--help` is quick.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
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


def _started(runner: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`runner` after `start_tensorflow`."""

    @functools.wraps(runner)
    def run(args: argparse.Namespace) -> int:
        start_tensorflow()
        return runner(args)

    return run


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


def run_finetune(args: argparse.Namespace) -> int:
    """Finetune a pretrained encoder as a classifier, regressor or decision tree."""
    import keras

    from zoobot.tf import finetune as tasks
    from zoobot.tf.streaming import input_channels
    from zoobot.tf.training import dtype_policy, fit

    schema = args.schema if args.task == "tree" else None
    catalog = load_input_catalog(args, schema)
    strategy = _strategy(args)
    keras.utils.set_random_seed(args.seed)
    with dtype_policy(args.precision), strategy.scope():
        model, catalog, label_cols, names = finetune_model(args, catalog, tasks)
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
    report_finetuned(args.save_dir, names)
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
    report_predictions(files)
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
    report_representations(files)
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
    report_push(result, args.dry_run)
    return 0


COMMAND = ModelCommand(
    prog="zoobot-tf",
    framework="TensorFlow",
    description=DESCRIPTION,
    epilog=EPILOG,
    runners={
        "train": _started(run_train),
        "finetune": _started(run_finetune),
        "predict": _started(run_predict),
        "represent": _started(run_represent),
        "push": _started(run_push),
    },
    help={
        "architecture": "timm architecture, hf_hub:owner/repo or a folder to start from",
        "train_precision": "training precision (a Keras dtype policy); mixed is bf16 on CPU and "
        "fp16 on GPU; bf16 on a CPU without bf16 instructions trains in float32",
        "devices": "devices to use; several train with tf.distribute.MirroredStrategy",
        "train_workers": "images decoded at once by tf.data",
        "predict_input": "the catalog (or TFRecord shard folder)",
        "run_precision": "bf16 runs the encoder under the mixed_bfloat16 policy on CPUs with "
        "AVX-512 bf16 or AMX and on GPUs, slightly less exact; other CPUs run float32",
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
    # TensorFlow's C++ start-up chatter (oneDNN notices, ...) is noise for a command-line user;
    # TF_CPP_MIN_LOG_LEVEL=0 shows all of it (see `start_tensorflow`).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run_command(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
