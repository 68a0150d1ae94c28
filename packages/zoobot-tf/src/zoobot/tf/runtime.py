"""What differs between the backends zoobot.tf runs Keras on: TensorFlow and JAX (`KERAS_BACKEND=jax`).

The models, losses, optimizer, training loop and inference engine are Keras (`keras.ops`, layers,
`fit`) and run unchanged on either; this module holds the few things Keras leaves to its backend:
the name runs are recorded under, `lgamma` (Keras's ops have no log-gamma), whether float64 is on,
the GPUs, devices, one compiled function of a forward pass, and compute threads. TensorFlow is
imported here only when Keras runs on it; on JAX, zoobot.tf needs TensorFlow only to read data
(`tf.data`, `zoobot.tf.data`).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Sequence

import keras
import numpy as np

from zoobot.models.fast_paths import choose

__all__ = [
    "NAMES",
    "compiled",
    "device_name",
    "device_scope",
    "float64_enabled",
    "gpu_count",
    "is_tf_dataset",
    "keras_backend",
    "lgamma",
    "name",
    "on_jax",
    "replicas",
    "set_threads",
    "stateless_step",
    "strategy_scope",
    "xla_cpu_path",
]

NAMES = {"tensorflow": "tf", "jax": "jax"}
"""Keras backend -> the name zoobot records in run manifests and reports."""


def keras_backend() -> str:
    """The backend Keras runs on ("tensorflow" or "jax"); any other is refused with the fix."""
    backend = keras.backend.backend()
    if backend not in NAMES:
        raise ImportError(
            f"zoobot.tf runs Keras on TensorFlow or JAX, but KERAS_BACKEND={backend!r}: set "
            "KERAS_BACKEND=tensorflow or jax before Keras is imported (for PyTorch, use zoobot-torch)"
        )
    return backend


def name() -> str:
    """ "tf" when Keras runs on TensorFlow, "jax" on JAX: the framework named in manifests."""
    return NAMES[keras_backend()]


def on_jax() -> bool:
    """Whether Keras runs on JAX."""
    return keras_backend() == "jax"


def float64_enabled() -> bool:
    """Whether the backend computes in float64: always on TensorFlow; on JAX only with
    `jax_enable_x64` (otherwise JAX silently computes float64 requests in float32)."""
    if not on_jax():
        return True
    import jax

    return bool(jax.config.jax_enable_x64)


def lgamma(x):
    """log|Gamma(x)| elementwise, by the backend's own kernel (Keras's ops have no log-gamma)."""
    if on_jax():
        import jax

        return jax.lax.lgamma(x)
    import tensorflow as tf

    return tf.math.lgamma(x)


def replicas() -> int:
    """Replicas each computing the loss of their share of a batch: those of the current
    `tf.distribute` strategy on TensorFlow; 1 on JAX, where a Keras distribution shards one
    global batch and the loss is computed on all of it."""
    if on_jax():
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def strategy_scope(model: keras.Model):
    """The scope optimizer variables of `model` are created in: its `tf.distribute` strategy's on
    TensorFlow; nothing on JAX (a Keras distribution is set for the whole fit)."""
    if on_jax():
        return contextlib.nullcontext()
    return model.distribute_strategy.scope()


def stateless_step(model: keras.Model, state: tuple, compute: Callable):
    """`compute()` as a step of Keras's JAX trainer: `model`'s variables read from `state`
    (trainable, non-trainable values); returns (outputs, the non-trainable values after it), as
    Keras's own `stateless_call` does for `call`."""
    trainable, non_trainable = state
    mapping = [
        *zip(model.trainable_variables, trainable, strict=True),
        *zip(model.non_trainable_variables, non_trainable, strict=True),
    ]
    with keras.StatelessScope(state_mapping=mapping) as scope:
        outputs = compute()
    return outputs, [scope.get_current_value(v) for v in model.non_trainable_variables]


def is_tf_dataset(data) -> bool:
    """Whether `data` is a `tf.data.Dataset` (without importing TensorFlow for the check)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(data, tf.data.Dataset)


@functools.cache
def _on_xla_cpu() -> tuple[bool, str]:
    """(whether Keras runs on JAX on a CPU, why not): where XLA:CPU's own kernels run the model."""
    if not on_jax():
        return False, "Keras runs on TensorFlow, whose oneDNN kernels are fast"
    import jax

    if jax.default_backend() != "cpu":
        return False, f"JAX runs on {jax.default_backend()}, not on XLA:CPU"
    return True, ""


def xla_cpu_path(name: str, why: str) -> bool:
    """Whether to take the JAX-on-CPU fast path `name` (taken because `why`): Keras runs on JAX
    on a CPU and `ZOOBOT_DISABLE` does not name it, logged once; on TensorFlow nothing is logged."""
    supported, why_not = _on_xla_cpu()
    return supported and choose(name, supported, why if supported else why_not)


def gpu_count() -> int:
    """How many GPUs (or other accelerators, on JAX) the backend sees."""
    if on_jax():
        import jax

        return 0 if jax.default_backend() == "cpu" else len(jax.devices())
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def _devices() -> list[str]:
    """The devices the backend has, as `device_name` names them ("/CPU:0", "gpu:1")."""
    if on_jax():
        import jax

        platforms = dict.fromkeys(["cpu", jax.default_backend()])
        return [f"{p}:{i}" for p in platforms for i in range(len(jax.devices(p)))]
    import tensorflow as tf

    return ["/" + d.name.rsplit("device:", 1)[-1] for d in tf.config.list_logical_devices()]


def device_name(name: str | None) -> str | None:
    """The backend's name for a device named torch-style (`cpu`, `cuda`, `cuda:1`) or as the
    backend names it (TensorFlow's `/GPU:1`, JAX's `gpu:1`), checked to exist here; None: the
    backend's choice."""
    if name is None:
        return None
    if name.startswith("/"):
        if on_jax():
            raise ValueError(f"device={name!r} is TensorFlow's name; on JAX use cpu, cuda:N, gpu:N")
        device = "/" + name.rsplit("device:", 1)[-1].lstrip("/").upper()
    else:
        kind, _, index = name.lower().partition(":")
        kinds = {"cpu": "CPU", "cuda": "GPU", "gpu": "GPU"}
        if kind not in kinds or (index and not index.isdigit()):
            raise ValueError(f"unknown device={name!r}; use cpu, cuda, cuda:N or a TensorFlow name")
        kind = kinds[kind]
        device = f"{kind.lower()}:{index or 0}" if on_jax() else f"/{kind}:{index or 0}"
    found = _devices()
    if device not in found:
        backend = "JAX" if on_jax() else "TensorFlow"
        raise ValueError(f"device={name!r}, but {backend} has only {found}")
    return device


def device_scope(name: str | None):
    """A context running work on the device `name` (as `device_name` takes it); None: the
    backend's choice."""
    device = device_name(name)
    return contextlib.nullcontext() if device is None else keras.device(device)


def compiled(
    forward: Callable,
    weights: Sequence[keras.Variable],
    states: Sequence[keras.Variable],
    shape: tuple,
) -> Callable:
    """`forward(images)` as one compiled function of float32 images of `shape` (batch dim None).

    `forward` reads the `weights` and reads and advances the `states` (the seed states of random
    layers) of Keras models. TensorFlow: a `tf.function` over them. JAX: a `jax.jit` of the pure
    function that Keras's public `StatelessScope` makes of it (every variable read from the values
    passed in, every assignment collected), as Keras's own JAX trainer does; the new states are
    assigned back after each call, so the next call draws new dropout masks.
    """
    if not on_jax():
        import tensorflow as tf

        return tf.function(
            forward,
            input_signature=[tf.TensorSpec(shape, tf.float32)],
            autograph=False,  # Keras layers are graph code already; converting them costs time
        )
    import jax

    weights, states = list(weights), list(states)

    def pure(weight_values, state_values, images):
        mapping = list(zip(weights + states, list(weight_values) + list(state_values), strict=True))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            out = forward(images)
        new_states = []
        for state, value in zip(states, state_values, strict=True):
            current = scope.get_current_value(state)
            new_states.append(value if current is None else current)
        return out, new_states

    jitted = jax.jit(pure)

    def call(images):
        # NumPy first: a tf.data batch converts without a copy (and without NumPy 2's warning
        # about TensorFlow's __array__)
        values = [w.value for w in weights], [s.value for s in states]
        out, new_states = jitted(*values, np.asarray(images))
        for state, value in zip(states, new_states, strict=True):
            state.assign(value)
        return out

    return call


def set_threads(threads: int) -> str | None:
    """Use `threads` compute threads; None if done, else why not."""
    if on_jax():
        return "JAX sizes its CPU thread pool when it starts (limit the process's CPUs instead)"
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        return "TensorFlow had already started in this process"
    return None
