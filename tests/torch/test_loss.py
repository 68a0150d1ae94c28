"""The torch Dirichlet-multinomial loss against the NumPy float64 oracle in zoobot.shared.

Exact (bit-equal) comparisons here run the same weights on the same inputs with the same
batch shapes in one process (or processes with the same threads): the same kernels, hence the
same numbers, on any CPU; results that change kernels or batching carry tolerances.
"""

import numpy as np
import pytest
import torch

from zoobot.shared import get_schema
from zoobot.shared.loss import (
    dirichlet_multinomial_nll,
    dirichlet_multinomial_nll_grad,
    training_objective,
)
from zoobot.torch.loss import (
    DirichletMultinomialLoss,
    QuestionLayout,
    _DirichletMultinomialNLL,
    dirichlet_multinomial_loss,
    gamma_ratios,
)

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
    concentrations = rng.uniform(1, 101, size=counts.shape)
    return schema, counts, concentrations


def test_simulated_votes_leave_questions_unanswered(batch):
    schema, counts, _ = batch
    totals = np.add.reduceat(counts, schema.question_starts, axis=1)
    assert (totals == 0).any() and (totals > 0).any()


def test_float64_matches_reference(batch):
    schema, counts, concentrations = batch
    loss = dirichlet_multinomial_loss(torch.tensor(counts), torch.tensor(concentrations), schema)
    assert loss.dtype == torch.float64
    assert loss.shape == (counts.shape[0], len(schema.questions))
    expected = dirichlet_multinomial_nll(counts, concentrations, schema)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-10, atol=0)


def test_float32_matches_reference(batch):
    schema, counts, concentrations = batch
    concentrations = concentrations.astype(np.float32)
    loss = dirichlet_multinomial_loss(
        torch.tensor(counts, dtype=torch.float32), torch.tensor(concentrations), schema
    )
    assert loss.dtype == torch.float32
    expected = dirichlet_multinomial_nll(counts, concentrations, schema)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5, atol=0)


def test_float32_sums_keep_four_digits(batch):
    """The float32-only path (MPS has no float64): accurate to the cancellation of lgamma terms."""
    schema, counts, concentrations = batch
    loss = dirichlet_multinomial_loss(
        torch.tensor(counts, dtype=torch.float32),
        torch.tensor(concentrations, dtype=torch.float32),
        schema,
        compute_dtype=torch.float32,
    )
    expected = dirichlet_multinomial_nll(counts, concentrations, schema)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradient_matches_reference(batch, dtype):
    schema, counts, concentrations = batch
    alpha = torch.tensor(concentrations, dtype=dtype, requires_grad=True)
    dirichlet_multinomial_loss(torch.tensor(counts, dtype=dtype), alpha, schema).sum().backward()
    expected = dirichlet_multinomial_nll_grad(counts, alpha.detach().double().numpy(), schema)
    tolerance = (
        {"rtol": 1e-10, "atol": 1e-13} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-7}
    )
    np.testing.assert_allclose(alpha.grad.double().numpy(), expected, **tolerance)


def test_gradcheck_float64():
    schema = get_schema("decals_dr5")
    rng = np.random.default_rng(1)
    counts = torch.tensor(simulate_votes(schema, 3, rng))
    alpha = torch.tensor(rng.uniform(1, 20, size=counts.shape), requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a: dirichlet_multinomial_loss(counts, a, schema), (alpha,)
    )


def test_unanswered_questions_give_exact_zero_loss_and_gradient(batch):
    schema, counts, concentrations = batch
    alpha = torch.tensor(concentrations, requires_grad=True)
    loss = dirichlet_multinomial_loss(torch.tensor(counts), alpha, schema)
    loss.sum().backward()
    unanswered = np.add.reduceat(counts, schema.question_starts, axis=1) == 0
    assert (loss.detach().numpy()[unanswered] == 0).all()
    assert (loss.detach().numpy()[~unanswered] > 0).all()
    grad = alpha.grad.numpy()
    assert (grad[unanswered[:, schema.answer_question_index]] == 0).all()
    assert (grad[0] == 0).all()


def test_autocast_bfloat16_computes_in_float32_or_better(batch):
    schema, counts, concentrations = batch
    layer = torch.nn.Linear(4, len(schema.label_cols))
    features = torch.randn(counts.shape[0], 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        alpha = 1 + 100 * torch.sigmoid(layer(features))
        assert alpha.dtype == torch.bfloat16
        loss = dirichlet_multinomial_loss(torch.tensor(counts, dtype=torch.float32), alpha, schema)
    assert loss.dtype == torch.float32
    expected = dirichlet_multinomial_nll(counts, alpha.detach().double().numpy(), schema)
    np.testing.assert_allclose(loss.detach().numpy(), expected, rtol=1e-5)
    loss.sum().backward()
    assert torch.isfinite(layer.weight.grad).all()


def test_module_gives_the_training_objective(batch):
    schema, counts, concentrations = batch
    criterion = DirichletMultinomialLoss(schema)
    objective, per_question = criterion(
        torch.tensor(counts), torch.tensor(concentrations), return_per_question=True
    )
    assert objective.ndim == 0
    assert objective.item() == pytest.approx(
        training_objective(counts, concentrations, schema), rel=1e-12
    )
    assert per_question.shape == (counts.shape[0], len(schema.questions))
    assert torch.equal(criterion(torch.tensor(counts), torch.tensor(concentrations)), objective)
    assert "answer_question_index" not in criterion.state_dict()


def test_objective_gradient_alone_and_with_the_per_question_one(batch):
    """The objective comes out of the same pass as the per-question values: both gradients add."""
    schema, counts, concentrations = batch
    criterion = DirichletMultinomialLoss(schema)
    expected = dirichlet_multinomial_nll_grad(counts, concentrations, schema) / len(counts)
    alpha = torch.tensor(concentrations, requires_grad=True)
    criterion(torch.tensor(counts), alpha).backward()
    np.testing.assert_allclose(alpha.grad.numpy(), expected, rtol=1e-10, atol=1e-15)
    alpha.grad = None
    objective, per_question = criterion(torch.tensor(counts), alpha, return_per_question=True)
    (objective + per_question.sum()).backward()
    np.testing.assert_allclose(
        alpha.grad.numpy(), expected * (1 + len(counts)), rtol=1e-10, atol=1e-15
    )


def test_index_form_equals_schema_form(batch):
    schema, counts, concentrations = batch
    counts, alpha = torch.tensor(counts), torch.tensor(concentrations)
    by_schema = dirichlet_multinomial_loss(counts, alpha, schema)
    by_index = dirichlet_multinomial_loss(counts, alpha, schema.answer_question_index)
    assert torch.equal(by_schema, by_index)


def test_wrong_shapes_are_refused():
    schema = get_schema("decals_dr5")
    n = len(schema.label_cols)
    with pytest.raises(ValueError, match="label columns"):
        dirichlet_multinomial_loss(torch.ones(2, n - 1), torch.ones(2, n - 1), schema)
    with pytest.raises(ValueError, match="must both be"):
        dirichlet_multinomial_loss(torch.ones(3, n), torch.ones(2, n), schema)


def test_gamma_ratios_match_torch_from_tiny_to_huge_arguments():
    z = torch.logspace(-3, 6, 601, dtype=torch.float64).repeat(7)
    m = torch.tensor([0, 1, 2, 7, 80, 0.37, 1e4], dtype=torch.float64).repeat_interleave(601)
    d, p = gamma_ratios(z, m)
    lgammas, digammas = (
        (torch.lgamma(w) for w in (z, z + m)),
        (torch.digamma(w) for w in (z, z + m)),
    )
    (lz, lv), (dz, dv) = lgammas, digammas
    # torch's differences lose what float64 holds of the larger lgamma: compare on that scale
    assert ((d - (lv - lz)).abs() <= 1e-14 * (1 + lz.abs() + lv.abs())).all()
    assert ((p - (dv - dz)).abs() <= 1e-14 * (1 + dz.abs() + dv.abs())).all()
    assert (d[m == 0] == 0).all() and (p[m == 0] == 0).all()


def test_device_path_equals_cpu_path(batch):
    """Off CPU the loss runs in torch operations over every pair (no device sync); run that path
    here against the CPU one (NumPy)."""
    schema, counts, concentrations = batch
    layout = QuestionLayout(schema.answer_question_index)
    results = []
    for on_cpu in (True, False):
        alpha = torch.tensor(concentrations, requires_grad=True)
        loss, _ = _DirichletMultinomialNLL.apply(
            torch.tensor(counts), alpha, layout, torch.float64, on_cpu
        )
        loss.sum().backward()
        results.append((loss.detach(), alpha.grad))
    (loss, grad), (dense_loss, dense_grad) = results
    np.testing.assert_allclose(dense_loss.numpy(), loss.numpy(), rtol=1e-12)
    np.testing.assert_allclose(dense_grad.numpy(), grad.numpy(), rtol=1e-12, atol=1e-15)
    unanswered = np.add.reduceat(counts, schema.question_starts, axis=1) == 0
    assert (dense_loss.numpy()[unanswered] == 0).all()
    assert (dense_grad.numpy()[unanswered[:, schema.answer_question_index]] == 0).all()


def test_non_integer_and_large_counts_match_reference(batch):
    """Counts need not be integers (log-factorials then come from lgamma), nor small (the table of
    log-factorials grows)."""
    schema, counts, concentrations = batch
    for scaled in (counts * 0.37, counts * 1000):
        loss = dirichlet_multinomial_loss(
            torch.tensor(scaled), torch.tensor(concentrations), schema
        )
        expected = dirichlet_multinomial_nll(scaled, concentrations, schema)
        np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-10)


def test_output_and_gradient_are_contiguous(batch):
    schema, counts, concentrations = batch
    alpha = torch.tensor(concentrations, dtype=torch.float32, requires_grad=True)
    loss = dirichlet_multinomial_loss(torch.tensor(counts, dtype=torch.float32), alpha, schema)
    loss.sum().backward()
    assert loss.is_contiguous() and alpha.grad.is_contiguous()
    assert alpha.grad.dtype == torch.float32
