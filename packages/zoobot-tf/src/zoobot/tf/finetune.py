"""Finetune a pretrained encoder for a new task: classes, continuous targets, or a new decision tree.

Each model takes `name=` (anything `load_encoder` reads: `hf_hub:owner/repo`, a folder in the Hub
layout, an architecture) or `encoder=`, and trains the head plus the last `n_blocks` encoder blocks
with layer-wise learning-rate decay `lr_decay`: the training settings of
`zoobot.models.settings.TrainingSettings`, as keyword arguments (defaults `FINETUNING`: a linear
probe, `n_blocks=0`). Train them with `model.fit(train_dataset, validation_data=..., epochs=...)`
(or `zoobot.tf.training.fit` for the callbacks of `get_callbacks`); batches are (images, labels).
Arguments, defaults, task names and saved task configs are those of `zoobot.torch.finetune`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from zoobot.models.tasks import ClassifierTask, FinetuneableTreeTask, RegressorTask
from zoobot.tf.backend import BACKEND
from zoobot.tf.module import ZoobotModel
from zoobot.tf.tree import ZoobotTree

__all__ = [
    "FinetuneableZoobotClassifier",
    "FinetuneableZoobotRegressor",
    "FinetuneableZoobotTree",
    "cross_entropy",
]


def cross_entropy(
    logits,
    target,
    class_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
):
    """`torch.nn.functional.cross_entropy` (mean reduction), weights and label smoothing included.

    With per-class weights `w`, the mean divides by the summed weights of the targets; label
    smoothing mixes in `-sum_c w_c log p_c / C` per galaxy, divided by the same sum.
    """
    logits = ops.cast(logits, "float32")
    log_p = ops.log_softmax(logits, axis=1)
    n_classes = logits.shape[1]
    target = ops.cast(ops.reshape(target, (-1,)), "int32")
    if class_weights is None:
        weights = ops.ones((n_classes,), "float32")
    else:
        weights = ops.convert_to_tensor(list(class_weights), "float32")
    target_weight = ops.take(weights, target)
    nll = -ops.take_along_axis(log_p, target[:, None], axis=1)[:, 0] * target_weight
    denominator = ops.sum(target_weight)
    loss = ops.sum(nll) / denominator
    if label_smoothing:
        smooth = -ops.sum(log_p * weights, axis=1)
        smooth_loss = ops.sum(smooth) / denominator
        loss = (1 - label_smoothing) * loss + label_smoothing * smooth_loss / n_classes
    return loss


@BACKEND.tasks.register
class FinetuneableZoobotClassifier(ClassifierTask, ZoobotModel):
    """`zoobot.models.tasks.ClassifierTask` with Keras: PyTorch's cross-entropy arithmetic, accuracy."""

    def setup_task(self) -> None:
        weights = self.task_args["class_weights"]
        self.class_weights = None if weights is None else tuple(weights)
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def task_loss(self, labels, output):
        """Cross-entropy of the logits against the class index labels (one label column)."""
        return cross_entropy(output, labels, self.class_weights, self.label_smoothing)

    def update_task_metrics(self, labels, output) -> None:
        target = ops.reshape(ops.cast(labels, "int32"), (-1,))
        self.accuracy.update_state(target, self.prediction(output))

    def prediction(self, output):
        return ops.softmax(ops.cast(output, "float32"), axis=1)


@BACKEND.tasks.register
class FinetuneableZoobotRegressor(RegressorTask, ZoobotModel):
    """`zoobot.models.tasks.RegressorTask` with Keras: the error and MAE / MSE metrics."""

    def setup_task(self) -> None:
        self.mae = keras.metrics.MeanAbsoluteError(name="mae")
        self.mse = keras.metrics.MeanSquaredError(name="mse")

    def _target(self, labels, output):
        return ops.reshape(ops.cast(labels, "float32"), ops.shape(output))

    def task_loss(self, labels, output):
        """The chosen error of the outputs against the label columns, mean over every value."""
        output = ops.cast(output, "float32")
        error = output - self._target(labels, output)
        return ops.mean(ops.square(error) if self.loss_name == "mse" else ops.abs(error))

    def update_task_metrics(self, labels, output) -> None:
        output = ops.cast(output, "float32")
        target = self._target(labels, output)
        self.mae.update_state(target, output)
        self.mse.update_state(target, output)


@BACKEND.tasks.register
class FinetuneableZoobotTree(FinetuneableTreeTask, ZoobotTree):
    """`zoobot.models.tasks.FinetuneableTreeTask` with Keras: `ZoobotTree` from a given encoder."""
