"""Representations (embeddings) of galaxies from a Keras encoder, and nearest neighbours among them.

The same arguments, files and columns as `zoobot.torch.representations`: `get_representations`
writes `save_loc` as parquet, `id_str` and one float32 column per feature, `feat_0` ...
`feat_<d-1>`, ready for `similar_galaxies`, sklearn or plotting. With `n_components` the columns are
the principal components `feat_pca_0` ... instead, and the projection is saved beside as
`<save_loc>.pca.npz` (reload it with `PCAProjection(**np.load(path))` to project other galaxies the
same way). Unreadable images go to `<save_loc>.failed.csv` as in `predict`, and runs resume the same
way (`zoobot.tf.streaming`; the files are written by `zoobot.data.streaming`, shared by both
frameworks). `similar_galaxies` is `zoobot.shared.neighbours.similar_galaxies`, the same function
in both frameworks.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import pandas as pd
import tensorflow as tf

from zoobot.data.streaming import (
    RepresentationFiles,
    StreamSettings,
    finish_representations,
)
from zoobot.shared.neighbours import METRICS, similar_galaxies
from zoobot.tf.streaming import bfloat16_copy, open_rows, run_chunks, run_precision

__all__ = ["METRICS", "RepresentationFiles", "get_representations", "similar_galaxies"]


def _as_encoder(encoder: keras.Model | str | os.PathLike) -> keras.Model:
    """The feature extractor: loaded by name, or the `.encoder` of a Zoobot model, or itself."""
    if isinstance(encoder, str | os.PathLike):
        from zoobot.tf.encoders import load_encoder

        return load_encoder(encoder)
    return getattr(encoder, "encoder", encoder)


def _dim(encoder: keras.Model) -> int:
    """Features per galaxy: `zoobot.tf.encoders.encoder_dim`, else the output's last axis."""
    try:
        from zoobot.tf.encoders import encoder_dim

        return int(encoder_dim(encoder))
    except (ImportError, AttributeError, TypeError, ValueError):
        return int(encoder.output_shape[-1])


def get_representations(
    catalog: pd.DataFrame | str | os.PathLike,
    encoder: keras.Model | str | os.PathLike,
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
    device: str | None = None,
) -> RepresentationFiles:
    """Embed every galaxy of `catalog` with `encoder`'s pooled features and write the table above.

    `catalog` is a catalog or a TFRecord shard folder, as in `predict`. `encoder` is a Keras encoder,
    a Zoobot model (its encoder is used), or a name `zoobot.tf.encoders.load_encoder` reads
    (`hf_hub:mwalmsley/zoobot-encoder-convnext_nano`, a saved folder; a bare timm architecture gives
    random weights). `n_components` (an integer, or a fraction of variance in (0, 1)) compresses the
    features by PCA fitted on up to `pca_fit_rows` galaxies spread over the catalog. The other
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
    settings = dataclasses.replace(settings, precision=run_precision(settings.precision, device))
    precision = settings.precision
    source, table = open_rows(catalog)
    encoder = _as_encoder(encoder)
    runner = encoder if str(precision) == "32" else bfloat16_copy(encoder)

    def forward(images: tf.Tensor) -> tf.Tensor:
        return tf.cast(runner(images, training=False), tf.float32)

    parts = run_chunks(
        source,
        table,
        encoder,
        forward,
        (_dim(encoder),),
        save_loc,
        settings,
        {"task": "encoder"},
        key=("encoder", str(precision)),
    )
    return finish_representations(table, parts, save_loc, n_components, pca_fit_rows)
