"""EfficientNet (timm `EfficientNet`, timm 1.0) in Keras 3, channels-last, with timm's layer names.

One builder follows timm's `_gen_efficientnet` / `EfficientNetBuilder` from the same block strings
(`ds_r1_k3_s1_e1_c16_se0.25`, `ir_r2_k3_s2_e6_c24_se0.25`, ...), channel rounding and depth scaling,
so every architecture here is the same code with different multipliers:

- `efficientnet_b0` ... `efficientnet_b8`: torch-style symmetric padding
  (`pad = ((stride - 1) + dilation * (kernel - 1)) // 2`; an explicit `ZeroPadding2D` then `"valid"`
  before every strided convolution), BatchNorm eps 1e-5, SiLU. Stem 3x3/2 conv + BN + SiLU; a
  depthwise-separable first block (3x3 depthwise, SE, 1x1 projection); inverted residual blocks
  (1x1 expansion, kxk depthwise, SE, 1x1 linear projection, shortcut when the shape allows);
  squeeze-excitation reduces to `round(block input channels * 0.25)` with SiLU then a sigmoid gate;
  `conv_head` 1x1 + `bn2` + SiLU; global average pooling.
- `tf_efficientnet_b0` ... `tf_efficientnet_b8`: timm's ports of the TensorFlow weights: TF "SAME"
  padding (Keras `padding="same"`, identical to timm's `Conv2dSame`), BatchNorm eps 1e-3.
- `efficientnetv2_s/m/l/xl`, `tf_efficientnetv2_s/m/l/xl`, `tf_efficientnetv2_b0..b3`,
  `efficientnetv2_rw_t/s/m`: EfficientNetV2 from timm's `_gen_efficientnetv2_*` block strings:
  ConvBnAct first stage (with shortcut), EdgeResidual stages (a full kxk expansion conv instead of
  1x1 + depthwise), then SE inverted residuals; `tf_` ports again with TF SAME padding and eps 1e-3.
  Their factories (except `tf_efficientnetv2_b1..b3` and `efficientnetv2_rw_t/m`) accept
  `channel_multiplier` / `depth_multiplier`.
- `test_efficientnet`: timm's minimal test network (ConvBnAct and EdgeResidual blocks too); its
  factory accepts `channel_multiplier` / `depth_multiplier`, which the small test fixture uses.

`build_generated` builds what timm's generators build for multipliers no registered name has (the
EfficientNet-B0 structure at a test size). Layers carry timm's module names (`conv_stem`, `bn1`,
`blocks.1.0.conv_dw`, `blocks.1.0.se.conv_reduce`, `conv_head`, `bn2`); layers without weights add a
suffix (`blocks.1.0.conv_dw.pad`, `bn1.act`, `blocks.1.0.add`). Weight conversion is
`zoobot.tf.weights` (depthwise kernels `(C, 1, kh, kw)` <-> `(kh, kw, C, 1)`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from copy import deepcopy
from typing import Any

import keras
from keras import layers

from zoobot.tf.architectures.layers import (
    TorchBatchNorm,
    merge_model_args,
    require,
    residual,
)
from zoobot.tf.depthwise import DepthwiseConv2D
from zoobot.tf.patch_conv import Conv2D

# timm `_gen_efficientnet`: EfficientNet-B0, scaled by channel and depth multipliers for B1-B8.
EFFICIENTNET_ARCH_DEF: tuple[tuple[str, ...], ...] = (
    ("ds_r1_k3_s1_e1_c16_se0.25",),
    ("ir_r2_k3_s2_e6_c24_se0.25",),
    ("ir_r2_k5_s2_e6_c40_se0.25",),
    ("ir_r3_k3_s2_e6_c80_se0.25",),
    ("ir_r3_k5_s1_e6_c112_se0.25",),
    ("ir_r4_k5_s2_e6_c192_se0.25",),
    ("ir_r1_k3_s1_e6_c320_se0.25",),
)

# timm `_gen_test_efficientnet`.
TEST_EFFICIENTNET_ARCH_DEF: tuple[tuple[str, ...], ...] = (
    ("cn_r1_k3_s1_e1_c16_skip",),
    ("er_r1_k3_s2_e4_c24",),
    ("er_r1_k3_s2_e4_c32",),
    ("ir_r1_k3_s2_e4_c48_se0.25",),
    ("ir_r1_k3_s2_e4_c64_se0.25",),
)

# timm `_gen_efficientnetv2_s` (the official EfficientNetV2-S; `rw=True` changes two stages)
EFFICIENTNETV2_S_ARCH_DEF: tuple[tuple[str, ...], ...] = (
    ("cn_r2_k3_s1_e1_c24_skip",),
    ("er_r4_k3_s2_e4_c48",),
    ("er_r4_k3_s2_e4_c64",),
    ("ir_r6_k3_s2_e4_c128_se0.25",),
    ("ir_r9_k3_s1_e6_c160_se0.25",),
    ("ir_r15_k3_s2_e6_c256_se0.25",),
)
EFFICIENTNETV2_RW_S_ARCH_DEF = (
    ("er_r2_k3_s1_e1_c24",),
    *EFFICIENTNETV2_S_ARCH_DEF[1:-1],
    ("ir_r15_k3_s2_e6_c272_se0.25",),
)
# timm `_gen_efficientnetv2_base` (B0-B3), `_m`, `_l`, `_xl`
EFFICIENTNETV2_BASE_ARCH_DEF: tuple[tuple[str, ...], ...] = (
    ("cn_r1_k3_s1_e1_c16_skip",),
    ("er_r2_k3_s2_e4_c32",),
    ("er_r2_k3_s2_e4_c48",),
    ("ir_r3_k3_s2_e4_c96_se0.25",),
    ("ir_r5_k3_s1_e6_c112_se0.25",),
    ("ir_r8_k3_s2_e6_c192_se0.25",),
)
EFFICIENTNETV2_M_ARCH_DEF: tuple[tuple[str, ...], ...] = (
    ("cn_r3_k3_s1_e1_c24_skip",),
    ("er_r5_k3_s2_e4_c48",),
    ("er_r5_k3_s2_e4_c80",),
    ("ir_r7_k3_s2_e4_c160_se0.25",),
    ("ir_r14_k3_s1_e6_c176_se0.25",),
    ("ir_r18_k3_s2_e6_c304_se0.25",),
    ("ir_r5_k3_s1_e6_c512_se0.25",),
)
EFFICIENTNETV2_L_ARCH_DEF: tuple[tuple[str, ...], ...] = (
    ("cn_r4_k3_s1_e1_c32_skip",),
    ("er_r7_k3_s2_e4_c64",),
    ("er_r7_k3_s2_e4_c96",),
    ("ir_r10_k3_s2_e4_c192_se0.25",),
    ("ir_r19_k3_s1_e6_c224_se0.25",),
    ("ir_r25_k3_s2_e6_c384_se0.25",),
    ("ir_r7_k3_s1_e6_c640_se0.25",),
)
EFFICIENTNETV2_XL_ARCH_DEF: tuple[tuple[str, ...], ...] = (
    ("cn_r4_k3_s1_e1_c32_skip",),
    ("er_r8_k3_s2_e4_c64",),
    ("er_r8_k3_s2_e4_c96",),
    ("ir_r16_k3_s2_e4_c192_se0.25",),
    ("ir_r24_k3_s1_e6_c256_se0.25",),
    ("ir_r32_k3_s2_e6_c512_se0.25",),
    ("ir_r8_k3_s1_e6_c640_se0.25",),
)

# generator -> what it fixes besides the multipliers (timm 1.0.31 efficientnet.py): block strings,
# stem and head widths, the channel rounding limit, and whether the head width is rounded too.
GENERATORS: dict[str, dict[str, Any]] = {
    "efficientnet": {  # _gen_efficientnet
        "arch_def": EFFICIENTNET_ARCH_DEF,
        "stem_size": 32,
        "num_features": 1280,
        "round_limit": 0.9,
    },
    "test_efficientnet": {  # _gen_test_efficientnet
        "arch_def": TEST_EFFICIENTNET_ARCH_DEF,
        "stem_size": 24,
        "num_features": 256,
        "round_limit": 0.0,
    },
    "efficientnetv2_base": {
        "arch_def": EFFICIENTNETV2_BASE_ARCH_DEF,
        "stem_size": 32,
        "num_features": 1280,
        "round_limit": 0.0,
    },
    "efficientnetv2_s": {
        "arch_def": EFFICIENTNETV2_S_ARCH_DEF,
        "stem_size": 24,
        "num_features": 1280,
        "round_limit": 0.9,
    },
    "efficientnetv2_rw_s": {  # _gen_efficientnetv2_s(rw=True)
        "arch_def": EFFICIENTNETV2_RW_S_ARCH_DEF,
        "stem_size": 24,
        "num_features": 1792,
        "round_limit": 0.9,
    },
    "efficientnetv2_m": {
        "arch_def": EFFICIENTNETV2_M_ARCH_DEF,
        "stem_size": 24,
        "num_features": 1280,
        "round_limit": 0.9,
        "fixed_head": True,
    },
    "efficientnetv2_l": {
        "arch_def": EFFICIENTNETV2_L_ARCH_DEF,
        "stem_size": 32,
        "num_features": 1280,
        "round_limit": 0.9,
        "fixed_head": True,
    },
    "efficientnetv2_xl": {
        "arch_def": EFFICIENTNETV2_XL_ARCH_DEF,
        "stem_size": 32,
        "num_features": 1280,
        "round_limit": 0.9,
        "fixed_head": True,
    },
}

# timm EfficientNet.__init__ / generator defaults, for the arguments zoobot.tf accepts
DEFAULTS: dict[str, Any] = {
    "in_chans": 3,
    "num_classes": 0,
    "global_pool": "avg",
    "output_stride": 32,
    "pad_type": "",
    "fix_stem": False,
    "act_layer": None,  # the generator's: swish / silu, both SiLU
    "bn_eps": None,  # torch's 1e-5
    "bn_momentum": None,  # torch's 0.1
    "drop_rate": 0.0,
    "drop_path_rate": 0.0,
    "channel_multiplier": 1.0,
    "depth_multiplier": 1.0,
}

# (channel_multiplier, depth_multiplier) of timm's efficientnet_bN / tf_efficientnet_bN
_SCALING = {
    "b0": (1.0, 1.0),
    "b1": (1.0, 1.1),
    "b2": (1.1, 1.2),
    "b3": (1.2, 1.4),
    "b4": (1.4, 1.8),
    "b5": (1.6, 2.2),
    "b6": (1.8, 2.6),
    "b7": (2.0, 3.1),
    "b8": (2.2, 3.6),
}
BN_EPS_TF_DEFAULT = 1e-3


_TF_PORT = {"bn_eps": BN_EPS_TF_DEFAULT, "pad_type": "same"}


def _registered() -> tuple[dict[str, dict[str, Any]], dict[str, str], set[str]]:
    """(architecture -> factory arguments, architecture -> generator, architectures whose factory
    lets callers choose the multipliers)."""
    archs: dict[str, dict[str, Any]] = {}
    generator: dict[str, str] = {}
    for variant, (width, depth) in _SCALING.items():
        scaling = {"channel_multiplier": width, "depth_multiplier": depth}
        archs[f"efficientnet_{variant}"] = scaling
        archs[f"tf_efficientnet_{variant}"] = {**scaling, **_TF_PORT}
        generator[f"efficientnet_{variant}"] = generator[f"tf_efficientnet_{variant}"] = (
            "efficientnet"
        )
    free = {"test_efficientnet", "efficientnetv2_rw_s", "tf_efficientnetv2_b0"}
    archs["test_efficientnet"] = {}
    generator["test_efficientnet"] = "test_efficientnet"
    for size in ("s", "m", "l", "xl"):
        archs[f"efficientnetv2_{size}"] = {}
        archs[f"tf_efficientnetv2_{size}"] = dict(_TF_PORT)
        generator[f"efficientnetv2_{size}"] = generator[f"tf_efficientnetv2_{size}"] = (
            f"efficientnetv2_{size}"
        )
        free |= {f"efficientnetv2_{size}", f"tf_efficientnetv2_{size}"}
    for variant, (width, depth) in _SCALING.items():
        if variant in ("b0", "b1", "b2", "b3"):
            scaling = (
                {} if variant == "b0" else {"channel_multiplier": width, "depth_multiplier": depth}
            )
            archs[f"tf_efficientnetv2_{variant}"] = {**scaling, **_TF_PORT}
            generator[f"tf_efficientnetv2_{variant}"] = "efficientnetv2_base"
    archs["efficientnetv2_rw_t"] = {"channel_multiplier": 0.8, "depth_multiplier": 0.9}
    generator["efficientnetv2_rw_t"] = "efficientnetv2_s"
    archs["efficientnetv2_rw_s"] = {}
    archs["efficientnetv2_rw_m"] = {
        "channel_multiplier": 1.2,
        "depth_multiplier": (1.2,) * 4 + (1.6,) * 2,
    }
    generator["efficientnetv2_rw_s"] = generator["efficientnetv2_rw_m"] = "efficientnetv2_rw_s"
    return archs, generator, free


# timm architecture -> the arguments its factory function passes (timm 1.0.x), its generator, and
# the architectures whose factory leaves the multipliers to the caller (for the others timm
# raises "got multiple values for keyword argument" if they are given).
ARCHITECTURES, GENERATOR_OF, _FREE_MULTIPLIERS = _registered()

_MULTIPLIERS = ("channel_multiplier", "depth_multiplier")
_ACTIVATIONS = (None, "swish", "silu")
GLOBAL_POOLS = ("avg", "max", "avgmax", "catavgmax")


def _check(architecture: str, args: dict) -> None:
    require(architecture, args, "global_pool", GLOBAL_POOLS)
    require(architecture, args, "output_stride", (32,))
    require(architecture, args, "pad_type", ("", "same"))
    require(architecture, args, "act_layer", _ACTIVATIONS)


def _resolve(architecture: str, model_args: Mapping | None) -> dict:
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"{architecture!r} is not an EfficientNet zoobot.tf offers; "
            f"choose from {sorted(ARCHITECTURES)}"
        )
    if architecture not in _FREE_MULTIPLIERS:
        fixed = sorted(set(model_args or {}) & set(_MULTIPLIERS))
        if fixed:
            raise ValueError(
                f"{architecture}: timm's factory fixes {fixed}; use build_generated for other "
                "multipliers"
            )
    args = merge_model_args(architecture, DEFAULTS, ARCHITECTURES[architecture], model_args)
    _check(architecture, args)
    return args


# --- timm's block-string decoding and channel rounding (timm.models._efficientnet_builder) ---


def make_divisible(
    v: float, divisor: int = 8, min_value: int | None = None, round_limit=0.9
) -> int:
    """timm.layers.make_divisible: nearest multiple of `divisor`, at most `round_limit` below `v`."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def round_channels(channels: int, multiplier=1.0, divisor=8, round_limit=0.9) -> int:
    """timm's `round_channels`: scale a channel count and round it to a multiple of `divisor`."""
    if not multiplier:
        return channels
    return make_divisible(channels * multiplier, divisor, None, round_limit=round_limit)


def _decode_block_str(block_str: str) -> tuple[dict[str, Any], int]:
    block_type, *ops = block_str.split("_")
    options: dict[str, str] = {}
    skip = None
    for op in ops:
        if op == "noskip":
            skip = False
        elif op == "skip":
            skip = True
        elif op.startswith("n"):
            raise ValueError(f"per-block activations ({block_str!r}) are not supported")
        else:
            splits = re.split(r"(\d.*)", op)
            if len(splits) >= 2:
                options[splits[0]] = splits[1]
    unsupported = sorted(set(options) - {"r", "k", "s", "e", "c", "se"})
    if unsupported or block_type not in ("ds", "ir", "er", "cn"):
        raise ValueError(f"block string {block_str!r} is not supported by zoobot.tf")
    args: dict[str, Any] = {
        "block_type": block_type,
        "out_chs": int(options["c"]),
        "stride": int(options["s"]),
        "kernel": int(options["k"]),
        "se_ratio": float(options.get("se", 0.0)),
    }
    if block_type in ("ir", "er"):
        args["exp_ratio"] = float(options["e"])
    if block_type == "cn":
        args["skip"] = skip is True
    else:
        args["noskip"] = skip is False
    return args, int(options["r"])


def _scale_stage_depth(stack_args, repeats, depth_multiplier, depth_trunc="ceil"):
    num_repeat = sum(repeats)
    if depth_trunc == "round":
        num_repeat_scaled = max(1, round(num_repeat * depth_multiplier))
    else:
        num_repeat_scaled = int(math.ceil(num_repeat * depth_multiplier))
    repeats_scaled = []
    for r in repeats[::-1]:
        rs = max(1, round(r / num_repeat * num_repeat_scaled))
        repeats_scaled.append(rs)
        num_repeat -= r
        num_repeat_scaled -= rs
    scaled = []
    for args, rep in zip(stack_args, repeats_scaled[::-1], strict=True):
        scaled.extend(deepcopy(args) for _ in range(rep))
    return scaled


def decode_arch_def(arch_def, depth_multiplier=1.0) -> list[list[dict]]:
    """timm's `decode_arch_def`: block strings -> per-stage lists of block arguments.

    `depth_multiplier` is one number, or one per stage (as `efficientnetv2_rw_m` gives)."""
    if isinstance(depth_multiplier, list | tuple):
        if len(depth_multiplier) != len(arch_def):
            raise ValueError(
                f"depth_multiplier has {len(depth_multiplier)} values for {len(arch_def)} stages"
            )
        multipliers = tuple(depth_multiplier)
    else:
        multipliers = (depth_multiplier,) * len(arch_def)
    stages = []
    for block_strings, multiplier in zip(arch_def, multipliers, strict=True):
        decoded = [_decode_block_str(block_str) for block_str in block_strings]
        stack_args = [args for args, _ in decoded]
        repeats = [rep for _, rep in decoded]
        stages.append(_scale_stage_depth(stack_args, repeats, multiplier))
    return stages


def block_configs(generator: str, args: Mapping) -> tuple[int, list[list[dict]], int]:
    """(stem channels, per-stage block arguments with in/out/mid/SE channels, head channels).

    Follows `EfficientNet.__init__` and `EfficientNetBuilder` for the arguments zoobot.tf accepts.
    """
    gen = GENERATORS[generator]

    def round_chs(chs):
        return round_channels(chs, args["channel_multiplier"], 8, round_limit=gen["round_limit"])

    stem = gen["stem_size"] if args["fix_stem"] else round_chs(gen["stem_size"])
    stages = decode_arch_def(gen["arch_def"], args["depth_multiplier"])
    total = sum(len(stage) for stage in stages)
    in_chs, index = stem, 0
    for stage in stages:
        for i, ba in enumerate(stage):
            if i >= 1:  # only the first block of a stage strides
                ba["stride"] = 1
            ba["in_chs"] = in_chs
            ba["out_chs"] = round_chs(ba["out_chs"])
            ba["drop_path_rate"] = args["drop_path_rate"] * index / total
            bt = ba["block_type"]
            if bt in ("ir", "er"):
                ba["mid_chs"] = make_divisible(in_chs * ba["exp_ratio"])
            else:
                ba["mid_chs"] = in_chs
            se_ratio = ba.pop("se_ratio")
            if se_ratio:
                # EfficientNetBuilder(se_from_exp=False) makes the ratio relative to the block
                # input; SqueezeExcite applies it to the channels it gates, rounding as Python does.
                se_ratio /= ba.get("exp_ratio", 1.0)
                ba["se_chs"] = round(ba["mid_chs"] * se_ratio)
            if bt == "cn":
                ba["has_skip"] = ba["skip"] and ba["stride"] == 1 and in_chs == ba["out_chs"]
            else:
                ba["has_skip"] = ba["stride"] == 1 and in_chs == ba["out_chs"] and not ba["noskip"]
            in_chs = ba["out_chs"]
            index += 1
    head = gen["num_features"] if gen.get("fixed_head") else round_chs(gen["num_features"])
    return stem, stages, head


# --- Keras graph ---


def _init():
    # timm's _init_weight_goog: normal(0, sqrt(2 / fan_out)), fan_out = kh * kw * out / groups
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def _conv(x, filters, kernel, stride, name, args, *, depthwise=False, bias=False):
    """A convolution padded as timm pads it: torch-style symmetric (`pad_type=""`) or TF SAME."""
    if args["pad_type"] == "same" or (stride == 1 and kernel % 2 == 1):
        # TF SAME (timm's Conv2dSame), or stride 1 and an odd kernel, where both coincide
        padding = "same"
    else:
        padding = "valid"
        pad = ((stride - 1) + (kernel - 1)) // 2
        if pad:
            x = layers.ZeroPadding2D(pad, name=f"{name}.pad")(x)
    if depthwise:
        layer = DepthwiseConv2D(
            kernel,
            strides=stride,
            padding=padding,
            use_bias=bias,
            depthwise_initializer=_init(),
            name=name,
        )
    else:
        layer = Conv2D(
            filters,
            kernel,
            strides=stride,
            padding=padding,
            use_bias=bias,
            kernel_initializer=_init(),
            name=name,
        )
    return layer(x)


def _bn(x, name, args, act=True):
    eps = 1e-5 if args["bn_eps"] is None else args["bn_eps"]
    momentum = 0.1 if args["bn_momentum"] is None else args["bn_momentum"]
    x = TorchBatchNorm(momentum=1.0 - momentum, epsilon=eps, name=name)(x)
    if act:
        x = layers.Activation("silu", name=f"{name}.act")(x)
    return x


def _se(x, channels, rd_channels, name):
    """timm's SqueezeExcite: mean over H, W -> 1x1 conv -> SiLU -> 1x1 conv -> sigmoid gate."""
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}.pool")(x)
    s = Conv2D(rd_channels, 1, kernel_initializer=_init(), name=f"{name}.conv_reduce")(s)
    s = layers.Activation("silu", name=f"{name}.act1")(s)
    s = Conv2D(channels, 1, kernel_initializer=_init(), name=f"{name}.conv_expand")(s)
    s = layers.Activation("sigmoid", name=f"{name}.gate")(s)
    return layers.Multiply(name=f"{name}.mul")([x, s])


def _block(x, ba, name, args):
    shortcut = x
    bt, k, stride = ba["block_type"], ba["kernel"], ba["stride"]
    se = ba.get("se_chs")
    if bt == "ds":  # DepthwiseSeparableConv
        x = _conv(x, None, k, stride, f"{name}.conv_dw", args, depthwise=True)
        x = _bn(x, f"{name}.bn1", args)
        if se:
            x = _se(x, ba["mid_chs"], se, f"{name}.se")
        x = _conv(x, ba["out_chs"], 1, 1, f"{name}.conv_pw", args)
        x = _bn(x, f"{name}.bn2", args, act=False)
    elif bt == "ir":  # InvertedResidual
        x = _conv(x, ba["mid_chs"], 1, 1, f"{name}.conv_pw", args)
        x = _bn(x, f"{name}.bn1", args)
        x = _conv(x, None, k, stride, f"{name}.conv_dw", args, depthwise=True)
        x = _bn(x, f"{name}.bn2", args)
        if se:
            x = _se(x, ba["mid_chs"], se, f"{name}.se")
        x = _conv(x, ba["out_chs"], 1, 1, f"{name}.conv_pwl", args)
        x = _bn(x, f"{name}.bn3", args, act=False)
    elif bt == "er":  # EdgeResidual
        x = _conv(x, ba["mid_chs"], k, stride, f"{name}.conv_exp", args)
        x = _bn(x, f"{name}.bn1", args)
        if se:
            x = _se(x, ba["mid_chs"], se, f"{name}.se")
        x = _conv(x, ba["out_chs"], 1, 1, f"{name}.conv_pwl", args)
        x = _bn(x, f"{name}.bn2", args, act=False)
    else:  # "cn": ConvBnAct
        x = _conv(x, ba["out_chs"], k, stride, f"{name}.conv", args)
        x = _bn(x, f"{name}.bn1", args)
    if ba["has_skip"]:
        x = residual(x, shortcut, ba["drop_path_rate"], name)
    return x


def _pool(x, kind):
    """timm's SelectAdaptivePool2d(flatten=True) for `kind`."""
    if kind == "avg":
        return layers.GlobalAveragePooling2D(name="global_pool")(x)
    if kind == "max":
        return layers.GlobalMaxPooling2D(name="global_pool")(x)
    avg = layers.GlobalAveragePooling2D(name="global_pool.avg")(x)
    top = layers.GlobalMaxPooling2D(name="global_pool.max")(x)
    if kind == "avgmax":
        return layers.Rescaling(0.5, name="global_pool")(
            layers.Add(name="global_pool.add")([avg, top])
        )
    return layers.Concatenate(name="global_pool")([avg, top])  # catavgmax


def _build(generator: str, channels: int, args: dict, name: str) -> keras.Model:
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    stem, stages, head = block_configs(generator, args)
    inputs = keras.Input((None, None, channels), name="image")
    x = _conv(inputs, stem, 3, 2, "conv_stem", args)
    x = _bn(x, "bn1", args)
    for s, stage in enumerate(stages):
        for b, ba in enumerate(stage):
            x = _block(x, ba, f"blocks.{s}.{b}", args)
    x = _conv(x, head, 1, 1, "conv_head", args)
    x = _bn(x, "bn2", args)
    x = _pool(x, args["global_pool"])
    if args["drop_rate"]:
        x = layers.Dropout(args["drop_rate"], name="head_drop")(x)
    model = keras.Model(inputs, x, name=name)
    model.num_features = head * 2 if args["global_pool"] == "catavgmax" else head
    return model


def build(architecture: str, channels: int, model_args: Mapping | None = None) -> keras.Model:
    """The Keras twin of `timm.create_model(architecture, num_classes=0, in_chans=channels, ...)`.

    Randomly initialised as timm initialises it (convolutions normal with std sqrt(2 / fan_out),
    BatchNorm at identity); load weights with `load_timm_state`. `in_chans` and `num_classes` in
    `model_args` (timm records them in config.json) are ignored: `channels` decides the input, and
    the encoder never has a classifier.
    """
    args = _resolve(architecture, model_args)
    return _build(GENERATOR_OF[architecture], channels, args, architecture)


def build_generated(
    channels: int,
    channel_multiplier: float,
    depth_multiplier: float,
    model_args: Mapping | None = None,
    generator: str = "efficientnet",
    name: str = "efficientnet",
) -> keras.Model:
    """What timm's `_gen_efficientnet(variant, channel_multiplier, depth_multiplier, num_classes=0,
    in_chans=channels, **model_args)` builds (or `_gen_test_efficientnet`), for multipliers no
    registered architecture has. The same graph and weight names as the registered ones."""
    if generator not in GENERATORS:
        raise ValueError(f"generator {generator!r} unknown; choose from {sorted(GENERATORS)}")
    given = {
        **dict(model_args or {}),
        "channel_multiplier": channel_multiplier,
        "depth_multiplier": depth_multiplier,
    }
    args = merge_model_args(name, DEFAULTS, {}, given)
    _check(name, args)
    return _build(generator, channels, args, name)
