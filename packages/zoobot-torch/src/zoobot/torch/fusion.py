"""1x1 convolution + GELU as one oneDNN primitive, for bf16 inference on CPU.

timm's small ConvNeXts (atto to nano, Zoobot's default encoders) run each block's MLP as a 1x1
convolution, GELU and a 1x1 convolution. Under bf16 autocast on CPU the separate GELU pass over
the MLP's widest activations is about a tenth of a convnext_nano forward pass; oneDNN can apply
GELU inside the convolution's output loop instead. That fused primitive is the one torch's own
compiler (Inductor) emits for CPU, `torch.ops.mkldnn._convolution_pointwise`; it is used here
without compiling anything. Measured on a 2-core AVX-512-bf16 VM (batch 32, 224 px):
convnext_nano 53 -> 59 img/s, with the same output as unfused bf16 up to bf16 rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from zoobot.torch.cpu import cpu_autocast_dtype


def _fused_op():
    """oneDNN's convolution with a pointwise post-op, or None in builds without it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return None


class ConvGELU(nn.Conv2d):
    """`gelu(conv(x))` of a 1x1 `nn.Conv2d`: one fused bf16 primitive in CPU inference under bf16
    autocast, the two separate operations anywhere else."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (
            input.device.type == "cpu"
            and input.ndim == 4
            and not torch.is_grad_enabled()
            and cpu_autocast_dtype() == torch.bfloat16
        ):
            bias = None if self.bias is None else self.bias.to(torch.bfloat16)
            return _fused_op()(
                input.to(torch.bfloat16),
                self.weight.to(torch.bfloat16),
                bias,
                list(self.padding),
                list(self.stride),
                list(self.dilation),
                self.groups,
                "gelu",
                [],
                "none",
            )
        return F.gelu(super().forward(input))


def _fusable(module: nn.Module) -> bool:
    """A timm `Mlp` whose fc1 is a plain 1x1 convolution followed by exact GELU."""
    from timm.layers import Mlp

    if not isinstance(module, Mlp):
        return False
    conv, act = module.fc1, module.act
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (1, 1)
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and type(act).__name__ == "GELU"  # torch's or timm's
        and getattr(act, "approximate", "none") == "none"
    )


@contextlib.contextmanager
def fused_conv_gelu(model: nn.Module) -> Iterator[int]:
    """Within the block the model's fusable MLPs run fc1 as `ConvGELU` and act as `nn.Identity`;
    yields how many (0 where torch has no fused primitive). Parameters are untouched."""
    mlps = [m for m in model.modules() if _fusable(m)] if _fused_op() is not None else []
    acts = [m.act for m in mlps]
    for mlp in mlps:
        mlp.fc1.__class__ = ConvGELU
        mlp.act = nn.Identity()
    try:
        yield len(mlps)
    finally:
        for mlp, act in zip(mlps, acts, strict=True):
            mlp.fc1.__class__ = nn.Conv2d
            mlp.act = act
