"""Check 1: the Dirichlet-multinomial loss and its gradient, torch and TF vs the NumPy float64 oracle;
the vote-fraction KL trees train with beside it, in float32 against the same oracle.

Counts are random per question: a third of the galaxies nobody asked (loss and gradient exactly 0),
some with a single volunteer, most with a few to tens of votes, some in the hundreds. Concentrations
are log-uniform over the default head's range (0.01 to 1000), which also covers the older head's
(1, 101). In float32 the oracle sees the float32-rounded inputs, so the check
measures the computation, not the rounding of the inputs. Tolerances (issue 8), elementwise
relative: 1e-6 in float64, 1e-5 in float32.

The gradient is of the loss summed over questions and galaxies, d/d(concentrations), which
`zoobot.shared.dirichlet_multinomial_nll_grad` gives. It is a difference of digammas, which can
cancel to nearly 0 for one answer; elementwise ratios there would measure the cancellation, not
the implementation, so gradients are compared relative to each galaxy's largest gradient
(`_row_scaled`), with exact zeros required for unanswered questions.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from parity import compare

from zoobot.models.tasks import DEFAULT_CONCENTRATION
from zoobot.shared import (
    answer_totals,
    dirichlet_multinomial_nll,
    dirichlet_multinomial_nll_grad,
    get_schema,
    training_objective,
    vote_fraction_kl,
)

SCHEMAS = ("decals_dr5", "gz2", "gz_evo")
TOLERANCE = {"float64": 1e-6, "float32": 1e-5}
BATCH = 64


def vote_batch(schema, rng: np.random.Generator, batch: int = BATCH):
    """float64 (counts, concentrations) with zero, single, tens and hundreds of votes per question."""
    low, high = np.log(DEFAULT_CONCENTRATION)
    concentrations = np.exp(rng.uniform(low, high, size=(batch, len(schema.label_cols))))
    counts = np.zeros_like(concentrations)
    for question in schema.questions:
        kind = rng.choice(4, size=batch, p=[0.3, 0.15, 0.4, 0.15])
        totals = np.select(
            [kind == 0, kind == 1, kind == 2],
            [0, 1, rng.integers(2, 60, size=batch)],
            rng.integers(100, 600, size=batch),
        )
        fractions = rng.dirichlet(np.ones(len(question.answers)), size=batch)
        counts[:, question.start : question.end + 1] = rng.multinomial(totals, fractions)
    return counts, concentrations


def _row_scaled(name, actual, reference, tolerance, group):
    """Gradients: |a-b| relative to the largest |gradient| of the same galaxy (rows of 0 skipped)."""
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    scale = np.abs(reference).max(axis=1, keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    check = compare(name, actual / scale, reference / scale, tolerance, relative="abs", group=group)
    check.max_abs = float(np.abs(actual - reference).max())
    check.relative = "row-scale"
    check.note = "max |a-b| / max|grad| of the same galaxy; exact 0 where nobody answered"
    zero = reference == 0
    if np.any(actual[zero] != 0):
        check.passed, check.status = False, "FAIL"
        check.note += f"; {int(np.sum(actual[zero] != 0))} gradients of unanswered questions != 0"
    return check


def _case(schema_name: str, dtype: str, rng):
    schema = get_schema(schema_name)
    counts, concentrations = vote_batch(schema, rng)
    concentrations = concentrations.astype(dtype).astype(np.float64)  # what the backend sees
    loss = dirichlet_multinomial_nll(counts, concentrations, schema)
    grad = dirichlet_multinomial_nll_grad(counts, concentrations, schema)
    objective = training_objective(counts, concentrations, schema)
    assert (loss == 0).mean() > 0.2 and (counts.sum(axis=1) > 0).all()
    return schema, counts, concentrations, loss, grad, objective


def _record(recorder, backend, schema_name, dtype, values, reference):
    loss, grad, objective = values
    ref_loss, ref_grad, ref_objective = reference
    tolerance = TOLERANCE[dtype]
    label = f"{backend} {schema_name} {dtype}"
    recorder.record(
        compare(
            f"{label} loss",
            loss,
            ref_loss,
            tolerance,
            relative="elementwise",
            group="loss",
            note="(batch, question) values; exact 0 where nobody answered",
        ),
        _row_scaled(f"{label} d loss / d concentrations", grad, ref_grad, tolerance, "loss"),
        compare(
            f"{label} objective",
            objective,
            ref_objective,
            tolerance,
            relative="elementwise",
            group="loss",
            note="sum over questions, mean over batch",
        ),
    )


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("schema_name", SCHEMAS)
def test_torch_loss_matches_reference(recorder, rng, schema_name, dtype):
    import torch

    from zoobot.torch.loss import DirichletMultinomialLoss, dirichlet_multinomial_loss

    schema, counts, concentrations, *reference = _case(schema_name, dtype, rng)
    torch_dtype = getattr(torch, dtype)
    alpha = torch.tensor(concentrations, dtype=torch_dtype, requires_grad=True)
    votes = torch.tensor(counts, dtype=torch_dtype)
    loss = dirichlet_multinomial_loss(votes, alpha, schema)
    assert loss.dtype == torch_dtype
    loss.sum().backward()
    objective = DirichletMultinomialLoss(schema)(votes, alpha.detach())
    _record(recorder, "torch", schema_name, dtype, (loss, alpha.grad, objective), reference)


def _tf_loss_module():
    return importlib.import_module("zoobot.tf.loss")


def _keras_values(tf_loss, counts, concentrations, schema, dtype):
    """(loss, d sum(loss) / d concentrations, objective) of zoobot.tf on the backend Keras runs on."""
    from zoobot.tf import runtime

    if runtime.on_jax():
        import jax
        import jax.numpy as jnp

        alpha, votes = jnp.asarray(concentrations, dtype), jnp.asarray(counts, dtype)

        def total(a):
            return jnp.sum(tf_loss.dirichlet_multinomial_loss(votes, a, schema))

        loss = tf_loss.dirichlet_multinomial_loss(votes, alpha, schema)
        grad = jax.grad(total)(alpha)
    else:
        import tensorflow as tf

        alpha = tf.Variable(tf.constant(concentrations, dtype=dtype))
        votes = tf.constant(counts, dtype=dtype)
        with tf.GradientTape() as tape:
            loss = tf_loss.dirichlet_multinomial_loss(votes, alpha, schema)
            summed = tf.reduce_sum(loss)
        grad = tape.gradient(summed, alpha)
        alpha = tf.constant(alpha)
    import keras

    assert keras.backend.standardize_dtype(loss.dtype) == dtype
    # A Keras Loss casts to its dtype (float32 by default); ask for the inputs' dtype, as torch keeps.
    objective = tf_loss.DirichletMultinomialLoss(schema, dtype=dtype)(votes, alpha)
    return loss, grad, objective


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("schema_name", SCHEMAS)
def test_tf_loss_matches_reference(recorder, rng, schema_name, dtype):
    """zoobot.tf's loss, on TensorFlow (which has float64) or on JAX with `jax_enable_x64` on: the
    sums run in float64, as zoobot.torch's do."""
    from zoobot.tf import runtime

    tf_loss = _tf_loss_module()
    schema, counts, concentrations, *reference = _case(schema_name, dtype, rng)
    if runtime.on_jax():
        import jax

        with jax.enable_x64(True):
            values = _keras_values(tf_loss, counts, concentrations, schema, dtype)
    else:
        values = _keras_values(tf_loss, counts, concentrations, schema, dtype)
    _record(recorder, runtime.name(), schema_name, dtype, values, reference)


# JAX without `jax_enable_x64` computes float64 requests in float32, so there the sums run in
# float32: each lgamma term (up to lgamma(701) ~ 3.9e3 at 600 votes, alpha 101) rounds by half a
# float32 ulp, 1.2e-4, and a question sums up to 3 * 7 + 3 = 24 of them: |a-b| <= 3e-3.
FLOAT32_SUMS = 3e-3


@pytest.mark.parametrize("schema_name", SCHEMAS)
def test_jax_loss_without_x64_is_within_float32_sums(recorder, rng, schema_name):
    from zoobot.tf import runtime

    if not runtime.on_jax():
        pytest.skip("JAX only: TensorFlow always computes the sums in float64")
    import jax

    assert not jax.config.jax_enable_x64, "this check is of JAX's default, float64 off"
    schema, counts, concentrations, *reference = _case(schema_name, "float32", rng)
    loss, grad, objective = _keras_values(
        _tf_loss_module(), counts, concentrations, schema, "float32"
    )
    label = f"jax {schema_name} float32 (x64 off, float32 sums)"
    recorder.record(
        compare(f"{label} loss", loss, reference[0], FLOAT32_SUMS, relative="abs", group="loss",
                note="(batch, question) values; float32 sums: max |a-b| bounded, exact 0 kept"),
        _row_scaled(f"{label} d loss / d concentrations", grad, reference[1], TOLERANCE["float32"],
                    "loss"),
    )  # fmt: skip


# The vote-fraction KL beside the likelihood, in float32 in every backend: a term f log f - f log p
# reaches |log p| ~ 14 (alpha down to 0.01 against totals up to ~7,000), float32 rounds each log
# and product by ~6e-8 relative, and a question sums up to 13 such pairs: |a-b| <= 1e-4.
KL_TOLERANCE = 1e-4


def _kl_reference(counts, concentrations, schema):
    """The KL per question and its gradient, d/d alpha_i = 1/A - f_i/alpha_i where answered."""
    kl = vote_fraction_kl(counts, concentrations, schema)
    totals, alpha_totals = answer_totals(counts, schema), answer_totals(concentrations, schema)
    fractions = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    grad = np.where(totals > 0, 1 / alpha_totals - fractions / concentrations, 0.0)
    return kl, grad


def _record_kl(recorder, backend, schema_name, values, reference):
    (kl, grad), (ref_kl, ref_grad) = values, reference
    label = f"{backend} {schema_name} float32 vote-fraction KL"
    recorder.record(
        compare(label, kl, ref_kl, KL_TOLERANCE, relative="abs", group="loss",
                note="(batch, question) values; exact 0 where nobody answered"),
        _row_scaled(f"{label} gradient", grad, ref_grad, TOLERANCE["float32"], "loss"),
    )  # fmt: skip
    assert (np.asarray(kl)[ref_kl == 0] == 0).all()


def _kl_case(schema_name: str, rng):
    schema = get_schema(schema_name)
    counts, concentrations = vote_batch(schema, rng)
    concentrations = concentrations.astype(np.float32).astype(np.float64)
    return schema, counts, concentrations, _kl_reference(counts, concentrations, schema)


@pytest.mark.parametrize("schema_name", SCHEMAS)
def test_torch_vote_fraction_kl_matches_reference(recorder, rng, schema_name):
    import torch

    from zoobot.torch.loss import vote_fraction_kl as torch_kl

    schema, counts, concentrations, reference = _kl_case(schema_name, rng)
    alpha = torch.tensor(concentrations, dtype=torch.float32, requires_grad=True)
    kl = torch_kl(torch.tensor(counts, dtype=torch.float32), alpha, schema)
    kl.sum().backward()
    values = (kl.detach().numpy(), alpha.grad.numpy())
    _record_kl(recorder, "torch", schema_name, values, reference)


@pytest.mark.parametrize("schema_name", SCHEMAS)
def test_tf_vote_fraction_kl_matches_reference(recorder, rng, schema_name):
    from zoobot.tf import runtime

    tf_kl = _tf_loss_module().vote_fraction_kl
    schema, counts, concentrations, reference = _kl_case(schema_name, rng)
    if runtime.on_jax():
        import jax
        import jax.numpy as jnp

        alpha, votes = jnp.asarray(concentrations, "float32"), jnp.asarray(counts, "float32")
        grad = jax.grad(lambda a: jnp.sum(tf_kl(votes, a, schema)))(alpha)
        values = (np.asarray(tf_kl(votes, alpha, schema)), np.asarray(grad))
    else:
        import tensorflow as tf

        alpha = tf.Variable(tf.constant(concentrations, dtype="float32"))
        with tf.GradientTape() as tape:
            kl = tf_kl(tf.constant(counts, dtype="float32"), alpha, schema)
            summed = tf.reduce_sum(kl)
        values = (kl.numpy(), tape.gradient(summed, alpha).numpy())
    _record_kl(recorder, runtime.name(), schema_name, values, reference)
