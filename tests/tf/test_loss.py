"""The TF Dirichlet-multinomial loss against the NumPy float64 oracle in zoobot.shared.

Exact (bit-equal) comparisons here run the same weights on the same inputs with the same
batch shapes in one process (or processes with the same threads): the same kernels, hence the
same numbers, on any CPU; results that change kernels or batching carry tolerances.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from zoobot.shared import get_schema
from zoobot.shared.loss import (
    dirichlet_multinomial_nll,
    dirichlet_multinomial_nll_grad,
    training_objective,
)
from zoobot.tf.loss import DirichletMultinomialLoss, dirichlet_multinomial_loss

SCHEMAS = ["decals_dr5", "gz_evo"]


def simulate_votes(schema, n_galaxies, rng):
    """Counts that follow the tree: one campaign per galaxy, children get their parent's votes."""
    counts = np.zeros((n_galaxies, len(schema.label_cols)))
    campaigns = list(schema.campaigns)
    by_depth = sorted(schema.questions, key=lambda q: len(schema.ancestors(q.name)))
    for row in range(n_galaxies):
        campaign = schema.campaigns[campaigns[rng.integers(len(campaigns))]]
        for question in by_depth:
            if question.name not in campaign:
                continue
            if question.asked_after is None:
                volunteers = rng.poisson(40)
            else:
                volunteers = int(counts[row, schema.get_answer(question.asked_after).index])
            probs = rng.dirichlet(np.ones(len(question.answers)))
            counts[row, question.start : question.end + 1] = rng.multinomial(volunteers, probs)
    return counts


@pytest.fixture(params=SCHEMAS)
def batch(request):
    schema = get_schema(request.param)
    rng = np.random.default_rng(5)
    counts = simulate_votes(schema, 48, rng)
    counts[0] = 0  # a galaxy nobody classified
    counts[1] = 0
    counts[1, schema.question_starts] = 1  # one volunteer answered every question
    counts[2] = 0
    counts[2, schema.question_starts] = 300  # hundreds of votes for one answer of each question
    counts[2, schema.question_starts + 1] = 250
    concentrations = rng.uniform(1, 101, size=counts.shape)
    return schema, counts, concentrations


def question_totals(schema, counts):
    return np.add.reduceat(counts, schema.question_starts, axis=1)


def test_batch_has_zero_single_and_hundreds_vote_questions(batch):
    schema, counts, _ = batch
    totals = question_totals(schema, counts)
    assert (totals == 0).any() and (totals == 1).any() and (totals >= 500).any()


def test_float64_matches_reference(batch):
    schema, counts, concentrations = batch
    loss = dirichlet_multinomial_loss(tf.constant(counts), tf.constant(concentrations), schema)
    assert loss.dtype == tf.float64
    assert loss.shape == (counts.shape[0], len(schema.questions))
    expected = dirichlet_multinomial_nll(counts, concentrations, schema)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-10, atol=0)


def test_float32_matches_reference(batch):
    schema, counts, concentrations = batch
    concentrations = concentrations.astype(np.float32)
    loss = dirichlet_multinomial_loss(
        tf.constant(counts, tf.float32), tf.constant(concentrations), schema
    )
    assert loss.dtype == tf.float32
    expected = dirichlet_multinomial_nll(counts, concentrations, schema)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5, atol=0)


def test_float32_sums_keep_four_digits(batch):
    """The float32-only path (devices without float64): accurate to the lgamma cancellation."""
    schema, counts, concentrations = batch
    loss = dirichlet_multinomial_loss(
        tf.constant(counts, tf.float32),
        tf.constant(concentrations, tf.float32),
        schema,
        compute_dtype=tf.float32,
    )
    expected = dirichlet_multinomial_nll(counts, concentrations, schema)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("dtype", [tf.float64, tf.float32])
def test_gradient_matches_reference(batch, dtype):
    schema, counts, concentrations = batch
    alpha = tf.Variable(tf.constant(concentrations, dtype))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(dirichlet_multinomial_loss(tf.constant(counts, dtype), alpha, schema))
    grad = tape.gradient(total, alpha).numpy().astype(np.float64)
    expected = dirichlet_multinomial_nll_grad(counts, alpha.numpy().astype(np.float64), schema)
    tolerance = (
        {"rtol": 1e-10, "atol": 1e-13} if dtype == tf.float64 else {"rtol": 1e-5, "atol": 1e-7}
    )
    np.testing.assert_allclose(grad, expected, **tolerance)


def test_unanswered_questions_give_exact_zero_loss_and_gradient(batch):
    schema, counts, concentrations = batch
    alpha = tf.Variable(concentrations)
    with tf.GradientTape() as tape:
        loss = dirichlet_multinomial_loss(tf.constant(counts), alpha, schema)
        total = tf.reduce_sum(loss)
    grad = tape.gradient(total, alpha).numpy()
    unanswered = question_totals(schema, counts) == 0
    assert (loss.numpy()[unanswered] == 0).all()
    assert (loss.numpy()[~unanswered] > 0).all()
    assert (grad[unanswered[:, schema.answer_question_index]] == 0).all()
    assert (grad[0] == 0).all()
    assert np.isfinite(grad).all()


def test_loss_class_gives_the_training_objective(batch):
    schema, counts, concentrations = batch
    criterion = DirichletMultinomialLoss(schema, dtype="float64")
    objective = criterion(counts, concentrations)
    assert objective.shape == ()
    assert float(objective) == pytest.approx(
        training_objective(counts, concentrations, schema), rel=1e-12
    )
    per_question = criterion.per_question(counts, concentrations)
    assert per_question.shape == (counts.shape[0], len(schema.questions))
    np.testing.assert_allclose(
        tf.reduce_mean(tf.reduce_sum(per_question, 1)).numpy(), objective.numpy(), rtol=1e-14
    )
    # float32 by default, like every Keras loss; still within float32 accuracy of the oracle
    default = DirichletMultinomialLoss(schema)(counts, concentrations)
    assert default.dtype == tf.float32
    assert float(default) == pytest.approx(float(objective), rel=1e-6)


def test_loss_class_serialises():
    schema = get_schema("decals_dr5")
    criterion = DirichletMultinomialLoss(schema)
    restored = keras.losses.deserialize(keras.losses.serialize(criterion))
    assert isinstance(restored, DirichletMultinomialLoss)
    assert restored.schema == schema


def test_index_form_equals_schema_form(batch):
    schema, counts, concentrations = batch
    by_schema = dirichlet_multinomial_loss(counts, concentrations, schema)
    by_index = dirichlet_multinomial_loss(counts, concentrations, schema.answer_question_index)
    by_tensor = dirichlet_multinomial_loss(
        counts,
        concentrations,
        tf.constant(schema.answer_question_index),
        n_questions=len(schema.questions),
    )
    np.testing.assert_array_equal(by_schema.numpy(), by_index.numpy())
    np.testing.assert_array_equal(by_schema.numpy(), by_tensor.numpy())


def test_traced_with_unknown_batch_and_compiled_with_xla():
    schema = get_schema("decals_dr5")
    rng = np.random.default_rng(3)
    counts = simulate_votes(schema, 8, rng)
    concentrations = rng.uniform(1, 101, size=counts.shape)
    spec = tf.TensorSpec((None, len(schema.label_cols)), tf.float32)
    eager = dirichlet_multinomial_loss(counts.astype(np.float32), concentrations, schema)
    for jit in (False, True):
        fn = tf.function(
            lambda c, a: dirichlet_multinomial_loss(c, a, schema),
            input_signature=[spec, spec],
            jit_compile=jit,
        )
        traced = fn(counts.astype(np.float32), concentrations.astype(np.float32))
        np.testing.assert_allclose(traced.numpy(), eager.numpy(), rtol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_head_loss_computes_in_float32_or_better(batch, policy):
    schema, counts, _ = batch
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    compute = keras.mixed_precision.Policy(policy).compute_dtype
    try:
        # The head's matmul in float32, its concentrations in the policy's compute dtype: what the
        # loss receives from a reduced-precision head (a bf16 matmul would only test TensorFlow).
        layer = keras.layers.Dense(len(schema.label_cols), dtype="float32")
        features = tf.random.stateless_normal((counts.shape[0], 4), seed=(1, 2))
        with tf.GradientTape() as tape:
            alpha = keras.ops.cast(1 + 100 * keras.ops.sigmoid(layer(features)), compute)
            assert alpha.dtype == compute
            criterion = DirichletMultinomialLoss(schema)
            loss = dirichlet_multinomial_loss(tf.constant(counts, tf.float32), alpha, schema)
            objective = criterion(counts, alpha)
    finally:
        keras.config.set_dtype_policy(previous)
    assert loss.dtype == tf.float32 and objective.dtype == tf.float32
    alpha64 = tf.cast(alpha, tf.float64).numpy()
    expected = dirichlet_multinomial_nll(counts, alpha64, schema)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
    assert float(objective) == pytest.approx(training_objective(counts, alpha64, schema), rel=1e-5)
    grads = tape.gradient(objective, layer.trainable_weights)
    assert all(np.isfinite(g.numpy()).all() for g in grads)


def test_wrong_shapes_are_refused():
    schema = get_schema("decals_dr5")
    n = len(schema.label_cols)
    with pytest.raises(ValueError, match="label columns"):
        dirichlet_multinomial_loss(tf.ones((2, n - 1)), tf.ones((2, n - 1)), schema)
    with pytest.raises(ValueError, match="must both be"):
        dirichlet_multinomial_loss(tf.ones((3, n)), tf.ones((2, n)), schema)
