"""Encoder blocks, ordered from the head backwards, for partial finetuning and layer-wise lr decay.

A block is a list of Keras layers of the encoder: `zoobot.tf.architectures.blocks` groups them as
`zoobot.models.blocks` says (the grouping of `zoobot.torch.blocks`), head side first and stem last,
every encoder weight in exactly one block; an encoder of an unknown family is one single block.

Freezing sets `layer.trainable = False` on the frozen blocks' layers: their weights get no
gradients, and Keras 3 runs a non-trainable `BatchNormalization` in inference mode (moving
statistics used, never updated), which is what `zoobot.torch` gets by keeping frozen blocks in
eval mode.
"""

from __future__ import annotations

import logging

import keras

from zoobot.models.blocks import n_trained

logger = logging.getLogger(__name__)

LayerBlocks = list[list[keras.layers.Layer]]


def _family_blocks(encoder: keras.Model) -> LayerBlocks | None:
    try:
        from zoobot.tf import architectures
    except ImportError:  # pragma: no cover - the architectures module ships with zoobot.tf
        return None
    try:
        return [list(block) for block in architectures.blocks(encoder)]
    except (KeyError, ValueError, TypeError, AttributeError, NotImplementedError) as err:
        logger.warning(
            "no block split for %s (%s): its encoder is one block",
            getattr(encoder, "name", type(encoder).__name__),
            err,
        )
        return None


def encoder_blocks(encoder: keras.Model) -> LayerBlocks:
    """The encoder's blocks, head side first, covering every weight of the encoder exactly once."""
    blocks = _family_blocks(encoder)
    if not blocks:
        return [[layer for layer in encoder.layers if layer.weights]]
    listed = {id(v) for block in blocks for layer in block for v in layer.weights}
    for layer in encoder.layers:
        if layer.weights and not any(id(v) in listed for v in layer.weights):
            blocks[0].append(layer)
            listed.update(id(v) for v in layer.weights)
    missing = [v.path for v in encoder.weights if id(v) not in listed]
    if missing:
        raise ValueError(f"encoder weights in no block (partly listed layers?): {missing[:10]}")
    return blocks


def block_variables(block: list[keras.layers.Layer]) -> list[keras.Variable]:
    """Every variable (trainable or not) of one block's layers."""
    seen, variables = set(), []
    for layer in block:
        for variable in layer.weights:
            if id(variable) not in seen:
                seen.add(id(variable))
                variables.append(variable)
    return variables


def freeze_blocks(blocks: LayerBlocks, n_blocks: int) -> tuple[LayerBlocks, LayerBlocks]:
    """Freeze all but the first `n_blocks` blocks (-1: none); return (trained, frozen) blocks."""
    count = n_trained(n_blocks, len(blocks))
    trained, frozen = blocks[:count], blocks[count:]
    for block in trained:
        for layer in block:
            layer.trainable = True
    for block in frozen:
        for layer in block:
            layer.trainable = False
    return trained, frozen


def lr_multipliers(trained: LayerBlocks, lr_decay: float) -> dict[int, float]:
    """`id(variable) -> lr_decay**i` for the variables of trained block `i` (block 0: factor 1)."""
    factors = {}
    for i, block in enumerate(trained):
        for variable in block_variables(block):
            factors.setdefault(id(variable), float(lr_decay) ** i)
    return factors
