"""Encoders: Keras pooled-feature extractors from a timm name or the timm Hub layout, without torch.

The Hub layout (DESIGN.md contract 3) is a folder or Hub repo with `config.json` (`architecture`,
`num_features`, `pretrained_cfg`, optionally `model_args`) and `model.safetensors`. The timm
tensors are read with `safetensors.numpy` and converted to the Keras twins of
`zoobot.tf.architectures` on load; `write_timm_files` converts back, so what TensorFlow saves
loads in timm and `zoobot.torch`. Names are those `zoobot.torch.load_encoder` takes:
an architecture (random init), `hf_hub:owner/repo[@revision]`, or a folder (`local-dir:` optional).

Without `model.safetensors`, a legacy `pytorch_model.bin` (torch's zip pickle, as the published
Zoobot encoders are stored) is read by `zoobot.models.legacy`, a torch-free restricted reader
that accepts only plain tensors (like `torch.load(weights_only=True)`) and refuses anything else.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np
import safetensors.numpy

from zoobot.models.encoders import TORCHVISION_PREFIX, adapt_first_convs, load_encoder_with
from zoobot.models.hub import HubUnavailableError, ModelSource
from zoobot.models.layout import (
    CONFIG_NAME,
    SAFETENSORS_NAME,
    WeightsMismatchError,
    checkpoint_channels,
    first_convs,
    read_safetensors,
)
from zoobot.models.legacy import LegacyWeightsError, load_torch_state_dict
from zoobot.tf import architectures

__all__ = [
    "HubUnavailableError",
    "LegacyWeightsError",
    "WeightsMismatchError",
    "adapt_input_conv",
    "encoder_by_name",
    "encoder_dim",
    "encoder_from_config",
    "first_conv",
    "is_architecture",
    "load_encoder",
    "load_state_dict_file",
    "read_weights",
    "write_timm_files",
]

logger = logging.getLogger(__name__)

# timm's classifier module per family: dropped from checkpoints saved with a classifier
_CLASSIFIERS = {
    "convnext": "head.fc",
    "efficientnet": "classifier",
    "maxvit": "head.fc",
    "resnet": "fc",
}
# model_args timm leaves out of exported configs (training-time only)
_DROP_ARGS = ("drop_rate", "drop_path_rate", "drop_block_rate")


def read_weights(source: ModelSource) -> dict[str, np.ndarray]:
    """The encoder's timm state dict at `source`: `model.safetensors`, else the legacy `.bin`
    (read by the restricted torch-free reader)."""
    return load_state_dict_file(source.weights_path(), str(source))


def load_state_dict_file(path: str | os.PathLike, name: str | None = None) -> dict[str, np.ndarray]:
    """NumPy tensors from a `.safetensors` file, or from a legacy torch zip pickle (`.bin`, `.pth`).

    The pickle is read without torch by `zoobot.models.legacy.load_torch_state_dict`, which
    accepts plain tensors only; anything else raises `LegacyWeightsError` naming it.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path, safetensors.numpy.load_file)
    name = name or str(path.parent)
    logger.warning(
        "%s: no %s, reading the legacy PyTorch pickle %s with zoobot.tf's restricted reader "
        "(plain tensors only). Prefer safetensors: convert once with "
        "`save_pretrained(load_encoder(%r), 'converted')` and use (or push) that folder.",
        name,
        SAFETENSORS_NAME,
        path.name,
        name,
    )
    return load_torch_state_dict(path, name)


def adapt_input_conv(channels: int, weight: np.ndarray, base_channels: int) -> np.ndarray:
    """timm's `adapt_input_conv` in NumPy: a first-conv weight (O, I, kh, kw) for `channels` inputs.

    One channel sums the source channels; more repeat them and scale by `base_channels / channels`,
    computed in float32 as timm does, so the result is bitwise timm's.
    """
    if channels < 1 or base_channels < 1:
        raise ValueError("input and base channel counts must be positive")
    out, fan_in, kh, kw = weight.shape
    if channels == base_channels:
        return weight
    dtype = weight.dtype
    weight = weight.astype(np.float32)
    if channels == 1:
        if fan_in > base_channels:  # space-to-depth stems
            weight = weight.reshape(out, fan_in // base_channels, base_channels, kh, kw).sum(axis=2)
        else:
            weight = weight.sum(axis=1, keepdims=True)
    else:
        if fan_in != base_channels:
            raise NotImplementedError("first-conv weight format not supported by the conversion")
        repeat = math.ceil(channels / base_channels)
        weight = np.tile(weight, (1, repeat, 1, 1))[:, :channels] * np.float32(
            base_channels / float(channels)
        )
    return weight.astype(dtype)


def first_conv(encoder: keras.Model) -> str:
    """timm name of the encoder's first convolution (the one input channels change)."""
    for layer in encoder.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and len(kernel.shape) == 4:
            return layer.name
    raise TypeError(f"{encoder.name} has no convolution")


def _fixed_size(encoder: keras.Model) -> tuple[int, int] | None:
    """(height, width) of an encoder built for one input size (timm's `fixed_input_size`)."""
    height, width = encoder.input_shape[1:3]
    return (int(height), int(width)) if height and width else None


def _pretrained_cfg_for(
    pretrained_cfg: Mapping, channels: int, first: str, fixed_size: tuple[int, int] | None = None
) -> dict:
    """The checkpoint's `pretrained_cfg` for an encoder with `channels` inputs and no classifier;
    `fixed_size` (a fixed-size encoder's height and width) is its input size."""
    # a JSON copy: plain containers, also from the tracked dict Keras keeps on the encoder
    cfg = json.loads(json.dumps(dict(pretrained_cfg)))
    for key in ("input_size", "test_input_size", "min_input_size"):
        if cfg.get(key):
            cfg[key] = [channels, *list(cfg[key])[1:]]
    for key in ("mean", "std"):
        values = cfg.get(key)
        if isinstance(values, list | tuple) and len(values) != channels:
            # as timm resolves a data config for another channel count
            cfg[key] = [float(np.mean(values))] * channels
    if fixed_size:
        cfg["input_size"] = [channels, *fixed_size]
        cfg["fixed_input_size"] = True
    cfg.setdefault("input_size", [channels, 224, 224])
    cfg["num_classes"] = 0
    cfg["first_conv"] = first
    return cfg


def encoder_from_config(
    config: Mapping,
    state: Mapping[str, np.ndarray] | None,
    channels: int | None = None,
    **model_args,
) -> keras.Model:
    """Build the Keras encoder a Hub-layout `config` describes and load `state` strictly.

    `channels` other than the checkpoint's adapts its first conv as timm does (logged);
    `model_args` override the config's (e.g. `drop_path_rate` for finetuning).
    """
    architecture = config["architecture"]
    family = architectures.family_of(architecture)
    args = dict(config.get("model_args") or {})
    num_classes = int(config.get("num_classes", args.get("num_classes", 0)) or 0)
    pretrained_cfg = dict(config.get("pretrained_cfg") or {})
    build_args = {
        k: v for k, v in {**args, **model_args}.items() if k not in ("num_classes", "in_chans")
    }
    input_size = pretrained_cfg.get("input_size")
    if (
        architectures.fixed_input_size(architecture)
        and "img_size" not in build_args
        and input_size
        and pretrained_cfg.get("fixed_input_size", True)
    ):
        # as timm, which builds a fixed-size model at its pretrained_cfg's input size
        build_args["img_size"] = [int(s) for s in list(input_size)[-2:]]
    source_channels = checkpoint_channels(args, pretrained_cfg, state)
    encoder = architectures.build_encoder(architecture, channels or source_channels, build_args)
    first = first_conv(encoder)
    if not first_convs(pretrained_cfg):
        # a hand-written config: find the first conv on the model, then its channels in the state
        pretrained_cfg["first_conv"] = first
        detected = checkpoint_channels(args, pretrained_cfg, state)
        if detected != source_channels:
            source_channels = detected
            if not channels:
                encoder = architectures.build_encoder(architecture, source_channels, build_args)
    target_channels = channels or source_channels
    if state is not None:
        state = dict(state)
        if num_classes:
            classifiers = pretrained_cfg.get("classifier") or _CLASSIFIERS.get(family)
            for classifier in (classifiers,) if isinstance(classifiers, str) else classifiers:
                state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
        if target_channels != source_channels:
            state = adapt_first_convs(
                architecture,
                pretrained_cfg,
                state,
                source_channels,
                target_channels,
                lambda w: adapt_input_conv(target_channels, w, source_channels),
            )
        architectures.load_timm_state(encoder, state)
    encoder.zoobot_pretrained_cfg = _pretrained_cfg_for(
        pretrained_cfg, target_channels, first, _fixed_size(encoder)
    )
    return encoder


def encoder_by_name(name: str, channels: int | None, model_args: dict) -> keras.Model:
    """A randomly initialised architecture zoobot.tf implements (`torchvision:<resnet>` is timm's
    twin of the same network), with `channels` inputs (default 3)."""
    architecture = name.removeprefix(TORCHVISION_PREFIX).split(".", 1)[0]
    supported = architectures.supported_architectures()
    if architecture not in supported:
        close = difflib.get_close_matches(architecture, supported, n=5, cutoff=0.6)
        hint = f" Similar names: {', '.join(close)}." if close else ""
        raise ValueError(
            f"{name!r} is not an architecture zoobot.tf implements, hf_hub:owner/repo or a "
            f"folder.{hint} Supported architectures: {', '.join(supported)}"
        )
    encoder = architectures.build_encoder(architecture, channels or 3, model_args)
    first = first_conv(encoder)
    cfg = {"classifier": _CLASSIFIERS.get(architectures.family_of(architecture))}
    encoder.zoobot_pretrained_cfg = _pretrained_cfg_for(
        {k: v for k, v in cfg.items() if v}, channels or 3, first, _fixed_size(encoder)
    )
    return encoder


def load_encoder(
    name: str | os.PathLike, channels: int | None = None, pretrained: bool = True, **model_args
) -> keras.Model:
    """A Keras feature extractor returning pooled features of width `encoder_dim(encoder)`.

    `name` is a timm architecture zoobot.tf implements (random init; `torchvision:resnet50` gives
    the same network), `hf_hub:owner/repo[@revision]`, a published Zoobot encoder's repo name
    (e.g. `zoobot-encoder-convnext_nano`; `list_pretrained()` lists them), or a folder in the timm
    Hub layout (write `./name` for a folder named like an architecture). `channels` defaults to the checkpoint's (3
    for architecture names); a different count adapts the first conv as timm does.
    `pretrained=False` builds a Hub/folder architecture without loading its weights. Keyword
    arguments are timm model arguments (e.g. `drop_path_rate=0.1`). Takes channels-last images.
    """
    return load_encoder_with(sys.modules[__name__], name, channels, pretrained, model_args)


def encoder_dim(encoder: keras.Model) -> int:
    """Width of the encoder's pooled features."""
    return int(encoder.output_shape[-1])


def timm_config(encoder: keras.Model) -> dict:
    """The `config.json` timm writes for this encoder (`save_for_hf`)."""
    if getattr(encoder, "zoobot_architecture", None) is None:
        raise TypeError(
            f"{encoder.name!r} was not made by zoobot.tf (load_encoder / build_encoder): "
            "no timm architecture to save it as"
        )
    channels = int(encoder.input_shape[-1])
    model_args = {k: v for k, v in encoder.zoobot_model_args.items() if k not in _DROP_ARGS}
    first = first_conv(encoder)
    cfg = getattr(encoder, "zoobot_pretrained_cfg", None) or {}
    config = {
        "architecture": encoder.zoobot_architecture,
        "num_classes": 0,
        "num_features": int(getattr(encoder, "num_features", encoder_dim(encoder))),
        "global_pool": "avg",
        "model_args": {"num_classes": 0, "in_chans": channels, **model_args, "global_pool": "avg"},
        "pretrained_cfg": _pretrained_cfg_for(cfg, channels, first, _fixed_size(encoder)),
    }
    return json.loads(json.dumps(config))


def write_timm_files(encoder: keras.Model, folder: str | os.PathLike) -> dict:
    """Write `config.json` and `model.safetensors` (timm names and layouts) into existing `folder`.

    Not atomic: for composing a Hub layout in a staging folder (`zoobot.tf.save_pretrained` writes
    a whole model folder atomically). Returns the config written.
    """
    folder = Path(folder)
    config = timm_config(encoder)
    safetensors.numpy.save_file(
        architectures.timm_state(encoder), folder / SAFETENSORS_NAME, metadata={"format": "pt"}
    )
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return config


def is_architecture(name: str) -> bool:
    """Whether `name` is an architecture zoobot.tf builds (a name that wins over a folder)."""
    return name in architectures.supported_architectures()
