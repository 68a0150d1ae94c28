"""Predict with a Zoobot model over a whole catalog: streamed to parquet, resumable, failures reported.

Files written (`save_loc` is the main one; each appears under its name only when complete):

- tree models (`ZoobotTree`, `FinetuneableZoobotTree`): `save_loc` is the full table of
  `zoobot.shared.tables` (`id_str`, then per answer a list of the concentrations of every pass; the
  schema in the file's metadata, read it with `read_predictions_full`), and `friendly_loc` the
  friendly table (`<question>_proba_asked`, `<answer>_fraction` with `_lower` / `_upper` credible
  bounds; parquet, or CSV if the name ends in .csv).
- classifiers: `id_str`, `<class>_probability` (float32, the mean over passes) per class and, with
  `n_samples > 1`, `<class>_probability_passes` (a list of `n_samples` float32 per galaxy).
- regressors: `id_str`, `<label>_prediction` and, with `n_samples > 1`, `<label>_prediction_passes`.
- `<save_loc>.failed.csv`: `id_str`, `file_loc`, `error` of every image that could not be read (only
  a header when all were); those galaxies are skipped.

While running, finished chunks live in `<save_loc>.parts/` (see `zoobot.data.streaming`); run the
same call again after an interruption and it carries on from them. The tables are built by
`zoobot.data.streaming`, shared with `zoobot.tf`, so both frameworks write the same files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd
import torch

from zoobot.data.streaming import (
    TABLE_FORMAT,
    PredictionFiles,
    StreamSettings,
    finish_predictions,
    output_names,
    read_catalog,
)
from zoobot.torch.finetune import FinetuneableZoobotClassifier, FinetuneableZoobotRegressor
from zoobot.torch.hub import load_from_name
from zoobot.torch.module import ZoobotModule
from zoobot.torch.streaming import run_chunks
from zoobot.torch.tree import TreeSteps

__all__ = ["TABLE_FORMAT", "PredictionFiles", "predict"]


def _task(model: ZoobotModule) -> str:
    """'tree', 'classifier' or 'regressor': which table the model's predictions go in."""
    if isinstance(model, TreeSteps):
        return "tree"
    if isinstance(model, FinetuneableZoobotClassifier):
        return "classifier"
    if isinstance(model, FinetuneableZoobotRegressor):
        return "regressor"
    raise ValueError(
        f"predict needs a Zoobot tree, classifier or regressor, not a {type(model).__qualname__}; "
        "for an encoder's features use get_representations"
    )


def _output_names(model: ZoobotModule, task: str, label_cols: Sequence[str] | None) -> list[str]:
    """One name per model output: the schema's answers, or `label_cols` (default class_i/output_i)."""
    if task == "tree":
        return output_names(task, len(model.schema.label_cols), label_cols, model.schema)
    n = model.hparams["num_classes"] if task == "classifier" else model.hparams["num_outputs"]
    return output_names(task, n, label_cols, class_names=getattr(model, "class_names", None))


def predict(
    catalog: pd.DataFrame | str | os.PathLike,
    model: ZoobotModule | str | os.PathLike,
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
    device: str | torch.device | None = None,
) -> PredictionFiles:
    """Predict every galaxy of `catalog` (id_str, file_loc) with `model` and write the tables above.

    `model` is a Zoobot tree, classifier or regressor, or a name `load_from_name` reads (a folder or
    `hf_hub:owner/repo`). Images are decoded and resized to `image_size` as in training and given
    the deterministic evaluation transform. `n_samples` forward passes are made per galaxy, with the
    head's dropout on (Monte Carlo dropout) when `mc_dropout` (default: when `n_samples > 1`); each
    chunk's randomness is seeded from `seed`, so a resumed run gives the same numbers.
    `label_cols` names a classifier's classes or a regressor's outputs (default: the classifier's
    `class_names`, else `class_0`..., `output_0`...). `friendly_loc` defaults to
    `<save_loc stem>_friendly.parquet`.

    Speed (see `zoobot.torch.inference`): `precision='bf16'` runs the model under bfloat16 autocast,
    the fast path on CPUs with AVX-512 bf16 or AMX (there with ConvNeXt's convolution + GELU fused,
    `zoobot.torch.fusion`) and on recent GPUs; on other CPUs, where bf16 is emulated and slower,
    it runs in float32 (logged; `zoobot.torch.inference.run_precision`); `channels_last=None` picks
    the memory layout (channels-last for BatchNorm networks such as EfficientNet and ResNet, and
    under bf16); activations are reused between batches instead of being mapped afresh;
    `torch.set_num_threads` sets the compute threads and `num_workers` the decoding processes.
    `resume=False` discards parts of an earlier run; `chunk_rows` galaxies go in each part file.
    `device` moves the model there (default: it runs where it is).
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
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    catalog = read_catalog(catalog)
    model_name = os.fspath(model) if isinstance(model, str | os.PathLike) else type(model).__name__
    if isinstance(model, str | os.PathLike):
        model = load_from_name(model)
    task = _task(model)
    names = _output_names(model, task, label_cols)
    mc_dropout = n_samples > 1 if mc_dropout is None else mc_dropout
    run = {"task": task, "model": type(model).__qualname__, "n_samples": n_samples}
    parts = run_chunks(
        catalog,
        model,
        lambda images: model.predict_samples(images, n_samples, mc_dropout),
        (len(names), n_samples),
        save_loc,
        settings,
        run | {"mc_dropout": mc_dropout},
        seed,
    )
    schema = model.schema if task == "tree" else None
    return finish_predictions(
        catalog, parts, save_loc, task, names, n_samples, model_name, schema, friendly_loc
    )
