"""`predict` and `get_representations` over a whole catalog, written once for every framework.

Files written by `predict` (`save_loc` is the main one; each appears under its name only when
complete):

- tree models (`ZoobotTree`, `FinetuneableZoobotTree`): `save_loc` is the full table of
  `zoobot.shared.tables` (`id_str`, then per answer a list of the concentrations of every pass; the
  schema in the file's metadata, read it with `read_predictions_full`), and `friendly_loc` the
  friendly table (`<question>_proba_asked`, `<answer>_fraction` with `_lower` / `_upper` credible
  bounds; parquet, or CSV if the name ends in .csv);
- classifiers: `id_str`, `<class>_probability` (float32, the mean over passes) per class and, with
  `n_samples > 1`, `<class>_probability_passes` (a list of `n_samples` float32 per galaxy);
- regressors: `id_str`, `<label>_prediction` and, with `n_samples > 1`, `<label>_prediction_passes`;
- `<save_loc>.failed.csv`: `id_str`, `file_loc`, `error` of every image that could not be read (only
  a header when all were); those galaxies are skipped.

`get_representations` writes `save_loc` with `id_str` and one float32 column per pooled feature,
`feat_0` ... `feat_<d-1>`, ready for `similar_galaxies`, sklearn or plotting; with `n_components`
the principal components `feat_pca_0` ... instead, and the projection beside as
`<save_loc>.pca.npz` (`PCAProjection(**np.load(path))` projects other galaxies the same way).

While running, finished chunks live in `<save_loc>.parts/` (`zoobot.models.runner`); run the same
call again after an interruption and it carries on from them. The files of a run are one set
(`zoobot.models.outputs`): a second run into the same `save_loc` at the same time is refused, the
results of an earlier run are replaced only with `overwrite=True` (its files this run does not
write are removed), and files zoobot did not write are never replaced. The framework packages bind
these functions to their `Backend` (`zoobot.torch.predict`, `zoobot.tf.predict`, ...).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from zoobot.models.outputs import OutputSet, check_save_loc, claim, remove_stale, run_lock
from zoobot.models.pretrained import from_pretrained
from zoobot.models.runner import (
    PredictionFiles,
    RepresentationFiles,
    RunSettings,
    failures_path,
    finish_predictions,
    finish_representations,
    friendly_path,
    pca_path,
)
from zoobot.models.tasks import n_outputs, output_names, output_table

if TYPE_CHECKING:
    from zoobot.models.backend import Backend


def predict(
    backend: Backend,
    catalog: Any,
    model: Any,
    save_loc: str | os.PathLike,
    n_samples: int = 1,
    *,
    label_cols: Sequence[str] | None = None,
    friendly_loc: str | os.PathLike | None = None,
    mc_dropout: bool | None = None,
    seed: int = 0,
    batch_size: int = 128,
    num_workers: int | None = None,
    image_size: int = 224,
    precision: str = "32",
    channels_last: bool | None = None,
    resume: bool = True,
    progress: bool = True,
    chunk_rows: int = 4096,
    device: Any = None,
    overwrite: bool = False,
    hash_images: bool = False,
) -> PredictionFiles:
    """Predict every galaxy of `catalog` with `model` and write the tables of this module.

    `catalog` is a catalog (DataFrame, CSV or Parquet file with `id_str`, `file_loc`; zoobot-tf also
    reads a folder of zoobot-data TFRecord shards). `model` is a Zoobot tree, classifier or
    regressor, or a name `from_pretrained` reads (a folder saved by either framework, or
    `hf_hub:owner/repo`). Images are decoded and resized to `image_size` as in training and given
    the deterministic evaluation transform. `n_samples` forward passes are made per galaxy, with the
    head's dropout on (Monte Carlo dropout) when `mc_dropout` (default: when `n_samples > 1`); each
    chunk's randomness is seeded from `seed`, so a resumed run gives the same numbers.
    `label_cols` names a classifier's classes or a regressor's outputs (default: the classifier's
    `class_names`, else `class_0`..., `output_0`...). `friendly_loc` defaults to
    `<save_loc stem>_friendly.parquet`.

    Speed and numerics: `batch_size` images per forward pass; `num_workers` decoding processes or
    threads (default: half the CPUs, 1 to 8); `precision="bf16"` runs the encoder in bfloat16 where
    the device supports it (the framework logs the path it takes); `channels_last` chooses the
    memory layout (torch; None picks the faster); `device` where the model runs (default: where it
    is). `resume=False` discards parts of an earlier run; `chunk_rows` galaxies go in each part file;
    a run resumes only with the same images (sizes and modification times; their contents with
    `hash_images=True`). `overwrite=True` replaces the results of an earlier run at `save_loc`.
    """
    check_save_loc(save_loc)
    settings = RunSettings(
        batch_size,
        num_workers,
        image_size,
        precision,
        channels_last,
        chunk_rows,
        resume,
        progress,
        backend.device(device),
        hash_images,
    )
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    with run_lock(OutputSet.of(save_loc)):
        return _predict(
            backend,
            catalog,
            model,
            save_loc,
            n_samples,
            settings,
            label_cols=label_cols,
            friendly_loc=friendly_loc,
            mc_dropout=mc_dropout,
            seed=seed,
            overwrite=overwrite,
        )


def _predict(
    backend: Backend,
    catalog: Any,
    model: Any,
    save_loc: str | os.PathLike,
    n_samples: int,
    settings: RunSettings,
    *,
    label_cols: Sequence[str] | None,
    friendly_loc: str | os.PathLike | None,
    mc_dropout: bool | None,
    seed: int,
    overwrite: bool,
) -> PredictionFiles:
    """`predict` once its `save_loc` is locked."""
    rows, table = backend.open_rows(catalog)
    model_name = os.fspath(model) if isinstance(model, str | os.PathLike) else type(model).__name__
    if isinstance(model, str | os.PathLike):
        model = from_pretrained(backend, model)
    kind = output_table(model)
    schema = model.schema if kind == "tree" else None
    class_names = getattr(model, "class_names", None)
    names = output_names(kind, n_outputs(model, kind), label_cols, schema, class_names)
    mc_dropout = n_samples > 1 if mc_dropout is None else bool(mc_dropout)
    friendly = (friendly_loc or friendly_path(save_loc)) if kind == "tree" else None
    outputs = OutputSet.of(save_loc, friendly=friendly, failed=failures_path(save_loc))
    stale = claim(outputs, overwrite)
    run = {
        "task": kind,
        "model": type(model).__qualname__,
        "n_samples": n_samples,
        "mc_dropout": mc_dropout,
        "outputs": outputs.run_record(),
    }
    parts = backend.run_predictions(
        rows,
        table,
        model,
        n_samples,
        mc_dropout,
        (len(names), n_samples),
        save_loc,
        settings,
        run,
        seed,
    )
    files = finish_predictions(
        table,
        parts,
        save_loc,
        kind,
        names,
        n_samples,
        model_name,
        schema,
        friendly,
        outputs.metadata(),
    )
    remove_stale(stale)
    return files


def get_representations(
    backend: Backend,
    catalog: Any,
    encoder: Any,
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
    device: Any = None,
    overwrite: bool = False,
    hash_images: bool = False,
) -> RepresentationFiles:
    """Embed every galaxy of `catalog` with `encoder`'s pooled features and write the table of this
    module.

    `encoder` is an encoder, a Zoobot model (its encoder is used), or a name `load_encoder` reads
    (`hf_hub:mwalmsley/zoobot-encoder-convnext_nano`, a saved folder; a bare architecture gives
    random weights). `n_components` (an integer, or a fraction of variance in (0, 1)) compresses
    the features by PCA fitted on up to `pca_fit_rows` galaxies spread over the catalog. The other
    arguments are those of `predict`.
    """
    check_save_loc(save_loc)
    check_components(n_components)
    if pca_fit_rows < 1:
        raise ValueError(f"pca_fit_rows must be at least 1, got pca_fit_rows={pca_fit_rows}")
    settings = RunSettings(
        batch_size,
        num_workers,
        image_size,
        precision,
        channels_last,
        chunk_rows,
        resume,
        progress,
        backend.device(device),
        hash_images,
    )
    pca = pca_path(save_loc) if n_components is not None else None
    outputs = OutputSet.of(save_loc, pca=pca, failed=failures_path(save_loc))
    with run_lock(outputs):
        stale = claim(outputs, overwrite)
        rows, table = backend.open_rows(catalog)
        if isinstance(encoder, str | os.PathLike):
            encoder = backend.load_encoder(encoder)
        encoder = getattr(encoder, "encoder", encoder)
        shape = (backend.encoder_dim(encoder),)
        run = {"task": "encoder", "outputs": outputs.run_record()}
        parts = backend.run_features(rows, table, encoder, shape, save_loc, settings, run)
        files = finish_representations(
            table, parts, save_loc, n_components, pca_fit_rows, outputs.metadata()
        )
        remove_stale(stale)
        return files


def check_components(n_components: int | float | None) -> None:
    """`n_components` as PCA takes it: None, a whole number of at least 1, or a fraction of the
    variance in (0, 1)."""
    if n_components is None:
        return
    whole = isinstance(n_components, int) and not isinstance(n_components, bool)
    fraction = isinstance(n_components, float) and 0 < n_components < 1
    if not ((whole and n_components >= 1) or fraction):
        raise ValueError(
            "n_components must be a whole number of components (at least 1) or a fraction of the "
            f"variance in (0, 1); got n_components={n_components!r}"
        )
