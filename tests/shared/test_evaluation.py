"""Per-question evaluation against hand-computed errors, baselines, noise floors and verdicts."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import comb

from zoobot.shared import (
    Schema,
    balanced_accuracy,
    binomial_noise_mae,
    classifier_metrics,
    constant_fractions,
    evaluate_vote_fractions,
    interval_coverage,
    paired_difference,
    roc_auc,
    spread,
    summarise_evaluation,
)

TREE = Schema(
    {"shape": ["smooth", "featured"], "bar": ["yes", "no"]},
    {"bar": "shape_featured"},
    name="tree",
)
# Three galaxies: the third was never asked about bars, the first by only 4 volunteers.
COUNTS = np.array([[6, 4, 1, 3], [2, 8, 6, 2], [10, 0, 0, 0]], dtype=float)
# Expected fractions: shape (0.6, 0.4), (0.2, 0.8), (0.9, 0.1); bar (0.5, 0.5), (0.75, 0.25), ...
CONCENTRATIONS = np.array([[3, 2, 1, 1], [1, 4, 3, 1], [9, 1, 1, 1]], dtype=float)
REFERENCE = np.array([[0.5, 0.5, 0.5, 0.5], [0.3, 0.7, 0.5, 0.5], [0.8, 0.2, 0.5, 0.5]])


def test_constant_fractions_average_over_the_galaxies_asked():
    # shape: (0.6 + 0.2 + 1.0) / 3 = 0.6; bar: galaxies 0 and 1 only, (0.25 + 0.75) / 2 = 0.5.
    np.testing.assert_allclose(constant_fractions(COUNTS, TREE), [0.6, 0.4, 0.5, 0.5], rtol=1e-12)


def test_binomial_noise_mae_by_hand():
    # n = 2, p = 1/2: X in {0, 1, 2} with 1/4, 1/2, 1/4, |X/2 - 1/2| = 1/2, 0, 1/2 -> 1/4.
    # n = 4, p = 1/4: de Moivre, E|X - np| = 2 v C(n, v) p^v (1 - p)^(n - v + 1), v = np + 1 = 2:
    # 2 * 2 * 6 / 16 * 27 / 64 / 4 = 0.158203125. p = 0 or 1 has no noise; n = 0 is undefined.
    got = binomial_noise_mae([0.5, 0.25, 1.0, 0.0, 0.5], [2, 4, 7, 3, 0])
    np.testing.assert_allclose(got[:4], [0.25, 0.158203125, 0.0, 0.0], atol=1e-15)
    assert np.isnan(got[4])


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 200), p=st.floats(0.001, 0.999))
def test_binomial_noise_mae_matches_de_moivre(n, p):
    v = int(np.floor(n * p)) + 1  # at most n, as p < 1
    expected = 2 * v * comb(n, v, exact=True) * p**v * (1 - p) ** (n - v + 1) / n
    # Sums of up to 201 float64 terms each within 1e-15 relative: 1e-12 is generous.
    np.testing.assert_allclose(binomial_noise_mae(p, n), expected, rtol=1e-10, atol=1e-14)


@pytest.fixture
def table():
    constant = np.array([0.5, 0.5, 0.5, 0.5])
    return evaluate_vote_fractions(
        CONCENTRATIONS, COUNTS, TREE, constant, reference=REFERENCE, min_votes=5
    )


def test_errors_by_hand(table):
    shape, bar = table.iloc[0], table.iloc[1]
    assert (shape["n"], bar["n"]) == (3, 1)  # bar: only galaxy 1 has >= 5 votes
    # shape, model: exact for galaxies 0 and 1, (|0.9 - 1| + |0.1 - 0|) / 2 = 0.1 for galaxy 2.
    assert shape["model_mae"] == pytest.approx(0.1 / 3, abs=1e-15)
    # shape, constant 0.5: errors 0.1, 0.3, 0.5.
    assert shape["constant_mae"] == pytest.approx(0.3, abs=1e-15)
    # shape, reference: 0.1, 0.1, 0.2.
    assert shape["reference_mae"] == pytest.approx(0.4 / 3, abs=1e-15)
    # gain: (0.3 - 0.1/3) / (0.3 - 0.4/3) = 1.6: the model beats this reference.
    assert shape["gain_captured"] == pytest.approx(1.6, abs=1e-12)
    # bar, galaxy 1 only: model exact, constant |0.75 - 0.5| = 0.25, reference 0.25.
    assert bar["model_mae"] == pytest.approx(0.0, abs=1e-15)
    assert bar["constant_mae"] == pytest.approx(0.25, abs=1e-15)
    assert np.isnan(bar["gain_captured"])  # the reference learned nothing: no gain to share


def test_noise_floor_is_the_binomial_error_at_the_observed_fraction(table):
    # shape: n = 10 at p = 0.6, 0.2, 1.0; both answers of a binary question have the same error.
    expected = np.mean(binomial_noise_mae([0.6, 0.2, 1.0], 10))
    assert table.iloc[0]["noise_floor"] == pytest.approx(expected, rel=1e-12)
    assert table.iloc[1]["noise_floor"] == pytest.approx(
        float(binomial_noise_mae(0.75, 8)), rel=1e-12
    )


def test_coverage_is_interval_coverage_over_the_same_galaxies(table):
    coverage = interval_coverage(CONCENTRATIONS, COUNTS, TREE, 0.9, min_votes=5)
    np.testing.assert_array_equal(table["coverage"].to_numpy(), coverage["coverage"].to_numpy())
    assert coverage["n"].tolist() == [3, 1]
    assert interval_coverage(CONCENTRATIONS, COUNTS, TREE, 0.9)["n"].tolist() == [3, 2]


def test_verdicts_say_when_the_model_is_no_better_than_the_constant():
    constant = constant_fractions(COUNTS, TREE)
    as_constant = np.tile(constant * 10, (3, 1))  # the model predicts the constant itself
    table = evaluate_vote_fractions(as_constant, COUNTS, TREE, constant)
    assert table["verdict"].str.startswith("no better than the constant").all()
    assert table["reference_mae"].isna().all() and table["gain_captured"].isna().all()


def test_verdicts_grade_the_share_of_the_gain(table):
    assert table.iloc[0]["verdict"].startswith("learns most of what it can (160%")
    assert table.iloc[1]["verdict"].startswith("beats the constant by 0.250")


def test_bootstrap_interval_of_the_gain_share():
    rng = np.random.default_rng(1)
    counts = rng.multinomial(20, [0.3, 0.7], size=200).astype(float)
    counts = np.hstack([counts, np.zeros((200, 2))])  # nobody asked about bars
    truth = counts[:, :2] / 20
    noisy = np.clip(truth + rng.normal(0, 0.05, truth.shape), 0.01, 0.99)
    model = np.hstack([noisy / noisy.sum(1, keepdims=True) * 10, np.ones((200, 2))])
    constant = np.array([0.3, 0.7, 0.5, 0.5])
    reference = np.hstack([truth, np.full((200, 2), 0.5)])
    args = (model, counts, TREE, constant, reference)
    table = evaluate_vote_fractions(*args, bootstrap=400, seed=3)
    shape = table.iloc[0]
    assert shape["gain_low"] < shape["gain_captured"] < shape["gain_high"]
    assert "90% interval" in shape["verdict"]
    again = evaluate_vote_fractions(*args, bootstrap=400, seed=3)
    pd.testing.assert_frame_equal(table, again)  # the resamples are seeded
    assert np.isnan(table.iloc[1]["gain_low"])  # no galaxy was asked about bars
    # The reference itself captures the whole gain in every resample: the interval is one point.
    exact = np.hstack([truth * 10, np.ones((200, 2))])
    same = evaluate_vote_fractions(exact, counts, TREE, constant, reference, bootstrap=50)
    assert same.iloc[0]["gain_low"] == pytest.approx(1.0, abs=1e-12)
    assert same.iloc[0]["gain_high"] == pytest.approx(1.0, abs=1e-12)


def test_summary_weighs_questions_equally(table):
    summary = summarise_evaluation(table)
    assert summary["model_mae"] == pytest.approx((0.1 / 3 + 0.0) / 2, abs=1e-15)
    assert summary["beats_constant"] is True
    # pooled over questions: gains (0.3 - 0.1/3) + 0.25 over learnable (0.3 - 0.4/3) + 0.
    assert summary["pooled_gain_captured"] == pytest.approx(
        (0.3 - 0.1 / 3 + 0.25) / (0.3 - 0.4 / 3), rel=1e-12
    )


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="one fraction per answer"):
        evaluate_vote_fractions(CONCENTRATIONS, COUNTS, TREE, [0.5, 0.5])
    with pytest.raises(ValueError, match="reference has shape"):
        evaluate_vote_fractions(CONCENTRATIONS, COUNTS, TREE, np.full(4, 0.5), REFERENCE[:2])
    assert isinstance(
        evaluate_vote_fractions(CONCENTRATIONS, COUNTS, TREE, np.full(4, 0.5)), pd.DataFrame
    )


# -- binary classifiers: hand-computed values ------------------------------------------------------
def test_roc_auc_counts_ties_as_half():
    # positives score 0.9, 0.4, 0.3; negatives 0.1, 0.4. Of the 6 pairs the positive is ahead in
    # 0.9>0.1, 0.9>0.4, 0.4>0.1, 0.3>0.1, tied in 0.4=0.4, behind in 0.3<0.4: 4.5 / 6.
    assert roc_auc([1, 0, 1, 0, 1], [0.9, 0.1, 0.4, 0.4, 0.3]) == pytest.approx(0.75, abs=1e-12)
    assert roc_auc([1, 1, 0], [0.2, 0.3, 0.9]) == 0.0
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_balanced_accuracy_is_half_for_any_constant_answer():
    labels = [1, 1, 1, 0, 0, 0, 0, 0]
    # recall 1/3 on the positives, 4/5 on the negatives
    predicted = [1, 0, 0, 0, 0, 0, 0, 1]
    assert balanced_accuracy(labels, predicted) == pytest.approx((1 / 3 + 4 / 5) / 2, abs=1e-12)
    assert balanced_accuracy(labels, [0] * 8) == 0.5
    assert balanced_accuracy(labels, [1] * 8) == 0.5


def test_classifier_metrics_put_the_class_balance_beside_accuracy():
    labels = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    says_no = np.full(10, 0.1)  # a model that answers "no" to every galaxy
    m = classifier_metrics(labels, says_no)
    assert (m["n"], m["positives"], m["negatives"]) == (10, 2, 8)
    assert m["accuracy"] == 0.8 == m["constant_accuracy"]
    assert m["balanced_accuracy"] == 0.5 and m["predicted_positive_rate"] == 0.0
    assert m["roc_auc"] == 0.5  # every score tied
    useful = np.array([0.7, 0.2, 0.6, 0.1, 0.1, 0.3, 0.2, 0.4, 0.1, 0.9])
    m = classifier_metrics(labels, useful)
    # predicted positive: galaxies 0, 2, 9 -> both positives found, one false alarm in 8
    assert m["predicted_positive_rate"] == pytest.approx(0.3)
    assert m["accuracy"] == pytest.approx(0.9)
    assert m["balanced_accuracy"] == pytest.approx((1 + 7 / 8) / 2)
    assert m["roc_auc"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ"):
        classifier_metrics(labels, useful[:5])


def test_spread_and_paired_difference():
    first, second = [0.8, 0.7, 0.9], [0.6, 0.7, 0.6]
    d = paired_difference(first, second)
    # differences 0.2, 0.0, 0.3: mean 1/6, sample variance ((1/30)^2 + (1/6)^2 + (2/15)^2) / 2
    std = np.sqrt(((1 / 30) ** 2 + (1 / 6) ** 2 + (2 / 15) ** 2) / 2)
    assert d["differences"] == pytest.approx([0.2, 0.0, 0.3], abs=1e-12)
    assert d["mean"] == pytest.approx(1 / 6, abs=1e-12)
    assert d["std"] == pytest.approx(std, abs=1e-12)
    assert d["n"] == 3 and d["first_ahead"] == 2
    half = 2.919986 * std / np.sqrt(3)  # t quantile 0.95 with 2 degrees of freedom (tables)
    assert (d["low"], d["high"]) == pytest.approx((1 / 6 - half, 1 / 6 + half), abs=1e-6)
    one = spread([0.5])
    assert one["mean"] == 0.5 and np.isnan(one["std"]) and np.isnan(one["low"])
    with pytest.raises(ValueError, match="must match"):
        paired_difference([1.0, 2.0], [1.0])
