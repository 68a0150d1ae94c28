"""The true-parameter reference: it learns the votes from the truth, far better than a constant."""

import numpy as np
import pytest

from zoobot.data.synthetic import survey_catalog
from zoobot.data.synthetic.reference import true_parameter_reference, true_parameters
from zoobot.shared import constant_fractions, get_schema, vote_fractions
from zoobot.shared.votes import question_sums

SCHEMA = get_schema("decals_dr5")


def test_true_parameters_are_numbers_and_categories():
    catalog = survey_catalog(SCHEMA, seed=1, n=20)
    features = true_parameters(catalog)
    assert list(features.columns) == [c for c in catalog.columns if c.startswith("true_")]
    assert features["true_kind"].dtype == "category"
    assert features["true_ring"].dtype == "category"  # a bool is a category, not a number
    assert features["true_size"].dtype == np.float64
    with pytest.raises(ValueError, match="no true_"):
        true_parameters(catalog.drop(columns=features.columns))


def test_reference_beats_the_constant_on_the_questions_the_truth_decides():
    catalog = survey_catalog(SCHEMA, seed=1, n=1500)
    train, test = catalog.iloc[:1200], catalog.iloc[1200:]
    predicted = true_parameter_reference(train, test, SCHEMA)
    counts = test[SCHEMA.label_cols].to_numpy(np.float64)
    observed = vote_fractions(counts, SCHEMA)
    constant = constant_fractions(train[SCHEMA.label_cols].to_numpy(np.float64), SCHEMA)
    totals = question_sums(predicted, SCHEMA)
    np.testing.assert_allclose(totals, 1.0, atol=1e-12)  # fractions of each question sum to 1
    for name in ("smooth-or-featured-dr5", "disk-edge-on-dr5", "how-rounded-dr5"):
        q = SCHEMA.get_question(name)
        cols = slice(q.start, q.end + 1)
        rows = counts[:, cols].sum(axis=1) >= 5
        model = np.abs(predicted[rows, cols] - observed[rows, cols]).mean()
        base = np.abs(constant[cols] - observed[rows, cols]).mean()
        # The truth decides these questions up to the volunteers' own scatter: trained on 1,200
        # galaxies the reference halves the constant's error or better (measured: 0.14 -> 0.07,
        # 0.20 -> 0.10, 0.23 -> 0.08).
        assert model < 0.6 * base, name
