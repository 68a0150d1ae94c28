"""Loading an encoder by name, written once: what a name means (an architecture, a torchvision
ResNet, a Hub repo, a published encoder or a folder) and how a checkpoint's first convolution is
adapted to other input channels. Each framework's `encoders` module supplies the tensors: building
an architecture by name (`encoder_by_name`), reading a source's weights (`read_weights`) and
building from a Hub-layout config (`encoder_from_config`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from zoobot.models import preprocessing
from zoobot.models.hub import ModelSource
from zoobot.models.layout import CONFIG_NAME, first_convs

logger = logging.getLogger(__name__)

TORCHVISION_PREFIX = "torchvision:"
# torchvision ResNets share timm's tensor names: both frameworks save (and build) them as timm's.
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def load_encoder_with(
    encoders: ModuleType,
    name: str | os.PathLike,
    channels: int | None,
    pretrained: bool,
    kwargs: Mapping[str, Any],
) -> Any:
    """The encoder `name` gives, built by the framework module `encoders`: `torchvision:<resnet>`
    and architecture names by `encoders.encoder_by_name` (random weights), Hub repos, published
    encoder names and folders by `encoders.encoder_from_config` (with their weights unless not
    `pretrained`, holding the preprocessing saved with them)."""
    text = os.fspath(name)
    if text.startswith(TORCHVISION_PREFIX):
        resnet = text[len(TORCHVISION_PREFIX) :]
        if resnet not in TORCHVISION_RESNETS:
            raise ValueError(
                f"{text} is not offered; choose from {TORCHVISION_PREFIX}"
                f"{{{', '.join(TORCHVISION_RESNETS)}}}"
            )
        return encoders.encoder_by_name(text, channels, dict(kwargs))
    source = ModelSource.parse(name, is_architecture=encoders.is_architecture)
    if source is None:
        return encoders.encoder_by_name(text, channels, dict(kwargs))
    config = source.read_config()
    state = encoders.read_weights(source) if pretrained else None
    return preprocessing.encoder_from_config(
        config,
        f"{source}/{CONFIG_NAME}",
        channels,
        lambda: encoders.encoder_from_config(config, state, channels, **kwargs),
    )


def adapt_first_convs(
    architecture: str,
    pretrained_cfg: Mapping,
    state: Mapping[str, Any],
    source: int,
    target: int,
    adapt: Callable[[Any], Any],
) -> dict[str, Any]:
    """The state dict with each first conv's weight (`pretrained_cfg["first_conv"]`) adapted from
    `source` to `target` input channels by `adapt` (timm's `adapt_input_conv`), logged."""
    state = dict(state)
    for conv in first_convs(pretrained_cfg):
        key = f"{conv}.weight"
        if key in state:
            state[key] = adapt(state[key])
            logger.warning(
                "%s: adapted first conv %r from %d to %d input channels (timm adapt_input_conv)",
                architecture,
                conv,
                source,
                target,
            )
    return state
