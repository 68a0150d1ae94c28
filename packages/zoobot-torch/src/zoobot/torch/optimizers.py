"""The optimiser every Zoobot model trains with: AdamW over layer-wise parameter groups, warmup + cosine."""

from __future__ import annotations

import torch

from zoobot.models.settings import warmup_cosine


class WarmupCosine:
    """`zoobot.models.settings.warmup_cosine` as a `LambdaLR` factor of the step."""

    def __init__(self, warmup_steps: int, total_steps: float, cosine: bool = True):
        self.warmup_steps, self.total_steps, self.cosine = warmup_steps, total_steps, cosine

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.warmup_steps, self.total_steps, self.cosine)


def adamw(param_groups: list[dict], fused: bool = True, **options) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one for the parameters' device (CPU from torch
    2.4, CUDA): one pass over the weights, 6x faster than the default per-tensor loop on CPU.

    `fused=False` keeps the per-tensor loop: Lightning refuses to clip the gradients of a fused
    optimizer under mixed precision (such an optimizer unscales gradients itself), so
    `configure_optimizers` asks for it only then.
    """
    if fused:
        try:
            return torch.optim.AdamW(param_groups, fused=True, **options)
        except RuntimeError:  # no fused kernel for this device or torch version
            pass
    return torch.optim.AdamW(param_groups, **options)
