"""zoobot.tf's implementation of the `zoobot.models.backend.Backend` contract.

Everything framework-free (the Hub layout, `predict`, `get_representations`, the command line) is
written once in `zoobot.models`; this module supplies what needs Keras: the Keras twins of timm's
encoders converted from the Hub layout and back, head tensors in PyTorch names and layouts (the
dense layer of a head is `1.weight`, shape (out, in), and `1.bias`), the inference engine
(`zoobot.tf.runner`, which also reads TFRecord shard folders), its worker processes
(`zoobot.tf.distributed`) and Keras training. Keras runs on TensorFlow or JAX (`KERAS_BACKEND`);
the backend's `name` says which ("tf" or "jax"), so run manifests and reports name it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from zoobot.data.streaming import CatalogRows
from zoobot.models import preprocessing
from zoobot.models.backend import Backend
from zoobot.models.layout import check_weights_fit
from zoobot.models.runner import Parts, RunSettings
from zoobot.models.tasks import TaskRegistry
from zoobot.tf import runtime


class KerasBackend(Backend):
    """Keras 3: converted timm encoders, `keras.Sequential` heads, a `tf.data` engine, Keras `fit`."""

    package = "zoobot-tf"
    module = "zoobot.tf"

    def __init__(self):
        runtime.keras_backend()  # refuses a backend zoobot.tf does not run on, with the fix
        self.tasks = TaskRegistry(builtin="zoobot.tf.finetune")

    @property
    def name(self) -> str:
        """ "tf" when Keras runs on TensorFlow, "jax" on JAX."""
        return runtime.name()

    def head_state(self, head: keras.Model) -> dict[str, np.ndarray]:
        state = {}
        for i, layer in enumerate(head.layers):
            if isinstance(layer, keras.layers.Dense):
                kernel = layer.kernel.numpy()
                state[f"{i}.weight"] = np.ascontiguousarray(kernel.T, dtype=np.float32)
                if layer.use_bias:
                    bias = layer.bias.numpy()
                    state[f"{i}.bias"] = np.ascontiguousarray(bias, dtype=np.float32)
            elif layer.weights:
                raise TypeError(
                    f"head layer {i} ({type(layer).__name__}) has weights but no PyTorch layout; "
                    "heads hold Dense layers only"
                )
        return state

    def load_head_state(
        self, head: keras.Model, state: Mapping[str, np.ndarray], what: str
    ) -> None:
        expected = {k: tuple(v.shape) for k, v in self.head_state(head).items()}
        check_weights_fit(expected, {k: tuple(np.shape(v)) for k, v in state.items()}, what)
        for i, layer in enumerate(head.layers):
            if isinstance(layer, keras.layers.Dense):
                layer.kernel.assign(np.asarray(state[f"{i}.weight"], np.float32).T)
                if layer.use_bias:
                    layer.bias.assign(np.asarray(state[f"{i}.bias"], np.float32))

    def reads_natively(self, path: str | os.PathLike) -> bool:
        from zoobot.tf.data import is_shard_folder

        return is_shard_folder(path)

    def open_rows(self, data: Any) -> tuple[Any, CatalogRows]:
        from zoobot.tf.runner import open_rows

        return open_rows(data)

    def run_predictions(
        self,
        rows: Any,
        parts: Parts,
        chunks: Sequence[int],
        model: keras.Model,
        n_samples: int,
        mc_dropout: bool,
        settings: RunSettings,
        seed: int,
    ) -> None:
        from zoobot.tf.runner import run_chunks, sampler

        forward = sampler(model, n_samples, mc_dropout, str(settings.precision))
        key = ("predict", n_samples, mc_dropout, str(settings.precision))
        run_chunks(rows, parts, chunks, model, forward, settings, seed, key)

    def run_features(
        self,
        rows: Any,
        parts: Parts,
        chunks: Sequence[int],
        encoder: keras.Model,
        settings: RunSettings,
    ) -> None:
        from zoobot.tf.runner import featurizer, run_chunks

        forward = featurizer(encoder, str(settings.precision))
        key = ("features", str(settings.precision))
        run_chunks(rows, parts, chunks, encoder, forward, settings, 0, key)

    def predict_batch(self, model: keras.Model, images: np.ndarray) -> np.ndarray:
        from zoobot.tf.data.transforms import eval_transform
        from zoobot.tf.runner import input_channels

        mean, std = preprocessing.normalisation(model)
        x = eval_transform(np.ascontiguousarray(images), input_channels(model), mean, std)
        if hasattr(model, "predict_samples"):
            out = model.predict_samples(x)[..., 0]
        else:
            out = model(x, training=False)
        return np.asarray(keras.ops.convert_to_numpy(out), np.float32)

    def device(self, name: str | None) -> str | None:
        """`name` (torch-style `cpu`, `cuda`, `cuda:1`, or the backend's own, e.g. TensorFlow's
        `/GPU:1`), checked to exist here; the engine runs in `runtime.device_scope(name)`."""
        runtime.device_name(name)
        return name

    def set_threads(self, threads: int) -> None:
        why = runtime.set_threads(threads)
        if why is not None:
            print(f"zoobot-tf: --threads ignored: {why}", file=sys.stderr)


BACKEND = KerasBackend()
