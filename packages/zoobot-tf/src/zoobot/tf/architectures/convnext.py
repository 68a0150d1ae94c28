"""ConvNeXt (timm `ConvNeXt`, v1) in Keras 3, channels-last, with timm's layer names.

Follows `timm/models/convnext.py`: a stem (4x4 patchify conv + LayerNorm, or timm's overlapping 3x3
stems), four stages (LayerNorm + 2x2 stride-2 conv downsample, then blocks of 7x7 depthwise conv ->
LayerNorm -> Linear -> GELU -> Linear -> layer scale `gamma`, plus the shortcut), global average
pooling and the head LayerNorm. `conv_mlp=True` (atto to nano) uses 1x1 convs where the others
use Linear layers; both are the same arithmetic on channels-last tensors, but the timm weights have
different shapes, so the Keras layer types follow timm's. ConvNeXt-V2 (GRN) is not implemented.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np
from keras import layers

from zoobot.tf.architectures.layers import (
    Gelu,
    LayerScale,
    conv2d,
    depthwise_conv2d,
    merge_model_args,
    require,
    residual,
)

# timm ConvNeXt.__init__ defaults (for the arguments zoobot.tf accepts)
DEFAULTS = {
    "in_chans": 3,
    "num_classes": 0,
    "global_pool": "avg",
    "output_stride": 32,
    "depths": (3, 3, 9, 3),
    "dims": (96, 192, 384, 768),
    "kernel_sizes": 7,
    "ls_init_value": 1e-6,
    "stem_type": "patch",
    "patch_size": 4,
    "head_init_scale": 1.0,
    "head_norm_first": False,
    "head_hidden_size": None,
    "conv_mlp": False,
    "conv_bias": True,
    "use_grn": False,
    "act_layer": "gelu",
    "norm_layer": None,
    "norm_eps": None,
    "drop_rate": 0.0,
    "drop_path_rate": 0.0,
}

_NANO = {"depths": (2, 2, 8, 2), "dims": (80, 160, 320, 640), "conv_mlp": True}
_FEMTO = {"depths": (2, 2, 6, 2), "dims": (48, 96, 192, 384), "conv_mlp": True}
_ATTO = {"depths": (2, 2, 6, 2), "dims": (40, 80, 160, 320), "conv_mlp": True}
_PICO = {"depths": (2, 2, 6, 2), "dims": (64, 128, 256, 512), "conv_mlp": True}
_TINY = {"depths": (3, 3, 9, 3), "dims": (96, 192, 384, 768)}

# timm architecture -> the arguments its factory function passes (timm 1.0.x)
ARCHITECTURES: dict[str, dict] = {
    "convnext_atto": _ATTO,
    "convnext_atto_ols": {**_ATTO, "stem_type": "overlap_tiered"},
    "convnext_femto": _FEMTO,
    "convnext_femto_ols": {**_FEMTO, "stem_type": "overlap_tiered"},
    "convnext_pico": _PICO,
    "convnext_pico_ols": {**_PICO, "stem_type": "overlap_tiered"},
    "convnext_nano": _NANO,
    "convnext_nano_ols": {**_NANO, "stem_type": "overlap"},
    "convnext_tiny": _TINY,
    "convnext_tiny_hnf": {**_TINY, "head_norm_first": True, "conv_mlp": True},
    "convnext_small": {"depths": (3, 3, 27, 3), "dims": (96, 192, 384, 768)},
    "convnext_base": {"depths": (3, 3, 27, 3), "dims": (128, 256, 512, 1024)},
    "convnext_large": {"depths": (3, 3, 27, 3), "dims": (192, 384, 768, 1536)},
    "convnext_large_mlp": {
        "depths": (3, 3, 27, 3),
        "dims": (192, 384, 768, 1536),
        "head_hidden_size": 1536,
    },
    "convnext_xlarge": {"depths": (3, 3, 27, 3), "dims": (256, 512, 1024, 2048)},
    "test_convnext": {
        "depths": (1, 2, 4, 2),
        "dims": (24, 32, 48, 64),
        "norm_eps": 1e-5,
        "act_layer": "gelu_tanh",
    },
}

_ACTIVATIONS = {"gelu": False, "gelu_tanh": True}  # name -> tanh approximation?


def _make_divisible(value: float, divisor: int = 8) -> int:
    """timm's `make_divisible` (nearest multiple of `divisor`, never 10% below `value`)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def _resolve(architecture: str, model_args: Mapping | None) -> dict:
    args = merge_model_args(architecture, DEFAULTS, ARCHITECTURES[architecture], model_args)
    require(architecture, args, "global_pool", ("avg",))
    require(architecture, args, "output_stride", (32,))
    require(architecture, args, "stem_type", ("patch", "overlap", "overlap_tiered", "overlap_act"))
    require(architecture, args, "use_grn", (False,))
    require(architecture, args, "act_layer", tuple(_ACTIVATIONS))
    require(architecture, args, "norm_layer", (None, "layernorm", "layernorm2d"))
    if args["head_norm_first"] and args["head_hidden_size"]:
        raise ValueError(
            f"{architecture}: head_hidden_size needs head_norm_first=False (as in timm)"
        )
    return args


def _init():
    """timm's ConvNeXt init: truncated normal (std 0.02) conv and linear weights, zero biases."""
    return keras.initializers.TruncatedNormal(stddev=0.02)


def _stem(x, args: dict, norm):
    dims, bias = args["dims"], args["conv_bias"]
    if args["stem_type"] == "patch":
        patch = args["patch_size"]
        x = conv2d(
            x, dims[0], patch, "stem.0", stride=patch, use_bias=bias, kernel_initializer=_init()
        )
        return norm("stem.1")(x)
    mid = _make_divisible(dims[0] // 2) if "tiered" in args["stem_type"] else dims[0]
    x = conv2d(x, mid, 3, "stem.0", stride=2, padding=1, use_bias=bias, kernel_initializer=_init())
    index = 1
    if "act" in args["stem_type"]:
        x = Gelu(_ACTIVATIONS[args["act_layer"]], name="stem.1")(x)
        index = 2
    x = conv2d(
        x,
        dims[0],
        3,
        f"stem.{index}",
        stride=2,
        padding=1,
        use_bias=bias,
        kernel_initializer=_init(),
    )
    return norm(f"stem.{index + 1}")(x)


def _pointwise(x, filters: int, name: str, args: dict):
    """timm's Mlp layer: a 1x1 conv with `conv_mlp` (as timm's weights are shaped), else Linear."""
    if args["conv_mlp"]:
        return conv2d(x, filters, 1, name, use_bias=args["conv_bias"], kernel_initializer=_init())
    return layers.Dense(filters, use_bias=args["conv_bias"], kernel_initializer=_init(), name=name)(
        x
    )


def _block(x, name: str, dim: int, kernel_size: int, args: dict, norm, drop_rate: float):
    shortcut = x
    x = depthwise_conv2d(
        x, kernel_size, f"{name}.conv_dw", (kernel_size - 1) // 2, args["conv_bias"], _init()
    )
    x = norm(f"{name}.norm")(x)
    x = _pointwise(x, 4 * dim, f"{name}.mlp.fc1", args)
    x = Gelu(_ACTIVATIONS[args["act_layer"]], name=f"{name}.mlp.act")(x)
    x = _pointwise(x, dim, f"{name}.mlp.fc2", args)
    if args["ls_init_value"] is not None:
        x = LayerScale(args["ls_init_value"], name=f"{name}.gamma")(x)
    return residual(x, shortcut, drop_rate, name)


def build(architecture: str, channels: int, model_args: Mapping | None = None) -> keras.Model:
    """The Keras twin of `timm.create_model(architecture, num_classes=0, in_chans=channels, ...)`."""
    args = _resolve(architecture, model_args)
    eps = 1e-6 if args["norm_eps"] is None else args["norm_eps"]

    def norm(name: str):
        return layers.LayerNormalization(axis=-1, epsilon=eps, name=name)

    dims, depths = tuple(args["dims"]), tuple(args["depths"])
    kernel_sizes = args["kernel_sizes"]
    if isinstance(kernel_sizes, int):
        kernel_sizes = (kernel_sizes,) * 4
    drop_rates = np.linspace(0.0, args["drop_path_rate"], sum(depths)).tolist()

    inputs = keras.Input((None, None, channels), name="image")
    x = _stem(inputs, args, norm)
    block_index = 0
    for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
        if i > 0:
            x = norm(f"stages.{i}.downsample.0")(x)
            x = conv2d(
                x,
                dim,
                2,
                f"stages.{i}.downsample.1",
                stride=2,
                use_bias=args["conv_bias"],
                kernel_initializer=_init(),
            )
        for j in range(depth):
            name = f"stages.{i}.blocks.{j}"
            x = _block(x, name, dim, kernel_sizes[i], args, norm, drop_rates[block_index])
            block_index += 1
    if args["head_norm_first"]:
        x = norm("norm_pre")(x)
        x = layers.GlobalAveragePooling2D(name="head.global_pool")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="head.global_pool")(x)
        x = norm("head.norm")(x)
        if args["head_hidden_size"]:
            x = layers.Dense(
                args["head_hidden_size"], kernel_initializer=_init(), name="head.pre_logits.fc"
            )(x)
            x = Gelu(False, name="head.pre_logits.act")(x)
    if args["drop_rate"]:
        x = layers.Dropout(args["drop_rate"], name="head.drop")(x)
    model = keras.Model(inputs, x, name=architecture)
    model.num_features = dims[-1]
    return model
