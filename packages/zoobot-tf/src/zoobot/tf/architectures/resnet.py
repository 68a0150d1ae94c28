"""ResNet / ResNet-D / ResNeXt (timm `ResNet`) in Keras 3, channels-last, with timm's layer names.

Follows `timm/models/resnet.py`: a 7x7 stride-2 stem (or the 3-conv "deep" stems), BatchNorm, ReLU,
3x3 stride-2 max pool; four stages of BasicBlock or Bottleneck blocks whose first block
downsamples its shortcut with a strided 1x1 conv (or, `avg_down`, a 2x2 ceil-mode average pool then
a 1x1 conv); global average pooling. Torch semantics kept exactly: symmetric padding through
explicit pad layers, max-pool padding with -inf, BatchNorm eps 1e-5 (Keras' default is 1e-3).
Squeeze-excitation, anti-aliasing, dilation and the stem-pool replacement are not implemented.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np
from keras import layers

from zoobot.tf.architectures.layers import (
    TorchBatchNorm,
    avg_pool2x2_ceil,
    conv2d,
    max_pool2d,
    merge_model_args,
    require,
    residual,
)

# timm ResNet.__init__ defaults (for the arguments zoobot.tf accepts); `block` is one block type
# for all stages or one per stage: "basic" (BasicBlock) or "bottleneck" (Bottleneck).
DEFAULTS = {
    "block": "basic",
    "layers": (2, 2, 2, 2),
    "in_chans": 3,
    "num_classes": 0,
    "global_pool": "avg",
    "output_stride": 32,
    "cardinality": 1,
    "base_width": 64,
    "stem_width": 64,
    "stem_type": "",
    "replace_stem_pool": False,
    "block_reduce_first": 1,
    "down_kernel_size": 1,
    "avg_down": False,
    "channels": (64, 128, 256, 512),
    "zero_init_last": True,
    "drop_rate": 0.0,
    "drop_path_rate": 0.0,
    "drop_block_rate": 0.0,
}

_EXPANSION = {"basic": 1, "bottleneck": 4}
_D = {"stem_width": 32, "stem_type": "deep", "avg_down": True}  # the "-d" variants
_T = {"stem_width": 32, "stem_type": "deep_tiered", "avg_down": True}  # the "-t" variants

# timm architecture -> the arguments its factory function passes (timm 1.0.x)
ARCHITECTURES: dict[str, dict] = {
    "resnet10t": {"block": "basic", "layers": (1, 1, 1, 1), **_T},
    "resnet14t": {"block": "bottleneck", "layers": (1, 1, 1, 1), **_T},
    "resnet18": {"block": "basic", "layers": (2, 2, 2, 2)},
    "resnet18d": {"block": "basic", "layers": (2, 2, 2, 2), **_D},
    "resnet26": {"block": "bottleneck", "layers": (2, 2, 2, 2)},
    "resnet26d": {"block": "bottleneck", "layers": (2, 2, 2, 2), **_D},
    "resnet26t": {"block": "bottleneck", "layers": (2, 2, 2, 2), **_T},
    "resnet34": {"block": "basic", "layers": (3, 4, 6, 3)},
    "resnet34d": {"block": "basic", "layers": (3, 4, 6, 3), **_D},
    "resnet50": {"block": "bottleneck", "layers": (3, 4, 6, 3)},
    "resnet50c": {
        "block": "bottleneck",
        "layers": (3, 4, 6, 3),
        "stem_width": 32,
        "stem_type": "deep",
    },
    "resnet50d": {"block": "bottleneck", "layers": (3, 4, 6, 3), **_D},
    "resnet50t": {"block": "bottleneck", "layers": (3, 4, 6, 3), **_T},
    "resnet101": {"block": "bottleneck", "layers": (3, 4, 23, 3)},
    "resnet101d": {"block": "bottleneck", "layers": (3, 4, 23, 3), **_D},
    "resnet152": {"block": "bottleneck", "layers": (3, 8, 36, 3)},
    "resnet152d": {"block": "bottleneck", "layers": (3, 8, 36, 3), **_D},
    "resnext50_32x4d": {
        "block": "bottleneck",
        "layers": (3, 4, 6, 3),
        "cardinality": 32,
        "base_width": 4,
    },
    "resnext101_32x8d": {
        "block": "bottleneck",
        "layers": (3, 4, 23, 3),
        "cardinality": 32,
        "base_width": 8,
    },
    "wide_resnet50_2": {"block": "bottleneck", "layers": (3, 4, 6, 3), "base_width": 128},
    "wide_resnet101_2": {"block": "bottleneck", "layers": (3, 4, 23, 3), "base_width": 128},
    "test_resnet": {
        "block": ("basic", "basic", "bottleneck", "basic"),
        "layers": (1, 1, 1, 1),
        "stem_width": 16,
        "stem_type": "deep",
        "avg_down": True,
        "channels": (32, 48, 48, 96),
    },
}


def _resolve(architecture: str, model_args: Mapping | None) -> dict:
    args = merge_model_args(architecture, DEFAULTS, ARCHITECTURES[architecture], model_args)
    require(architecture, args, "global_pool", ("avg",))
    require(architecture, args, "output_stride", (32,))
    require(architecture, args, "stem_type", ("", "deep", "deep_tiered"))
    require(architecture, args, "replace_stem_pool", (False,))
    require(architecture, args, "block_reduce_first", (1,))
    require(architecture, args, "drop_block_rate", (0.0, 0))
    block = args["block"]
    args["block"] = (block,) * len(args["channels"]) if isinstance(block, str) else tuple(block)
    for kind in args["block"]:
        if kind not in _EXPANSION:
            raise ValueError(
                f"{architecture}: unknown block {kind!r} (supported: basic, bottleneck)"
            )
    if "basic" in args["block"] and (args["cardinality"], args["base_width"]) != (1, 64):
        raise ValueError(
            f"{architecture}: BasicBlock needs cardinality 1 and base_width 64 (as in timm)"
        )
    return args


def _init():
    """timm's ResNet init: Kaiming normal, fan-out, for ReLU."""
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def _conv(x, filters, kernel_size, name, stride=1, padding=0, groups=1):
    return conv2d(
        x,
        filters,
        kernel_size,
        name,
        stride,
        padding,
        groups,
        use_bias=False,
        kernel_initializer=_init(),
    )


def _bn(x, name: str, zero_init: bool = False):
    """torch BatchNorm2d: eps 1e-5, momentum 0.1 (Keras counts momentum the other way round)."""
    gamma = "zeros" if zero_init else "ones"
    return TorchBatchNorm(epsilon=1e-5, momentum=0.9, gamma_initializer=gamma, name=name)(x)


def _relu(x, name: str):
    return layers.ReLU(name=name)(x)


def _stem(x, args: dict):
    if not args["stem_type"]:
        x = _conv(x, 64, 7, "conv1", stride=2, padding=3)
        return x, 64
    width = args["stem_width"]
    first = 3 * (width // 4) if "tiered" in args["stem_type"] else width
    x = _conv(x, first, 3, "conv1.0", stride=2, padding=1)
    x = _relu(_bn(x, "conv1.1"), "conv1.2")
    x = _conv(x, width, 3, "conv1.3", padding=1)
    x = _relu(_bn(x, "conv1.4"), "conv1.5")
    x = _conv(x, 2 * width, 3, "conv1.6", padding=1)
    return x, 2 * width


def _downsample(x, name: str, filters: int, stride: int, args: dict):
    if args["avg_down"]:
        if stride > 1:
            x = avg_pool2x2_ceil(x, f"{name}.0")
        return _bn(_conv(x, filters, 1, f"{name}.1"), f"{name}.2")
    kernel = 1 if stride == 1 else args["down_kernel_size"]
    padding = ((stride - 1) + (kernel - 1)) // 2  # timm get_padding
    x = _conv(x, filters, kernel, f"{name}.0", stride=stride, padding=padding)
    return _bn(x, f"{name}.1")


def _block(x, name, kind, planes, stride, downsample, args, drop_rate):
    shortcut = x
    zero_init = args["zero_init_last"]
    if kind == "basic":
        x = _relu(
            _bn(_conv(x, planes, 3, f"{name}.conv1", stride, 1), f"{name}.bn1"), f"{name}.act1"
        )
        x = _bn(_conv(x, planes, 3, f"{name}.conv2", padding=1), f"{name}.bn2", zero_init)
    else:
        width = int(np.floor(planes * (args["base_width"] / 64)) * args["cardinality"])
        x = _relu(_bn(_conv(x, width, 1, f"{name}.conv1"), f"{name}.bn1"), f"{name}.act1")
        x = _conv(x, width, 3, f"{name}.conv2", stride, 1, groups=args["cardinality"])
        x = _relu(_bn(x, f"{name}.bn2"), f"{name}.act2")
        x = _bn(_conv(x, planes * 4, 1, f"{name}.conv3"), f"{name}.bn3", zero_init)
    if downsample is not None:
        shortcut = _downsample(shortcut, f"{name}.downsample", *downsample, args)
    x = residual(x, shortcut, drop_rate, name)
    return _relu(x, f"{name}.act{3 if kind == 'bottleneck' else 2}")


def build(architecture: str, channels: int, model_args: Mapping | None = None) -> keras.Model:
    """The Keras twin of `timm.create_model(architecture, num_classes=0, in_chans=channels, ...)`."""
    args = _resolve(architecture, model_args)
    inputs = keras.Input((None, None, channels), name="image")
    x, inplanes = _stem(inputs, args)
    x = _relu(_bn(x, "bn1"), "act1")
    x = max_pool2d(x, 3, 2, 1, "maxpool")
    total = sum(args["layers"])
    index = 0
    for stage, (kind, planes, depth) in enumerate(
        zip(args["block"], args["channels"], args["layers"], strict=True)
    ):
        stride = 1 if stage == 0 else 2
        outplanes = planes * _EXPANSION[kind]
        downsample = (outplanes, stride) if stride != 1 or inplanes != outplanes else None
        for j in range(depth):
            drop_rate = args["drop_path_rate"] * index / max(total - 1, 1)
            x = _block(
                x,
                f"layer{stage + 1}.{j}",
                kind,
                planes,
                stride if j == 0 else 1,
                downsample if j == 0 else None,
                args,
                drop_rate,
            )
            inplanes = outplanes
            index += 1
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    if args["drop_rate"]:
        x = layers.Dropout(args["drop_rate"], name="drop")(x)
    model = keras.Model(inputs, x, name=architecture)
    model.num_features = inplanes
    return model
