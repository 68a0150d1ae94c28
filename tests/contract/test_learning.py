"""A regression guard against a model that stops learning, the same in every framework: `train`
with its defaults (log-spaced head, dihedral augmentation) on a small synthetic survey must give
predictions that vary across galaxies and beat the constant baseline on the questions the images
show plainly (smooth or featured, edge-on or not)."""

import numpy as np
import pytest

from zoobot.data.images import read_image
from zoobot.data.splits import assign_splits
from zoobot.data.synthetic import make_survey
from zoobot.shared import (
    constant_fractions,
    evaluate_vote_fractions,
    expected_vote_fractions,
    get_schema,
)

SCHEMA = get_schema("decals_dr5")
SIZE = 32
SPLITS = {"train": 0.7, "validation": 0.1, "test": 0.2}
SEED = 0
EASY = ("smooth-or-featured-dr5", "disk-edge-on-dr5")


@pytest.fixture(scope="module")
def learning_survey(tmp_path_factory):
    """600 synthetic galaxies at 32 px, and the row positions of each split `train` will use."""
    out = tmp_path_factory.mktemp("learning-survey")
    catalog = make_survey(600, out, schema=SCHEMA, image_size=SIZE, seed=3, progress=False)
    return catalog, assign_splits(catalog, SPLITS, SEED)


def test_a_short_training_run_learns_the_easy_questions(fw, learning_survey, tmp_path):
    catalog, rows = learning_survey
    model = fw.package.train(
        catalog,
        SCHEMA,
        tmp_path / "run",
        architecture="test_resnet",
        epochs=12,
        batch_size=32,
        image_size=SIZE,
        num_workers=0,
        accelerator="cpu",
        devices=1,
        patience=12,
        seed=SEED,
        splits=SPLITS,
        progress=False,
    )
    test = catalog.iloc[rows["test"]]
    images = np.stack([read_image(path, SIZE) for path in test["file_loc"]])
    concentrations = fw.backend.predict_batch(model, images)
    counts = test[SCHEMA.label_cols].to_numpy(np.float64)
    train = catalog.iloc[rows["train"]][SCHEMA.label_cols].to_numpy(np.float64)
    table = evaluate_vote_fractions(
        concentrations, counts, SCHEMA, constant_fractions(train, SCHEMA)
    ).set_index("question")
    smooth = SCHEMA.label_cols.index("smooth-or-featured-dr5_smooth")
    fractions = expected_vote_fractions(concentrations, SCHEMA)[:, smooth]
    assert fractions.std() > 0.05, "predictions barely vary across galaxies"
    for question in EASY:
        row = table.loc[question]
        assert row["model_mae"] < row["constant_mae"], (question, row.to_dict())
