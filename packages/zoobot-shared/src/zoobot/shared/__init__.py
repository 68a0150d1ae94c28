"""Framework-free core of Zoobot: schemas, the loss reference, vote statistics, prediction tables."""

from zoobot.shared.loss import (
    dirichlet_multinomial_nll,
    dirichlet_multinomial_nll_grad,
    training_objective,
)
from zoobot.shared.registry import as_schema, get_schema, list_schemas
from zoobot.shared.schema import Answer, Question, Schema, SchemaError
from zoobot.shared.stats import (
    calibration_table,
    credible_intervals,
    expected_entropy,
    expected_vote_fractions,
    expected_votes,
    fractions_per_pass,
    interval_coverage,
    mutual_information,
    predictive_entropy,
    probability_asked,
)
from zoobot.shared.tables import (
    PCAProjection,
    Predictions,
    PredictionWriter,
    friendly_table,
    pca_compress,
    read_predictions_full,
    write_friendly,
    write_predictions_full,
)
from zoobot.shared.votes import (
    MAX_VOTES,
    answer_totals,
    count_problems,
    question_sums,
    vote_fractions,
)

__all__ = [
    "Answer",
    "Question",
    "Schema",
    "SchemaError",
    "as_schema",
    "get_schema",
    "list_schemas",
    "dirichlet_multinomial_nll",
    "dirichlet_multinomial_nll_grad",
    "training_objective",
    "calibration_table",
    "credible_intervals",
    "expected_entropy",
    "expected_vote_fractions",
    "expected_votes",
    "fractions_per_pass",
    "interval_coverage",
    "mutual_information",
    "predictive_entropy",
    "probability_asked",
    "PCAProjection",
    "PredictionWriter",
    "Predictions",
    "friendly_table",
    "pca_compress",
    "read_predictions_full",
    "write_friendly",
    "write_predictions_full",
    "MAX_VOTES",
    "answer_totals",
    "count_problems",
    "question_sums",
    "vote_fractions",
]
