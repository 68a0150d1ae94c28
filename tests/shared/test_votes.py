"""Per-question sums, totals and fractions against loops over each question's answer columns, and
the rule every entry point checks vote counts by."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from zoobot.shared import (
    MAX_VOTES,
    answer_totals,
    count_problems,
    get_schema,
    question_sums,
    vote_fractions,
)

SCHEMA = get_schema("decals_dr5")


def test_sums_and_totals_match_a_loop_over_questions():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 20, size=(5, len(SCHEMA.label_cols), 3)).astype(float)
    sums = question_sums(values, SCHEMA)
    totals = answer_totals(values, SCHEMA)
    assert sums.shape == (5, len(SCHEMA.questions), 3) and totals.shape == values.shape
    for j, question in enumerate(SCHEMA.questions):
        block = values[:, question.start : question.end + 1]
        np.testing.assert_array_equal(sums[:, j], block.sum(axis=1))
        for i in range(question.start, question.end + 1):
            np.testing.assert_array_equal(totals[:, i], block.sum(axis=1))


def test_fractions_are_nan_exactly_where_nobody_answered():
    counts = np.zeros((2, len(SCHEMA.label_cols)), dtype=np.int64)
    counts[0, :3] = [3, 1, 0]  # smooth-or-featured answered by 4, nothing else
    counts[1, 3:5] = [0, 2]  # only disk-edge-on answered
    fractions = vote_fractions(counts, SCHEMA)
    assert fractions.dtype == np.float64
    np.testing.assert_array_equal(fractions[0, :3], [0.75, 0.25, 0.0])
    np.testing.assert_array_equal(fractions[1, 3:5], [0.0, 1.0])
    assert np.isnan(fractions[0, 3:]).all()
    assert np.isnan(fractions[1, :3]).all() and np.isnan(fractions[1, 5:]).all()


def test_count_problems_name_each_kind_of_bad_count():
    values = np.array([[3, np.nan, -1, 2.5], [np.inf, 1e12, 1e300, MAX_VOTES]])
    problems = count_problems(values)
    assert {k: np.argwhere(v).tolist() for k, v in problems.items()} == {
        "NaN or infinite": [[0, 1], [1, 0]],
        "negative": [[0, 2]],
        "not a whole number": [[0, 3]],
        f"over {MAX_VOTES:g}": [[1, 1], [1, 2]],
    }
    assert count_problems(np.array([[0, 1, MAX_VOTES]])) == {}


@settings(max_examples=300, deadline=None)
@given(
    values=arrays(
        np.float64,
        array_shapes(max_dims=2, max_side=5),
        elements=st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(-3, MAX_VOTES + 3).map(float),
        ),
    )
)
def test_count_problems_flag_exactly_what_is_not_a_vote_count(values):
    """Every entry is flagged by exactly one problem unless it is a whole number in [0, MAX_VOTES]
    (float32 keeps those exact, as shards and training batches store them)."""
    problems = count_problems(values)
    flagged = np.zeros(values.shape, int)
    for mask in problems.values():
        assert mask.shape == values.shape and mask.any()
        flagged += mask
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(values) & (values >= 0) & (values == np.round(values))
        valid &= values <= MAX_VOTES
    np.testing.assert_array_equal(flagged, (~valid).astype(int))
    np.testing.assert_array_equal(values[valid].astype(np.float32), values[valid])
