"""A synthetic Galaxy Zoo survey: GalSim-rendered galaxies with votes from simulated volunteers.

`make_survey(n, out_dir)` is the entry point; the modules behind it draw true morphologies
(`morphology`), render them (`render`, `layers`; needs the `synthetic` extra, GalSim), and
simulate volunteers walking a real decision tree (`answers`, `volunteers`), answering from what
the images show (`appearance`). `reference` predicts the votes from the true parameters, the
reference for models trained on a survey (needs the `reference` extra, scikit-learn).
"""

from zoobot.data.synthetic.answers import UnsupportedQuestionError, check_schema
from zoobot.data.synthetic.morphology import Morphology, draw_morphology
from zoobot.data.synthetic.survey import (
    SurveyError,
    draw_galaxy,
    make_survey,
    render_galaxy,
    survey_catalog,
)
from zoobot.data.synthetic.volunteers import simulate_votes

__all__ = [
    "Morphology",
    "SurveyError",
    "UnsupportedQuestionError",
    "check_schema",
    "draw_galaxy",
    "draw_morphology",
    "make_survey",
    "render_galaxy",
    "simulate_votes",
    "survey_catalog",
]
