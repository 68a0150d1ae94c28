"""The Dirichlet-multinomial loss in Keras ops, vectorised over questions (DESIGN.md contract 2).

Per question, -log p(votes | concentrations) exactly as `zoobot.shared.loss.dirichlet_multinomial_nll`
(the NumPy oracle, multinomial coefficient included) and `zoobot.torch.loss`: answers are summed into
questions with one segment sum over the schema's `answer_question_index`, never a Python loop per
question. Unanswered questions give exactly 0 with zero gradient. The lgamma terms reach ~1e3 and
cancel down to losses of ~10, so float32 sums keep only 4-5 digits: the sums run in float64
(whatever the Keras dtype policy) and the result comes back in the concentrations' dtype, at least
float32. On JAX, float64 needs `jax_enable_x64` (`zoobot.tf.runtime.float64_enabled`); without it
the sums run in float32. `compute_dtype="float32"` is the escape hatch for devices without float64
(TPU). Log-gamma is the backend's own (`zoobot.tf.runtime.lgamma`): Keras's ops have none.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from zoobot.shared.schema import Schema
from zoobot.tf.runtime import float64_enabled, lgamma

__all__ = ["DirichletMultinomialLoss", "dirichlet_multinomial_loss", "vote_fraction_kl"]


def _question_index(schema_or_index, n_questions: int | None) -> tuple[np.ndarray, int]:
    if isinstance(schema_or_index, Schema):
        index = np.asarray(schema_or_index.answer_question_index, dtype=np.int32)
        return index, len(schema_or_index.questions)
    index = np.asarray(ops.convert_to_numpy(schema_or_index), dtype=np.int32)
    return index, n_questions if n_questions is not None else int(index.max()) + 1


def question_sums(values, index: np.ndarray, n_questions: int):
    """(batch, answer) -> (batch, question) sums, vectorised with one segment sum."""
    return ops.transpose(ops.segment_sum(ops.transpose(values), index, num_segments=n_questions))


def _output_dtype(dtype: str) -> str:
    """float64 stays float64; float16/bfloat16/float32 come back as float32."""
    return "float64" if dtype == "float64" else "float32"


def default_compute_dtype() -> str:
    """float64 where the backend computes it, else float32 (JAX without `jax_enable_x64`)."""
    return "float64" if float64_enabled() else "float32"


def _shape_error(counts, concentrations) -> ValueError:
    return ValueError(
        f"counts {tuple(counts.shape)} and concentrations {tuple(concentrations.shape)} must both "
        "be (batch, n_label_cols)"
    )


def dirichlet_multinomial_loss(
    counts,
    concentrations,
    schema_or_index,
    *,
    n_questions: int | None = None,
    compute_dtype: str | None = None,
):
    """Negative log-likelihood of the votes per question, (batch, question); 0 where nobody answered.

    `counts` and `concentrations` are (batch, n_label_cols) in label-column order; `schema_or_index`
    is the `Schema` or its `answer_question_index`. `compute_dtype` overrides the dtype of the sums
    (default float64 where the backend has it). The result has the concentrations' dtype, at least
    float32 (float16/bfloat16 concentrations give float32).
    """
    index, n_questions = _question_index(schema_or_index, n_questions)
    concentrations = ops.convert_to_tensor(concentrations)
    counts = ops.convert_to_tensor(counts)
    if len(concentrations.shape) != 2 or len(counts.shape) != 2:
        raise _shape_error(counts, concentrations)
    for a, b in zip(counts.shape, concentrations.shape, strict=True):
        if a is not None and b is not None and a != b:
            raise _shape_error(counts, concentrations)
    n_answers = index.shape[0]
    if concentrations.shape[1] is not None and concentrations.shape[1] != n_answers:
        raise ValueError(
            f"concentrations has {concentrations.shape[1]} columns but the schema has "
            f"{n_answers} label columns"
        )
    compute_dtype = keras.backend.standardize_dtype(compute_dtype or default_compute_dtype())
    alpha = ops.cast(concentrations, compute_dtype)
    counts = ops.cast(counts, compute_dtype)
    per_answer = lgamma(counts + alpha) - lgamma(alpha) - lgamma(counts + 1)
    # (answer, 3 * batch) -> one segment sum gives (question, 3 * batch): totals, alpha sums, terms.
    batch = ops.shape(counts)[0]
    answers = ops.transpose(ops.concatenate([counts, alpha, per_answer], axis=0))
    sums = ops.transpose(ops.segment_sum(answers, index, num_segments=n_questions))
    total, alpha_total, per_question = sums[:batch], sums[batch : 2 * batch], sums[2 * batch :]
    log_p = lgamma(total + 1) + lgamma(alpha_total) - lgamma(total + alpha_total) + per_question
    nll = ops.where(total > 0, -log_p, ops.zeros_like(log_p))
    dtype = keras.backend.standardize_dtype(concentrations.dtype)
    return ops.cast(nll, _output_dtype(dtype))


def vote_fraction_kl(counts, concentrations, schema_or_index, *, n_questions: int | None = None):
    """KL divergence of the expected from the observed vote fractions per question, (batch,
    question); 0 where nobody answered (`zoobot.shared.loss.vote_fraction_kl`), in float32 (the
    values are of order 1: no cancellation to guard against)."""
    index, n = _question_index(schema_or_index, n_questions)
    alpha = ops.cast(concentrations, "float32")
    counts = ops.cast(counts, "float32")
    total = ops.take(question_sums(counts, index, n), index, axis=1)
    fractions = counts / ops.maximum(total, np.finfo(np.float32).tiny)
    log_expected = ops.log(alpha) - ops.take(ops.log(question_sums(alpha, index, n)), index, axis=1)
    safe = ops.where(fractions > 0, fractions, ops.ones_like(fractions))  # 0 log 0 = 0
    return question_sums(fractions * (ops.log(safe) - log_expected), index, n)


@keras.saving.register_keras_serializable(package="zoobot")
class DirichletMultinomialLoss(keras.losses.Loss):
    """The training objective for a schema: per-question loss summed over questions, batch mean.

    A `keras.losses.Loss`: `loss(counts, concentrations)` is the scalar objective (with the default
    reduction, the mean over the batch, scaled for `tf.distribute` like every Keras loss on
    TensorFlow);
    `call` gives the per-galaxy sum over questions and `per_question` the (batch, question) values
    for logging. Inputs are cast to the loss's dtype (float32 by default, so mixed-precision heads
    are fine) and the sums run in float64 where the backend has it.
    """

    def __init__(
        self,
        schema: Schema,
        name: str = "dirichlet_multinomial",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.schema = Schema.from_dict(schema) if isinstance(schema, dict) else schema
        self.n_questions = len(self.schema.questions)
        self.answer_question_index = np.asarray(self.schema.answer_question_index, dtype=np.int32)

    def per_question(self, counts, concentrations):
        """(batch, question) negative log-likelihoods; 0 where nobody answered."""
        return dirichlet_multinomial_loss(
            counts, concentrations, self.answer_question_index, n_questions=self.n_questions
        )

    def call(self, y_true, y_pred):
        """Per galaxy: the loss summed over questions, (batch,)."""
        return ops.sum(self.per_question(y_true, y_pred), axis=1)

    def get_config(self) -> dict:
        return {**super().get_config(), "schema": self.schema.to_dict()}
