"""similar_galaxies (NumPy, shared by both frameworks) equals a brute-force search."""

import numpy as np
import pandas as pd
import pytest

from zoobot.shared.neighbours import similar_galaxies


def table(x: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame(x, columns=[f"feat_{i}" for i in range(x.shape[1])])
    df.insert(0, "id_str", [f"g{i}" for i in range(len(x))])
    return df


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("block_rows", [7, 64, 16_384])
def test_matches_brute_force(metric, block_rows):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    queries = ["g3", "g150", "g299", "g0"]
    got = similar_galaxies(table(x), queries, k=4, metric=metric, block_rows=block_rows)
    assert got.columns.tolist() == ["query_id", "rank", "id_str", "distance"]
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
        assert found["rank"].tolist() == [1, 2, 3, 4]
        assert found["id_str"].tolist() == [f"g{i}" for i in nearest]
        np.testing.assert_allclose(found["distance"], distance[row, nearest], rtol=1e-4, atol=1e-5)


def test_reads_parquet_and_checks_its_arguments(tmp_path):
    x = np.eye(5, dtype=np.float32) + 0.1
    path = tmp_path / "features.parquet"
    table(x).to_parquet(path)
    got = similar_galaxies(path, ["g1"], k=4, metric="euclidean")
    assert sorted(got["id_str"]) == ["g0", "g2", "g3", "g4"]
    with pytest.raises(KeyError, match="nope"):
        similar_galaxies(path, ["nope"], k=2)
    with pytest.raises(ValueError, match="k must be between 1 and 4"):
        similar_galaxies(path, ["g1"], k=5)
    with pytest.raises(ValueError, match="metric"):
        similar_galaxies(path, ["g1"], metric="manhattan")
    with pytest.raises(ValueError, match="feat_"):
        similar_galaxies(pd.DataFrame({"id_str": ["a", "b"], "x": [1, 2]}), ["a"], k=1)
