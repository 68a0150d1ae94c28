"""Representations (embeddings) of galaxies from an encoder, and nearest neighbours among them.

`get_representations` writes `save_loc` as parquet: `id_str` and one float32 column per feature,
`feat_0` ... `feat_<d-1>`, so `pd.read_parquet` gives a table ready for `similar_galaxies`, sklearn
or plotting. With `n_components` the columns are the principal components `feat_pca_0` ... instead,
and the projection is saved beside as `<save_loc>.pca.npz` (reload it with
`PCAProjection(**np.load(path))` to project other galaxies the same way). Unreadable images go to
`<save_loc>.failed.csv` as in `predict`, and runs resume the same way (`zoobot.data.streaming`,
shared with `zoobot.tf`, which writes the same files). `similar_galaxies` is
`zoobot.shared.neighbours.similar_galaxies` (NumPy, blockwise), the same in both frameworks.
"""

from __future__ import annotations

import os

import pandas as pd
import torch
from torch import nn

from zoobot.data.streaming import (
    RepresentationFiles,
    StreamSettings,
    finish_representations,
    read_catalog,
)
from zoobot.shared.neighbours import METRICS, similar_galaxies
from zoobot.torch.encoders import encoder_dim, load_encoder
from zoobot.torch.streaming import run_chunks

__all__ = ["METRICS", "RepresentationFiles", "get_representations", "similar_galaxies"]


def _as_encoder(encoder: nn.Module | str | os.PathLike) -> nn.Module:
    """The feature extractor: loaded by name, or the `.encoder` of a Zoobot model, or itself."""
    if isinstance(encoder, str | os.PathLike):
        return load_encoder(encoder)
    return getattr(encoder, "encoder", encoder)


def get_representations(
    catalog: pd.DataFrame | str | os.PathLike,
    encoder: nn.Module | str | os.PathLike,
    save_loc: str | os.PathLike,
    *,
    n_components: int | float | None = None,
    pca_fit_rows: int = 50_000,
    batch_size: int = 128,
    num_workers: int | None = None,
    image_size: int = 224,
    precision: str = "32",
    channels_last: bool | None = None,
    resume: bool = True,
    progress: bool = True,
    chunk_rows: int = 4096,
    device: str | torch.device | None = None,
) -> RepresentationFiles:
    """Embed every galaxy of `catalog` with `encoder`'s pooled features and write the table above.

    `encoder` is an encoder, a Zoobot model (its encoder is used), or a name `load_encoder` reads
    (`hf_hub:mwalmsley/zoobot-encoder-convnext_nano`, a saved folder; a bare timm architecture gives
    random weights). `n_components` (an integer, or a fraction of variance in (0, 1)) compresses
    the features by PCA fitted on up to `pca_fit_rows` galaxies spread over the catalog. The other
    arguments are those of `predict`.
    """
    settings = StreamSettings(
        batch_size,
        num_workers,
        image_size,
        precision,
        channels_last,
        chunk_rows,
        resume,
        progress,
        device,
    )
    catalog = read_catalog(catalog)
    encoder = _as_encoder(encoder)
    parts = run_chunks(
        catalog, encoder, encoder, (encoder_dim(encoder),), save_loc, settings, {"task": "encoder"}
    )
    return finish_representations(catalog, parts, save_loc, n_components, pca_fit_rows)
