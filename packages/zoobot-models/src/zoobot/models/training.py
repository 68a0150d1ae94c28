"""`train`: pretrain an encoder on Galaxy Zoo votes, written once for every framework.

A `ZoobotTree` of the framework (its registered "tree" task) is built where the framework wants
models built and fitted on the catalog by `Backend.fit_catalog`; each framework package binds this
function as its own `train` (`zoobot.torch.train`, `zoobot.tf.train`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from zoobot.shared import Schema, as_schema

if TYPE_CHECKING:
    from zoobot.models.backend import Backend

MAX_IDS_SHOWN = 10


class NonFiniteLossError(FloatingPointError):
    """Training stopped at a step whose loss was NaN or infinite; names the step and its galaxies."""


def nonfinite_loss_message(
    loss: float, step: int, epoch: int, batch: int, ids: Sequence[str] | None, weights: str
) -> str:
    """Why training stopped: the loss, where (optimizer step, epoch, batch within it), the
    `id_str` of the batch's galaxies (None: not known), and what became of the `weights`."""
    if ids:
        shown = ", ".join(repr(str(i)) for i in ids[:MAX_IDS_SHOWN])
        more = f" and {len(ids) - MAX_IDS_SHOWN} more" if len(ids) > MAX_IDS_SHOWN else ""
        rows = f"the batch held id_str {shown}{more}"
    else:
        rows = "its galaxies cannot be named (the data pipeline does not record them)"
    return (
        f"training stopped: the loss was {loss} at step {step} (epoch {epoch}, batch {batch}); "
        f"{rows}. {weights}; nothing was exported. Check those galaxies' labels and images, or "
        "lower the learning rate"
    )


def train(
    backend: Backend,
    data: Any,
    schema: Schema | str | Mapping,
    save_dir: str | os.PathLike,
    architecture: str = "convnext_nano",
    epochs: int = 100,
    batch_size: int = 128,
    image_size: int = 224,
    channels: int = 3,
    model_kwargs: Mapping | None = None,
    **options,
) -> Any:
    """Pretrain a `ZoobotTree` on vote counts and return it holding the best validation weights,
    also written to `save_dir/best/` in the Hub layout.

    `data` is a catalog (DataFrame or file) or anything else the framework's `fit_catalog` takes
    (Hugging Face datasets for torch, TFRecord shard folders for Keras, a mapping of splits...),
    split into train / validation / test by `zoobot.data.splits` (`splits`, `seed`). `model_kwargs`
    go to `ZoobotTree` (training settings such as `learning_rate`, `dropout`). The other keyword
    arguments are the framework's `fit_catalog`'s: `precision`, `accelerator`, `devices`,
    `num_workers`, `patience`, `seed`, `splits`, `progress`, and its own (Lightning's `nodes`,
    `strategy`, `compile`; Keras's `strategy`, `gradient_clip_val`...).
    """
    schema = as_schema(schema)
    tree = backend.tasks.lookup("tree", "train")
    settings = dict(model_kwargs or {})
    return backend.fit_catalog(
        lambda: tree(schema, architecture, channels=channels, **settings),
        data,
        schema.label_cols,
        save_dir,
        {"epochs": epochs, "batch_size": batch_size, "image_size": image_size, **options},
    )
