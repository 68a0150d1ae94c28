"""The NumPy loss reference against scipy's Dirichlet-multinomial, finite differences and bad inputs;
the fused CPU kernel against the reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from zoobot.shared import (
    Schema,
    dirichlet_multinomial_nll,
    dirichlet_multinomial_nll_grad,
    get_schema,
    training_objective,
    vote_fraction_kl,
)
from zoobot.shared.fused_loss import (
    LOG_FACTORIALS,
    answer_membership,
    gamma_ratios,
    log_factorial,
    nll_and_gradient,
)
from zoobot.shared.votes import question_sums

TREE = Schema(
    {
        "shape": ["smooth", "featured", "artifact"],
        "edge": ["yes", "no"],
        "bar": ["strong", "weak", "no"],
        "merging": ["none", "minor", "major", "merger"],
    },
    {"edge": "shape_featured", "bar": "edge_no"},
    name="tree",
)


def random_batch(schema, rng, batch=64, max_votes=60):
    """Concentrations in the head's range (1, 101) and counts with empty, single and large totals."""
    concentrations = rng.uniform(1, 101, size=(batch, len(schema.label_cols)))
    counts = np.zeros_like(concentrations)
    for q in schema.questions:
        totals = rng.integers(0, max_votes, size=batch)
        totals[: batch // 4] = 0
        totals[batch // 4 : batch // 4 + 3] = 1
        fractions = rng.dirichlet(np.ones(len(q.answers)), size=batch)
        counts[:, q.start : q.end + 1] = rng.multinomial(totals, fractions)
    return counts, concentrations


def scipy_nll(counts, concentrations, schema):
    """-logpmf per question from scipy.stats.dirichlet_multinomial, NaN where nobody voted."""
    out = np.full((len(counts), len(schema.questions)), np.nan)
    for i in range(len(counts)):
        for j, (start, end) in enumerate(schema.question_index_groups):
            x = counts[i, start : end + 1]
            if x.sum() > 0:
                alpha = concentrations[i, start : end + 1]
                out[i, j] = -stats.dirichlet_multinomial.logpmf(x, alpha, int(x.sum()))
    return out


@pytest.mark.parametrize("schema", [TREE, get_schema("decals_dr5")], ids=["tree", "decals_dr5"])
def test_matches_scipy_per_question_and_is_zero_without_votes(schema):
    rng = np.random.default_rng(0)
    counts, concentrations = random_batch(schema, rng)
    loss = dirichlet_multinomial_nll(counts, concentrations, schema)
    expected = scipy_nll(counts, concentrations, schema)
    assert loss.shape == (len(counts), len(schema.questions))
    assert loss.dtype == np.float64
    voted = ~np.isnan(expected)
    assert (~voted).sum() > len(counts) // 4  # the batch really has unanswered questions
    np.testing.assert_allclose(loss[voted], expected[voted], rtol=1e-12, atol=1e-12)
    assert np.all(loss[~voted] == 0.0)


def test_single_volunteer_is_minus_log_dirichlet_mean():
    # One vote for answer i has probability alpha_i / A: the loss is -log of the Dirichlet mean.
    alpha = np.array([[2.0, 5.0, 3.0, 4.0, 6.0, 1.5, 1.5, 7.0, 1.0, 2.0, 3.0, 4.0]])
    counts = np.zeros_like(alpha)
    counts[0, [1, 4, 7, 8]] = 1
    loss = dirichlet_multinomial_nll(counts, alpha, TREE)
    expected = -np.log([5 / 10, 6 / 10, 7 / 10, 1 / 10])
    np.testing.assert_allclose(loss[0], expected, rtol=1e-14)


def test_counts_in_the_hundreds_and_thousands():
    rng = np.random.default_rng(1)
    concentrations = rng.uniform(1, 101, size=(8, len(TREE.label_cols)))
    counts = rng.integers(100, 3000, size=concentrations.shape).astype(float)
    loss = dirichlet_multinomial_nll(counts, concentrations, TREE)
    np.testing.assert_allclose(loss, scipy_nll(counts, concentrations, TREE), rtol=1e-11)
    assert np.all(np.isfinite(loss)) and np.all(loss > 0)


def test_question_loss_depends_only_on_its_own_columns():
    rng = np.random.default_rng(2)
    counts, concentrations = random_batch(TREE, rng, batch=8)
    changed = counts.copy()
    changed[:, 5:8] = rng.integers(0, 9, size=(8, 3))  # only "bar"
    before = dirichlet_multinomial_nll(counts, concentrations, TREE)
    after = dirichlet_multinomial_nll(changed, concentrations, TREE)
    bar = [q.name for q in TREE.questions].index("bar")
    others = [i for i in range(len(TREE.questions)) if i != bar]
    np.testing.assert_array_equal(before[:, others], after[:, others])


def test_gradient_matches_finite_differences_and_is_zero_without_votes():
    rng = np.random.default_rng(3)
    counts, concentrations = random_batch(TREE, rng, batch=12, max_votes=300)
    grad = dirichlet_multinomial_nll_grad(counts, concentrations, TREE)
    assert grad.shape == concentrations.shape
    numeric = np.zeros_like(concentrations)
    for idx in np.ndindex(concentrations.shape):
        h = 1e-5 * concentrations[idx]
        up, down = concentrations.copy(), concentrations.copy()
        up[idx] += h
        down[idx] -= h
        diff = dirichlet_multinomial_nll(counts, up, TREE) - dirichlet_multinomial_nll(
            counts, down, TREE
        )
        numeric[idx] = diff.sum() / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-9)
    total = np.add.reduceat(counts, TREE.question_starts, axis=1)[:, TREE.answer_question_index]
    assert np.any(total == 0)
    assert np.all(grad[total == 0] == 0.0)
    assert np.all(grad[total > 0] != 0.0)


def test_training_objective_is_sum_over_questions_mean_over_batch():
    rng = np.random.default_rng(4)
    counts, concentrations = random_batch(TREE, rng, batch=10)
    loss = dirichlet_multinomial_nll(counts, concentrations, TREE)
    objective = training_objective(counts, concentrations, TREE)
    assert isinstance(objective, float)
    assert objective == pytest.approx(loss.sum() / 10, rel=1e-14)
    # Its gradient is the summed-loss gradient over the batch size.
    h = 1e-6
    bumped = concentrations.copy()
    bumped[3, 1] += h
    slope = (training_objective(counts, bumped, TREE) - objective) / h
    grad = dirichlet_multinomial_nll_grad(counts, concentrations, TREE)
    assert slope == pytest.approx(grad[3, 1] / 10, rel=1e-4)


def test_float32_and_non_integer_counts_are_accepted():
    rng = np.random.default_rng(5)
    counts, concentrations = random_batch(TREE, rng, batch=6)
    loss32 = dirichlet_multinomial_nll(counts.astype(np.float32), concentrations, TREE)
    assert loss32.dtype == np.float64
    # Non-integer counts (fractions times a number of volunteers) use the gamma-function extension;
    # the loss varies smoothly between the neighbouring integers.
    low = dirichlet_multinomial_nll(counts, concentrations, TREE)
    mid = dirichlet_multinomial_nll(counts + 0.5 * (counts > 0), concentrations, TREE)
    high = dirichlet_multinomial_nll(counts + (counts > 0), concentrations, TREE)
    assert np.all(np.isfinite(mid))
    voted = low > 0
    assert np.all(np.minimum(low, high)[voted] - 1 < mid[voted])
    assert np.all(mid[voted] < np.maximum(low, high)[voted] + 1)


@settings(max_examples=60, deadline=None)
@given(
    votes=st.lists(st.integers(0, 400), min_size=12, max_size=12),
    alpha=st.lists(st.floats(1.0, 101.0), min_size=12, max_size=12),
)
def test_integer_vote_loss_is_a_non_negative_nll(votes, alpha):
    loss = dirichlet_multinomial_nll([votes], [alpha], TREE)
    assert np.all(loss >= -1e-12)
    total = np.add.reduceat(np.array([votes], float), TREE.question_starts, axis=1)
    assert np.all((loss == 0) | (total > 0))


GOOD_COUNTS = np.ones((2, 12))
GOOD_ALPHA = np.full((2, 12), 3.0)


def with_value(array, value, at=(1, 4)):
    array = array.copy()
    array[at] = value
    return array


@pytest.mark.parametrize(
    "counts, concentrations, message",
    [
        (
            np.ones(12),
            GOOD_ALPHA,
            r"counts has shape \(12,\) .* 12 label columns; expected \(batch, 12\)",
        ),
        (np.ones((2, 11)), GOOD_ALPHA, r"counts has shape \(2, 11\) but schema 'tree'"),
        (
            GOOD_COUNTS,
            np.ones((2, 13)),
            r"concentrations has shape \(2, 13\) .* expected \(batch, 12\)",
        ),
        (GOOD_COUNTS, np.ones((2, 12, 3)), r"concentrations has shape \(2, 12, 3\)"),
        (np.ones((3, 12)), GOOD_ALPHA, r"counts has 3 rows but concentrations has 2"),
        (with_value(GOOD_COUNTS, np.nan), GOOD_ALPHA, r"1 non-finite .* row 1, column 'edge_no'"),
        (with_value(GOOD_COUNTS, np.inf), GOOD_ALPHA, r"non-finite value\(s\) \(NaN or inf\)"),
        (
            with_value(GOOD_COUNTS, -1.0),
            GOOD_ALPHA,
            r"1 negative value\(s\), first at row 1, column 'edge_no'",
        ),
        (
            GOOD_COUNTS,
            with_value(GOOD_ALPHA, 0.0),
            r"finite and > 0 .* row 1, column 'edge_no' \(0.0\)",
        ),
        (GOOD_COUNTS, with_value(GOOD_ALPHA, -2.0), r"must be finite and > 0"),
        (GOOD_COUNTS, with_value(GOOD_ALPHA, np.nan), r"must be finite and > 0"),
        (GOOD_COUNTS, with_value(GOOD_ALPHA, np.inf), r"must be finite and > 0"),
        ([["a"] * 12] * 2, GOOD_ALPHA, r"counts must be a numeric array"),
        (GOOD_COUNTS, [["x"] * 12] * 2, r"concentrations must be a numeric array"),
    ],
)
def test_validation_errors(counts, concentrations, message):
    for function in (dirichlet_multinomial_nll, dirichlet_multinomial_nll_grad, training_objective):
        with pytest.raises(ValueError, match=message):
            function(counts, concentrations, TREE)


def test_empty_batch():
    empty = np.zeros((0, 12))
    assert dirichlet_multinomial_nll(empty, empty + 2, TREE).shape == (0, 4)
    with pytest.raises(ValueError, match="at least one galaxy; the batch is empty"):
        training_objective(empty, empty + 2, TREE)


# -- the fused CPU kernel (zoobot.shared.fused_loss) against this oracle ----------------------------


@pytest.fixture(params=["decals_dr5", "gz2", "gz_evo"])
def batch(request):
    schema = get_schema(request.param)
    rng = np.random.default_rng(3)
    counts, concentrations = random_batch(schema, rng)
    concentrations[:4] = rng.uniform(1, 3, (4, counts.shape[1]))  # small arguments: scipy's branch
    return schema, counts, concentrations


def membership_of(schema):
    return answer_membership(schema.answer_question_index, len(schema.questions))


def test_fused_values_and_gradient_match_the_oracle(batch):
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


def test_fused_unanswered_questions_are_exactly_zero(batch):
    schema, counts, concentrations = batch
    nll, grad = nll_and_gradient(counts, concentrations, membership_of(schema))
    unanswered = question_sums(counts, schema) == 0
    assert unanswered.any() and (~unanswered).any()
    assert (nll[unanswered] == 0).all() and (nll[~unanswered] > 0).all()
    assert (grad[unanswered[:, schema.answer_question_index]] == 0).all()


def test_fused_float32_inputs_and_no_gradient(batch):
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


def test_vote_fraction_kl_by_hand_and_blind_to_the_total_concentration():
    counts = np.array([[3, 1, 0, 2, 2, 0, 0, 0, 0, 0, 0, 0]], float)  # bar and merging unasked
    alpha = np.array([[2, 1, 1, 5, 5, 1, 2, 3, 1, 1, 1, 1]], float)
    # shape: observed (3/4, 1/4, 0) against expected (1/2, 1/4, 1/4); edge: equal halves
    expected = [[0.75 * np.log(1.5), 0.0, 0.0, 0.0]]
    # float64 logs of values of order 1: a few ulp (1e-16) of absolute error
    for scale in (1, 7):
        kl = vote_fraction_kl(counts, scale * alpha, TREE)
        np.testing.assert_allclose(kl, expected, rtol=1e-14, atol=1e-15)
        assert (kl[:, 2:] == 0).all(), "unasked questions are exactly 0"


def test_training_objective_adds_the_weighted_vote_fraction_kl():
    rng = np.random.default_rng(3)
    counts, concentrations = random_batch(TREE, rng)
    nll = dirichlet_multinomial_nll(counts, concentrations, TREE).sum(1).mean()
    kl = vote_fraction_kl(counts, concentrations, TREE).sum(1).mean()
    assert kl > 0 and training_objective(counts, concentrations, TREE) == nll
    assert training_objective(counts, concentrations, TREE, 2.5) == pytest.approx(nll + 2.5 * kl)
