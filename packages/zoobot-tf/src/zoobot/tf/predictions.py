"""Predict with a Zoobot Keras model over a whole catalog: streamed to parquet, resumable, failures
reported. The same arguments, files and columns as `zoobot.torch.predictions` (the tables are written by
`zoobot.data.streaming`, shared by both frameworks).

Files written (`save_loc` is the main one; each appears under its name only when complete):

- tree models (`ZoobotTree`, `FinetuneableZoobotTree`): `save_loc` is the full table of
  `zoobot.shared.tables` (`id_str`, then per answer a list of the concentrations of every pass; the
  schema in the file's metadata, read it with `read_predictions_full`), and `friendly_loc` the
  friendly table (`<question>_proba_asked`, `<answer>_fraction` with `_lower` / `_upper` credible
  bounds; parquet, or CSV if the name ends in .csv).
- classifiers: `id_str`, `<class>_probability` (float32, the mean over passes) per class and, with
  `n_samples > 1`, `<class>_probability_passes` (a list of `n_samples` float32 per galaxy).
- regressors: `id_str`, `<label>_prediction` and, with `n_samples > 1`, `<label>_prediction_passes`.
- `<save_loc>.failed.csv`: `id_str`, `file_loc`, `error` of every image that could not be read (only
  a header when all were); those galaxies are skipped.

While running, finished chunks live in `<save_loc>.parts/` (see `zoobot.tf.streaming`); run the same
call again after an interruption and it carries on from them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import keras
import pandas as pd
import tensorflow as tf

from zoobot.data.streaming import (
    TABLE_FORMAT,
    PredictionFiles,
    StreamSettings,
    finish_predictions,
    output_names,
)
from zoobot.tf.streaming import bfloat16_copy, open_rows, run_chunks, run_precision

__all__ = ["TABLE_FORMAT", "PredictionFiles", "predict"]

TASKS = {
    "tree": "tree",
    "finetuneable_tree": "tree",
    "classifier": "classifier",
    "regressor": "regressor",
}


def _task(model: keras.Model) -> str:
    """'tree', 'classifier' or 'regressor': which table the model's predictions go in."""
    task = TASKS.get(getattr(type(model), "task", None))
    if task is None or not hasattr(model, "predict_samples"):
        raise ValueError(
            f"predict needs a Zoobot tree, classifier or regressor, not a {type(model).__qualname__}; "
            "for an encoder's features use get_representations"
        )
    return task


def _n_outputs(model: keras.Model, task: str) -> int:
    """How many values one pass of the model predicts per galaxy."""
    if task == "tree":
        return len(model.schema.label_cols)
    key = "num_classes" if task == "classifier" else "num_outputs"
    hparams = getattr(model, "hparams", None) or {}
    if key in hparams:
        return int(hparams[key])
    return int(model.head.output_shape[-1])


def _samples(model: keras.Model, n_samples: int, mc_dropout: bool, precision: str):
    """images -> (batch, output, n_samples): `model.predict_samples`, or its bf16 twin."""
    if precision == "32":
        return lambda images: model.predict_samples(images, n_samples, mc_dropout)
    encoder = bfloat16_copy(model.encoder)

    def samples(images: tf.Tensor) -> tf.Tensor:
        features = tf.cast(encoder(images, training=False), tf.float32)
        passes = [
            model.prediction(model.head(features, training=mc_dropout)) for _ in range(n_samples)
        ]
        return tf.cast(tf.stack(passes, axis=-1), tf.float32)

    return samples


def _load(model: keras.Model | str | os.PathLike) -> tuple[keras.Model, str]:
    """The model (loaded by `zoobot.tf.hub.load_from_name` if a name) and its name for the tables."""
    if isinstance(model, str | os.PathLike):
        from zoobot.tf.hub import load_from_name

        return load_from_name(model), os.fspath(model)
    return model, type(model).__name__


def predict(
    catalog: pd.DataFrame | str | os.PathLike,
    model: keras.Model | str | os.PathLike,
    save_loc: str | os.PathLike,
    n_samples: int = 1,
    *,
    label_cols: Sequence[str] | None = None,
    friendly_loc: str | os.PathLike | None = None,
    mc_dropout: bool | None = None,
    seed: int = 0,
    batch_size: int = 128,
    num_workers: int | None = None,
    image_size: int = 224,
    precision: str = "32",
    channels_last: bool | None = None,
    resume: bool = True,
    progress: bool = True,
    chunk_rows: int = 4096,
    device: str | None = None,
) -> PredictionFiles:
    """Predict every galaxy of `catalog` with `model` and write the tables above.

    `catalog` is a catalog (DataFrame or file with `id_str`, `file_loc`) or a folder of
    `zoobot-data` TFRecord shards. `model` is a Zoobot tree, classifier or regressor, or a name
    `zoobot.tf.hub.load_from_name` reads (a folder saved by either framework, or
    `hf_hub:owner/repo`). Images are decoded and resized to `image_size` as in training and given
    the deterministic evaluation transform. `n_samples` forward passes are made per galaxy, with the
    head's dropout on (Monte Carlo dropout) when `mc_dropout` (default: when `n_samples > 1`); each
    chunk's randomness is seeded from `seed`, so a resumed run gives the same numbers.
    `label_cols` names a classifier's classes or a regressor's outputs (default: the classifier's
    `class_names`, else `class_0`..., `output_0`...). `friendly_loc` defaults to
    `<save_loc stem>_friendly.parquet`.

    `num_workers` images are decoded at once (default: half the CPUs, 1 to 8); TensorFlow's own
    threads run the model (`tf.config.threading`). `precision="bf16"` runs the encoder under the
    `mixed_bfloat16` policy (a copy with the same weights) where the CPU computes bf16 natively
    (or on a GPU), else in float32 (`zoobot.tf.streaming.run_precision`). `channels_last` is
    accepted for the torch package's signature: Keras is always channels-last. `resume=False`
    discards parts of an earlier run; `chunk_rows` galaxies go in each part file. `device` is a
    TensorFlow device name (`"/CPU:0"`, `"/GPU:0"`; default: TensorFlow's placement).
    """
    settings = StreamSettings(
        batch_size,
        num_workers,
        image_size,
        precision,
        channels_last,
        chunk_rows,
        resume,
        progress,
        device,
    )
    settings = dataclasses.replace(settings, precision=run_precision(settings.precision, device))
    precision = settings.precision
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    source, table = open_rows(catalog)
    model, model_name = _load(model)
    task = _task(model)
    schema = model.schema if task == "tree" else None
    class_names = getattr(model, "class_names", None)
    names = output_names(task, _n_outputs(model, task), label_cols, schema, class_names)
    mc_dropout = n_samples > 1 if mc_dropout is None else bool(mc_dropout)
    run = {
        "task": task,
        "model": type(model).__qualname__,
        "n_samples": n_samples,
        "mc_dropout": mc_dropout,
    }
    parts = run_chunks(
        source,
        table,
        model,
        _samples(model, n_samples, mc_dropout, str(precision)),
        (len(names), n_samples),
        save_loc,
        settings,
        run,
        seed,
        key=("predict", n_samples, mc_dropout, str(precision)),
    )
    return finish_predictions(
        table, parts, save_loc, task, names, n_samples, model_name, schema, friendly_loc
    )
