"""The Keras model every Zoobot model shares: encoder + head, partial freezing, schedule, MC passes.

The TensorFlow twin of `zoobot.torch.module.ZoobotModule`, as a `keras.Model` trained with `fit`.
`compile()` with no optimizer builds the one `zoobot.torch` configures: AdamW (PyTorch's update)
with the head at `learning_rate` and trained encoder block `i` at `learning_rate * lr_decay**i`
(`zoobot.tf.optimizers.LayerwiseAdamW`: Keras 3 has no parameter groups, so the optimizer scales the
learning rate per variable), warmed up linearly for `warmup_epochs` + `warmup_steps` steps, then a
cosine to 0 over the rest of training, whose length `fit` reads from `epochs` and the steps per
epoch. `fit` compiles first when the model is not compiled.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import keras
from keras import ops

from zoobot.models.pretrained import PretrainedMixin
from zoobot.models.settings import FINETUNING, TrainingSettings
from zoobot.models.tasks import HeadSpec, log_concentration_scale
from zoobot.tf.backend import BACKEND
from zoobot.tf.blocks import LayerBlocks, encoder_blocks, freeze_blocks, lr_multipliers
from zoobot.tf.optimizers import WarmupCosine, layerwise_adamw
from zoobot.tf.runtime import is_tf_dataset, on_jax, replicas, stateless_step, strategy_scope

logger = logging.getLogger(__name__)


def torch_linear_initializers(in_features: int) -> dict:
    """Kernel and bias initialisers drawing from torch.nn.Linear's U(-1/sqrt(in), 1/sqrt(in))."""
    bound = 1 / math.sqrt(in_features)
    return {
        "kernel_initializer": keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform"),
        "bias_initializer": keras.initializers.RandomUniform(-bound, bound),
    }


@keras.saving.register_keras_serializable(package="zoobot")
class ScaledSigmoid(keras.layers.Layer):
    """1 + 100 sigmoid(x): Dirichlet concentrations in (1, 101), never too peaked nor too flat."""

    def call(self, x):
        return 1 + 100 * keras.ops.sigmoid(x)


@keras.saving.register_keras_serializable(package="zoobot")
class LogScaledSigmoid(keras.layers.Layer):
    """Concentrations in (low, high), spread evenly in log: low (high / low)^sigmoid(x).

    A range reaching below 1 lets a rare answer's concentration be small while its question's total
    stays low, as split votes need (zoobot.models.tasks.DEFAULT_CONCENTRATION).
    """

    def __init__(self, low: float, high: float, **kwargs):
        super().__init__(**kwargs)
        self.low, self.high = float(low), float(high)
        self.log_low, self.log_span = log_concentration_scale((low, high))

    def call(self, x):
        return keras.ops.exp(self.log_low + self.log_span * keras.ops.sigmoid(x))

    def get_config(self) -> dict:
        return {**super().get_config(), "low": self.low, "high": self.high}


def build_head(spec: HeadSpec, in_features: int) -> keras.Sequential:
    """Dropout, a dense layer (torch `Linear` init) and the activation `spec` names
    (`zoobot.models.tasks`), in float32 whatever the policy.

    Layer `i` of the Sequential is module `i` of zoobot.torch's `nn.Sequential` head, so the dense
    layer's weights are `1.weight` (out, in) and `1.bias` in `head.safetensors`.
    """
    layers = [
        keras.layers.Dropout(spec.dropout, dtype="float32", name="dropout"),
        keras.layers.Dense(
            spec.outputs, dtype="float32", name="linear", **torch_linear_initializers(in_features)
        ),
    ]
    if spec.activation == "sigmoid":
        layers.append(keras.layers.Activation("sigmoid", dtype="float32", name="sigmoid"))
    elif spec.activation == "concentration" and spec.concentration is None:
        layers.append(ScaledSigmoid(dtype="float32", name="scaled_sigmoid"))
    elif spec.activation == "concentration":
        low, high = spec.concentration
        layers.append(LogScaledSigmoid(low, high, dtype="float32", name="log_scaled_sigmoid"))
    head = keras.Sequential(layers, name="head")
    head.build((None, in_features))
    return head


def scale_for_replicas(loss):
    """A per-replica batch mean as Keras wants it: summed over replicas it gives the global mean
    (`tf.distribute`; on JAX one replica sees the global batch)."""
    n = replicas()
    return loss / n if n > 1 else loss


@dataclass(frozen=True)
class BlockSplit:
    """The encoder's blocks (head side first) split into trained and frozen (not Keras-tracked)."""

    trained: tuple[tuple[keras.layers.Layer, ...], ...]
    frozen: tuple[tuple[keras.layers.Layer, ...], ...]


def _steps_per_epoch(x, batch_size, steps_per_epoch, validation_split) -> int | None:
    if steps_per_epoch:
        return int(steps_per_epoch)
    if is_tf_dataset(x):
        cardinality = int(x.cardinality())
        return cardinality if cardinality > 0 else None
    if isinstance(x, keras.utils.PyDataset):
        try:
            return len(x)
        except (TypeError, NotImplementedError):
            return None
    first = x
    while isinstance(first, dict | list | tuple) and first:
        first = next(iter(first.values())) if isinstance(first, dict) else first[0]
    if hasattr(first, "shape") and len(first.shape):
        n = int(first.shape[0] * (1 - (validation_split or 0.0)))
        return math.ceil(n / (batch_size or 32))
    return None


class ZoobotModel(PretrainedMixin, keras.Model):
    """An encoder and a head, training the head and the last `n_blocks` encoder blocks.

    `settings` (`zoobot.models.settings.TrainingSettings`) choose what trains and how: block `i`
    (0 nearest the head, see `zoobot.tf.blocks`) learns at `learning_rate * lr_decay**i`, the head
    at `learning_rate`. Frozen blocks are non-trainable Keras layers: no gradients, and their
    BatchNorm layers run in inference mode, so their statistics never move. Dropout or stochastic
    depth inside frozen blocks still follows `training` (0 in the published encoders). `task_args`
    are the task's own arguments, saved with the settings as the task config. `predict` makes
    `n_samples` passes per batch with the head's dropout on if `mc_dropout` (attributes: set them
    before `predict`); `predict_samples` does the same on one batch. Models save, reload and
    publish themselves (`save_pretrained`, `from_pretrained`, `push_to_hub`). Do not set
    `model.trainable = True` afterwards: Keras would unfreeze every block.
    """

    task: ClassVar[str]
    backend = BACKEND
    default_settings: ClassVar[TrainingSettings] = FINETUNING

    def __init__(
        self,
        encoder: keras.Model,
        head: keras.Model,
        settings: TrainingSettings,
        task_args: dict,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder, self.head = encoder, head
        self.settings, self.task_args = settings, dict(task_args)
        self.n_samples, self.mc_dropout = 1, False
        trained, frozen = freeze_blocks(encoder_blocks(encoder), settings.n_blocks)
        self.blocks = BlockSplit(tuple(tuple(b) for b in trained), tuple(tuple(b) for b in frozen))

    # -- the task protocol -----------------------------------------------------------------------
    @classmethod
    def settings_and_rest(cls, kwargs: dict) -> tuple[TrainingSettings, dict]:
        """(the `TrainingSettings` of keyword arguments, defaults `default_settings`; the rest, for
        `keras.Model`), for `zoobot.models.tasks.TaskModel`."""
        settings, rest = TrainingSettings.split(kwargs)
        return cls.default_settings.replace(**settings), rest

    @staticmethod
    def build_head(spec: HeadSpec, in_features: int) -> keras.Sequential:
        return build_head(spec, in_features)

    def task_config(self) -> dict:
        """The arguments that rebuild this model around an encoder (`zoobot.models.tasks`)."""
        return {**self.task_args, **self.settings.as_dict()}

    @classmethod
    def from_task_config(cls, config: dict, encoder: keras.Model) -> ZoobotModel:
        """The model `task_config()` describes, around `encoder`, with a fresh head."""
        return cls(encoder=encoder, **config)

    # -- forward ---------------------------------------------------------------------------------
    def call(self, images, training=None):
        """Head output for a batch of images (concentrations, logits or values)."""
        return self.head(self.encoder(images, training=training), training=training)

    @property
    def trained_blocks(self) -> LayerBlocks:
        return [list(b) for b in self.blocks.trained]

    @property
    def frozen_blocks(self) -> LayerBlocks:
        return [list(b) for b in self.blocks.frozen]

    # -- optimisation ----------------------------------------------------------------------------
    def lr_multipliers(self) -> dict[int, float]:
        """`id(variable) -> factor` of the learning rate: 1 for the head, `lr_decay**i` for block i."""
        factors = lr_multipliers(self.trained_blocks, self.settings.lr_decay)
        for variable in self.head.weights:
            factors[id(variable)] = 1.0
        return factors

    def param_groups(self) -> list[dict]:
        """Like zoobot.torch: the head at `learning_rate`, then each trained block, decaying."""
        rate, decay = self.settings.learning_rate, self.settings.lr_decay
        groups = [{"params": list(self.head.trainable_weights), "lr": rate}]
        for i, block in enumerate(self.blocks.trained):
            params = [v for layer in block for v in layer.trainable_weights]
            groups.append({"params": params, "lr": rate * decay**i})
        return [g for g in groups if g["params"]]

    def default_optimizer(
        self, gradient_clip_val: float | None = None
    ) -> keras.optimizers.Optimizer:
        """AdamW over the layer-wise learning rates, with the warmup + cosine schedule
        (`zoobot.tf.optimizers.layerwise_adamw`: Keras's AdamW where its internals changed)."""
        factors = self.lr_multipliers()

        def multiplier(variable) -> float:
            if id(variable) not in factors:
                raise ValueError(f"{variable.path} is trainable but in no block nor the head")
            return factors[id(variable)]

        settings = self.settings
        schedule = WarmupCosine(
            settings.learning_rate, settings.warmup_steps, None, settings.cosine
        )
        return layerwise_adamw(schedule, settings.weight_decay, multiplier, gradient_clip_val)

    def compile(
        self,
        optimizer=None,
        *,
        gradient_clip_val: float | None = None,
        jit_compile: bool | None = None,
        **kwargs,
    ) -> None:
        """Compile for `fit`; without `optimizer`, the layer-wise AdamW of `default_optimizer`.

        The loss is the model's own (`compute_loss`); `loss=` is refused. `gradient_clip_val` clips
        the global gradient norm (Lightning's argument name). `jit_compile=None` compiles with XLA
        on JAX (where Keras otherwise runs every step eagerly, op by op) and not on TensorFlow (a
        `tf.function` graph, as fast there for these models and quicker to trace).
        """
        if kwargs.get("loss") is not None:
            raise ValueError(f"{type(self).__name__} computes its own loss; do not pass loss=")
        kwargs.pop("loss", None)
        if optimizer is None:
            optimizer = self.default_optimizer(gradient_clip_val)
        elif gradient_clip_val is not None:
            raise ValueError("gradient_clip_val applies to the default optimizer only")
        if jit_compile is None:
            jit_compile = on_jax()
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)

    def _base_optimizer(self):
        optimizer = self.optimizer
        return getattr(optimizer, "inner_optimizer", optimizer)

    def configure_schedule(self, steps_per_epoch: int | None, epochs: int) -> None:
        """Set the warmup length and the cosine's total steps (as Lightning does at fit start)."""
        optimizer = self._base_optimizer()
        schedule = getattr(optimizer, "warmup_schedule", None)
        if not isinstance(schedule, WarmupCosine):
            return
        settings = self.settings
        if steps_per_epoch is None:
            if settings.warmup_epochs:
                logger.warning("epoch length unknown: warmup_epochs ignored (pass steps_per_epoch)")
            if settings.cosine:
                logger.warning("epoch length unknown: the learning rate stays flat after warmup")
            warmup, total = settings.warmup_steps, None
        else:
            warmup = settings.warmup_steps + round(settings.warmup_epochs * steps_per_epoch)
            total = epochs * steps_per_epoch
        if (schedule.warmup_steps, schedule.total_steps) != (warmup, total):
            schedule.warmup_steps, schedule.total_steps = warmup, total
            self.train_function = None  # retrace: the schedule's constants are baked into the graph

    def fit(self, x=None, y=None, batch_size=None, epochs=1, **kwargs):
        """`keras.Model.fit`, compiling first if needed and sizing the schedule to the run."""
        if not self.compiled:
            self.compile()
        steps = _steps_per_epoch(
            x, batch_size, kwargs.get("steps_per_epoch"), kwargs.get("validation_split")
        )
        self.configure_schedule(steps, epochs)
        if not self.optimizer.built:
            # Built here rather than inside the first trace, which would then run twice.
            with strategy_scope(self):
                self.optimizer.build(self.trainable_variables)
        if is_tf_dataset(x):
            kwargs.setdefault("shuffle", False)  # a dataset shuffles itself; Keras would warn
        return super().fit(x, y, batch_size=batch_size, epochs=epochs, **kwargs)

    def evaluate(self, *args, **kwargs):
        if not self.compiled:
            self.compile()
        return super().evaluate(*args, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The task loss of the batch (per-replica mean, scaled for `tf.distribute`) + extra losses."""
        if sample_weight is not None:
            raise ValueError(f"{type(self).__name__} takes no sample weights")
        loss = scale_for_replicas(self.task_loss(y, y_pred))
        for extra in self.losses:  # add_loss and regulariser terms, summed as Keras does
            loss = loss + ops.sum(ops.cast(extra, loss.dtype))
        return loss

    def task_loss(self, labels, output):
        """The batch-mean loss of the head output against the labels (subclasses define it)."""
        raise NotImplementedError

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Update the task's metrics, then any given to `compile(metrics=...)`."""
        self.update_task_metrics(y, y_pred)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def update_task_metrics(self, labels, output) -> None:
        """Update the task's metrics with a batch (subclasses define them)."""

    # -- prediction ------------------------------------------------------------------------------
    def prediction(self, output):
        """What one pass predicts from the head output (probabilities for a classifier)."""
        return output

    def predict_samples(self, images, n_samples: int = 1, mc_dropout: bool = False):
        """(batch, output, n_samples) predictions; with `mc_dropout` each pass draws new dropout."""
        features = self.encoder(images, training=False)
        passes = [
            self.prediction(self.head(features, training=bool(mc_dropout)))
            for _ in range(n_samples)
        ]
        return ops.stack(passes, axis=-1)

    def predict_step(self, *args):
        """`predict_samples` of the batch's images with the `n_samples` and `mc_dropout` set. Keras
        on JAX passes the variables' values first and takes the assigned ones back (dropout seeds)."""
        if on_jax():
            state, data = args
            return stateless_step(self, state, lambda: self._predict_batch(data))
        (data,) = args
        return self._predict_batch(data)

    def _predict_batch(self, data):
        images, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(images, dict):
            images = images["image"] if "image" in images else images["images"]
        return self.predict_samples(images, self.n_samples, self.mc_dropout)
