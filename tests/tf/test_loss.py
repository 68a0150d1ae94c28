"""The Keras Dirichlet-multinomial loss against the NumPy float64 oracle in zoobot.shared, on
TensorFlow and on JAX (float64 there within `jax.enable_x64`).

Exact (bit-equal) comparisons here run the same weights on the same inputs with the same
batch shapes in one process (or processes with the same threads): the same kernels, hence the
same numbers, on any CPU; results that change kernels or batching carry tolerances.
"""

import keras
import numpy as np
import pytest
from keras_backend import ON_JAX, compiled, dtype_of, float64, jax_only, value_and_grad

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
    with float64():
        loss = dirichlet_multinomial_loss(counts, concentrations, schema)
    assert dtype_of(loss) == "float64"
    assert loss.shape == (counts.shape[0], len(schema.questions))
    expected = dirichlet_multinomial_nll(counts, concentrations, schema)
    np.testing.assert_allclose(np.asarray(loss), expected, rtol=1e-10, atol=0)


def test_float32_matches_reference(batch):
    schema, counts, concentrations = batch
    concentrations = concentrations.astype(np.float32)
    with float64():  # the sums in float64, as on TensorFlow
        loss = dirichlet_multinomial_loss(counts.astype(np.float32), concentrations, schema)
    assert dtype_of(loss) == "float32"
    expected = dirichlet_multinomial_nll(counts, concentrations, schema)
    np.testing.assert_allclose(np.asarray(loss), expected, rtol=1e-5, atol=0)


def test_float32_sums_keep_four_digits(batch):
    """The float32-only path (devices without float64): accurate to the lgamma cancellation."""
    schema, counts, concentrations = batch
    loss = dirichlet_multinomial_loss(
        counts.astype(np.float32),
        concentrations.astype(np.float32),
        schema,
        compute_dtype="float32",
    )
    expected = dirichlet_multinomial_nll(counts, concentrations, schema)
    np.testing.assert_allclose(np.asarray(loss), expected, rtol=1e-4, atol=2e-3)


@jax_only
def test_jax_without_x64_sums_in_float32(batch):
    """JAX's default (`jax_enable_x64` off) computes float64 requests in float32: the loss sums
    there are float32, within the same bounds as `compute_dtype="float32"`."""
    schema, counts, concentrations = batch
    loss = dirichlet_multinomial_loss(counts, concentrations, schema)
    assert dtype_of(loss) == "float32"
    expected = dirichlet_multinomial_nll(counts, concentrations, schema)
    np.testing.assert_allclose(np.asarray(loss), expected, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gradient_matches_reference(batch, dtype):
    schema, counts, concentrations = batch
    with float64():
        votes = counts.astype(dtype)
        _, grad = value_and_grad(
            lambda a: dirichlet_multinomial_loss(votes, a, schema), concentrations, dtype
        )
    alpha = concentrations.astype(dtype).astype(np.float64)
    expected = dirichlet_multinomial_nll_grad(counts, alpha, schema)
    tolerance = (
        {"rtol": 1e-10, "atol": 1e-13} if dtype == "float64" else {"rtol": 1e-5, "atol": 1e-7}
    )
    np.testing.assert_allclose(grad.astype(np.float64), expected, **tolerance)


def test_unanswered_questions_give_exact_zero_loss_and_gradient(batch):
    schema, counts, concentrations = batch
    loss, grad = value_and_grad(
        lambda a: dirichlet_multinomial_loss(counts.astype(np.float32), a, schema), concentrations
    )
    unanswered = question_totals(schema, counts) == 0
    assert (np.asarray(loss)[unanswered] == 0).all()
    assert (np.asarray(loss)[~unanswered] > 0).all()
    assert (grad[unanswered[:, schema.answer_question_index]] == 0).all()
    assert (grad[0] == 0).all()
    assert np.isfinite(grad).all()


def test_loss_class_gives_the_training_objective(batch):
    schema, counts, concentrations = batch
    with float64():
        criterion = DirichletMultinomialLoss(schema, dtype="float64")
        objective = criterion(counts, concentrations)
        per_question = criterion.per_question(counts, concentrations)
        # float32 by default, like every Keras loss; still within float32 accuracy of the oracle
        default = DirichletMultinomialLoss(schema)(counts, concentrations)
    assert objective.shape == ()
    assert float(objective) == pytest.approx(
        training_objective(counts, concentrations, schema), rel=1e-12
    )
    assert per_question.shape == (counts.shape[0], len(schema.questions))
    np.testing.assert_allclose(
        np.asarray(per_question).sum(1).mean(), np.asarray(objective), rtol=1e-14
    )
    assert dtype_of(default) == "float32"
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
        keras.ops.convert_to_tensor(schema.answer_question_index),
        n_questions=len(schema.questions),
    )
    np.testing.assert_array_equal(np.asarray(by_schema), np.asarray(by_index))
    np.testing.assert_array_equal(np.asarray(by_schema), np.asarray(by_tensor))


def test_traced_and_compiled_with_xla():
    schema = get_schema("decals_dr5")
    rng = np.random.default_rng(3)
    counts = simulate_votes(schema, 8, rng).astype(np.float32)
    concentrations = rng.uniform(1, 101, size=counts.shape).astype(np.float32)
    eager = dirichlet_multinomial_loss(counts, concentrations, schema)
    traced = compiled(lambda c, a: dirichlet_multinomial_loss(c, a, schema))(counts, concentrations)
    # The same operations, fused by XLA: float32 reassociation of sums of ~1e3 terms: rtol 1e-5.
    np.testing.assert_allclose(np.asarray(traced), np.asarray(eager), rtol=1e-5)


@pytest.mark.skipif(ON_JAX, reason="tf.function's unknown batch dimension: TensorFlow only")
def test_traced_with_unknown_batch():
    import tensorflow as tf

    schema = get_schema("decals_dr5")
    rng = np.random.default_rng(3)
    counts = simulate_votes(schema, 8, rng).astype(np.float32)
    concentrations = rng.uniform(1, 101, size=counts.shape).astype(np.float32)
    spec = tf.TensorSpec((None, len(schema.label_cols)), tf.float32)
    eager = dirichlet_multinomial_loss(counts, concentrations, schema)
    fn = tf.function(
        lambda c, a: dirichlet_multinomial_loss(c, a, schema), input_signature=[spec, spec]
    )
    np.testing.assert_allclose(np.asarray(fn(counts, concentrations)), np.asarray(eager), rtol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_head_loss_computes_in_float32_or_better(batch, policy):
    schema, counts, _ = batch
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    compute = keras.mixed_precision.Policy(policy).compute_dtype
    logits = np.random.default_rng(1).normal(size=counts.shape).astype(np.float32)
    try:
        # Concentrations in the policy's compute dtype, from float32 logits: what the loss
        # receives from a reduced-precision head.
        def concentrations(x):
            return keras.ops.cast(1 + 100 * keras.ops.sigmoid(x), compute)

        criterion = DirichletMultinomialLoss(schema)
        alpha = concentrations(logits)
        assert dtype_of(alpha) == compute
        loss = dirichlet_multinomial_loss(counts.astype(np.float32), alpha, schema)
        objective, grads = value_and_grad(lambda x: criterion(counts, concentrations(x)), logits)
    finally:
        keras.config.set_dtype_policy(previous)
    assert dtype_of(loss) == "float32" and objective.dtype == np.float32
    alpha64 = np.asarray(keras.ops.cast(alpha, "float32"), np.float64)
    expected = dirichlet_multinomial_nll(counts, alpha64, schema)
    # float64 sums on TensorFlow; float32 ones on JAX without x64 (test_float32_sums_keep_...)
    rtol, atol = (1e-4, 2e-3) if ON_JAX else (1e-5, 0)
    np.testing.assert_allclose(np.asarray(loss), expected, rtol=rtol, atol=atol)
    assert float(objective) == pytest.approx(training_objective(counts, alpha64, schema), rel=1e-5)
    assert np.isfinite(grads).all()


def test_wrong_shapes_are_refused():
    schema = get_schema("decals_dr5")
    n = len(schema.label_cols)
    with pytest.raises(ValueError, match="label columns"):
        dirichlet_multinomial_loss(np.ones((2, n - 1)), np.ones((2, n - 1)), schema)
    with pytest.raises(ValueError, match="must both be"):
        dirichlet_multinomial_loss(np.ones((3, n)), np.ones((2, n)), schema)
