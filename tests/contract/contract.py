"""The contract tests: behaviour every framework must share, written once, run once per framework.

This module holds what the tests share: the framework under test (`framework()`) and helpers.

`ZOOBOT_BACKEND` names the framework under test: `torch`, `tf` (zoobot.tf with Keras on
TensorFlow) or `jax` (zoobot.tf with Keras on JAX: `KERAS_BACKEND=jax`, set by `select()` before
Keras is imported); nox's `tests-torch`, `tests-tf` and `tests-jax` sessions set it. Without it, the
one framework installed is taken; with none (or an unknown name) the tests fail at collection
rather than skip, so a missing framework is never mistaken for a passing suite.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import socket
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from zoobot.shared import get_schema

PACKAGES = {"torch": "zoobot.torch", "tf": "zoobot.tf", "jax": "zoobot.tf"}
FRAMEWORK_MODULES = {"torch": "torch", "tf": "tensorflow"}
KERAS_BACKENDS = {"tf": "tensorflow", "jax": "jax"}


@dataclass(frozen=True)
class Framework:
    """What a contract test needs of the framework under test, beyond its public API."""

    name: str
    package: ModuleType
    reader: tuple[str, str]
    """(module, attribute) through which the engine reads images: patched to slow or count reads."""
    prog: str
    """The framework's command."""
    backend_args: tuple[str, ...] = ()
    """Options every subcommand of the command gets to run on this framework."""

    @property
    def backend(self):
        return importlib.import_module(f"{self.package.__name__}.backend").BACKEND

    def seed(self, seed: int) -> None:
        """Seed the framework's weight initialisation."""
        if self.name == "torch":
            import torch

            torch.manual_seed(seed)
        else:
            import keras

            keras.utils.set_random_seed(seed)

    def features(self, encoder, images: np.ndarray) -> np.ndarray:
        """The encoder's pooled features of float32 (batch, height, width, channels) images."""
        if self.name == "torch":
            import torch

            with torch.no_grad():
                x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
                return encoder.eval()(x).numpy()
        return np.asarray(encoder(images, training=False))

    def poison(self, layer) -> None:
        """Put a NaN in the first weight of `layer` (a torch module or Keras layer)."""
        if self.name == "torch":
            import torch

            with torch.no_grad():
                next(iter(layer.parameters())).view(-1)[0] = float("nan")
        else:
            weight = layer.weights[0]
            values = np.array(weight.numpy())
            values.flat[0] = np.nan
            weight.assign(values)

    def launched_env(self, rank: int, world: int, port: int) -> dict[str, str]:
        """The environment of rank `rank` of `world` processes on this machine as the usual
        launcher sets it: `torchrun` for torch, `TF_CONFIG` (MultiWorkerMirroredStrategy's
        workers) for TensorFlow."""
        if self.name == "torch":
            return {
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "GROUP_RANK": "0",
                "ROLE_RANK": str(rank),
                "WORLD_SIZE": str(world),
                "LOCAL_WORLD_SIZE": str(world),
                "GROUP_WORLD_SIZE": "1",
                "ROLE_WORLD_SIZE": str(world),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "TORCHELASTIC_RUN_ID": "zoobot-test",
                "TORCHELASTIC_RESTART_COUNT": "0",
                "TORCHELASTIC_MAX_RESTARTS": "0",
            }
        workers = [f"127.0.0.1:{port + i}" for i in range(world)]
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": rank}}
        return {"TF_CONFIG": json.dumps(config)}

    def threads(self) -> int | None:
        """The compute threads of this process, for a child process to use the same."""
        if self.name == "torch":
            import torch

            return torch.get_num_threads()
        return None


def select() -> str:
    """The framework under test, with Keras's backend set for it (before Keras is imported)."""
    name = _chosen()
    if name in KERAS_BACKENDS:
        os.environ["KERAS_BACKEND"] = KERAS_BACKENDS[name]
    return name


def _chosen() -> str:
    name = os.environ.get("ZOOBOT_BACKEND")
    if name is None:
        present = [n for n, m in FRAMEWORK_MODULES.items() if importlib.util.find_spec(m)]
        if len(present) != 1:
            raise RuntimeError(
                f"set ZOOBOT_BACKEND to one of {sorted(PACKAGES)} (importable here: {present})"
            )
        name = present[0]
    if name not in PACKAGES:
        raise RuntimeError(f"ZOOBOT_BACKEND={name!r}; expected one of {sorted(PACKAGES)}")
    return name


def framework() -> Framework:
    """The framework under test."""
    name = select()
    package = importlib.import_module(PACKAGES[name])
    if name == "torch":
        return Framework(name, package, ("zoobot.torch.runner", "read_image"), "zoobot-torch")
    import keras

    assert keras.backend.backend() == KERAS_BACKENDS[name], "Keras was imported before select()"
    reader = ("zoobot.tf.runner", "read_image")  # predict decodes there (`catalog_batches`)
    options = ("--backend", KERAS_BACKENDS[name]) if name == "jax" else ()
    return Framework(name, package, reader, "zoobot-tf", options)


SCHEMA = get_schema("decals_dr5")
SIZE = 32
FAST = {"image_size": SIZE, "batch_size": 8, "chunk_rows": 16, "progress": False}


def images(n: int = 2, size: int = SIZE, seed: int = 7) -> np.ndarray:
    """uint8 RGB images, as `read_image` gives them."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def no_network(*args, **kwargs):
    raise AssertionError("the Hub API was used")
