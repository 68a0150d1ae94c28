"""A reference for models trained on a synthetic survey: vote fractions predicted from the truth.

Gradient boosting (scikit-learn's `HistGradientBoostingRegressor`) fitted on the `true_*` columns
of the training galaxies, one regressor per answer, predicts what the volunteers would say of each
test galaxy. Its error is about the least a model can reach when it sees everything the simulator
knows; the gap between it and a constant is what the images could teach. Needs the `reference`
extra (scikit-learn).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from zoobot.shared import Schema, as_schema
from zoobot.shared.votes import question_sums, vote_fractions

TRUE_PREFIX = "true_"


def true_parameters(catalog: pd.DataFrame) -> pd.DataFrame:
    """The `true_*` columns as regressor features: numbers as float, the rest as categories."""
    columns = [c for c in catalog.columns if c.startswith(TRUE_PREFIX)]
    if not columns:
        raise ValueError("the catalog has no true_* columns: is it a synthetic survey's catalog?")
    features = pd.DataFrame(index=catalog.index)
    for column in columns:
        values = catalog[column]
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            features[column] = values.astype(str).astype("category")
        else:
            features[column] = values.astype(np.float64)
    return features


def _aligned(train: pd.DataFrame, test: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Features of both tables with the same categories, so codes mean the same in each."""
    both = true_parameters(pd.concat([train, test], ignore_index=True))
    return both.iloc[: len(train)], both.iloc[len(train) :]


def true_parameter_reference(
    train: pd.DataFrame,
    test: pd.DataFrame,
    schema: Schema | str,
    min_votes: int = 5,
    seed: int = 0,
    max_iter: int = 400,
) -> np.ndarray:
    """(test galaxy, answer) vote fractions predicted from the true parameters.

    Each answer's regressor learns its vote fraction on the `train` galaxies with at least
    `min_votes` votes for the question (squared error, so it predicts the expected fraction, as
    the models it is a reference for do), with early stopping on a tenth of them. Predictions are
    clipped to [0, 1] and renormalised within each question.
    """
    from sklearn.ensemble import HistGradientBoostingRegressor

    schema = as_schema(schema)
    counts = train[schema.label_cols].to_numpy(np.float64)
    fractions = vote_fractions(counts, schema)
    enough = question_sums(counts, schema) >= min_votes
    x_train, x_test = _aligned(train, test)
    predicted = np.zeros((len(test), len(schema.label_cols)))
    for q_index, question in enumerate(schema.questions):
        rows = enough[:, q_index]
        for answer in question.answers:
            if rows.sum() < 20:
                predicted[:, answer.index] = np.nanmean(fractions[:, answer.index])
                continue
            regressor = HistGradientBoostingRegressor(
                max_iter=max_iter,
                learning_rate=0.05,
                early_stopping=True,
                validation_fraction=0.1,
                categorical_features="from_dtype",
                random_state=seed,
            )
            regressor.fit(x_train[rows], fractions[rows, answer.index])
            predicted[:, answer.index] = regressor.predict(x_test)
    predicted = np.clip(predicted, 0.0, 1.0)
    totals = question_sums(predicted, schema)[:, schema.answer_question_index]
    return np.divide(predicted, totals, out=np.zeros_like(predicted), where=totals > 0)
