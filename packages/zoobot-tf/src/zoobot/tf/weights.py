"""Strict, exact conversion between timm state dicts and the Keras twins in `zoobot.tf.architectures`.

The Keras layers are named by their timm module paths (`stages.0.blocks.1.conv_dw`), so a layer's
tensors are found by name plus the suffix its type gives each weight. Layouts differ only by
transposes, so the round trip Keras -> timm -> Keras is bitwise exact:

=============  ===========================  ============================
layout         timm (PyTorch)               Keras
=============  ===========================  ============================
``conv``       (out, in/groups, kh, kw)     (kh, kw, in/groups, out)
``depthwise``  (channels * mult, 1, kh, kw) (kh, kw, channels, mult)
``dense``      (out, in)                    (in, out)
``vector``     (n,)                         (n,)
=============  ===========================  ============================

Built-in Keras layers (Conv2D, DepthwiseConv2D, Dense, LayerNormalization, BatchNormalization) are
mapped here; a custom layer owning weights defines `timm_tensors()` returning `(suffix, variable,
layout)` triples (suffix "" makes the layer's name the whole key). BatchNorm's `num_batches_tracked`
buffer holds no information for inference: it is ignored on load and written as int64 0 on save,
so PyTorch's strict loading accepts the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from zoobot.models.layout import WeightsMismatchError as WeightsMismatchError  # re-exported
from zoobot.models.layout import check_weights_fit


def conv_to_keras(weight: np.ndarray) -> np.ndarray:
    """timm conv kernel (out, in, kh, kw) -> Keras (kh, kw, in, out)."""
    return np.transpose(weight, (2, 3, 1, 0))


def conv_to_timm(kernel: np.ndarray) -> np.ndarray:
    """Keras conv kernel (kh, kw, in, out) -> timm (out, in, kh, kw)."""
    return np.transpose(kernel, (3, 2, 0, 1))


def depthwise_to_keras(weight: np.ndarray, channels: int) -> np.ndarray:
    """timm depthwise kernel (channels * mult, 1, kh, kw) -> Keras (kh, kw, channels, mult)."""
    out, _, kh, kw = weight.shape
    return np.transpose(weight.reshape(channels, out // channels, kh, kw), (2, 3, 0, 1))


def depthwise_to_timm(kernel: np.ndarray) -> np.ndarray:
    """Keras depthwise kernel (kh, kw, channels, mult) -> timm (channels * mult, 1, kh, kw)."""
    kh, kw, channels, mult = kernel.shape
    return np.transpose(kernel, (2, 3, 0, 1)).reshape(channels * mult, 1, kh, kw)


def dense_to_keras(weight: np.ndarray) -> np.ndarray:
    """timm linear weight (out, in) -> Keras Dense kernel (in, out)."""
    return np.transpose(weight)


def dense_to_timm(kernel: np.ndarray) -> np.ndarray:
    """Keras Dense kernel (in, out) -> timm linear weight (out, in)."""
    return np.transpose(kernel)


def _timm_shape(layout: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if layout == "conv":
        kh, kw, fan_in, out = shape
        return (out, fan_in, kh, kw)
    if layout == "depthwise":
        kh, kw, channels, mult = shape
        return (channels * mult, 1, kh, kw)
    if layout == "dense":
        return tuple(reversed(shape))
    return tuple(shape)


@dataclass(frozen=True)
class TimmTensor:
    """One Keras variable, the timm key it corresponds to, and how the layouts differ."""

    key: str
    variable: keras.Variable
    layout: str  # "conv" | "depthwise" | "dense" | "vector"

    @property
    def timm_shape(self) -> tuple[int, ...]:
        return _timm_shape(self.layout, tuple(self.variable.shape))

    def to_keras(self, array: np.ndarray) -> np.ndarray:
        """The timm-layout `array` in this variable's Keras layout and dtype."""
        if self.layout == "conv":
            array = conv_to_keras(array)
        elif self.layout == "depthwise":
            array = depthwise_to_keras(array, self.variable.shape[2])
        elif self.layout == "dense":
            array = dense_to_keras(array)
        return np.ascontiguousarray(array, dtype=self.variable.dtype)

    def to_timm(self) -> np.ndarray:
        """The variable's value in timm's layout."""
        value = self.variable.numpy()
        if self.layout == "conv":
            value = conv_to_timm(value)
        elif self.layout == "depthwise":
            value = depthwise_to_timm(value)
        elif self.layout == "dense":
            value = dense_to_timm(value)
        return np.ascontiguousarray(value)


# suffixes of timm's tensors for each built-in Keras layer, by Keras weight attribute
_BUILTIN = (
    (layers.DepthwiseConv2D, (("kernel", "weight", "depthwise"), ("bias", "bias", "vector"))),
    (layers.Conv2D, (("kernel", "weight", "conv"), ("bias", "bias", "vector"))),
    (layers.Dense, (("kernel", "weight", "dense"), ("bias", "bias", "vector"))),
    (layers.LayerNormalization, (("gamma", "weight", "vector"), ("beta", "bias", "vector"))),
    (
        layers.BatchNormalization,
        (
            ("gamma", "weight", "vector"),
            ("beta", "bias", "vector"),
            ("moving_mean", "running_mean", "vector"),
            ("moving_variance", "running_var", "vector"),
        ),
    ),
)
# per layer type: timm buffers without inference value, written as int64 zero scalars
_IGNORED_BUFFERS = ((layers.BatchNormalization, ("num_batches_tracked",)),)


def _key(name: str, suffix: str) -> str:
    return f"{name}.{suffix}" if suffix else name


def layer_tensors(layer: keras.layers.Layer) -> list[TimmTensor]:
    """The timm tensors a layer holds, in timm's order; raises for weights nobody mapped."""
    if hasattr(layer, "timm_tensors"):
        triples = layer.timm_tensors()
    else:
        triples = []
        for cls, attributes in _BUILTIN:
            if isinstance(layer, cls):
                triples = [
                    (suffix, getattr(layer, attr), layout)
                    for attr, suffix, layout in attributes
                    if getattr(layer, attr, None) is not None
                ]
                break
    tensors = [TimmTensor(_key(layer.name, s), v, layout) for s, v, layout in triples]
    mapped = {id(t.variable) for t in tensors}
    unmapped = [w.path for w in layer.weights if id(w) not in mapped]
    if unmapped:
        raise TypeError(
            f"layer {layer.name!r} ({type(layer).__name__}) has weights with no timm name: {unmapped}"
        )
    return tensors


def ignored_buffers(layer: keras.layers.Layer) -> list[str]:
    """timm keys of the layer's informationless buffers (BatchNorm's `num_batches_tracked`)."""
    return [
        _key(layer.name, suffix)
        for cls, suffixes in _IGNORED_BUFFERS
        if isinstance(layer, cls)
        for suffix in suffixes
    ]


def weighted_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's layers owning weights, in graph order."""
    return [layer for layer in model.layers if layer.weights]


def timm_tensors(model: keras.Model) -> dict[str, TimmTensor]:
    """Every timm key of the model with its Keras variable, in the model's layer order."""
    tensors: dict[str, TimmTensor] = {}
    for layer in weighted_layers(model):
        for tensor in layer_tensors(layer):
            if tensor.key in tensors:
                raise TypeError(f"two Keras variables claim the timm key {tensor.key!r}")
            tensors[tensor.key] = tensor
    return tensors


def load_timm_state(
    model: keras.Model, state: Mapping[str, np.ndarray], what: str = "timm"
) -> None:
    """Assign timm-named `state` to `model`, every key and shape matching, else name the misfits.

    Nothing is assigned unless everything fits. `num_batches_tracked` buffers may be present or not.
    """
    tensors = timm_tensors(model)
    ignored = {key for layer in weighted_layers(model) for key in ignored_buffers(layer)}
    expected = {key: tensor.timm_shape for key, tensor in tensors.items()}
    found = {key: tuple(np.shape(value)) for key, value in state.items()}
    check_weights_fit(expected, found, what, ignored)
    for key, tensor in tensors.items():
        tensor.variable.assign(tensor.to_keras(np.asarray(state[key])))


def timm_state(model: keras.Model) -> dict[str, np.ndarray]:
    """The model's weights under timm's names and layouts, with timm's buffers, ready to save."""
    state: dict[str, np.ndarray] = {}
    for layer in weighted_layers(model):
        for tensor in layer_tensors(layer):
            state[tensor.key] = tensor.to_timm()
        for key in ignored_buffers(layer):
            state[key] = np.zeros((), dtype=np.int64)
    return state
