"""Keras pieces shared by the timm twins: torch-style padding and BatchNorm, layer scale, GELU...

PyTorch pads convolutions and pools symmetrically by a fixed amount, where Keras' `padding="same"`
pads more at the bottom/right when the stride is 2. Only stride-1 convolutions with odd kernels pad
the same in both; everything else gets an explicit pad layer and `"valid"` (`conv2d`,
`max_pool2d`). Torch's max pooling pads with -inf, so the padding never wins the max.

Custom layers expose `timm_tensors()` (see `zoobot.tf.weights`) when they own weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import numpy as np
from keras import layers, ops

from zoobot.models.layout import ConfigError
from zoobot.tf.depthwise import DepthwiseConv2D
from zoobot.tf.patch_conv import Conv2D


def merge_model_args(
    architecture: str, defaults: Mapping, architecture_args: Mapping, model_args: Mapping | None
) -> dict:
    """The model's arguments: `defaults` (the timm class's), then the architecture's, then the given.

    Unknown argument names raise, naming the ones this family understands, so a checkpoint using a
    timm option zoobot.tf does not implement fails loudly instead of building the wrong network.
    """
    given = dict(model_args or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(
            f"{architecture}: model_args {unknown} are not supported by zoobot.tf; "
            f"supported: {sorted(defaults)}"
        )
    return {**defaults, **architecture_args, **given}


def require(architecture: str, args: Mapping, name: str, allowed: Sequence) -> None:
    """Raise unless model argument `name` has one of the `allowed` values."""
    if args[name] not in allowed:
        raise ValueError(
            f"{architecture}: {name}={args[name]!r} is not supported by zoobot.tf "
            f"(supported: {list(allowed)})"
        )


@keras.saving.register_keras_serializable(package="zoobot")
class Pad2D(layers.Layer):
    """Constant padding of height and width by (top, bottom, left, right), e.g. -inf before max pool."""

    def __init__(self, padding: Sequence[int], value: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.padding = tuple(int(p) for p in padding)
        self.value = float(value)

    def call(self, x):
        top, bottom, left, right = self.padding
        return ops.pad(
            x, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=self.value
        )

    def compute_output_shape(self, input_shape):
        top, bottom, left, right = self.padding
        batch, height, width, channels = input_shape
        return (
            batch,
            None if height is None else height + top + bottom,
            None if width is None else width + left + right,
            channels,
        )

    def get_config(self):
        return {**super().get_config(), "padding": self.padding, "value": self.value}


def conv2d(
    x,
    filters: int,
    kernel_size: int,
    name: str,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    use_bias: bool = True,
    kernel_initializer="glorot_uniform",
):
    """`nn.Conv2d(..., kernel_size, stride, padding, groups, bias)` on channels-last `x`."""
    same = stride == 1 and kernel_size % 2 == 1 and padding == kernel_size // 2
    if padding and not same:
        x = layers.ZeroPadding2D(padding, name=f"{name}.pad")(x)
    return Conv2D(
        filters,
        kernel_size,
        strides=stride,
        padding="same" if same and padding else "valid",
        groups=groups,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        name=name,
    )(x)


def depthwise_conv2d(
    x, kernel_size: int, name: str, padding: int, use_bias: bool = True, kernel_initializer=None
):
    """A stride-1 depthwise `nn.Conv2d(C, C, kernel_size, padding=padding, groups=C)`."""
    same = kernel_size % 2 == 1 and padding == kernel_size // 2
    if padding and not same:
        x = layers.ZeroPadding2D(padding, name=f"{name}.pad")(x)
    return DepthwiseConv2D(
        kernel_size,
        padding="same" if same and padding else "valid",
        use_bias=use_bias,
        depthwise_initializer=kernel_initializer or "glorot_uniform",
        name=name,
    )(x)


def max_pool2d(x, pool_size: int, stride: int, padding: int, name: str):
    """`nn.MaxPool2d(pool_size, stride, padding)`: -inf padding on every side, then `"valid"`."""
    if padding:
        x = Pad2D((padding,) * 4, value=-np.inf, name=f"{name}.pad")(x)
    return layers.MaxPooling2D(pool_size, strides=stride, padding="valid", name=name)(x)


def avg_pool2x2_ceil(x, name: str):
    """`nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)`.

    Keras' `"same"` average pooling with a 2x2 window and stride 2 pads only at the bottom/right
    and averages over the valid pixels only, which is exactly torch's ceil mode without padding.
    """
    return layers.AveragePooling2D(2, strides=2, padding="same", name=name)(x)


@keras.saving.register_keras_serializable(package="zoobot")
class TorchBatchNorm(layers.BatchNormalization):
    """BatchNorm2d as torch trains it: the running variance follows the unbiased batch variance.

    Both frameworks normalise a training batch with its biased variance, but torch updates
    `running_var` with the unbiased one (times n / (n - 1), n values per channel) where Keras uses
    the biased one; without this, one training step already moves the statistics apart.
    Masks and batch renormalisation (not used by the timm twins) take Keras' own path.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        axes = [i for i in range(len(x.shape)) if i != self.axis % len(x.shape)]
        mean, variance = ops.moments(x, axes=axes)
        count = ops.cast(ops.size(x) // ops.shape(x)[self.axis], x.dtype)
        unbiased = variance * count / ops.maximum(count - 1.0, 1.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + unbiased * (1.0 - self.momentum)
        )
        gamma = ops.cast(self.gamma, x.dtype) if self.scale else None
        beta = ops.cast(self.beta, x.dtype) if self.center else None
        outputs = ops.batch_normalization(
            x, mean, variance, axis=self.axis, offset=beta, scale=gamma, epsilon=self.epsilon
        )
        return ops.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package="zoobot")
class LayerScale(layers.Layer):
    """Per-channel scale of the residual branch (timm's ConvNeXt `gamma`); named by its timm key."""

    def __init__(self, init_value: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.init_value = float(init_value)

    def build(self, input_shape):
        self.gamma = self.add_weight(
            name="gamma",
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.init_value),
        )

    def call(self, x):
        return x * ops.cast(self.gamma, x.dtype)

    def timm_tensors(self):
        """The layer's own name is the timm key of `gamma`."""
        return [("", self.gamma, "vector")]

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value}


@keras.saving.register_keras_serializable(package="zoobot")
class DropPath(layers.Layer):
    """Stochastic depth (timm's `DropPath`): drops a sample's residual branch in training only."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.floor(
            keep + keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype)
        )
        return x * mask / keep

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="zoobot")
class Gelu(layers.Layer):
    """GELU: exact (erf), as torch's `nn.GELU()`, or the tanh approximation (`gelu_tanh`)."""

    def __init__(self, approximate: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.approximate = bool(approximate)

    def call(self, x):
        return ops.gelu(x, approximate=self.approximate)

    def get_config(self):
        return {**super().get_config(), "approximate": self.approximate}


def residual(branch, shortcut, drop_rate: float, name: str):
    """`drop_path(branch) + shortcut`, with the DropPath layer only when the rate is non-zero."""
    if drop_rate > 0:
        branch = DropPath(drop_rate, name=f"{name}.drop_path")(branch)
    return layers.Add(name=f"{name}.add")([branch, shortcut])
