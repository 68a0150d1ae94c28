"""Train with Keras `fit` set up for what users need: `train` (on votes), `fit`, `get_callbacks`, and
`fit_catalog` (any Zoobot model on a catalog or shards, what `train` and the command line use).

The TensorFlow twin of `zoobot.torch.training`. In `save_dir`: `checkpoints/` (`best.weights.h5`,
`last.weights.h5`, Keras weight files), `best/` (the best weights in the Hub layout, written when
fitting ends, loadable by `zoobot.tf.from_pretrained` and `zoobot.torch.from_pretrained`), `logs/`
(`metrics.csv`, one row per epoch) and `tensorboard/` (when the `tensorboard` package is
installed). Mixed precision is a Keras dtype policy chosen before the model is built. Several
devices train data-parallel: on TensorFlow with `tf.distribute.MirroredStrategy` (BatchNorm
statistics stay per replica, as Keras does), on JAX with `keras.distribution.DataParallel` (one
global batch sharded across the devices, so BatchNorm statistics are those of the whole batch).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np

from zoobot.data.images import ImageDecodeError
from zoobot.data.splits import Splits
from zoobot.models import fast_paths, training
from zoobot.models.backend import bind
from zoobot.models.layout import check_replaceable
from zoobot.models.preprocessing import Preprocessing, attach
from zoobot.models.tasks import label_rule, training_augmentation
from zoobot.models.training import NonFiniteLossError, nonfinite_loss_message
from zoobot.tf import runtime
from zoobot.tf.module import ZoobotModel
from zoobot.tf.runner import input_channels

if TYPE_CHECKING:
    from zoobot.tf.data.pipelines import BatchIds

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
    """Whether the backend sees a GPU."""
    return runtime.gpu_count() > 0


def resolve_precision(precision: str) -> str:
    """The Keras dtype policy for a precision name (Lightning's or Keras's).

    `mixed` is `mixed_float16` on GPU and `mixed_bfloat16` on CPU, as in zoobot.torch. On a CPU
    without native bf16 (or fp16: `zoobot.models.fast_paths.cpu_runs`) that policy becomes
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


def strategy_for(accelerator: str = "auto", devices: int | str = "auto"):
    """The `tf.distribute` strategy for Lightning-style `accelerator` and `devices`: several GPUs or
    (`accelerator="cpu"`) logical CPUs are mirrored, one device uses the default strategy."""
    import tensorflow as tf

    accelerator = _accelerator(accelerator)
    if accelerator == "cpu":
        tf.config.set_visible_devices([], "GPU")
    gpus = tf.config.list_physical_devices("GPU")
    if accelerator in ("gpu", "cuda") and not gpus:
        raise ValueError("accelerator gpu, but TensorFlow sees no GPU")
    if devices == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if devices == 1:
        return tf.distribute.get_strategy()
    if gpus:
        if devices > len(gpus):
            raise ValueError(f"devices={devices}, but TensorFlow sees {len(gpus)} GPU(s)")
        return tf.distribute.MirroredStrategy([f"/GPU:{i}" for i in range(devices)])
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * devices
    )
    return tf.distribute.MirroredStrategy([f"/CPU:{i}" for i in range(devices)])


def _accelerator(accelerator: str) -> str:
    accelerator = accelerator.lower()
    if accelerator not in ("auto", "cpu", "gpu", "cuda"):
        raise ValueError(f"unknown accelerator {accelerator!r}; use cpu, gpu or auto")
    return accelerator


def get_strategy(strategy="auto", devices: Sequence[str] | None = None):
    """A `tf.distribute` strategy: `auto` mirrors over several GPUs (else the default strategy),
    `mirrored` mirrors over `devices` (default: all GPUs, else the CPU), `default` uses one device.
    """
    import tensorflow as tf

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


def _jax_devices(kind: str, count: int) -> list:
    """`count` JAX devices of `kind`; CPUs are split into that many devices if JAX has not started
    yet (`jax_num_cpu_devices`, as TensorFlow's logical CPUs)."""
    import jax

    if kind == "cpu" and count > 1:
        with contextlib.suppress(RuntimeError):  # JAX has started: keep the devices it has
            jax.config.update("jax_num_cpu_devices", count)
    found = jax.devices(kind)
    if len(found) < count:
        hint = (
            " (JAX had started with fewer: run this first in the process, or set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={count})"
            if kind == "cpu"
            else ""
        )
        raise ValueError(f"devices={count}, but JAX sees {len(found)} {kind} device(s){hint}")
    return found[:count]


def keras_distribution(strategy=None, accelerator: str = "auto", devices: int | str = "auto"):
    """On JAX: the Keras distribution to fit under, or None for one device.

    `strategy` may be a `keras.distribution.DataParallel` or `ModelParallel` (used as it is), `auto` (every accelerator if there
    are several), `mirrored` (every device, or `devices` of them), `default` (one device) or None
    (from Lightning-style `accelerator` and `devices`, as `strategy_for`). Several devices give
    `keras.distribution.DataParallel`: each batch is sharded across them (its size must divide).
    """
    import jax

    if isinstance(strategy, keras.distribution.DataParallel | keras.distribution.ModelParallel):
        return strategy
    if strategy not in (None, "auto", "mirrored", "default", "single"):
        raise ValueError(
            f"unknown strategy {strategy!r}; use auto, mirrored, default or a Keras distribution"
        )
    accelerator = _accelerator(accelerator)
    if accelerator in ("gpu", "cuda") and jax.default_backend() == "cpu":
        raise ValueError("accelerator gpu, but JAX sees no GPU")
    kind = "cpu" if accelerator == "cpu" else jax.default_backend()
    if strategy in ("default", "single") or devices == 1:
        return None
    if devices == "auto":
        if strategy == "mirrored":
            found = jax.devices(kind)
        else:
            found = [] if kind == "cpu" else jax.devices(kind)
    else:
        found = _jax_devices(kind, int(devices))
    return keras.distribution.DataParallel(devices=found) if len(found) > 1 else None


def distribution_for(strategy=None, accelerator: str = "auto", devices: int | str = "auto"):
    """What `fit_catalog` trains under: a `tf.distribute` strategy on TensorFlow (`get_strategy`,
    else `strategy_for`), a Keras distribution or None on JAX (`keras_distribution`)."""
    if runtime.on_jax():
        return keras_distribution(strategy, accelerator, devices)
    return strategy_for(accelerator, devices) if strategy is None else get_strategy(strategy)


def _scope(distribution):
    return contextlib.nullcontext() if distribution is None else distribution.scope()


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
        if not _writes_files(self.model):
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
            self.model.save_pretrained(self.folder, card=card)
        finally:
            if current is not None:
                self.model.set_weights(current)


def _writes_files(model: keras.Model) -> bool:
    """Whether this process writes the run's files: the chief of a `tf.distribute` cluster, the
    first of JAX's processes."""
    if runtime.on_jax():
        import jax

        return jax.process_index() == 0
    return model.distribute_strategy.extended.should_checkpoint


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop fitting at the first batch whose loss is NaN or infinite (`NonFiniteLossError`), naming
    the step and, with the `BatchIds` its training dataset records, the batch's galaxies. Keras
    has applied that step's update, so the model's weights are no longer usable; raising keeps
    `ExportBest` and the checkpoints from saving them."""

    def __init__(self, batch_ids: BatchIds | None = None):
        super().__init__()
        self.batch_ids, self.epoch = batch_ids, 0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        ids = self.batch_ids.get(batch) if self.batch_ids is not None else None
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) - 1
        weights = "Keras applied that step, so the model's weights are not usable"
        message = nonfinite_loss_message(float(loss), step, self.epoch, batch, ids, weights)
        raise NonFiniteLossError(message)


def unusable_image(err: Exception) -> ImageDecodeError | None:
    """The `ImageDecodeError` a training pipeline stopped with (tf.data's `InvalidArgumentError`,
    on either Keras backend), or None: from the in-graph image checks (`UNUSABLE_IMAGE`) or from
    `read_image` run in the graph (`read_image_op`)."""
    from zoobot.tf.data.pipelines import UNUSABLE_IMAGE

    found = re.search(rf"\[{UNUSABLE_IMAGE}\] \[(.*?)\] \[(.*?)\]", str(err))
    if found is not None:
        return ImageDecodeError(f"{found[1]}: {found[2]}")
    found = re.search(r"ImageDecodeError: (.+)", str(err))
    return None if found is None else ImageDecodeError(found[1])


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
    to TensorBoard when its package is installed; True requires it. `callbacks` come first; a
    `StopOnNonFiniteLoss` is among them.
    """
    save_dir = Path(save_dir)
    (save_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (save_dir / "logs").mkdir(parents=True, exist_ok=True)
    have_tensorboard = importlib.util.find_spec("tensorboard") is not None
    if tensorboard and not have_tensorboard:
        raise ImportError("tensorboard=True needs the tensorboard package: pip install tensorboard")
    callbacks = list(callbacks or [])
    if not any(isinstance(c, StopOnNonFiniteLoss) for c in callbacks):
        callbacks.append(StopOnNonFiniteLoss())
    result = [
        *callbacks,
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
        with runtime.strategy_scope(model):
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
    label_cols: Sequence[str],
    image_size: int,
    channels: int,
    batch_size: int,
    seed: int,
    splits: Splits = None,
    num_workers: int | None = None,
    rule=None,
    batch_ids: BatchIds | None = None,
    augment: str = "full",
    normalisation: tuple = ((0.0,), (1.0,)),
) -> tuple:
    """(train, validation) datasets of (images, labels) from what `fit_catalog` accepts; sources
    it opens have their labels checked by `rule`, their training batches augmented by `augment`
    and recorded in `batch_ids`."""
    if runtime.is_tf_dataset(data):
        return data, None
    if isinstance(data, tuple) and len(data) == 2:
        return data
    from zoobot.tf import data as pipelines  # imported only when sources are given

    common = {
        "image_size": image_size,
        "channels": channels,
        "batch_size": batch_size,
        "splits": splits,
        "split_seed": seed,
        "label_rule": rule,
        "mean": normalisation[0],
        "std": normalisation[1],
    }
    if num_workers is not None:
        common["num_parallel_calls"] = max(1, num_workers)

    def train_split(source, split):
        return pipelines.train_dataset(
            source,
            label_cols,
            augment=augment,
            seed=seed,
            split=split,
            batch_ids=batch_ids,
            **common,
        )

    def eval_split(source, split):
        return pipelines.eval_dataset(
            source, label_cols=label_cols, split=split, as_tuples=True, **common
        )

    if isinstance(data, Mapping):
        missing = [s for s in ("train", "validation") if s not in data]
        if missing:
            raise ValueError(f"data needs splits {missing}; it has {list(data)}")
        train, validation = data["train"], data["validation"]
        if not runtime.is_tf_dataset(train):
            train = train_split(train, None)
        if not runtime.is_tf_dataset(validation):
            validation = eval_split(validation, None)
        return train, validation
    return train_split(data, "train"), eval_split(data, "validation")


def fit_catalog(
    build: Callable[[], ZoobotModel],
    data,
    label_cols: Sequence[str],
    save_dir: str | os.PathLike,
    *,
    epochs: int = 100,
    batch_size: int = 128,
    image_size: int = 224,
    precision: str = "32",
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy=None,
    num_workers: int | None = None,
    patience: int = 8,
    seed: int = 42,
    progress: bool = True,
    splits: Splits = None,
    gradient_clip_val: float | None = 1.0,
    augment: str | None = None,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    **fit_kwargs,
) -> ZoobotModel:
    """Seed everything, build the model with `build()` under the precision policy and distribution
    strategy, fit it on `data` and return it holding the best validation weights (also in
    `save_dir/best/`, Hub layout).

    `data` is a catalog (DataFrame or file) or a shard folder, split into train / validation by
    `zoobot.data`'s rule (`splits`, `seed`); a mapping with `train` and `validation` entries
    (catalogs, shard folders or `tf.data.Dataset`s of (images, labels)); a `(train, validation)`
    pair of datasets; or one dataset (no validation: the training loss is monitored). `precision`
    is `32`, `mixed` (bf16 on CPU, fp16 on GPU), `bf16-mixed`/`mixed_bfloat16` or
    `16-mixed`/`mixed_float16`; `strategy` as `distribution_for` (on TensorFlow a
    `tf.distribute.Strategy`, on JAX a `keras.distribution.DataParallel`, or their names), else
    from `accelerator` and `devices`. `num_workers` images are decoded at once (default: tf.data's
    choice). `augment` names the training augmentation of sources it opens
    (`zoobot.models.tasks.training_augmentation`: by default "dihedral" for trees) and normalises
    as `(x - mean) / std`; the model records its `image_size`, channels and normalisation
    (`zoobot.models.preprocessing`) so `predict` shows it the same. Other keyword
    arguments go to `fit` (e.g. `tensorboard`, `callbacks`, `steps_per_epoch`). Labels are checked
    first by the rule of the model's task (`zoobot.models.tasks.label_rule`: vote counts, class
    indices or targets), naming the column and rows; an unusable training image stops the fit with
    `ImageDecodeError` naming it, a non-finite loss with `NonFiniteLossError` naming the step and
    its galaxies.
    """
    import tensorflow as tf  # tf.data reads the data on either Keras backend

    from zoobot.tf.data.pipelines import BatchIds

    check_replaceable(Path(save_dir) / BEST_FOLDER)  # ExportBest writes there: refuse now, not then
    if num_workers is not None and num_workers < 0:
        raise ValueError(
            f"num_workers must be 0 or more (None: tf.data's choice), got num_workers={num_workers}"
        )
    distribution = distribution_for(strategy, accelerator, devices)
    keras.utils.set_random_seed(seed)
    with dtype_policy(precision), _scope(distribution):
        model = build()
        model.compile(gradient_clip_val=gradient_clip_val)
    rule = label_rule(model, label_cols)
    augment = training_augmentation(model, augment)
    channels = input_channels(model)
    attach(model, Preprocessing(image_size, channels, tuple(mean), tuple(std)))
    batch_ids = BatchIds()
    train_data, validation_data = _datasets(
        data,
        label_cols,
        image_size,
        channels,
        batch_size,
        seed,
        splits,
        num_workers,
        rule,
        batch_ids,
        augment,
        (mean, std),
    )
    fit_kwargs.setdefault("verbose", 1 if progress else 2)
    callbacks = [StopOnNonFiniteLoss(batch_ids), *(fit_kwargs.pop("callbacks", None) or [])]
    # A Keras distribution (JAX) shards the data at fit time; a tf.distribute strategy is the model's.
    try:
        with _scope(distribution) if runtime.on_jax() else contextlib.nullcontext():
            fit(
                model,
                train_data,
                validation_data,
                save_dir=save_dir,
                epochs=epochs,
                patience=patience,
                callbacks=callbacks,
                **fit_kwargs,
            )
    except tf.errors.InvalidArgumentError as err:
        image = unusable_image(err)
        if image is None:
            raise
        raise image from err
    return model


train = bind(training.train, "zoobot.tf.backend")
