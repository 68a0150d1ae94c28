"""Encoders: pooled-feature extractors from a timm name, torchvision, or the timm Hub layout.

The Hub layout (DESIGN.md contract 3) is a folder or Hub repo with `config.json` (`architecture`,
`num_features`, `pretrained_cfg`, optionally `model_args`) and `model.safetensors` or a legacy
`pytorch_model.bin`. The published Zoobot encoders (`hf_hub:mwalmsley/zoobot-encoder-*`) use it with
`num_classes: 0` and a `.bin` holding only tensors. Weights are read without unpickling code.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import timm
import torch
import torchvision
from torch import nn

from zoobot.models.encoders import TORCHVISION_PREFIX, adapt_first_convs, load_encoder_with
from zoobot.models.hub import HubUnavailableError as HubUnavailableError  # re-exported
from zoobot.models.hub import ModelSource
from zoobot.models.layout import (
    CONFIG_NAME,
    WeightsFileError,
    check_weights_fit,
    checkpoint_channels,
    read_safetensors,
)
from zoobot.models.layout import WeightsMismatchError as WeightsMismatchError  # re-exported

_MAX_LISTED = 10
# torchvision ResNet layouts with their timm twins (same parameter names, same outputs).
_RESNET_LAYOUTS = {
    ("BasicBlock", (2, 2, 2, 2)): "resnet18",
    ("BasicBlock", (3, 4, 6, 3)): "resnet34",
    ("Bottleneck", (3, 4, 6, 3)): "resnet50",
    ("Bottleneck", (3, 4, 23, 3)): "resnet101",
    ("Bottleneck", (3, 8, 36, 3)): "resnet152",
}
_PRETRAINED_CFG_FIELDS = frozenset(timm.models.PretrainedCfg.__dataclass_fields__) - {"state_dict"}


def read_weights(source: ModelSource) -> dict[str, torch.Tensor]:
    """The encoder state dict at `source` (`model.safetensors`, else the legacy `.bin`)."""
    return load_state_dict_file(source.weights_path())


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a `.safetensors` file, or from a legacy `.bin`/`.pth` with `weights_only=True`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path, lambda p: safetensors.torch.load_file(p, device="cpu"))
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"refusing to unpickle {path}: it holds objects other than tensors. Convert it to "
            "safetensors on a machine where you trust the file."
        ) from err
    except (RuntimeError, OSError, EOFError) as err:  # torch's zip reader on a damaged file
        raise WeightsFileError(
            f"{path}: cannot read the weights ({err}); the file is damaged or was cut short: "
            "download or save it again"
        ) from err
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{path} holds a {type(state_dict).__name__}, not a state dict of tensors")
    not_tensors = sorted(k for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"{path} is not a plain state dict: non-tensor entries {not_tensors[:10]}")
    return dict(state_dict)


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Load `state_dict` into `module` with every key and shape matching, else name the misfits."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_weights_fit(expected, {k: tuple(v.shape) for k, v in state_dict.items()}, what)
    module.load_state_dict(state_dict, strict=True)


def encoder_from_config(
    config: Mapping,
    state_dict: Mapping[str, torch.Tensor] | None,
    channels: int | None = None,
    **timm_kwargs,
) -> nn.Module:
    """Build the timm encoder a Hub-layout `config` describes and load `state_dict` strictly."""
    architecture = config["architecture"]
    if not timm.is_model(architecture):
        raise ValueError(f"architecture {architecture!r} is unknown to timm {timm.__version__}")
    model_args = dict(config.get("model_args") or {})
    num_classes = int(config.get("num_classes", model_args.get("num_classes", 0)) or 0)
    overlay = {
        k: v for k, v in (config.get("pretrained_cfg") or {}).items() if k in _PRETRAINED_CFG_FIELDS
    }
    default = timm.models.get_pretrained_cfg(architecture)
    cfg = {**(default.to_dict() if default else {}), **overlay}
    source_channels = checkpoint_channels(model_args, cfg, state_dict)
    target_channels = channels or source_channels
    if state_dict is not None and target_channels != source_channels:
        state_dict = adapt_first_convs(
            architecture,
            cfg,
            state_dict,
            source_channels,
            target_channels,
            lambda w: timm.models.adapt_input_conv(target_channels, w, base_chans=source_channels),
        )
    kwargs = {**model_args, **timm_kwargs, "num_classes": num_classes, "in_chans": target_channels}
    spatial = tuple((cfg.get("input_size") or (3, 224, 224))[1:])
    if kwargs.get("img_size"):  # a fixed-size model's own size (older timm left input_size stale)
        size = kwargs["img_size"]
        spatial = (size, size) if isinstance(size, int) else tuple(size)
    overlay["input_size"] = (target_channels, *spatial)
    overlay["num_classes"] = num_classes
    model = timm.create_model(
        architecture, pretrained=False, pretrained_cfg_overlay=overlay, **kwargs
    )
    if state_dict is not None:
        load_strict(model, state_dict, f"{architecture} encoder")
    if num_classes:
        model.reset_classifier(0)
    return model


def is_architecture(name: str) -> bool:
    """Whether `name` is a timm architecture (a name that wins over a folder)."""
    return timm.is_model(name)


def encoder_by_name(name: str, channels: int | None, timm_kwargs: dict) -> nn.Module:
    """A randomly initialised timm architecture, or torchvision's implementation of a ResNet
    (`torchvision:resnet50`), with `channels` inputs (default 3)."""
    if name.startswith(TORCHVISION_PREFIX):
        if timm_kwargs:
            raise TypeError(
                f"torchvision encoders take no timm arguments, got {sorted(timm_kwargs)}"
            )
        model = torchvision.models.get_model(name[len(TORCHVISION_PREFIX) :], weights=None)
        model.num_features = model.fc.in_features
        model.fc = nn.Identity()
        if channels and channels != model.conv1.in_channels:
            model.conv1 = nn.Conv2d(
                channels, model.conv1.out_channels, 7, stride=2, padding=3, bias=False
            )
        return model
    architecture = name.split(".", 1)[0]
    if not timm.is_model(architecture):
        close = timm.list_models(f"*{architecture}*")[:_MAX_LISTED]
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise ValueError(
            f"{name!r} is not a timm architecture, torchvision:<resnet>, hf_hub:owner/repo or a "
            f"folder{hint}"
        )
    return timm.create_model(
        name, pretrained=False, num_classes=0, in_chans=channels or 3, **timm_kwargs
    )


def load_encoder(
    name: str | os.PathLike, channels: int | None = None, pretrained: bool = True, **timm_kwargs
) -> nn.Module:
    """A feature extractor returning pooled features of width `encoder_dim(encoder)`.

    `name` is a timm architecture (random init), `torchvision:resnet50` (torchvision's implementation,
    random init), `hf_hub:owner/repo[@revision]`, a published Zoobot encoder's repo name (e.g.
    `zoobot-encoder-convnext_nano`; `list_pretrained()` lists them), or a folder in the timm Hub
    layout (write `./name` for a folder named like an architecture). `channels` defaults to the checkpoint's (3 for
    architecture names); a different count adapts the first conv as timm does. `pretrained=False`
    builds a Hub/folder architecture without loading its weights. Extra keyword arguments go to
    `timm.create_model` (e.g. `drop_path_rate`).
    """
    return load_encoder_with(sys.modules[__name__], name, channels, pretrained, timm_kwargs)


def encoder_dim(encoder: nn.Module) -> int:
    """Width of the encoder's pooled features (timm's `head_hidden_size` when it differs)."""
    return int(getattr(encoder, "head_hidden_size", None) or encoder.num_features)


def as_timm(encoder: nn.Module) -> nn.Module:
    """The encoder as a timm model: compiled wrappers unwrapped, torchvision ResNets converted."""
    encoder = getattr(encoder, "_orig_mod", encoder)
    if hasattr(encoder, "pretrained_cfg"):
        return encoder
    if not isinstance(encoder, torchvision.models.ResNet):
        raise TypeError(
            f"cannot save a {type(encoder).__qualname__} encoder in the timm layout; "
            "use load_encoder() for timm or torchvision ResNet encoders"
        )
    layout = (
        type(encoder.layer1[0]).__name__,
        tuple(len(encoder.get_submodule(f"layer{i}")) for i in range(1, 5)),
    )
    architecture = _RESNET_LAYOUTS.get(layout)
    if architecture is None or encoder.groups != 1 or encoder.base_width != 64:
        raise TypeError(f"no timm twin for this torchvision ResNet ({layout})")
    twin = timm.create_model(architecture, num_classes=0, in_chans=encoder.conv1.in_channels)
    load_strict(twin, encoder.state_dict(), f"torchvision {architecture}")
    return twin


def write_timm_files(encoder: nn.Module, folder: Path) -> dict:
    """`config.json` and `model.safetensors` of the encoder, written by timm's own `save_for_hf`;
    returns the config."""
    timm.models.save_for_hf(as_timm(encoder), folder, safe_serialization=True)
    return json.loads((Path(folder) / CONFIG_NAME).read_text(encoding="utf-8"))
