"""Per-question sums, totals and fractions of per-answer values: the one place they are computed.

Values are laid out `(galaxy, answer, ...)` in `schema.label_cols` order; every function is
vectorised over questions with `np.add.reduceat` on the schema's question starts.
"""

from __future__ import annotations

import numpy as np

from zoobot.shared.schema import Schema


def question_sums(values: np.ndarray, schema: Schema) -> np.ndarray:
    """Sum over each question's answers, (galaxy, answer, ...) -> (galaxy, question, ...)."""
    return np.add.reduceat(values, schema.question_starts, axis=1)


def answer_totals(values: np.ndarray, schema: Schema) -> np.ndarray:
    """Each answer's question sum, broadcast back to the answers: same shape as `values`."""
    return question_sums(values, schema)[:, schema.answer_question_index]


def vote_fractions(counts: np.ndarray, schema: Schema) -> np.ndarray:
    """Count / question total per answer as float64, NaN where nobody answered the question."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = answer_totals(counts, schema)
    return np.divide(counts, totals, out=np.full(counts.shape, np.nan), where=totals > 0)


MAX_VOTES = 100_000
"""The most votes one answer of one galaxy may hold. Galaxy Zoo's most-classified galaxies have a
few hundred; below this bound counts stay whole numbers in float32 (shards and training batches
hold float32, exact to 2**24) and the float32 Dirichlet-multinomial loss, which takes the log-gamma
of the totals, keeps its precision."""


def count_problems(values, max_votes: float = MAX_VOTES) -> dict[str, np.ndarray]:
    """Where numeric `values` (any shape) fail to be vote counts: `{problem: boolean mask}` for
    each problem found among "NaN or infinite", "negative", "not a whole number" and
    "over <max_votes>"; an empty dict for valid counts. Each entry has exactly one problem."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore"):
        masks = {
            "NaN or infinite": ~finite,
            "negative": finite & (values < 0),
            "not a whole number": finite & (values >= 0) & (values != np.floor(values)),
            f"over {max_votes:g}": finite & (values > max_votes) & (values == np.floor(values)),
        }
    return {problem: mask for problem, mask in masks.items() if mask.any()}
