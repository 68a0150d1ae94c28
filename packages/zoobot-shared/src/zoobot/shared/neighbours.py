"""Nearest neighbours among galaxy representations: exact, blockwise, in NumPy for both frameworks.

`similar_galaxies` reads what `get_representations` writes (`id_str` and `feat_*` columns) in either
framework package, which both re-export it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

METRICS = ("cosine", "euclidean")


def feature_matrix(embeddings: pd.DataFrame | str | os.PathLike) -> tuple[pd.Index, np.ndarray]:
    """(ids, float32 features) of an embeddings table or parquet file: the `feat_*` columns."""
    if not isinstance(embeddings, pd.DataFrame):
        embeddings = pd.read_parquet(embeddings)
    columns = [c for c in embeddings.columns if str(c).startswith("feat_")]
    if "id_str" not in embeddings.columns or not columns:
        raise ValueError("embeddings need an id_str column and feature columns named feat_*")
    features = embeddings[columns].to_numpy(np.float32, copy=True)
    return pd.Index(embeddings["id_str"].astype(str)), features


def _nearest(
    features: np.ndarray,
    squared: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: str,
    block_rows: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(distances, row indices) of the `k` nearest other rows to each query row, block by block."""
    best_distance = np.full((len(queries), k), np.inf, np.float32)
    best_index = np.zeros((len(queries), k), np.int64)
    query_features = features[queries]
    rows = np.arange(len(queries))[:, None]
    for start in range(0, len(features), block_rows):
        block = features[start : start + block_rows]
        similarity = query_features @ block.T
        if metric == "cosine":
            distance = 1 - similarity
        else:
            distance = squared[queries, None] + squared[None, start : start + len(block)]
            distance = np.sqrt(np.maximum(distance - 2 * similarity, 0))
        own = np.flatnonzero((queries >= start) & (queries < start + len(block)))
        distance[own, queries[own] - start] = np.inf
        index = np.broadcast_to(np.arange(start, start + len(block)), distance.shape)
        distance = np.concatenate([best_distance, distance], 1)
        index = np.concatenate([best_index, index], 1)
        # The k smallest, then in order; ties keep the earlier row (stable sort).
        kept = np.argpartition(distance, k - 1, axis=1)[:, :k] if distance.shape[1] > k else None
        if kept is not None:
            kept = np.sort(kept, axis=1)
            distance, index = distance[rows, kept], index[rows, kept]
        order = np.argsort(distance, axis=1, kind="stable")
        best_distance, best_index = distance[rows, order], index[rows, order]
    return best_distance, best_index


def similar_galaxies(
    embeddings: pd.DataFrame | str | os.PathLike,
    query_ids: Sequence[str],
    k: int = 10,
    metric: str = "cosine",
    block_rows: int = 16_384,
) -> pd.DataFrame:
    """The `k` nearest other galaxies to each query, by cosine or Euclidean distance.

    `embeddings` is what `get_representations` wrote (a table or its path). Distances come from
    float32 matrix products over blocks of `block_rows` galaxies (and of queries), so memory stays
    bounded for millions of rows. Returns columns `query_id`, `rank` (1 = nearest), `id_str`,
    `distance` (1 - cosine similarity, or Euclidean), queries in the order given.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    ids, features = feature_matrix(embeddings)
    query_ids = [str(q) for q in query_ids]
    rows = ids.get_indexer(query_ids)
    if (rows < 0).any():
        missing = [q for q, r in zip(query_ids, rows, strict=True) if r < 0]
        raise KeyError(f"{len(missing)} query id(s) not in the embeddings, e.g. {missing[:5]}")
    if not 1 <= k < len(ids):
        raise ValueError(f"k must be between 1 and {len(ids) - 1} (the other galaxies), got {k}")
    if metric == "cosine":
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        features = features / np.maximum(norms, 1e-12)
    squared = (features * features).sum(1)
    queries = np.asarray(rows, np.int64)
    step = max(1, block_rows // 16)
    found = [
        _nearest(features, squared, queries[i : i + step], k, metric, block_rows)
        for i in range(0, len(queries), step)
    ]
    distance = np.concatenate([d for d, _ in found]) if found else np.zeros((0, k), np.float32)
    index = np.concatenate([i for _, i in found]) if found else np.zeros((0, k), np.int64)
    return pd.DataFrame(
        {
            "query_id": np.repeat(query_ids, k),
            "rank": np.tile(np.arange(1, k + 1), len(query_ids)),
            "id_str": ids.to_numpy()[index.ravel()],
            "distance": distance.ravel(),
        }
    )
