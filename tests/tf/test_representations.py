"""zoobot.tf.get_representations and similar_galaxies: features put galaxies of the same true kind
together more often than chance (the tables, PCA and failures: tests/contract/test_predict.py).

Training even a tiny encoder costs most of a minute on 2 busy cores, so the features here are those
of an untrained test_convnext with fixed weights: smooth and disk galaxies of the synthetic survey
differ enough in light profile for random convolutional features to separate them (about 0.8 of
neighbours share the kind against 0.47 by chance). Trained features are exercised by the torch
package's test and by the demo.
"""

import keras
import numpy as np
import pandas as pd
import pytest

from zoobot.data.synthetic import make_survey
from zoobot.shared import get_schema
from zoobot.tf.representations import get_representations, similar_galaxies
from zoobot.tf.tree import ZoobotTree

SCHEMA = get_schema("decals_dr5")
SIZE = 32
FAST = {"image_size": SIZE, "batch_size": 32, "chunk_rows": 64, "progress": False, "num_workers": 1}


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> pd.DataFrame:
    """120 synthetic galaxies (smooth and disk kinds, a few artifacts), 32 px."""
    out = tmp_path_factory.mktemp("survey")
    return make_survey(120, out, schema=SCHEMA, image_size=SIZE, seed=11, progress=False)


@pytest.fixture(scope="module")
def model() -> ZoobotTree:
    keras.utils.set_random_seed(0)
    return ZoobotTree(SCHEMA, "test_convnext")


@pytest.fixture(scope="module")
def raw(survey, model, tmp_path_factory):
    """Representations of the whole survey from the model's encoder (given as the Zoobot model)."""
    out = tmp_path_factory.mktemp("raw")
    return get_representations(survey, model, out / "features.parquet", **FAST)


def same_kind_rate(neighbours: pd.DataFrame, kinds: pd.Series) -> float:
    """Fraction of (query, neighbour) pairs of the same true kind."""
    return float(
        (kinds[neighbours["query_id"]].to_numpy() == kinds[neighbours["id_str"]].to_numpy()).mean()
    )


def test_neighbours_share_the_true_kind_more_often_than_chance(survey, raw):
    assert (raw.n_represented, raw.n_failed, raw.pca) == (120, 0, None)
    features = pd.read_parquet(raw.representations)
    assert features.columns.tolist() == ["id_str", *(f"feat_{i}" for i in range(64))]
    assert (features.dtypes.iloc[1:] == np.float32).all()
    assert features["id_str"].tolist() == survey["id_str"].tolist()

    neighbours = similar_galaxies(features, survey["id_str"], k=5)
    assert neighbours.columns.tolist() == ["query_id", "rank", "id_str", "distance"]
    assert (neighbours["query_id"] != neighbours["id_str"]).all()
    kinds = survey.set_index("id_str")["true_kind"]
    counts = kinds.value_counts().to_numpy()
    chance = float((counts * (counts - 1)).sum() / (len(kinds) * (len(kinds) - 1)))
    assert same_kind_rate(neighbours, kinds) > chance + 0.2
