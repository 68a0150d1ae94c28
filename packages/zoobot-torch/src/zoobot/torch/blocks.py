"""Encoder blocks, ordered from the head backwards, for partial finetuning and layer-wise lr decay.

A block is a list of parameter-name prefixes inside the encoder (`stages.3`, `cls_token`). Each
architecture family has one small function listing its stages, head side first and stem last;
parameters no function names (final norms, `conv_head`) join the block nearest the head, so every
encoder parameter belongs to exactly one block. An encoder of another family is one single block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import timm.models
import torchvision
from torch import nn

logger = logging.getLogger(__name__)

PrefixBlocks = list[list[str]]


def _indexed(prefix: str, container: nn.Module) -> PrefixBlocks:
    return [[f"{prefix}.{i}"] for i in reversed(range(len(container)))]


def convnext_blocks(encoder: nn.Module) -> PrefixBlocks:
    """ConvNeXt: its stages, then the patchify stem."""
    return [*_indexed("stages", encoder.stages), ["stem"]]


def efficientnet_blocks(encoder: nn.Module) -> PrefixBlocks:
    """EfficientNet: its stages of inverted residual blocks, then the stem convolution and norm."""
    return [*_indexed("blocks", encoder.blocks), ["conv_stem", "bn1"]]


def resnet_blocks(encoder: nn.Module) -> PrefixBlocks:
    """ResNet (timm or torchvision): layer4 to layer1, then the stem convolution and norm."""
    return [["layer4"], ["layer3"], ["layer2"], ["layer1"], ["conv1", "bn1"]]


def maxvit_blocks(encoder: nn.Module) -> PrefixBlocks:
    """MaxViT / MaxxViT / CoAtNet: its stages, then the convolutional stem."""
    return [*_indexed("stages", encoder.stages), ["stem"]]


def vit_blocks(encoder: nn.Module) -> PrefixBlocks:
    """ViT: each transformer block, then the patch embedding with class/register tokens and positions."""
    stem = ["patch_embed", "cls_token", "reg_token", "pos_embed", "norm_pre"]
    return [*_indexed("blocks", encoder.blocks), stem]


FAMILIES: tuple[tuple[tuple[type, ...], Callable[[nn.Module], PrefixBlocks]], ...] = (
    ((timm.models.ConvNeXt,), convnext_blocks),
    ((timm.models.EfficientNet,), efficientnet_blocks),
    ((timm.models.ResNet, torchvision.models.ResNet), resnet_blocks),
    ((timm.models.MaxxVit,), maxvit_blocks),
    ((timm.models.VisionTransformer,), vit_blocks),
)


def matches(name: str, prefixes: Iterable[str]) -> bool:
    """Whether parameter or module `name` lies under one of `prefixes`."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def encoder_blocks(encoder: nn.Module) -> PrefixBlocks:
    """The encoder's blocks, head side first, covering every parameter exactly once."""
    for types, family in FAMILIES:
        if isinstance(encoder, types):
            blocks = family(encoder)
            break
    else:
        logger.warning(
            "no block split for %s (supported: ConvNeXt, EfficientNet, ResNet, MaxViT, ViT): "
            "its encoder is one block",
            type(encoder).__name__,
        )
        blocks = [[]]
    listed = [p for block in blocks for p in block]
    for name, _ in encoder.named_parameters():
        if not matches(name, listed):
            owner = name.rsplit(".", 1)[0] if "." in name else name
            blocks[0].append(owner)
            listed.append(owner)
    return blocks


def block_parameters(encoder: nn.Module, block: list[str]) -> Iterator[nn.Parameter]:
    """The parameters of one block."""
    return (p for name, p in encoder.named_parameters() if matches(name, block))
