"""What predicted concentrations say about the votes: fractions, intervals, uncertainty, calibration.

Concentrations are `(galaxy, answer)` or `(galaxy, answer, forward_pass)` (several passes, e.g. MC
dropout or an ensemble). Each pass is a Dirichlet per question; several passes form an equal-weight
mixture of those Dirichlets, and every statistic here is of that mixture.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd
from scipy import special

from zoobot.shared.loss import check_concentrations, check_pair
from zoobot.shared.schema import Schema
from zoobot.shared.votes import answer_totals, question_sums, vote_fractions

INTERVAL_KINDS = ("predictive", "fraction")


def _passes(concentrations, schema: Schema) -> np.ndarray:
    """Validated concentrations as float64 (galaxy, answer, pass)."""
    alpha = check_concentrations(concentrations, schema, allow_passes=True)
    return alpha if alpha.ndim == 3 else alpha[:, :, None]


def _per_question_mean(values: np.ndarray, schema: Schema) -> np.ndarray:
    """Mean of (galaxy, answer) values over each question's answers -> (galaxy, question)."""
    sizes = np.diff(np.append(schema.question_starts, len(schema.label_cols)))
    return question_sums(values, schema) / sizes


def fractions_per_pass(concentrations, schema: Schema) -> np.ndarray:
    """Dirichlet mean of each answer in each pass, (galaxy, answer, pass)."""
    alpha = _passes(concentrations, schema)
    return alpha / answer_totals(alpha, schema)


def expected_vote_fractions(concentrations, schema: Schema) -> np.ndarray:
    """Expected fraction of volunteers giving each answer when asked, (galaxy, answer)."""
    return fractions_per_pass(concentrations, schema).mean(axis=2)


@cache
def _ancestor_index(schema: Schema) -> np.ndarray:
    """(question, depth) answer indices leading to each question, padded with n_label_cols."""
    chains = [[a.index for a in schema.ancestors(q.name)] for q in schema.questions]
    depth = max(len(c) for c in chains)
    index = np.full((len(chains), depth), len(schema.label_cols), dtype=np.int64)
    for i, chain in enumerate(chains):
        index[i, : len(chain)] = chain
    return index


def _asked_per_pass(fractions: np.ndarray, schema: Schema) -> np.ndarray:
    """Product of ancestor fractions, (galaxy, question, pass) from (galaxy, answer, pass)."""
    ones = np.ones((fractions.shape[0], 1, fractions.shape[2]))
    padded = np.concatenate([fractions, ones], axis=1)
    return padded[:, _ancestor_index(schema), :].prod(axis=2)


def probability_asked(fractions, schema: Schema) -> np.ndarray:
    """Fraction of volunteers expected to reach each question, (galaxy, question); 1 at the roots.

    The product of the fractions of the answers leading to the question (`schema.ancestors`).
    `fractions` is (galaxy, answer), or (galaxy, answer, pass) from `fractions_per_pass`: the product
    is then taken per pass and averaged, which is the mixture's expectation (a product of averages
    is not, when the passes disagree).
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    n = len(schema.label_cols)
    if fractions.ndim not in (2, 3) or fractions.shape[1] != n:
        raise ValueError(
            f"fractions has shape {fractions.shape} but schema {schema.name!r} has {n} label "
            f"columns; expected (galaxy, {n}) or (galaxy, {n}, pass)"
        )
    if not np.all((fractions >= 0) & (fractions <= 1)):
        raise ValueError("fractions must lie in [0, 1] (NaN is not allowed)")
    if fractions.ndim == 2:
        fractions = fractions[:, :, None]
    return _asked_per_pass(fractions, schema).mean(axis=2)


def expected_votes(concentrations, schema: Schema, n_volunteers) -> np.ndarray:
    """Expected vote count of each answer, (galaxy, answer), when `n_volunteers` start at the root.

    N x P(question asked) x fraction, taken per pass then averaged; `n_volunteers` is a number or
    one per galaxy.
    """
    fractions = fractions_per_pass(concentrations, schema)
    n_volunteers = np.asarray(n_volunteers, dtype=np.float64)
    if n_volunteers.ndim > 1 or (n_volunteers.ndim == 1 and len(n_volunteers) != len(fractions)):
        raise ValueError(
            f"n_volunteers must be a number or one per galaxy ({len(fractions)}); "
            f"got shape {n_volunteers.shape}"
        )
    if not np.all(np.isfinite(n_volunteers) & (n_volunteers >= 0)):
        raise ValueError("n_volunteers must be finite and >= 0")
    asked = _asked_per_pass(fractions, schema)[:, schema.answer_question_index, :]
    return np.reshape(n_volunteers, (-1, 1)) * (asked * fractions).mean(axis=2)


def _beta_parameters(concentrations, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    """Beta marginal of each answer's fraction: (alpha_i, A - alpha_i), (galaxy, answer, pass)."""
    alpha = _passes(concentrations, schema)
    return alpha, answer_totals(alpha, schema) - alpha


def _mixture_beta_quantile(a: np.ndarray, b: np.ndarray, q: float) -> np.ndarray:
    """Quantile `q` of an equal mixture of Beta(a, b) over the last axis -> a.shape[:-1].

    One pass is an exact `betaincinv`. A mixture is solved by Newton's method on its CDF, started at
    the quantile of the Beta with the mixture's mean and variance, kept inside a shrinking bracket
    (bisecting when a step leaves it), iterating only on entries whose CDF is not yet within 1e-12
    of `q` nor bracketed to 1e-13.
    """
    if a.shape[-1] == 1:
        return special.betaincinv(a[..., 0], b[..., 0], q)
    shape, passes = a.shape[:-1], a.shape[-1]
    a, b = a.reshape(-1, passes), b.reshape(-1, passes)
    total = a + b
    mean = (a / total).mean(axis=1)
    variance = (a * (a + 1) / (total * (total + 1))).mean(axis=1) - mean**2
    spread = np.maximum(mean * (1 - mean) / np.maximum(variance, 1e-300) - 1, 1e-12)
    x = special.betaincinv(mean * spread, (1 - mean) * spread, q)
    lo, hi = np.zeros_like(x), np.ones_like(x)
    log_norm = special.betaln(a, b)
    todo = np.arange(len(x))
    for _ in range(100):
        if todo.size == 0:
            break
        xt, at, bt = x[todo], a[todo], b[todo]
        excess = special.betainc(at, bt, xt[:, None]).mean(axis=1) - q
        log_pdf = special.xlogy(at - 1, xt[:, None]) + special.xlog1py(bt - 1, -xt[:, None])
        pdf = np.exp(log_pdf - log_norm[todo]).mean(axis=1)
        below = excess < 0
        lo[todo] = np.where(below, xt, lo[todo])
        hi[todo] = np.where(below, hi[todo], xt)
        step = np.divide(excess, pdf, out=np.full_like(xt, np.nan), where=pdf > 1e-300)
        new = xt - step
        outside = ~((new > lo[todo]) & (new < hi[todo]))
        new = np.where(outside, 0.5 * (lo[todo] + hi[todo]), new)
        converged = (hi[todo] - lo[todo] < 1e-13) | (np.abs(excess) < 1e-12)
        x[todo] = np.where(converged & (np.abs(excess) < 1e-12), xt, new)
        todo = todo[~converged]
    return x.reshape(shape)


def _check_level(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), e.g. 0.9 for a 90% interval; got {level}")
    return float(level)


def credible_intervals(
    concentrations, schema: Schema, level: float = 0.9
) -> tuple[np.ndarray, np.ndarray]:
    """Central `level` interval of each answer's underlying vote fraction: (lower, upper), each
    (galaxy, answer).

    The fraction's marginal is Beta(alpha_i, A - alpha_i) per pass and a mixture of those over
    passes; the interval runs from its (1 - level)/2 to its (1 + level)/2 quantile. It describes the
    fraction an infinite crowd would give, not the noisier fraction observed from a few votes (see
    `interval_coverage`).
    """
    level = _check_level(level)
    a, b = _beta_parameters(concentrations, schema)
    lower = _mixture_beta_quantile(a, b, (1 - level) / 2)
    upper = _mixture_beta_quantile(a, b, (1 + level) / 2)
    return lower, upper


def _entropy(probabilities: np.ndarray, schema: Schema) -> np.ndarray:
    """Entropy in nats of each question's categorical, (galaxy, answer, ...) -> (galaxy, question, ...)."""
    return question_sums(special.entr(probabilities), schema)


def predictive_entropy(concentrations, schema: Schema) -> np.ndarray:
    """Entropy (nats) of one volunteer's answer to each question, (galaxy, question).

    One volunteer's answer is categorical with the Dirichlet mean as probabilities; over several
    passes, with their average. This is the total uncertainty: the crowd's disagreement plus the
    model's.
    """
    return _entropy(expected_vote_fractions(concentrations, schema), schema)


def expected_entropy(concentrations, schema: Schema) -> np.ndarray:
    """Mean over passes of each pass's one-volunteer answer entropy (nats), (galaxy, question).

    The uncertainty that remains when the model is certain: the crowd's own disagreement.
    """
    return _entropy(fractions_per_pass(concentrations, schema), schema).mean(axis=2)


def mutual_information(concentrations, schema: Schema) -> np.ndarray:
    """Predictive minus expected entropy (nats), (galaxy, question): the model's own uncertainty.

    The information one volunteer's answer would give about which pass is right (BALD), the
    active-learning score: >= 0, and 0 when all passes agree (always, for one pass).
    """
    fractions = fractions_per_pass(concentrations, schema)
    total = _entropy(fractions.mean(axis=2), schema)
    return np.maximum(total - _entropy(fractions, schema).mean(axis=2), 0.0)


def _predictive_cdf_pair(
    alpha: np.ndarray, counts: np.ndarray, schema: Schema
) -> tuple[np.ndarray, np.ndarray]:
    """P(X < x) and P(X <= x) for each observed count x, (galaxy, answer).

    X is the answer's count among the question's observed total n under the posterior predictive,
    Beta-binomial(n, alpha_i, A - alpha_i) per pass, mixed over passes. The pmf is summed from the
    nearer end, min(x, n - x), with the log-pmf recurrence, vectorised over galaxies and answers.
    """
    a, b = alpha, answer_totals(alpha, schema) - alpha
    n = answer_totals(counts, schema)
    swap = counts > n - counts
    y = np.where(swap, n - counts, counts)
    a, b = np.where(swap[..., None], b, a), np.where(swap[..., None], a, b)
    log_pmf = special.betaln(a, n[..., None] + b) - special.betaln(a, b)
    below = np.zeros_like(y)  # P(Y < y)
    upto = np.zeros_like(y)  # P(Y <= y)
    for j in range(int(y.max(initial=0)) + 1):
        pmf = np.exp(log_pmf).mean(axis=2)
        below += np.where(j < y, pmf, 0.0)
        upto += np.where(j <= y, pmf, 0.0)
        step = (j < y)[..., None]
        up = np.where(step, (n[..., None] - j) * (j + a), 1.0)
        down = np.where(step, (j + 1) * (n[..., None] - j - 1 + b), 1.0)
        log_pmf += np.log(up) - np.log(down)
    # Y = n - X where swapped: P(X < x) = 1 - P(Y <= y), P(X <= x) = 1 - P(Y < y).
    return np.where(swap, 1 - upto, below), np.where(swap, 1 - below, upto)


def _pit_coverage(cdf_below: np.ndarray, cdf_upto: np.ndarray, level: float) -> np.ndarray:
    """Share of the observed count's predictive mass inside the central `level` band, (galaxy, answer)."""
    lo, hi = (1 - level) / 2, (1 + level) / 2
    overlap = np.clip(np.minimum(cdf_upto, hi) - np.maximum(cdf_below, lo), 0.0, None)
    mass = cdf_upto - cdf_below
    inside = ((cdf_upto >= lo) & (cdf_upto <= hi)).astype(np.float64)
    return np.divide(overlap, mass, out=inside, where=mass > 0)


def _checked_pair(concentrations, counts, schema: Schema, kind: str):
    if kind not in INTERVAL_KINDS:
        raise ValueError(f"kind must be one of {INTERVAL_KINDS}; got {kind!r}")
    counts, alpha = check_pair(counts, concentrations, schema, allow_passes=True)
    alpha = alpha if alpha.ndim == 3 else alpha[:, :, None]
    if kind == "predictive" and not np.array_equal(counts, np.round(counts)):
        raise ValueError(
            "kind='predictive' scores whole vote counts, but counts has non-integer values; "
            "round them or use kind='fraction'"
        )
    return alpha, counts


def _coverage_frame(
    covered: np.ndarray, counts: np.ndarray, schema: Schema, min_votes: int = 1
) -> pd.DataFrame:
    """Per question: mean coverage over its answers and the galaxies with at least `min_votes`
    votes for it, and their number."""
    has_votes = question_sums(counts, schema) >= max(min_votes, 1)
    per_galaxy = _per_question_mean(covered, schema)
    n = has_votes.sum(axis=0)
    summed = np.where(has_votes, per_galaxy, 0.0).sum(axis=0)
    coverage = np.divide(summed, n, out=np.full(len(n), np.nan), where=n > 0)
    return pd.DataFrame(
        {"question": [q.name for q in schema.questions], "coverage": coverage, "n": n}
    )


def _covered(alpha, counts, schema: Schema, level: float, kind: str, cdfs) -> np.ndarray:
    if kind == "predictive":
        return _pit_coverage(*cdfs, level)
    lower, upper = credible_intervals(alpha, schema, level)
    observed = vote_fractions(counts, schema)  # NaN without votes: not covered, and not counted
    return ((observed >= lower) & (observed <= upper)).astype(np.float64)


def interval_coverage(
    concentrations,
    counts,
    schema: Schema,
    level: float = 0.9,
    kind: str = "predictive",
    min_votes: int = 1,
) -> pd.DataFrame:
    """How often the observed votes fall inside the central `level` interval, per question.

    Returns a DataFrame (question, coverage, n): coverage averaged over the question's answers and
    the n galaxies with at least `min_votes` votes for the question (NaN if none).

    kind='predictive' (default, the calibration check): the interval is of the observed count given
    the question's observed total, under the posterior predictive (Beta-binomial per answer, mixed
    over passes). Counts are discrete, so a galaxy counts with the share of its observed count's
    predictive probability lying inside the central band (the randomised PIT): 1 well inside, 0 well
    outside, a fraction at the edge. A calibrated model then scores exactly `level` on average, for
    any number of volunteers.

    kind='fraction': the indicator that the observed fraction lies in the `credible_intervals` of the
    underlying fraction. A few votes scatter the observed fraction beyond that interval, so even a
    perfect model scores below `level` here; use it to describe, not to calibrate.
    """
    level = _check_level(level)
    alpha, counts = _checked_pair(concentrations, counts, schema, kind)
    cdfs = _predictive_cdf_pair(alpha, counts, schema) if kind == "predictive" else None
    covered = _covered(alpha, counts, schema, level, kind, cdfs)
    return _coverage_frame(covered, counts, schema, min_votes)


def calibration_table(
    concentrations,
    counts,
    schema: Schema,
    levels=(0.5, 0.68, 0.8, 0.9, 0.95),
    kind: str = "predictive",
) -> pd.DataFrame:
    """`interval_coverage` at several levels: a DataFrame (level, question, coverage, n)."""
    levels = [_check_level(level) for level in levels]
    alpha, counts = _checked_pair(concentrations, counts, schema, kind)
    cdfs = _predictive_cdf_pair(alpha, counts, schema) if kind == "predictive" else None
    frames = []
    for level in levels:
        covered = _covered(alpha, counts, schema, level, kind, cdfs)
        frames.append(_coverage_frame(covered, counts, schema).assign(level=level))
    table = pd.concat(frames, ignore_index=True)
    return table[["level", "question", "coverage", "n"]]
