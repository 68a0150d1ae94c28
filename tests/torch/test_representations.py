"""get_representations and similar_galaxies: features of a model briefly trained on votes put galaxies
of the same true kind together; exact neighbour search (the tables: tests/contract)."""

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl

from zoobot.data.synthetic import make_survey
from zoobot.shared import get_schema
from zoobot.torch import GalaxyDataModule, ZoobotTree
from zoobot.torch.representations import get_representations, similar_galaxies

SCHEMA = get_schema("decals_dr5")
SIZE = 32
FAST = {"image_size": SIZE, "batch_size": 32, "chunk_rows": 64, "progress": False, "num_workers": 0}


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> pd.DataFrame:
    """160 synthetic galaxies (smooth and disk kinds), 32 px."""
    out = tmp_path_factory.mktemp("survey")
    return make_survey(160, out, schema=SCHEMA, image_size=SIZE, seed=11, progress=False)


@pytest.fixture(scope="module")
def trained(survey) -> ZoobotTree:
    """A small ResNet trained for a few epochs on the survey's votes."""
    pl.seed_everything(0, workers=True)
    model = ZoobotTree(SCHEMA, "resnet10t", learning_rate=3e-3, warmup_epochs=0)
    splits = {"train": survey, "validation": survey.iloc[:32]}
    data = GalaxyDataModule(
        splits, SCHEMA.label_cols, image_size=SIZE, batch_size=32, num_workers=0
    )
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, data)
    return model.eval()


def same_kind_rate(neighbours: pd.DataFrame, kinds: pd.Series) -> float:
    """Fraction of (query, neighbour) pairs of the same true kind."""
    return float(
        (kinds[neighbours["query_id"]].to_numpy() == kinds[neighbours["id_str"]].to_numpy()).mean()
    )


def test_neighbours_share_the_true_kind_more_often_than_chance(survey, trained, tmp_path):
    files = get_representations(survey, trained, tmp_path / "features.parquet", **FAST)
    features = pd.read_parquet(files.representations)
    assert features.columns.tolist() == ["id_str", *(f"feat_{i}" for i in range(512))]
    assert (features.dtypes.iloc[1:] == np.float32).all()
    assert features["id_str"].tolist() == survey["id_str"].tolist()

    neighbours = similar_galaxies(features, survey["id_str"], k=5)
    assert neighbours.columns.tolist() == ["query_id", "rank", "id_str", "distance"]
    assert (neighbours["query_id"] != neighbours["id_str"]).all()
    kinds = survey.set_index("id_str")["true_kind"]
    counts = kinds.value_counts().to_numpy()
    chance = float((counts * (counts - 1)).sum() / (len(kinds) * (len(kinds) - 1)))
    assert same_kind_rate(neighbours, kinds) > chance + 0.3


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_similar_galaxies_matches_brute_force(metric):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    table = pd.DataFrame(x, columns=[f"feat_{i}" for i in range(8)])
    table.insert(0, "id_str", [f"g{i}" for i in range(300)])
    queries = ["g3", "g150", "g299"]
    got = similar_galaxies(table, queries, k=4, metric=metric, block_rows=64)
    if metric == "cosine":
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        distance = 1 - unit @ unit.T
    else:
        distance = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(distance, np.inf)
    for query in queries:
        row = int(query[1:])
        nearest = np.argsort(distance[row])[:4]
        found = got[got["query_id"] == query]
        assert found["id_str"].tolist() == [f"g{i}" for i in nearest]
        np.testing.assert_allclose(found["distance"], distance[row, nearest], rtol=1e-4, atol=1e-5)
    with pytest.raises(KeyError, match="nope"):
        similar_galaxies(table, ["nope"], k=2)
