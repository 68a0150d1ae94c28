"""The contract each framework package implements, so everything above it is written once.

`zoobot.torch.backend.BACKEND` and `zoobot.tf.backend.BACKEND` are `Backend`s. What they provide is
only what needs tensors: building an encoder from timm's tensors and writing it back, the head's
tensors, running the model over batches of a catalog (and starting the processes of a launch), and
training on a catalog. Saving and loading in the Hub layout (`zoobot.models.pretrained`), `predict`
and `get_representations` (`zoobot.models.inference`, `zoobot.models.distributed`) and the
`zoobot-torch` / `zoobot-tf` command line (`zoobot.models.cli`) are written once, in terms of these
methods. Models follow the task protocol
of `zoobot.models.tasks` (`encoder`, `head`, `task`, `task_config`, `from_task_config`).
"""

from __future__ import annotations

import abc
import functools
import importlib
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zoobot.data.streaming import CatalogRows
from zoobot.models.distributed import Launch, Rank
from zoobot.models.runner import Parts, RunSettings
from zoobot.models.tasks import TaskRegistry


class Backend(abc.ABC):
    """One framework's implementation of what needs tensors; see the module docstring."""

    name: str
    """Short name recorded in run manifests and reports: "torch", "tf" (Keras on TensorFlow)..."""
    package: str
    """The distribution whose version is stamped into saved configs, e.g. "zoobot-torch"."""
    tasks: TaskRegistry
    """Task name -> this framework's model class, for reloading saved task models."""

    module: str
    """The framework package, e.g. "zoobot.torch": the methods below that are not abstract call its
    mirrored modules (`encoders`, `runner`, `distributed`, `training`) by their shared names."""

    def part(self, name: str) -> Any:
        """The framework's module `name` (`zoobot.<framework>.<name>`), imported on first use."""
        return importlib.import_module(f"{self.module}.{name}")

    # -- encoders: timm tensors in and out ---------------------------------------------------------

    def is_architecture(self, name: str) -> bool:
        """Whether `name` is an architecture this framework builds (random weights) by name."""
        return self.part("encoders").is_architecture(name)

    def load_encoder(self, name: str | os.PathLike, channels: int | None = None) -> Any:
        """An encoder by architecture name, `hf_hub:` repo or Hub-layout folder (`load_encoder`)."""
        return self.part("encoders").load_encoder(name, channels)

    def encoder_from_config(self, config: Mapping, weights: Path, channels: int | None) -> Any:
        """The encoder a Hub-layout `config` describes, with the timm tensors of `weights` loaded
        strictly (a `.safetensors` file, or a legacy `.bin` read without running its pickle)."""
        encoders = self.part("encoders")
        return encoders.encoder_from_config(
            config, encoders.load_state_dict_file(weights), channels
        )

    def write_encoder(self, encoder: Any, folder: Path) -> dict:
        """Write `config.json` and `model.safetensors` for `encoder` into `folder` as timm does;
        return the config written."""
        return self.part("encoders").write_timm_files(encoder, folder)

    def encoder_dim(self, encoder: Any) -> int:
        """Width of the encoder's pooled features."""
        return self.part("encoders").encoder_dim(encoder)

    # -- heads: tensors in PyTorch names and layouts ----------------------------------------------

    @abc.abstractmethod
    def head_state(self, head: Any) -> dict[str, np.ndarray]:
        """The head's tensors as `torch.nn.Sequential.state_dict()` names and lays them out."""

    @abc.abstractmethod
    def load_head_state(self, head: Any, state: Mapping[str, np.ndarray], what: str) -> None:
        """Load such tensors into `head`, every name and shape matching (`WeightsMismatchError`)."""

    # -- running a model over a catalog ----------------------------------------------------------

    @abc.abstractmethod
    def open_rows(self, data: Any) -> tuple[Any, CatalogRows]:
        """(rows the engine reads, the catalog's `CatalogRows`) of a catalog (DataFrame, table,
        file, folder or dataset, `zoobot.data.streaming.open_catalog_rows`) or of another source
        the framework reads (e.g. TFRecord shards). Both pickle (spawned processes get them)."""

    def prepare_run(self, model: Any, settings: RunSettings) -> tuple[RunSettings, dict]:
        """(the settings a run of `model` takes here, e.g. the precision its device computes in;
        what identifies the numbers `model` gives, for the run's manifest: framework, weights
        digest, input channels)."""
        return self.part("runner").prepare_run(model, settings)

    @abc.abstractmethod
    def run_predictions(
        self,
        rows: Any,
        parts: Parts,
        chunks: Sequence[int],
        model: Any,
        n_samples: int,
        mc_dropout: bool,
        settings: RunSettings,
        seed: int,
    ) -> None:
        """Write the part of each of `chunks` (sorted): `model.predict_samples` over its rows,
        (output, pass) per row, the randomness of each chunk seeded with `chunk_seed(seed, chunk)`.
        Rows come from `parts.batches(table, chunks, settings.batch_size)` (or the engine's own
        reader of `rows`, in the same batches); results go to a `ChunkWriter`."""

    @abc.abstractmethod
    def run_features(
        self,
        rows: Any,
        parts: Parts,
        chunks: Sequence[int],
        encoder: Any,
        settings: RunSettings,
    ) -> None:
        """Write the part of each of `chunks`: the encoder's pooled features per row."""

    def launch(self, job: Callable[[Rank], Any], launch: Launch) -> Any:
        """Run `job(rank)` in every process of `launch` and return what it gives in this process:
        here, or in the processes the framework's launcher starts (returning the merged run), or as
        one rank of a launch that started this process (`torchrun`, SLURM, `TF_CONFIG`): the
        framework's `distributed.launch`."""
        return self.part("distributed").launch(job, launch)

    @abc.abstractmethod
    def predict_batch(self, model: Any, images: np.ndarray) -> np.ndarray:
        """One batch of uint8 (batch, height, width, 3) images through the evaluation transform and
        `model`, as float32 NumPy: one deterministic pass of a task model's predictions (a tree's
        concentrations, a classifier's probabilities, a regressor's values) or an encoder's
        features."""

    def reads_natively(self, path: str | os.PathLike) -> bool:
        """Whether `open_rows` reads `path` itself rather than as a catalog file (e.g. a shard
        folder); False unless the framework overrides it."""
        return False

    def device(self, name: str | None) -> Any:
        """The framework's device for a name `cpu`, `cuda`, `cuda:1`... (None: where the model is)."""
        return name

    @abc.abstractmethod
    def set_threads(self, threads: int) -> None:
        """Use `threads` compute threads in this process."""

    # -- training on a catalog ------------------------------------------------------------------

    def fit_catalog(
        self,
        build: Callable[[], Any],
        data: Any,
        label_cols: Sequence[str],
        save_dir: str | os.PathLike,
        options: Mapping[str, Any],
    ) -> Any:
        """Build a model with `build()` (where the framework needs it built: distribution scope,
        precision policy) and train it on `data`'s train split, validating on its validation split,
        with the framework's training loop; return it holding the best validation weights, which
        are also written to `save_dir/best` in the Hub layout. `data` is a catalog or any other
        source the framework's `train` takes; `options` has the keys of
        `zoobot.models.cli.TRAINING_OPTIONS` and `splits`."""
        return self.part("training").fit_catalog(build, data, label_cols, save_dir, **options)

    # -- shared helpers ---------------------------------------------------------------------------

    def version(self) -> str:
        """The installed version of `package`."""
        from importlib import metadata

        return metadata.version(self.package)


def bind(function: Callable, backend_module: str) -> Callable:
    """`function(backend, ...)` as a function of the rest of its arguments, taking the backend from
    `backend_module.BACKEND` (imported at the first call, so binding imports no framework): how the
    framework packages export `predict`, `save_pretrained`... with the same name, docstring and
    signature (minus `backend`)."""

    @functools.wraps(function)
    def bound(*args, **kwargs):
        return function(importlib.import_module(backend_module).BACKEND, *args, **kwargs)

    parameters = list(inspect.signature(function).parameters.values())[1:]
    bound.__signature__ = inspect.signature(function).replace(parameters=parameters)
    bound.__module__ = backend_module.rsplit(".", 1)[0]
    del bound.__wrapped__
    return bound
