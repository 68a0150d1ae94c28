"""Encoder blocks, ordered from the head backwards, for partial finetuning and layer-wise lr decay:
`zoobot.models.blocks` on a torch encoder's parameter names (a block is a list of their prefixes,
`stages.3`, `cls_token`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import timm.models
import torchvision
from torch import nn

from zoobot.models.blocks import matches, prefix_blocks

__all__ = ["block_parameters", "encoder_blocks", "matches"]

logger = logging.getLogger(__name__)

PrefixBlocks = list[list[str]]
FAMILIES: tuple[tuple[tuple[type, ...], str], ...] = (
    ((timm.models.ConvNeXt,), "convnext"),
    ((timm.models.EfficientNet,), "efficientnet"),
    ((timm.models.ResNet, torchvision.models.ResNet), "resnet"),
    ((timm.models.MaxxVit,), "maxvit"),
    ((timm.models.VisionTransformer,), "vit"),
)


def encoder_blocks(encoder: nn.Module) -> PrefixBlocks:
    """The encoder's blocks (`zoobot.models.blocks.prefix_blocks`), head side first, covering
    every parameter exactly once."""
    family = next((name for types, name in FAMILIES if isinstance(encoder, types)), None)
    if family is None:
        logger.warning(
            "no block split for %s (supported: ConvNeXt, EfficientNet, ResNet, MaxViT, ViT): "
            "its encoder is one block",
            type(encoder).__name__,
        )
    names = [name for name, _ in encoder.named_parameters()]
    return prefix_blocks(family, [n.rsplit(".", 1)[0] if "." in n else n for n in names])


def block_parameters(encoder: nn.Module, block: list[str]) -> Iterator[nn.Parameter]:
    """The parameters of one block."""
    return (p for name, p in encoder.named_parameters() if matches(name, block))
