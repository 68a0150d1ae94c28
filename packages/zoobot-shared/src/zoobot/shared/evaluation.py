"""Is the model learning? Per question: its vote-fraction error against the baselines that matter.

For each question, over the galaxies with at least `min_votes` votes for it:

- `model_mae`: mean absolute error of the model's expected vote fractions (mean over answers);
- `constant_mae`: the same for a constant prediction, each answer's mean fraction in training;
- `noise_floor`: the error a perfect model would still have, because a few votes scatter the
  observed fraction around the crowd's (binomial sampling, at the observed fraction);
- `reference_mae`: the same error for reference fractions, if given (on a synthetic survey, a model
  that sees the true parameters: the most the images could teach);
- `gain_captured`: (constant - model) / (constant - reference), the share of the learnable gain,
  with `gain_low` / `gain_high`, its central 90% interval over bootstrap resamples of the galaxies
  when asked for (a share of a small gain, on a few hundred galaxies, is uncertain);
- `coverage`: the share of observed counts inside the model's central `level` predictive interval
  (`zoobot.shared.stats.interval_coverage`; `level` when calibrated);
- `verdict`: one line a reader can act on.

For a binary classifier (a rare feature from a few labels): `classifier_metrics` gives ROC AUC,
balanced accuracy and the class balance beside accuracy (a classifier that always answers "no"
is 90% accurate on a 10% feature, and balanced accuracy 0.5 says so); `spread` and
`paired_difference` summarise repeated runs (seeds) and compare two methods seed by seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from zoobot.shared.loss import check_counts
from zoobot.shared.schema import Schema
from zoobot.shared.stats import _per_question_mean, expected_vote_fractions, interval_coverage
from zoobot.shared.votes import answer_totals, question_sums, vote_fractions

COLUMNS = (
    "question",
    "n",
    "model_mae",
    "constant_mae",
    "noise_floor",
    "reference_mae",
    "gain_captured",
    "gain_low",
    "gain_high",
    "coverage",
    "verdict",
)
COVERAGE_TOLERANCE = 0.05  # coverage within level +- this is called calibrated
GAIN_LEVELS = ((0.6, "learns most of what it can"), (0.3, "learns some"), (0.0, "learns little"))


def constant_fractions(counts, schema: Schema) -> np.ndarray:
    """Each answer's mean vote fraction over the galaxies asked its question: (answer,).

    The constant baseline: fit it on the training galaxies. An answer whose question nobody was
    asked gets NaN.
    """
    fractions = vote_fractions(check_counts(counts, schema), schema)
    asked = ~np.isnan(fractions)
    total = np.where(asked, fractions, 0.0).sum(axis=0)
    n = asked.sum(axis=0)
    return np.divide(total, n, out=np.full(len(n), np.nan), where=n > 0)


def binomial_noise_mae(fractions, totals) -> np.ndarray:
    """E|X/n - p| for X ~ Binomial(n, p): the error of knowing p exactly, given n votes.

    `fractions` (p) and `totals` (n) broadcast together; n = 0 gives NaN. Summed exactly over the
    n + 1 outcomes (n is a vote count, at most a few hundred).
    """
    p = np.asarray(fractions, dtype=np.float64)
    n = np.asarray(totals, dtype=np.float64)
    p, n = np.broadcast_arrays(p, n)
    out = np.full(p.shape, np.nan)
    valid = (n > 0) & ~np.isnan(p)
    if not valid.any():
        return out
    pv, nv = p[valid], n[valid]
    k = np.arange(int(nv.max()) + 1)[:, None]
    pmf = scipy_stats.binom.pmf(k, nv[None, :], pv[None, :])
    out[valid] = (pmf * np.abs(k / nv[None, :] - pv[None, :])).sum(axis=0)
    return out


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Column means of (galaxy, question) `values` over the rows where `mask`; NaN without any."""
    n = mask.sum(axis=0)
    total = np.where(mask, values, 0.0).sum(axis=0)
    return np.divide(total, n, out=np.full(len(n), np.nan), where=n > 0)


def _gain(constant, model, reference) -> np.ndarray:
    """(constant - model) / (constant - reference) where the reference gains, else NaN."""
    constant, model, reference = (
        np.asarray(v, dtype=np.float64) for v in (constant, model, reference)
    )
    learnable = constant - reference
    return np.divide(
        constant - model, learnable, out=np.full(learnable.shape, np.nan), where=learnable > 0
    )


def _bootstrap_gain(
    rows: dict[str, np.ndarray], enough: np.ndarray, draws: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """5th and 95th percentiles of each question's gain share over resamples of its galaxies
    (the model's, constant's and reference's errors resampled together, galaxy by galaxy)."""
    rng = np.random.default_rng(seed)
    low, high = np.full(enough.shape[1], np.nan), np.full(enough.shape[1], np.nan)
    for q in range(enough.shape[1]):
        rated = np.flatnonzero(enough[:, q])
        if len(rated) == 0:
            continue
        picks = rated[rng.integers(0, len(rated), size=(draws, len(rated)))]
        means = {k: rows[k][picks, q].mean(axis=1) for k in ("model_mae", "constant_mae")}
        reference = rows["reference_mae"][picks, q].mean(axis=1)
        shares = _gain(means["constant_mae"], means["model_mae"], reference)
        if np.isfinite(shares).any():
            low[q], high[q] = np.nanpercentile(shares, [5, 95])
    return low, high


def verdict(row: pd.Series, level: float) -> str:
    """One line on a question's row: does the model beat the constant, how much of the gain, and
    are its intervals calibrated."""
    if row["n"] == 0:
        return "no galaxies with enough votes"
    if not row["model_mae"] < row["constant_mae"]:
        text = "no better than the constant"
    elif np.isnan(row["gain_captured"]):
        text = f"beats the constant by {row['constant_mae'] - row['model_mae']:.3f}"
    else:
        share = row["gain_captured"]
        label = next(text for bound, text in GAIN_LEVELS if share >= bound)
        text = f"{label} ({share:.0%} of the learnable gain"
        if np.isfinite(row["gain_low"]):
            text += f", 90% interval {row['gain_low']:.0%} to {row['gain_high']:.0%}"
        text += ")"
    coverage = row["coverage"]
    if coverage < level - COVERAGE_TOLERANCE:
        text += f"; intervals too narrow ({coverage:.2f} covered)"
    elif coverage > level + COVERAGE_TOLERANCE:
        text += f"; intervals too wide ({coverage:.2f} covered)"
    return text


def evaluate_vote_fractions(
    concentrations,
    counts,
    schema: Schema,
    constant,
    reference=None,
    min_votes: int = 5,
    level: float = 0.9,
    bootstrap: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """The per-question table of the module docstring, one row per question of `schema`.

    `concentrations` are the model's, (galaxy, answer) or (galaxy, answer, pass); `counts` the
    observed votes of the same galaxies; `constant` the baseline's fractions, (answer,) (see
    `constant_fractions`); `reference` optional fractions of a reference model, (galaxy, answer).
    `bootstrap` resamples (with a reference) give `gain_low` / `gain_high` (NaN without).
    """
    counts = check_counts(counts, schema)
    predicted = expected_vote_fractions(concentrations, schema)
    if predicted.shape != counts.shape:
        raise ValueError(
            f"concentrations are for {predicted.shape[0]} galaxies and counts for {counts.shape[0]}"
        )
    constant = np.asarray(constant, dtype=np.float64)
    if constant.shape != (len(schema.label_cols),):
        raise ValueError(
            f"constant has shape {constant.shape}; expected one fraction per answer "
            f"({len(schema.label_cols)},)"
        )
    observed = vote_fractions(counts, schema)
    totals = answer_totals(counts, schema)
    enough = question_sums(counts, schema) >= min_votes
    rows = {
        "model_mae": _per_question_mean(np.abs(predicted - observed), schema),
        "constant_mae": _per_question_mean(np.abs(constant - observed), schema),
        "noise_floor": _per_question_mean(binomial_noise_mae(observed, totals), schema),
    }
    if reference is not None:
        reference = np.asarray(reference, dtype=np.float64)
        if reference.shape != counts.shape:
            raise ValueError(f"reference has shape {reference.shape}; expected {counts.shape}")
        rows["reference_mae"] = _per_question_mean(np.abs(reference - observed), schema)
    table = pd.DataFrame({"question": [q.name for q in schema.questions], "n": enough.sum(axis=0)})
    for name, values in rows.items():
        table[name] = _masked_mean(values, enough)
    if reference is None:
        table["reference_mae"] = np.nan
    table["gain_captured"] = _gain(
        table["constant_mae"].to_numpy(), table["model_mae"], table["reference_mae"].to_numpy()
    )
    table["gain_low"], table["gain_high"] = np.nan, np.nan
    if reference is not None and bootstrap > 0:
        low, high = _bootstrap_gain(rows, enough, bootstrap, seed)
        table["gain_low"], table["gain_high"] = low, high
    coverage = interval_coverage(concentrations, counts, schema, level, min_votes=min_votes)
    table["coverage"] = coverage["coverage"].to_numpy()
    table["verdict"] = [verdict(row, level) for _, row in table.iterrows()]
    return table[list(COLUMNS)]


def summarise_evaluation(table: pd.DataFrame) -> dict:
    """Averages over the questions of an `evaluate_vote_fractions` table (questions weigh equally).

    `gain_captured` is the mean of the questions' shares, `pooled_gain_captured` the share of the
    summed learnable gain; `min_gain_captured` the worst question; `beats_constant` whether every
    question does.
    """
    rated = table[table["n"] > 0]
    shares = rated["gain_captured"]
    learnable = (rated["constant_mae"] - rated["reference_mae"]).sum()
    gained = (rated["constant_mae"] - rated["model_mae"]).sum()
    return {
        "model_mae": float(rated["model_mae"].mean()),
        "constant_mae": float(rated["constant_mae"].mean()),
        "noise_floor": float(rated["noise_floor"].mean()),
        "reference_mae": float(rated["reference_mae"].mean()),
        "gain_captured": float(shares.mean()),
        "pooled_gain_captured": float(gained / learnable) if learnable > 0 else float("nan"),
        "min_gain_captured": float(shares.min()),
        "beats_constant": bool((rated["model_mae"] < rated["constant_mae"]).all()),
        "coverage_range": (float(rated["coverage"].min()), float(rated["coverage"].max())),
    }


# -- binary classifiers ------------------------------------------------------------------------------
SPREAD_LEVEL = 0.9  # central interval of a mean over seeds (Student's t)


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random negative,
    ties counting 1/2 (the Mann-Whitney U statistic / (positives x negatives)); NaN with one class.
    """
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = scipy_stats.rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def balanced_accuracy(labels, predicted) -> float:
    """Mean over the classes present in `labels` of the share of that class predicted right: 0.5
    for any constant answer of a binary classifier, whatever the class balance."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    return float(np.mean([(predicted[labels == c] == c).mean() for c in np.unique(labels)]))


def classifier_metrics(labels, probabilities, threshold: float = 0.5) -> dict:
    """Scores of a binary classifier's positive-class `probabilities` against 0/1 `labels`.

    The class balance (`positives`, `negatives`) and the share predicted positive at `threshold`
    sit beside `accuracy`, `balanced_accuracy` and `roc_auc`; `constant_accuracy` is what always
    answering the majority class scores.
    """
    labels = np.asarray(labels).astype(bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.shape != probabilities.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and probabilities {probabilities.shape} differ")
    predicted = probabilities > threshold
    positives = int(labels.sum())
    return {
        "n": len(labels),
        "positives": positives,
        "negatives": len(labels) - positives,
        "predicted_positive_rate": float(predicted.mean()),
        "accuracy": float((predicted == labels).mean()),
        "constant_accuracy": max(positives, len(labels) - positives) / len(labels),
        "balanced_accuracy": balanced_accuracy(labels, predicted),
        "roc_auc": roc_auc(labels, probabilities),
    }


def spread(values, level: float = SPREAD_LEVEL) -> dict:
    """Mean, sample standard deviation and count of repeated measurements (e.g. seeds), with the
    central `level` interval of the mean (Student's t; NaN for fewer than two values)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    std = float(values.std(ddof=1)) if n > 1 else float("nan")
    half = scipy_stats.t.ppf(0.5 + level / 2, n - 1) * std / np.sqrt(n) if n > 1 else np.nan
    return {"mean": mean, "std": std, "n": n, "low": mean - half, "high": mean + half}


def paired_difference(first, second, level: float = SPREAD_LEVEL) -> dict:
    """`first - second` run by run (the same seed: same labels, same initialisation): its
    `spread`, the differences themselves and how often `first` is ahead. Pairing removes what the
    two share (which labels were drawn), so it is tighter than comparing the two means."""
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(f"paired runs must match: {first.shape} vs {second.shape}")
    differences = first - second
    return {
        **spread(differences, level),
        "differences": differences.tolist(),
        "first_ahead": int((differences > 0).sum()),
    }
