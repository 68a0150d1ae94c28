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
call again after an interruption and it carries on from them. The catalog is read a batch at a
time (`zoobot.data.streaming`): a Parquet or CSV file or a folder of them, a pyarrow dataset or a
Hugging Face dataset is never loaded whole. The files of a run are one set (`zoobot.models.outputs`):
a second run into the same `save_loc` at the same time is refused, the results of an earlier run
are replaced only with `overwrite=True` (its files this run does not write are removed), and files
zoobot did not write are never replaced.

Scaling out (`zoobot.models.distributed`): `devices` processes per node on `nodes` nodes, started
by the framework's launcher (`strategy`) or by `torchrun`, SLURM or `TF_CONFIG` (read from the
environment), each compute a share of the chunks into the same parts folder; `catalog_slice`
("I/N", or "slurm" for this task of a SLURM array job) makes the call one of N independent tasks.
The last process to finish merges the run into the tables above, the same tables as a one-process
run; a process that does not merge returns a `PendingRun`, and `merge(save_loc)` merges a run whose
slices have all finished. The framework packages bind these functions to their `Backend`
(`zoobot.torch.predict`, `zoobot.tf.predict`, ...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoobot.data.streaming import CatalogRows
from zoobot.models import preprocessing
from zoobot.models.distributed import Launch, PendingRun, Rank, Share, complete
from zoobot.models.outputs import OutputSet, check_save_loc, claim, run_lock
from zoobot.models.pretrained import from_pretrained
from zoobot.models.runner import (
    Parts,
    PredictionFiles,
    RepresentationFiles,
    RunSettings,
    cleaned_up_on_failure,
    clear_parts,
    failures_path,
    friendly_path,
    pca_path,
    prediction_output,
    representation_output,
    start_parts,
)
from zoobot.models.tasks import n_outputs, output_names, output_table

if TYPE_CHECKING:
    from zoobot.models.backend import Backend

Result = PredictionFiles | RepresentationFiles | PendingRun


@dataclass(frozen=True)
class Job:
    """One `predict` / `get_representations` call as each of its processes runs it
    (`job(rank)`); it pickles, so spawned processes receive it. `task` is "predict" or
    "represent", `options` the task's own arguments (those of `_predict` / `_represent`)."""

    backend: str  # the module holding the framework's `BACKEND`
    task: str
    rows: Any  # what the engine reads (`Backend.open_rows`)
    table: CatalogRows
    model: Any
    save_loc: Path
    settings: RunSettings
    options: Mapping[str, Any]
    catalog_slice: Share | None = None

    def __call__(self, rank: Rank) -> Result:
        backend = importlib.import_module(self.backend).BACKEND
        settings = dataclasses.replace(
            self.settings,
            device=self.settings.device if rank.device is None else rank.device,
            progress=self.settings.progress and rank.index == 0,
        )
        task = _predict if self.task == "predict" else _represent
        return task(backend, self, rank, settings, **self.options)

    def run(
        self,
        backend: Backend,
        rank: Rank,
        settings: RunSettings,
        model,
        shape,
        run,
        seed,
        outputs: OutputSet,
        overwrite: bool,
        output,
        compute,
        trained: Any = None,
    ) -> Result:
        """Check the run's `outputs` (`claim`), open the parts folder, compute this rank's chunks
        not yet on disk with `compute(parts, chunks, settings)`, then merge if the run is complete
        (`complete`). Images are shown as `trained` (default: `model`) was trained to see them. The only process of a run holds `<save_loc>.lock` throughout; the processes
        of a shared run are kept apart by the parts folder's manifest and merge lock instead.
        resume=False clears the folder once: by the only process, or by rank 0 of a launch with
        collectives before any other rank opens it."""
        share = (self.catalog_slice or Share()).within(rank)
        exclusive = share.count == 1
        if not settings.resume and not exclusive:
            if rank.barrier is None or self.catalog_slice is not None:
                raise ValueError(
                    "resume=False (--no-resume) with several independent processes would delete "
                    f"each other's parts; delete {self.save_loc}.parts once, before starting them"
                )
            if rank.index == 0:
                clear_parts(Path(f"{self.save_loc}.parts"))
            rank.barrier()
            settings = dataclasses.replace(settings, resume=True)
        settings, identity = backend.prepare_run(model, settings)
        seen = preprocessing.for_run(trained or model, settings.image_size, identity["channels"])
        settings = dataclasses.replace(settings, image_size=seen.image_size, preprocessing=seen)
        run = {**run, **identity, "outputs": outputs.run_record()}
        n_chunks = math.ceil(len(self.table) / settings.chunk_rows)
        with run_lock(outputs) if exclusive else contextlib.nullcontext():
            claim(outputs, overwrite)
            parts = start_parts(
                self.table,
                self.save_loc,
                shape,
                settings,
                run,
                seed,
                output,
                exclusive,
                share.chunks(n_chunks),
            )
            chunks = parts.todo(share.chunks(parts.n_chunks))
            with cleaned_up_on_failure(parts) if exclusive else contextlib.nullcontext():
                if chunks:
                    self.table.check(map(parts.rows, chunks))  # bad rows fail before any image
                    compute(parts, chunks, settings)
            return complete(rank, parts, self.save_loc, output)


def _predict(
    backend: Backend,
    job: Job,
    rank: Rank,
    settings: RunSettings,
    n_samples: int,
    label_cols: Sequence[str] | None,
    friendly_loc: str | os.PathLike | None,
    mc_dropout: bool | None,
    seed: int,
    model_name: str,
    overwrite: bool,
) -> Result:
    model = job.model
    if isinstance(model, str | os.PathLike):
        model = from_pretrained(backend, model)
    kind = output_table(model)
    schema = model.schema if kind == "tree" else None
    class_names = getattr(model, "class_names", None)
    names = output_names(kind, n_outputs(model, kind), label_cols, schema, class_names)
    mc_dropout = n_samples > 1 if mc_dropout is None else bool(mc_dropout)
    run = {
        "task": kind,
        "model": type(model).__qualname__,
        "n_samples": n_samples,
        "mc_dropout": mc_dropout,
    }
    friendly = (friendly_loc or friendly_path(job.save_loc)) if kind == "tree" else None
    outputs = OutputSet.of(job.save_loc, friendly=friendly, failed=failures_path(job.save_loc))
    output = prediction_output(kind, names, n_samples, model_name, schema, outputs)

    def compute(parts: Parts, chunks: list[int], settings: RunSettings) -> None:
        backend.run_predictions(
            job.rows, parts, chunks, model, n_samples, mc_dropout, settings, seed
        )

    shape = (len(names), n_samples)
    return job.run(
        backend, rank, settings, model, shape, run, seed, outputs, overwrite, output, compute
    )


def _represent(
    backend: Backend,
    job: Job,
    rank: Rank,
    settings: RunSettings,
    n_components: int | float | None,
    pca_fit_rows: int,
    overwrite: bool,
) -> Result:
    trained = job.model
    if isinstance(trained, str | os.PathLike):
        trained = backend.load_encoder(trained)
    encoder = getattr(trained, "encoder", trained)
    pca = pca_path(job.save_loc) if n_components is not None else None
    outputs = OutputSet.of(job.save_loc, pca=pca, failed=failures_path(job.save_loc))
    output = representation_output(n_components, pca_fit_rows, outputs)

    def compute(parts: Parts, chunks: list[int], settings: RunSettings) -> None:
        backend.run_features(job.rows, parts, chunks, encoder, settings)

    shape = (backend.encoder_dim(encoder),)
    run = {"task": "encoder"}
    return job.run(
        backend,
        rank,
        settings,
        encoder,
        shape,
        run,
        0,
        outputs,
        overwrite,
        output,
        compute,
        trained,
    )


def _start(
    backend: Backend,
    task: str,
    catalog,
    model,
    save_loc,
    settings,
    options,
    devices,
    nodes,
    strategy,
    catalog_slice,
) -> Result:
    """Open the catalog here (so a bad one fails before any process starts), then run the job in
    this process or in every process of the launch (`Backend.launch`). A `save_loc` holding what
    this run may not replace is refused here too, before any process starts."""
    claim(OutputSet.of(save_loc), options["overwrite"])
    rows, table = backend.open_rows(catalog)
    job = Job(
        type(backend).__module__,
        task,
        rows,
        table,
        model,
        Path(save_loc),
        settings,
        options,
        Share.parse(catalog_slice),
    )
    return backend.launch(job, Launch(devices, nodes, strategy))


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
    image_size: int | None = None,
    precision: str = "32",
    channels_last: bool | None = None,
    resume: bool = True,
    progress: bool = True,
    chunk_rows: int = 4096,
    device: Any = None,
    overwrite: bool = False,
    hash_images: bool = False,
    devices: int | str = 1,
    nodes: int = 1,
    strategy: Any = "auto",
    catalog_slice: Share | str | tuple[int, int] | None = None,
) -> PredictionFiles | PendingRun:
    """Predict every galaxy of `catalog` with `model` and write the tables of this module.

    `catalog` is a catalog: a DataFrame or Arrow table with `id_str` and `file_loc`, a CSV or
    Parquet file or a folder of them, a pyarrow dataset, or a Hugging Face dataset (`id_str` and
    `image`), streamed a batch at a time; zoobot-tf also reads a folder of zoobot-data TFRecord
    shards. `model` is a Zoobot tree, classifier or regressor, or a name `from_pretrained` reads (a
    folder saved by either framework, or `hf_hub:owner/repo`). Images are decoded, resized to
    `image_size` (default: the size the model was trained at, else 224) and normalised as in
    training (`zoobot.models.preprocessing`, saved with the model). `n_samples` forward passes
    are made per galaxy, with the head's dropout on (Monte Carlo dropout) when `mc_dropout`
    (default: when `n_samples > 1`); each chunk's randomness is seeded from `seed`, so a resumed
    run gives the same numbers. `label_cols` names a classifier's classes or a regressor's
    outputs (default: the classifier's `class_names`, else `class_0`..., `output_0`...).
    `friendly_loc` defaults to `<save_loc stem>_friendly.parquet`.

    Speed and numerics: `batch_size` images per forward pass; `num_workers` decoding processes or
    threads (default: half the CPUs, 1 to 8); `precision="bf16"` runs the encoder in bfloat16 where
    the device supports it (the framework logs the path it takes); `channels_last` chooses the
    memory layout (torch; None picks the faster); `device` where the model runs (default: where it
    is). `resume=False` discards parts of an earlier run; `chunk_rows` galaxies go in each part file;
    a part is kept only for the same images (sizes and modification times; their contents with
    `hash_images=True`). `overwrite=True` replaces the results of an earlier run at `save_loc`.

    Several processes: `devices` per node (or "auto", one per GPU) on `nodes` nodes, started as the
    framework's `strategy` says, or joined when `torchrun`, SLURM or `TF_CONFIG` started this one;
    `catalog_slice` ("I/N", (I, N), or "slurm") makes this call one of N independent tasks. Returns
    the files of the merged run, or a `PendingRun` from a process that did not merge it.
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
    model_name = os.fspath(model) if isinstance(model, str | os.PathLike) else type(model).__name__
    options = {
        "n_samples": n_samples,
        "label_cols": label_cols,
        "friendly_loc": friendly_loc,
        "mc_dropout": mc_dropout,
        "seed": seed,
        "model_name": model_name,
        "overwrite": overwrite,
    }
    return _start(
        backend,
        "predict",
        catalog,
        model,
        save_loc,
        settings,
        options,
        devices,
        nodes,
        strategy,
        catalog_slice,
    )


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
    image_size: int | None = None,
    precision: str = "32",
    channels_last: bool | None = None,
    resume: bool = True,
    progress: bool = True,
    chunk_rows: int = 4096,
    device: Any = None,
    overwrite: bool = False,
    hash_images: bool = False,
    devices: int | str = 1,
    nodes: int = 1,
    strategy: Any = "auto",
    catalog_slice: Share | str | tuple[int, int] | None = None,
) -> RepresentationFiles | PendingRun:
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
    options = {"n_components": n_components, "pca_fit_rows": pca_fit_rows, "overwrite": overwrite}
    return _start(
        backend,
        "represent",
        catalog,
        encoder,
        save_loc,
        settings,
        options,
        devices,
        nodes,
        strategy,
        catalog_slice,
    )


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
