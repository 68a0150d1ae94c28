"""Encoder blocks for partial finetuning and layer-wise learning-rate decay, written once.

A block is a list of timm module paths (`stages.3`, `cls_token`), head side first and stem last:
PyTorch matches them against its parameters' modules, Keras against its layers (zoobot.tf names
layers by timm's module paths). Each family lists its stages, last first, then its stem; modules
holding weights that no block lists (final norms, `conv_head`) join block 0, the one nearest the
head, so every weight belongs to exactly one block. An encoder of another family is one block.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# family -> (the module whose numbered children are the stages, the stem's modules)
STAGED = {
    "convnext": ("stages", ("stem",)),
    "efficientnet": ("blocks", ("conv_stem", "bn1")),
    "maxvit": ("stages", ("stem",)),
    "vit": ("blocks", ("patch_embed", "cls_token", "reg_token", "pos_embed", "norm_pre")),
}
RESNET = (("layer4",), ("layer3",), ("layer2",), ("layer1",), ("conv1", "bn1"))
FAMILIES = ("convnext", "efficientnet", "maxvit", "resnet", "vit")


def matches(name: str, prefixes: Iterable[str]) -> bool:
    """Whether module or weight `name` lies under one of `prefixes`."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def prefix_blocks(family: str | None, modules: Sequence[str]) -> list[list[str]]:
    """The blocks of an encoder of `family` (None: another) whose weights are held by `modules`
    (timm module paths, in order), every one of them in exactly one block."""
    if family == "resnet":
        blocks = [list(block) for block in RESNET]
    elif family in STAGED:
        container, stem = STAGED[family]
        stages = {int(m.split(".")[1]) for m in modules if m.startswith(f"{container}.")}
        blocks = [*([f"{container}.{i}"] for i in sorted(stages, reverse=True)), list(stem)]
    else:
        blocks = [[]]
    listed = [p for block in blocks for p in block]
    for module in modules:
        if not matches(module, listed):
            blocks[0].append(module)
            listed.append(module)
    return blocks


def n_trained(n_blocks: int, n: int) -> int:
    """How many of `n` blocks train for the setting `n_blocks`: all for -1, else at most `n_blocks`."""
    return n if n_blocks < 0 else min(n_blocks, n)
