"""The Dirichlet-multinomial loss in NumPy float64: the oracle the torch and TF losses are tested against.

Each question of the decision tree is one Dirichlet-multinomial: the model predicts concentrations
`alpha` for the question's answers and the volunteers' answer counts `x` (total `n`) are scored by

    -log p(x | alpha) = -log n! + sum_i log x_i! - log G(A) + log G(n + A)
                        - sum_i [log G(x_i + alpha_i) - log G(alpha_i)],       A = sum_i alpha_i,

with G the gamma function. The multinomial coefficient (the first two terms) does not depend on the
concentrations, so it changes neither gradients nor training, but keeping it makes the value a true
negative log-likelihood (equal to `-scipy.stats.dirichlet_multinomial.logpmf`), comparable across
questions and galaxies. A question nobody answered (n = 0) has probability 1: its loss and gradient
are exactly 0, so unasked questions never contribute.

Trees train on that likelihood plus `fraction_weight` times the per-question KL divergence of the
expected vote fractions (alpha / A) from the observed ones (x / n). The likelihood alone lets a
network explain a galaxy's votes by lowering its concentrations rather than moving its mean: on
the synthetic survey it learns the mean answers markedly worse than a softmax trained on the
fractions, while the KL term alone would leave the concentrations, and so the intervals, untrained.
The KL changes only the mean (it is invariant to scaling alpha), and every question a galaxy was
asked counts once, whatever its number of votes.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from zoobot.shared.schema import Schema
from zoobot.shared.votes import answer_totals, question_sums, vote_fractions


def _where(mask: np.ndarray, schema: Schema) -> str:
    """'row r, column c' of the first True entry of a (batch, answer) mask, for error messages."""
    row, col = np.argwhere(mask)[0]
    return f"row {row}, column {schema.label_cols[col]!r}"


def _as_float_array(values, name: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array: {err}") from err


def check_counts(counts, schema: Schema) -> np.ndarray:
    """Vote counts as float64 (batch, n_label_cols): finite and >= 0, non-integer values allowed."""
    counts = _as_float_array(counts, "counts")
    n = len(schema.label_cols)
    if counts.ndim != 2 or counts.shape[1] != n:
        raise ValueError(
            f"counts has shape {counts.shape} but schema {schema.name!r} has {n} label columns; "
            f"expected (batch, {n})"
        )
    bad = ~np.isfinite(counts)
    if bad.any():
        raise ValueError(
            f"counts has {int(bad.sum())} non-finite value(s) (NaN or inf), first at "
            f"{_where(bad, schema)}; a question nobody was asked has count 0, not NaN"
        )
    bad = counts < 0
    if bad.any():
        raise ValueError(
            f"counts has {int(bad.sum())} negative value(s), first at {_where(bad, schema)} "
            f"({counts[bad][0]}); vote counts must be >= 0"
        )
    return counts


def check_concentrations(concentrations, schema: Schema, allow_passes: bool = False) -> np.ndarray:
    """Concentrations as float64 (batch, n_label_cols[, pass]): finite and > 0."""
    concentrations = _as_float_array(concentrations, "concentrations")
    n = len(schema.label_cols)
    ndims = (2, 3) if allow_passes else (2,)
    if concentrations.ndim not in ndims or concentrations.shape[1] != n:
        expected = f"(batch, {n})" + (f" or (batch, {n}, forward_pass)" if allow_passes else "")
        raise ValueError(
            f"concentrations has shape {concentrations.shape} but schema {schema.name!r} has "
            f"{n} label columns; expected {expected}"
        )
    if concentrations.ndim == 3 and concentrations.shape[2] == 0:
        raise ValueError("concentrations has no forward passes (last axis has length 0)")
    bad = ~(np.isfinite(concentrations) & (concentrations > 0))
    if bad.any():
        first = _where(bad.reshape(bad.shape[0], n, -1).any(axis=2), schema)
        raise ValueError(
            f"concentrations must be finite and > 0 (Dirichlet concentrations); "
            f"{int(bad.sum())} value(s) are not, first at {first} ({concentrations[bad][0]})"
        )
    return concentrations


def check_pair(
    counts, concentrations, schema: Schema, allow_passes: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Checked counts and concentrations of the same galaxies (equal numbers of rows)."""
    counts = check_counts(counts, schema)
    concentrations = check_concentrations(concentrations, schema, allow_passes)
    if counts.shape[0] != concentrations.shape[0]:
        raise ValueError(
            f"counts has {counts.shape[0]} rows but concentrations has {concentrations.shape[0]}; "
            "they must describe the same galaxies"
        )
    return counts, concentrations


def dirichlet_multinomial_nll(counts, concentrations, schema: Schema) -> np.ndarray:
    """Per-question negative log-likelihood of the votes, (batch, question); exactly 0 without votes.

    `counts` and `concentrations` are (batch, n_label_cols) in `schema.label_cols` order. Counts may
    be non-integer (e.g. vote fractions times a number of volunteers): the gamma functions extend the
    likelihood smoothly, though the value is then no longer a normalised probability. Includes the
    multinomial coefficient, so it equals `-scipy.stats.dirichlet_multinomial.logpmf` per question.
    """
    counts, alpha = check_pair(counts, concentrations, schema)
    total = question_sums(counts, schema)
    alpha_total = question_sums(alpha, schema)
    per_answer = (
        special.gammaln(counts + alpha) - special.gammaln(alpha) - special.gammaln(counts + 1)
    )
    log_p = (
        special.gammaln(total + 1)
        + special.gammaln(alpha_total)
        - special.gammaln(total + alpha_total)
        + question_sums(per_answer, schema)
    )
    return np.where(total > 0, -log_p, 0.0)


def dirichlet_multinomial_nll_grad(counts, concentrations, schema: Schema) -> np.ndarray:
    """Gradient of the summed loss over the concentrations, (batch, n_label_cols); 0 without votes.

    d(-log p)/d alpha_i = psi(n + A) - psi(A) - psi(x_i + alpha_i) + psi(alpha_i), psi the digamma.
    The gradient of `training_objective` is this divided by the batch size.
    """
    counts, alpha = check_pair(counts, concentrations, schema)
    total = answer_totals(counts, schema)
    alpha_total = answer_totals(alpha, schema)
    grad = (
        special.digamma(total + alpha_total)
        - special.digamma(alpha_total)
        - special.digamma(counts + alpha)
        + special.digamma(alpha)
    )
    return np.where(total > 0, grad, 0.0)


def vote_fraction_kl(counts, concentrations, schema: Schema) -> np.ndarray:
    """Per question, KL(observed fractions || expected fractions), (batch, question); 0 without votes.

    sum_i f_i (log f_i - log(alpha_i / A)) with f_i = x_i / n: 0 when the expected fractions equal
    the observed ones, whatever the total concentration.
    """
    counts, alpha = check_pair(counts, concentrations, schema)
    fractions = np.nan_to_num(vote_fractions(counts, schema))  # unasked: 0, adding nothing
    log_expected = np.log(alpha) - np.log(answer_totals(alpha, schema))
    return question_sums(special.xlogy(fractions, fractions) - fractions * log_expected, schema)


def training_objective(
    counts, concentrations, schema: Schema, fraction_weight: float = 0.0
) -> float:
    """The scalar every backend minimises: the likelihood plus `fraction_weight` times the vote
    fraction KL, summed over questions, averaged over the batch."""
    if np.shape(counts)[:1] == (0,):
        raise ValueError("training_objective needs at least one galaxy; the batch is empty")
    loss = dirichlet_multinomial_nll(counts, concentrations, schema)
    if fraction_weight:
        loss = loss + fraction_weight * vote_fraction_kl(counts, concentrations, schema)
    return float(loss.sum(axis=1).mean())
