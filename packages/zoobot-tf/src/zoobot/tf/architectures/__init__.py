"""Keras 3 twins of the timm architectures the Zoobot encoders use, converted from timm weights.

One module per timm family (`convnext`, `resnet`, `efficientnet`, `maxvit`), each exposing the same
interface:

- `ARCHITECTURES: dict[str, dict]`: timm architecture name -> the model arguments timm's factory
  function gives it (overridable through `model_args`, as in timm's `config.json`).
- `build(architecture, channels, model_args=None) -> keras.Model`: a functional model taking
  channels-last float32 images `(B, H, W, channels)` and returning what
  `timm.create_model(architecture, num_classes=0, in_chans=channels, **model_args)` returns in eval
  mode: the pooled features, after any head norm. Layers are named by their timm module paths.
- optionally `FIXED_INPUT_SIZE = True`: the model is built for one input size, the `img_size`
  model argument (timm's `fixed_input_size`); a checkpoint's `pretrained_cfg.input_size` gives it.

This package dispatches on the family. Family modules are imported on first use, so a family whose
module is missing (or not yet written) only fails when one of its architectures is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType

import keras
import numpy as np

from zoobot.models.blocks import matches, prefix_blocks
from zoobot.tf import weights

# family name -> module; add a family by adding its module here.
FAMILY_MODULES = {
    "convnext": "zoobot.tf.architectures.convnext",
    "efficientnet": "zoobot.tf.architectures.efficientnet",
    "maxvit": "zoobot.tf.architectures.maxvit",
    "resnet": "zoobot.tf.architectures.resnet",
}
_LOADED: dict[str, ModuleType | None] = {}


def _family_module(family: str) -> ModuleType | None:
    """The family's module, or None when it is not installed (imported once, on first use)."""
    if family not in _LOADED:
        name = FAMILY_MODULES[family]
        try:
            _LOADED[family] = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            _LOADED[family] = None
    return _LOADED[family]


def _available() -> dict[str, ModuleType]:
    modules = {family: _family_module(family) for family in FAMILY_MODULES}
    return {family: module for family, module in modules.items() if module is not None}


def supported_architectures() -> list[str]:
    """Every timm architecture name zoobot.tf can build, sorted."""
    return sorted(name for module in _available().values() for name in module.ARCHITECTURES)


def family_of(architecture: str) -> str:
    """The family (`convnext`, `resnet`, ...) implementing timm `architecture`."""
    for family, module in _available().items():
        if architecture in module.ARCHITECTURES:
            return family
    raise ValueError(
        f"architecture {architecture!r} has no Keras implementation in zoobot.tf; supported: "
        f"{', '.join(supported_architectures())}"
    )


def fixed_input_size(architecture: str) -> bool:
    """Whether timm `architecture` is built for one input size (`img_size`, e.g. MaxViT)."""
    return bool(getattr(_family_module(family_of(architecture)), "FIXED_INPUT_SIZE", False))


def build_encoder(
    architecture: str, channels: int = 3, model_args: Mapping | None = None
) -> keras.Model:
    """The randomly initialised Keras twin of timm `architecture` with `channels` input channels.

    The model records `zoobot_architecture` and `zoobot_model_args` (the arguments given beyond the
    architecture's defaults), which saving in the timm layout needs.
    """
    module = _family_module(family_of(architecture))
    model = module.build(architecture, channels, dict(model_args or {}))
    model.zoobot_architecture = architecture
    model.zoobot_model_args = dict(model_args or {})
    return model


def _module_of(model: keras.Model) -> ModuleType:
    architecture = getattr(model, "zoobot_architecture", None)
    if architecture is None:
        raise TypeError(
            f"{model.name!r} was not built by zoobot.tf.architectures.build_encoder "
            "(it has no zoobot_architecture)"
        )
    return _family_module(family_of(architecture))


def load_timm_state(model: keras.Model, state: Mapping[str, np.ndarray]) -> None:
    """Assign timm-named tensors to `model`; strict (raises `weights.WeightsMismatchError`).
    Layers are named by their timm module paths, so one conversion serves every family."""
    _module_of(model)  # refuses a model build_encoder did not make
    weights.load_timm_state(model, state, f"{model.name} encoder")


def timm_state(model: keras.Model) -> dict[str, np.ndarray]:
    """The model's weights as timm's `state_dict()` names them, in timm layouts."""
    _module_of(model)  # refuses a model build_encoder did not make
    return weights.timm_state(model)


def family_blocks(model: keras.Model, family: str) -> list[list[keras.layers.Layer]]:
    """The weighted layers of a `family` model (layers named by timm module paths) in the blocks of
    `zoobot.models.blocks`, head side first and stem last, each layer in exactly one block."""
    weighted = [layer for layer in model.layers if layer.weights]
    prefixes = prefix_blocks(family, [layer.name for layer in weighted])
    return [[layer for layer in weighted if matches(layer.name, block)] for block in prefixes]


def blocks(model: keras.Model) -> list[list[keras.layers.Layer]]:
    """The model's weighted layers in blocks, head side first and stem last, grouped as
    `zoobot.torch.blocks` groups the timm model (`family_blocks`)."""
    _module_of(model)  # refuses a model build_encoder did not make
    return family_blocks(model, family_of(model.zoobot_architecture))
