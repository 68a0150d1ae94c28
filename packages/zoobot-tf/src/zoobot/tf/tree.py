"""ZoobotTree: learn a whole Galaxy Zoo decision tree from volunteer vote counts (DESIGN.md 1-2)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import keras
import numpy as np
from keras import ops

from zoobot.models.settings import PRETRAINING
from zoobot.models.tasks import (
    DEFAULT_CONCENTRATION,
    log_concentration_scale,
    saved_tree_args,
    tree_args,
)
from zoobot.shared import Schema, as_schema
from zoobot.tf.backend import BACKEND
from zoobot.tf.encoders import encoder_dim, load_encoder
from zoobot.tf.loss import DirichletMultinomialLoss
from zoobot.tf.module import ZoobotModel, linear_head


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


def dirichlet_head(
    in_features: int,
    n_answers: int,
    dropout: float,
    concentration: Sequence[float] | None = None,
) -> keras.Sequential:
    """Dropout, a dense layer, and one concentration per answer column (float32): in the
    log-spaced `concentration` range (low, high), or 1 + 100 sigmoid without one."""
    if concentration is None:
        scale = ScaledSigmoid(dtype="float32", name="scaled_sigmoid")
    else:
        scale = LogScaledSigmoid(*concentration, dtype="float32", name="log_scaled_sigmoid")
    return linear_head(in_features, n_answers, dropout, scale)


def question_sums(values, index: np.ndarray, n_questions: int):
    """(batch, answer) -> (batch, question) sums, vectorised with one segment sum."""
    return ops.transpose(ops.segment_sum(ops.transpose(values), index, num_segments=n_questions))


class TreeMetrics(keras.metrics.Metric):
    """Per question: the mean loss, and the vote-fraction error; per campaign: the summed loss.

    `result()` is a dict: `loss/<question>` (the per-question loss averaged over galaxies, unasked
    ones counting 0, as zoobot.torch logs it), `campaign_loss/<campaign>` (the sum over the
    campaign's questions), `vote_fraction_error/<question>` (mean absolute error of the expected
    vote fractions over the galaxies asked the question, answers averaged; NaN if none was) and
    `vote_fraction_error` (their mean over the questions asked). Keras prefixes `val_` in validation.
    """

    def __init__(self, schema: Schema, name: str = "tree_metrics", **kwargs):
        super().__init__(name=name, **kwargs)
        self.schema = schema
        self.questions = [q.name for q in schema.questions]
        self.campaigns = list(schema.campaigns)
        self.index = np.asarray(schema.answer_question_index, dtype=np.int32)
        self.sizes = np.bincount(self.index, minlength=len(self.questions)).astype(np.float32)
        self.membership = np.array(
            [[float(q in qs) for qs in schema.campaigns.values()] for q in self.questions],
            dtype=np.float32,
        ).reshape(len(self.questions), len(self.campaigns))
        n = len(self.questions)
        add = self.add_variable
        self.loss_sum = add((n,), initializer="zeros", name="loss_sum", aggregation="sum")
        self.error_sum = add((n,), initializer="zeros", name="error_sum", aggregation="sum")
        self.asked = add((n,), initializer="zeros", name="asked", aggregation="sum")
        self.galaxies = add((), initializer="zeros", name="galaxies", aggregation="sum")

    def update_state(self, counts, concentrations, per_question_loss, sample_weight=None):
        n = len(self.questions)
        counts = ops.cast(counts, "float32")
        concentrations = ops.cast(concentrations, "float32")
        alpha_total = question_sums(concentrations, self.index, n)
        count_total = question_sums(counts, self.index, n)
        observed = counts / ops.take(ops.maximum(count_total, 1e-12), self.index, axis=1)
        expected = concentrations / ops.take(alpha_total, self.index, axis=1)
        per_question = question_sums(ops.abs(expected - observed), self.index, n) / self.sizes
        asked = count_total > 0
        self.error_sum.assign_add(
            ops.sum(ops.where(asked, per_question, ops.zeros_like(per_question)), axis=0)
        )
        self.asked.assign_add(ops.sum(ops.cast(asked, "float32"), axis=0))
        per_question_loss = ops.cast(per_question_loss, "float32")
        self.loss_sum.assign_add(ops.sum(per_question_loss, axis=0))
        self.galaxies.assign_add(ops.cast(ops.shape(counts)[0], "float32"))

    def result(self) -> dict:
        loss = ops.divide_no_nan(self.loss_sum, self.galaxies)
        campaign = ops.matmul(loss, self.membership)
        errors = self.error_sum / self.asked  # NaN where no galaxy was asked the question
        finite = ops.isfinite(errors)
        mean_error = ops.divide_no_nan(
            ops.sum(ops.where(finite, errors, ops.zeros_like(errors))),
            ops.sum(ops.cast(finite, "float32")),
        )
        out = {f"loss/{q}": loss[i] for i, q in enumerate(self.questions)}
        out |= {f"campaign_loss/{c}": campaign[i] for i, c in enumerate(self.campaigns)}
        out |= {f"vote_fraction_error/{q}": errors[i] for i, q in enumerate(self.questions)}
        out["vote_fraction_error"] = mean_error
        return out

    def get_config(self) -> dict:
        return {**super().get_config(), "schema": self.schema.to_dict()}


class TreeSteps:
    """Loss and metrics of a model whose head predicts Dirichlet concentrations for a schema."""

    def _init_tree(self, schema: Schema) -> None:
        self.schema = schema
        self.dirichlet_loss = DirichletMultinomialLoss(schema)
        self.tree_metrics = TreeMetrics(schema)

    @staticmethod
    def _counts(labels):
        """Vote counts as float32, NaN (not asked) read as 0."""
        counts = ops.cast(labels, "float32")
        return ops.where(ops.isnan(counts), ops.zeros_like(counts), counts)

    def task_loss(self, labels, output):
        """The Dirichlet-multinomial objective: summed over questions, mean over the batch."""
        per_question = self.dirichlet_loss.per_question(self._counts(labels), output)
        return ops.mean(ops.sum(per_question, axis=1))

    def update_task_metrics(self, labels, output) -> None:
        counts = self._counts(labels)
        per_question = self.dirichlet_loss.per_question(counts, output)
        self.tree_metrics.update_state(counts, output, per_question)


@BACKEND.tasks.register
class ZoobotTree(TreeSteps, ZoobotModel):
    """Pretrain an encoder on Galaxy Zoo votes: Dirichlet concentrations for every answer of `schema`.

    The loss is the Dirichlet-multinomial negative log-likelihood of the votes (`zoobot.tf.loss`),
    summed over questions and averaged over the batch; `fit` logs it per question and per campaign,
    with the vote-fraction error of each question (`TreeMetrics`). `architecture` is any name
    `load_encoder` takes; `encoder=` uses a Keras model instead. `settings` are
    `zoobot.models.settings.TrainingSettings` (defaults `PRETRAINING`). `concentration` is the
    head's log-spaced (low, high) range (None: 1 + 100 sigmoid, the head of models saved before
    the option). Train with
    `model.fit(dataset, epochs=...)` on batches of (images, vote counts); predictions are
    concentrations, `(batch, answer, n_samples)`. The head and the loss run in float32 under any
    mixed-precision policy.
    """

    task = "tree"
    default_settings = PRETRAINING

    def __init__(
        self,
        schema: Schema | str | Mapping,
        architecture: str | os.PathLike = "convnext_nano",
        encoder: keras.Model | None = None,
        channels: int = 3,
        concentration: Sequence[float] | None = DEFAULT_CONCENTRATION,
        **settings,
    ):
        schema = as_schema(schema)
        settings, keras_kwargs = self.default_settings.split(settings)
        settings = self.default_settings.replace(**settings)
        encoder = encoder if encoder is not None else load_encoder(architecture, channels)
        task_args = tree_args(schema, concentration)
        head = dirichlet_head(
            encoder_dim(encoder),
            len(schema.label_cols),
            settings.dropout,
            task_args["concentration"],
        )
        super().__init__(encoder, head, settings, task_args, **keras_kwargs)
        self._init_tree(schema)

    @classmethod
    def from_task_config(cls, config: dict, encoder: keras.Model) -> ZoobotTree:
        return super().from_task_config(saved_tree_args(config), encoder)
