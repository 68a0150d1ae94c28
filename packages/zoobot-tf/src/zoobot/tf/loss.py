"""The Dirichlet-multinomial loss in TensorFlow, vectorised over questions (DESIGN.md contract 2).

Per question, -log p(votes | concentrations) exactly as `zoobot.shared.loss.dirichlet_multinomial_nll`
(the NumPy oracle, multinomial coefficient included) and `zoobot.torch.loss`: answers are summed into
questions with one `tf.math.unsorted_segment_sum` over the schema's `answer_question_index`, never a
Python loop per question. Unanswered questions give exactly 0 with zero gradient. The lgamma terms
reach ~1e3 and cancel down to losses of ~10, so float32 sums keep only 4-5 digits: the sums run in
float64 (whatever the Keras dtype policy) and the result comes back in the concentrations' dtype, at
least float32. `compute_dtype=tf.float32` is the escape hatch for devices without float64 (TPU).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from zoobot.shared.schema import Schema

__all__ = ["DirichletMultinomialLoss", "dirichlet_multinomial_loss"]


def _question_index(
    schema_or_index: Schema | np.ndarray | tf.Tensor, n_questions: int | None
) -> tuple[tf.Tensor, int]:
    if isinstance(schema_or_index, Schema):
        index = np.asarray(schema_or_index.answer_question_index, dtype=np.int32)
        return tf.constant(index), len(schema_or_index.questions)
    if isinstance(schema_or_index, tf.Tensor):
        index = tf.cast(schema_or_index, tf.int32)
        if n_questions is None:
            n_questions = int(tf.reduce_max(index)) + 1
        return index, n_questions
    index = np.asarray(schema_or_index, dtype=np.int32)
    return tf.constant(index), n_questions if n_questions is not None else int(index.max()) + 1


def _output_dtype(dtype: tf.DType) -> tf.DType:
    """float64 stays float64; float16/bfloat16/float32 come back as float32."""
    return tf.float64 if dtype == tf.float64 else tf.float32


def dirichlet_multinomial_loss(
    counts,
    concentrations,
    schema_or_index: Schema | np.ndarray | tf.Tensor,
    *,
    n_questions: int | None = None,
    compute_dtype: tf.DType | str | None = None,
) -> tf.Tensor:
    """Negative log-likelihood of the votes per question, (batch, question); 0 where nobody answered.

    `counts` and `concentrations` are (batch, n_label_cols) in label-column order; `schema_or_index`
    is the `Schema` or its `answer_question_index` (then pass `n_questions` when it is a tensor).
    `compute_dtype` overrides the dtype of the sums (default float64). The result has the
    concentrations' dtype, at least float32 (float16/bfloat16 concentrations give float32).
    """
    index, n_questions = _question_index(schema_or_index, n_questions)
    concentrations = tf.convert_to_tensor(concentrations)
    counts = tf.convert_to_tensor(counts)
    if concentrations.shape.rank != 2 or counts.shape.rank != 2:
        raise ValueError(
            f"counts {tuple(counts.shape)} and concentrations {tuple(concentrations.shape)} must both "
            "be (batch, n_label_cols)"
        )
    if not counts.shape.is_compatible_with(concentrations.shape):
        raise ValueError(
            f"counts {tuple(counts.shape)} and concentrations {tuple(concentrations.shape)} must both "
            "be (batch, n_label_cols)"
        )
    n_answers = index.shape[0]
    if concentrations.shape[1] is not None and concentrations.shape[1] != n_answers:
        raise ValueError(
            f"concentrations has {concentrations.shape[1]} columns but the schema has "
            f"{n_answers} label columns"
        )
    compute_dtype = tf.as_dtype(compute_dtype or tf.float64)
    alpha = tf.cast(concentrations, compute_dtype)
    counts = tf.cast(counts, compute_dtype)
    per_answer = tf.math.lgamma(counts + alpha) - tf.math.lgamma(alpha) - tf.math.lgamma(counts + 1)
    # (answer, 3, batch) -> one segment sum gives (question, 3, batch): totals, alpha sums, terms.
    answers = tf.transpose(tf.stack([counts, alpha, per_answer]), [2, 0, 1])
    sums = tf.math.unsorted_segment_sum(answers, index, n_questions)
    total, alpha_total, per_question = tf.unstack(tf.transpose(sums, [1, 2, 0]))
    log_p = (
        tf.math.lgamma(total + 1)
        + tf.math.lgamma(alpha_total)
        - tf.math.lgamma(total + alpha_total)
        + per_question
    )
    nll = tf.where(total > 0, -log_p, tf.zeros_like(log_p))
    return tf.cast(nll, _output_dtype(concentrations.dtype))


@keras.saving.register_keras_serializable(package="zoobot")
class DirichletMultinomialLoss(keras.losses.Loss):
    """The training objective for a schema: per-question loss summed over questions, batch mean.

    A `keras.losses.Loss`: `loss(counts, concentrations)` is the scalar objective (with the default
    reduction, the mean over the batch, scaled for `tf.distribute` like every Keras loss);
    `call` gives the per-galaxy sum over questions and `per_question` the (batch, question) values
    for logging. Inputs are cast to the loss's dtype (float32 by default, so mixed-precision heads
    are fine) and the sums run in float64.
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

    def per_question(self, counts, concentrations) -> tf.Tensor:
        """(batch, question) negative log-likelihoods; 0 where nobody answered."""
        return dirichlet_multinomial_loss(
            counts, concentrations, self.answer_question_index, n_questions=self.n_questions
        )

    def call(self, y_true, y_pred) -> tf.Tensor:
        """Per galaxy: the loss summed over questions, (batch,)."""
        return tf.reduce_sum(self.per_question(y_true, y_pred), axis=1)

    def get_config(self) -> dict:
        return {**super().get_config(), "schema": self.schema.to_dict()}
