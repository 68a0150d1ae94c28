"""ZoobotTree: learn a whole Galaxy Zoo decision tree from volunteer vote counts (DESIGN.md 1-2)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from zoobot.models.tasks import TreeTask
from zoobot.shared import Schema
from zoobot.tf.backend import BACKEND
from zoobot.tf.loss import DirichletMultinomialLoss, question_sums, vote_fraction_kl
from zoobot.tf.module import LogScaledSigmoid, ScaledSigmoid, ZoobotModel

__all__ = ["LogScaledSigmoid", "ScaledSigmoid", "TreeMetrics", "TreeSteps", "ZoobotTree"]


def mean_over_galaxies(per_question):
    """(batch, question) -> the sum over questions, averaged over the batch."""
    return ops.mean(ops.sum(per_question, axis=1))


class TreeMetrics(keras.metrics.Metric):
    """Per question: the mean loss, and the vote-fraction error; per campaign: the summed loss.

    `result()` is a dict: `loss/<question>` (the per-question loss averaged over galaxies, unasked
    ones counting 0, as zoobot.torch logs it), `campaign_loss/<campaign>` (the sum over the
    campaign's questions), `vote_fraction_error/<question>` (mean absolute error of the expected
    vote fractions over the galaxies asked the question, answers averaged; NaN if none was),
    `vote_fraction_error` (their mean over the questions asked) and `fraction_kl` (the vote-fraction
    KL summed over questions, averaged over galaxies). Keras prefixes `val_` in validation.
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
        self.kl_sum = add((), initializer="zeros", name="kl_sum", aggregation="sum")

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
        kl = vote_fraction_kl(counts, concentrations, self.index, n_questions=n)
        self.kl_sum.assign_add(ops.sum(kl))

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
        out["fraction_kl"] = ops.divide_no_nan(self.kl_sum, self.galaxies)
        return out

    def get_config(self) -> dict:
        return {**super().get_config(), "schema": self.schema.to_dict()}


class TreeSteps:
    """Loss and metrics of a model whose head predicts Dirichlet concentrations for a schema: the
    Dirichlet-multinomial likelihood plus `fraction_weight` times the vote-fraction KL."""

    def setup_task(self) -> None:
        schema = self.schema
        self.dirichlet_loss = DirichletMultinomialLoss(schema)
        self.tree_metrics = TreeMetrics(schema)

    @staticmethod
    def _counts(labels):
        """Vote counts as float32, NaN (not asked) read as 0."""
        counts = ops.cast(labels, "float32")
        return ops.where(ops.isnan(counts), ops.zeros_like(counts), counts)

    def task_loss(self, labels, output):
        """The training objective: summed over questions, mean over the batch."""
        counts = self._counts(labels)
        loss = mean_over_galaxies(self.dirichlet_loss.per_question(counts, output))
        if self.fraction_weight:
            index, n = self.dirichlet_loss.answer_question_index, self.dirichlet_loss.n_questions
            kl = vote_fraction_kl(counts, output, index, n_questions=n)
            loss = loss + self.fraction_weight * mean_over_galaxies(kl)
        return loss

    def update_task_metrics(self, labels, output) -> None:
        counts = self._counts(labels)
        per_question = self.dirichlet_loss.per_question(counts, output)
        self.tree_metrics.update_state(counts, output, per_question)


@BACKEND.tasks.register
class ZoobotTree(TreeTask, TreeSteps, ZoobotModel):
    """`zoobot.models.tasks.TreeTask` with Keras: the loss of `zoobot.tf.loss`; `fit` logs it per
    question and per campaign with the vote-fraction error of each question (`TreeMetrics`). Train
    with `model.fit(dataset, epochs=...)` on batches of (images, vote counts). The head and the
    loss run in float32 under any mixed-precision policy."""
