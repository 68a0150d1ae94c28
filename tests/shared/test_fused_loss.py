"""The fused NumPy loss kernel against the oracle (zoobot.shared.loss) and scipy."""

import numpy as np
import pytest
from scipy import special

from zoobot.shared import get_schema
from zoobot.shared.fused_loss import (
    LOG_FACTORIALS,
    answer_membership,
    gamma_ratios,
    log_factorial,
    nll_and_gradient,
)
from zoobot.shared.loss import dirichlet_multinomial_nll, dirichlet_multinomial_nll_grad
from zoobot.shared.votes import question_sums


def tree_votes(schema, n_galaxies, rng):
    """Counts that follow the tree: children get at most their parent answer's votes."""
    counts = np.zeros((n_galaxies, len(schema.label_cols)))
    for question in sorted(schema.questions, key=lambda q: len(schema.ancestors(q.name))):
        if question.asked_after is None:
            volunteers = rng.poisson(40, n_galaxies) * (rng.random(n_galaxies) < 0.9)
        else:
            volunteers = counts[:, schema.get_answer(question.asked_after).index].astype(int)
        probs = rng.dirichlet(np.ones(len(question.answers)), n_galaxies)
        for row in range(n_galaxies):
            counts[row, question.start : question.end + 1] = rng.multinomial(
                volunteers[row], probs[row]
            )
    return counts


@pytest.fixture(params=["decals_dr5", "gz2", "gz_evo"])
def batch(request):
    schema = get_schema(request.param)
    rng = np.random.default_rng(3)
    counts = tree_votes(schema, 64, rng)
    concentrations = rng.uniform(1, 101, counts.shape)
    concentrations[:4] = rng.uniform(1, 3, (4, counts.shape[1]))  # small arguments: scipy's branch
    return schema, counts, concentrations


def membership_of(schema):
    return answer_membership(schema.answer_question_index, len(schema.questions))


def test_values_and_gradient_match_the_oracle(batch):
    schema, counts, concentrations = batch
    nll, grad = nll_and_gradient(counts, concentrations, membership_of(schema))
    np.testing.assert_allclose(
        nll, dirichlet_multinomial_nll(counts, concentrations, schema), rtol=1e-11
    )
    np.testing.assert_allclose(
        grad,
        dirichlet_multinomial_nll_grad(counts, concentrations, schema),
        rtol=1e-10,
        atol=1e-13,
    )


def test_unanswered_questions_are_exactly_zero(batch):
    schema, counts, concentrations = batch
    nll, grad = nll_and_gradient(counts, concentrations, membership_of(schema))
    unanswered = question_sums(counts, schema) == 0
    assert unanswered.any() and (~unanswered).any()
    assert (nll[unanswered] == 0).all() and (nll[~unanswered] > 0).all()
    assert (grad[unanswered[:, schema.answer_question_index]] == 0).all()


def test_float32_inputs_and_no_gradient(batch):
    schema, counts, concentrations = batch
    single = concentrations.astype(np.float32)
    nll, grad = nll_and_gradient(counts.astype(np.float32), single, membership_of(schema), False)
    assert grad is None and nll.dtype == np.float64
    np.testing.assert_allclose(nll, dirichlet_multinomial_nll(counts, single, schema), rtol=1e-11)


def test_gamma_ratios_match_scipy_from_tiny_to_huge_arguments():
    z = np.tile(np.logspace(-3, 6, 601), 7)
    m = np.repeat([0, 1, 2, 7, 80, 0.37, 1e4], 601).astype(np.float64)
    d, p = gamma_ratios(z, m)
    lz, lv = special.gammaln(z), special.gammaln(z + m)
    dz, dv = special.psi(z), special.psi(z + m)
    # differences of scipy's values lose what float64 holds of the larger one: compare on that scale
    assert (np.abs(d - (lv - lz)) <= 1e-14 * (1 + np.abs(lz) + np.abs(lv))).all()
    assert (np.abs(p - (dv - dz)) <= 1e-14 * (1 + np.abs(dz) + np.abs(dv))).all()
    assert (d[m == 0] == 0).all() and (p[m == 0] == 0).all()


@pytest.mark.parametrize(
    "counts",
    [
        np.array([0.0, 1, 2, 39, LOG_FACTORIALS - 1]),  # the table
        np.array([0.37, 5.5, 12.0]),  # vote fractions times volunteers
        np.array([3.0, float(LOG_FACTORIALS), 1e7]),  # beyond the table
    ],
)
def test_log_factorial_of_integers_and_beyond(counts):
    np.testing.assert_allclose(log_factorial(counts), special.gammaln(counts + 1), rtol=1e-14)


def test_nan_counts_give_nan_not_an_error():
    """Not validated in the inner loop, but never a table lookup at a nonsense index."""
    assert np.isnan(log_factorial(np.array([2.0, np.nan]))).tolist() == [False, True]
