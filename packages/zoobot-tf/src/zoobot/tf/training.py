"""Train on votes with Keras `fit` set up for what users need: `train`, `fit` and `get_callbacks`.

The TensorFlow twin of `zoobot.torch.training`. In `save_dir`: `checkpoints/` (`best.weights.h5`,
`last.weights.h5`, Keras weight files), `best/` (the best weights in the Hub layout, written when
fitting ends, loadable by `zoobot.tf.load_from_name` and `zoobot.torch.load_from_name`), `logs/`
(`metrics.csv`, one row per epoch) and `tensorboard/` (when the `tensorboard` package is
installed). Mixed precision is a Keras dtype policy chosen before the model is built;
several GPUs train with `tf.distribute.MirroredStrategy` (BatchNorm statistics stay per replica,
as Keras does).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from zoobot.data import fast_paths
from zoobot.shared import Schema
from zoobot.tf.hub import save_pretrained
from zoobot.tf.module import ZoobotModel
from zoobot.tf.tree import ZoobotTree, as_schema

logger = logging.getLogger(__name__)

BEST_FOLDER = "best"
PRECISIONS = {
    "32": "float32",
    "32-true": "float32",
    "float32": "float32",
    "16-mixed": "mixed_float16",
    "mixed_float16": "mixed_float16",
    "bf16-mixed": "mixed_bfloat16",
    "mixed_bfloat16": "mixed_bfloat16",
}


def uses_gpu() -> bool:
    """Whether TensorFlow sees a GPU."""
    return bool(tf.config.list_physical_devices("GPU"))


def resolve_precision(precision: str) -> str:
    """The Keras dtype policy for a precision name (Lightning's or Keras's).

    `mixed` is `mixed_float16` on GPU and `mixed_bfloat16` on CPU, as in zoobot.torch. On a CPU
    without native bf16 (or fp16: `zoobot.data.fast_paths.cpu_runs`) that policy becomes
    `float32`, faster there (with oneDNN held to AVX2 TensorFlow refuses such convolutions).
    """
    precision = str(precision)
    if precision == "mixed":
        precision = "mixed_float16" if uses_gpu() else "mixed_bfloat16"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {['mixed', *PRECISIONS]}")
    policy = PRECISIONS[precision]
    reduced = {"mixed_bfloat16": "bf16", "mixed_float16": "fp16"}.get(policy)
    if reduced and not uses_gpu() and not fast_paths.cpu_runs(reduced):
        return "float32"
    return policy


@contextlib.contextmanager
def dtype_policy(precision: str) -> Iterator[str]:
    """Set the global Keras dtype policy for `precision` while models are built, then restore it.

    Layers keep the policy they were built under, so build the model inside this block. The head
    and the loss of Zoobot models run in float32 under any policy; under `mixed_float16`, `compile`
    wraps the optimizer in a `LossScaleOptimizer`.
    """
    previous = keras.config.dtype_policy()
    policy = resolve_precision(precision)
    keras.config.set_dtype_policy(policy)
    try:
        yield policy
    finally:
        keras.config.set_dtype_policy(previous)


def get_strategy(
    strategy: str | tf.distribute.Strategy = "auto", devices: Sequence[str] | None = None
) -> tf.distribute.Strategy:
    """A `tf.distribute` strategy: `auto` mirrors over several GPUs (else the default strategy),
    `mirrored` mirrors over `devices` (default: all GPUs, else the CPU), `default` uses one device.
    """
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    if strategy == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if strategy == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    if strategy in ("default", "single"):
        return tf.distribute.get_strategy()
    raise ValueError(f"unknown strategy {strategy!r}; use auto, mirrored, default or a Strategy")


class ExportBest(keras.callbacks.Callback):
    """When fitting ends, write the best epoch's weights to `folder` in the Hub layout (chief only).

    The best epoch is the one with the lowest (`mode="min"`) or highest `monitor` value; its weights
    are kept in memory. The model keeps the weights it ends with (`best_weights` holds the best);
    if `monitor` was never logged, the final weights are written.
    """

    def __init__(self, folder: str | os.PathLike, monitor: str = "val_loss", mode: str = "min"):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.folder, self.monitor, self.mode = Path(folder), monitor, mode
        self.best: float | None = None
        self.best_weights: list[np.ndarray] | None = None

    def on_train_begin(self, logs=None) -> None:
        self.best, self.best_weights = None, None

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        better = self.best is None or (
            value < self.best if self.mode == "min" else value > self.best
        )
        if better:
            self.best, self.best_weights = value, self.model.get_weights()

    def on_train_end(self, logs=None) -> None:
        strategy = self.model.distribute_strategy
        if not strategy.extended.should_checkpoint:
            return
        card = {}
        current = None
        if self.best_weights is not None:
            current = self.model.get_weights()
            self.model.set_weights(self.best_weights)
            card["metrics"] = {self.monitor: self.best}
        else:
            logger.warning("%s was never logged: exporting the final weights", self.monitor)
        try:
            save_pretrained(self.model, self.folder, card=card)
        finally:
            if current is not None:
                self.model.set_weights(current)


class LearningRateLogger(keras.callbacks.Callback):
    """Add the optimizer's current learning rate to each epoch's logs (`learning_rate`)."""

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if logs is not None and getattr(self.model, "optimizer", None) is not None:
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )


def get_callbacks(
    save_dir: str | os.PathLike,
    patience: int = 8,
    monitor: str = "val_loss",
    export_best: bool = True,
    tensorboard: bool | None = None,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
) -> list[keras.callbacks.Callback]:
    """Callbacks that keep the best weights by `monitor`, stop early and log to CSV/TensorBoard.

    In `save_dir`: `checkpoints/best.weights.h5` and `last.weights.h5`, `best/` (Hub layout, when
    fitting ends, if `export_best`), `logs/metrics.csv` and `tensorboard/`. `tensorboard=None` logs
    to TensorBoard when its package is installed; True requires it. `callbacks` come first.
    """
    save_dir = Path(save_dir)
    (save_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (save_dir / "logs").mkdir(parents=True, exist_ok=True)
    have_tensorboard = importlib.util.find_spec("tensorboard") is not None
    if tensorboard and not have_tensorboard:
        raise ImportError("tensorboard=True needs the tensorboard package: pip install tensorboard")
    result = [
        *(callbacks or []),
        LearningRateLogger(),
        keras.callbacks.ModelCheckpoint(
            str(save_dir / "checkpoints" / "best.weights.h5"),
            monitor=monitor,
            mode="min",
            save_best_only=True,
            save_weights_only=True,
        ),
        keras.callbacks.ModelCheckpoint(
            str(save_dir / "checkpoints" / "last.weights.h5"), save_weights_only=True
        ),
        keras.callbacks.EarlyStopping(monitor, patience=patience, mode="min"),
        keras.callbacks.CSVLogger(str(save_dir / "logs" / "metrics.csv")),
    ]
    if tensorboard or (tensorboard is None and have_tensorboard):
        result.append(keras.callbacks.TensorBoard(str(save_dir / "tensorboard")))
    if export_best:
        result.append(ExportBest(save_dir / BEST_FOLDER, monitor=monitor, mode="min"))
    return result


def fit(
    model: ZoobotModel,
    train_data,
    validation_data=None,
    save_dir: str | os.PathLike = "zoobot-run",
    epochs: int = 100,
    patience: int = 8,
    monitor: str | None = None,
    gradient_clip_val: float | None = 1.0,
    export_best: bool = True,
    tensorboard: bool | None = None,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    restore_best: bool = True,
    **fit_kwargs,
) -> keras.callbacks.History:
    """`model.fit` with the callbacks of `get_callbacks`, leaving the best weights in the model.

    Compiles the model (its default optimizer, gradients clipped to global norm
    `gradient_clip_val`) unless it is compiled already. `monitor` defaults to `val_loss` with
    validation data, else `loss`. Other keyword arguments go to `model.fit`.
    """
    if monitor is None:
        monitor = "val_loss" if validation_data is not None else "loss"
    if not model.compiled:
        with model.distribute_strategy.scope():
            model.compile(gradient_clip_val=gradient_clip_val)
    chosen = get_callbacks(save_dir, patience, monitor, export_best, tensorboard, callbacks)
    history = model.fit(
        train_data,
        validation_data=validation_data,
        epochs=epochs,
        callbacks=chosen,
        **fit_kwargs,
    )
    exporter = next((c for c in chosen if isinstance(c, ExportBest)), None)
    if restore_best and exporter is not None and exporter.best_weights is not None:
        model.set_weights(exporter.best_weights)
    return history


def _datasets(
    data,
    schema: Schema,
    image_size: int,
    channels: int,
    batch_size: int,
    seed: int,
) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
    """(train, validation) datasets of (images, vote counts) from what `train` accepts."""
    if isinstance(data, tf.data.Dataset):
        return data, None
    if isinstance(data, tuple) and len(data) == 2:
        return data
    from zoobot.tf import data as pipelines  # imported only when sources are given

    def train_split(source, split):
        return pipelines.train_dataset(
            source,
            schema.label_cols,
            image_size=image_size,
            channels=channels,
            batch_size=batch_size,
            seed=seed,
            split=split,
            split_seed=seed,
        )

    def eval_split(source, split):
        return pipelines.eval_dataset(
            source,
            image_size=image_size,
            channels=channels,
            batch_size=batch_size,
            label_cols=schema.label_cols,
            split=split,
            split_seed=seed,
            as_tuples=True,
        )

    if isinstance(data, Mapping):
        missing = [s for s in ("train", "validation") if s not in data]
        if missing:
            raise ValueError(f"data needs splits {missing}; it has {list(data)}")
        train, validation = data["train"], data["validation"]
        if not isinstance(train, tf.data.Dataset):
            train = train_split(train, None)
        if not isinstance(validation, tf.data.Dataset):
            validation = eval_split(validation, None)
        return train, validation
    return train_split(data, "train"), eval_split(data, "validation")


def train(
    data,
    schema: Schema | str | Mapping,
    save_dir: str | os.PathLike,
    architecture: str = "convnext_nano",
    epochs: int = 100,
    batch_size: int = 128,
    image_size: int = 224,
    channels: int = 3,
    precision: str = "32",
    strategy: str | tf.distribute.Strategy = "auto",
    patience: int = 8,
    seed: int = 42,
    gradient_clip_val: float | None = 1.0,
    model_kwargs: Mapping | None = None,
    **fit_kwargs,
) -> ZoobotTree:
    """Pretrain a `ZoobotTree` on vote counts and return it holding the best validation weights.

    `data` is a catalog (DataFrame or file) or a shard folder, split into train / validation by
    `zoobot.data`'s rule with `seed` (`zoobot.tf.data`); a mapping with `train` and `validation`
    entries (catalogs, shard folders or `tf.data.Dataset`s of (images, counts)); a `(train,
    validation)` pair of datasets; or one dataset (no validation: the training loss is monitored).
    `model_kwargs` go to `ZoobotTree` (learning rate, dropout, ...). `precision` is `32`,
    `mixed` (bf16 on CPU, fp16 on GPU), `bf16-mixed`/`mixed_bfloat16` or `16-mixed`/`mixed_float16`;
    `strategy` as `get_strategy` (`mirrored` for several devices). Other keyword arguments go to
    `fit` (e.g. `tensorboard`, `callbacks`, `verbose`, `steps_per_epoch`).
    """
    schema = as_schema(schema)
    keras.utils.set_random_seed(seed)
    train_data, validation_data = _datasets(data, schema, image_size, channels, batch_size, seed)
    distribution = get_strategy(strategy)
    with dtype_policy(precision), distribution.scope():
        model = ZoobotTree(schema, architecture, channels=channels, **dict(model_kwargs or {}))
        model.compile(gradient_clip_val=gradient_clip_val)
    fit(
        model,
        train_data,
        validation_data,
        save_dir=save_dir,
        epochs=epochs,
        patience=patience,
        **fit_kwargs,
    )
    return model
