"""The Dirichlet-multinomial loss and its gradient in one NumPy float64 pass: the CPU training kernel.

`zoobot.shared.loss` is the oracle: clear, validating, one scipy call per term. This module computes
the same per-question values (to ~1e-13) and the gradient with respect to the concentrations for a
training batch, and is what `zoobot.torch` runs on CPU. Written by hand because no library evaluates
lgamma and digamma differences fused: at training batch sizes (a few thousand (concentration,
count) pairs) every array operation costs its call overhead, so the fewer passes the faster. With
D(z, m) = lgamma(z + m) - lgamma(z) and P(z, m) = digamma(z + m) - digamma(z), for question q with
vote total n and concentration total A, and its answers i with counts x_i and concentrations a_i:

    nll_q = D(A, n) - log n! - sum_i [D(a_i, x_i) - log x_i!]
    d nll_q / d a_i = P(A, n) - P(a_i, x_i)

- pairs with m = 0 contribute exactly 0 and are skipped (about half of them in Galaxy Zoo's trees);
- D and P come from the asymptotic series of lgamma and digamma at z and z + m (one log, one
  reciprocal and a short polynomial shared by both), exact in float64 for arguments from
  `ASYMPTOTIC_FROM`; the few smaller arguments use scipy's `gammaln` / `psi`;
- log-factorials of integer counts come from a table.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import special

ASYMPTOTIC_FROM = 10.0
"""Arguments from which the asymptotic series are used (to ~1e-15 with the terms below)."""
# lgamma(w) = (w - 1/2) log w - w + log(2 pi) / 2 + (1/w) LG(1/w^2)
# digamma(w) = log w - 1/(2w) + (1/w^2) PS(1/w^2)
# coefficients B_2k / (2k (2k - 1)) and -B_2k / (2k) of the Bernoulli numbers, highest power first
LGAMMA_SERIES = (1 / 1188, -1 / 1680, 1 / 1260, -1 / 360, 1 / 12)
DIGAMMA_SERIES = (-1 / 132, 1 / 240, -1 / 252, 1 / 120, -1 / 12)
LOG_FACTORIALS = 1 << 16
"""Size of the table of log k! for integer counts (half a megabyte in float64)."""


@functools.cache
def _log_factorial_table() -> np.ndarray:
    return special.gammaln(np.arange(1, LOG_FACTORIALS + 1, dtype=np.float64))


def log_factorial(counts: np.ndarray) -> np.ndarray:
    """log(counts!) of float64 counts >= 0: from a table for integers below `LOG_FACTORIALS`,
    else (e.g. vote fractions times volunteers) `gammaln(counts + 1)`."""
    if counts.size and counts.min() >= 0 and counts.max() < LOG_FACTORIALS:
        whole = counts.astype(np.int64)
        if np.array_equal(whole, counts):
            return _log_factorial_table()[whole]
    return special.gammaln(counts + 1)


def gamma_ratios(z: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """D(z, m) = lgamma(z + m) - lgamma(z) and P(z, m) = digamma(z + m) - digamma(z) of 1-D
    float64 z > 0 and m >= 0; m = 0 gives exactly 0."""
    w = np.empty((2, len(z)))
    w[0] = z
    np.add(z, m, out=w[1])
    log_w = np.log(w)
    r = np.divide(1.0, w)
    r2 = r * r
    lgamma, digamma = r2 * LGAMMA_SERIES[0], r2 * DIGAMMA_SERIES[0]
    lgamma += LGAMMA_SERIES[1]
    digamma += DIGAMMA_SERIES[1]
    for a, b in zip(LGAMMA_SERIES[2:], DIGAMMA_SERIES[2:], strict=True):  # Horner
        lgamma *= r2
        lgamma += a
        digamma *= r2
        digamma += b
    # lgamma - log(2 pi) / 2 (a constant, which cancels in the differences), then digamma
    lgamma *= r
    lgamma -= w
    digamma *= r2
    digamma += log_w
    w -= 0.5
    w *= log_w
    lgamma += w
    r *= 0.5
    digamma -= r
    small = np.flatnonzero(z < ASYMPTOTIC_FROM)  # z + m >= z: all the pairs with a small argument
    if small.size:
        few = np.stack((z[small], z[small] + m[small]))
        lgamma[:, small] = special.gammaln(few)
        digamma[:, small] = special.psi(few)
    lgamma[1] -= lgamma[0]
    digamma[1] -= digamma[0]
    return lgamma[1], digamma[1]


def answer_membership(answer_question_index, n_questions: int) -> np.ndarray:
    """The (answer, question) 0/1 matrix of a schema: sums answers per question by one matmul."""
    index = np.asarray(answer_question_index, dtype=np.int64)
    membership = np.zeros((len(index), n_questions))
    membership[np.arange(len(index)), index] = 1.0
    return membership


def nll_and_gradient(
    counts: np.ndarray, concentrations: np.ndarray, membership: np.ndarray, gradient: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-question loss (batch, question) and, if `gradient`, d loss / d concentrations (batch,
    answer), both float64, from (batch, answer) counts and concentrations in any float dtype.

    Not validated (it is the inner loop of training): counts >= 0, concentrations > 0.
    """
    n_answers = membership.shape[0]
    batch = len(counts)
    counts_all = np.empty((batch, n_answers + membership.shape[1]))  # answers, then questions
    alphas_all = np.empty_like(counts_all)
    for values, out in ((counts, counts_all), (concentrations, alphas_all)):
        out[:, :n_answers] = values
        np.matmul(out[:, :n_answers], membership, out=out[:, n_answers:])
    flat_counts = counts_all.reshape(-1)
    voted = np.flatnonzero(flat_counts)
    m = flat_counts[voted]
    d, p = gamma_ratios(alphas_all.reshape(-1)[voted], m)
    d -= log_factorial(m)
    terms = np.zeros_like(counts_all)
    terms.reshape(-1)[voted] = d
    nll = terms[:, n_answers:] - terms[:, :n_answers] @ membership
    if not gradient:
        return nll, None
    terms.fill(0.0)
    terms.reshape(-1)[voted] = p
    grad = terms[:, n_answers:] @ membership.T
    grad -= terms[:, :n_answers]
    return nll, grad
