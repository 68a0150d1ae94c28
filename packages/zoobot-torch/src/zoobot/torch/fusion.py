"""1x1 convolution + GELU as one oneDNN primitive, for bf16 inference on CPU.

timm's small ConvNeXts (atto to nano, Zoobot's default encoders) run each block's MLP as a 1x1
convolution, GELU and a 1x1 convolution. Under bf16 autocast on CPU the separate GELU pass over
the MLP's widest activations is about a tenth of a convnext_nano forward pass; oneDNN can apply
GELU inside the convolution's output loop instead. That fused primitive is the one torch's own
compiler (Inductor) emits for CPU, `torch.ops.mkldnn._convolution_pointwise`; it is used here
without compiling anything. Measured on a 2-core AVX-512-bf16 VM (batch 32, 224 px):
convnext_nano 53 -> 59 img/s, with the same output as unfused bf16 up to bf16 rounding.

The operator is private to torch, and its bf16 path needs AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT:
`fused_conv_gelu` runs it once on a tiny input (`probe`) and otherwise leaves the model unfused.
Off with `ZOOBOT_DISABLE=fused_conv_gelu`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from zoobot.models.fast_paths import choose
from zoobot.torch.cpu import cpu_autocast_dtype


def _fused(input, weight, bias, padding, stride, dilation, groups) -> torch.Tensor:
    """oneDNN's convolution with GELU as its post-op, in bf16."""
    bias = None if bias is None else bias.to(torch.bfloat16)
    return torch.ops.mkldnn._convolution_pointwise(
        input.to(torch.bfloat16),
        weight.to(torch.bfloat16),
        bias,
        list(padding),
        list(stride),
        list(dilation),
        groups,
        "gelu",
        [],
        "none",
    )


@functools.cache
def probe() -> tuple[bool, str]:
    """(whether the fused bf16 primitive runs here and computes gelu(conv(x)), why), tried once on
    a tiny input: the operator may be missing, changed, or refused by this CPU."""
    if not torch.backends.mkldnn.is_available():
        return False, "torch is built without oneDNN"
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 3, 3, generator=generator).to(torch.bfloat16)
    weight = torch.randn(16, 8, 1, 1, generator=generator).to(torch.bfloat16)
    bias = torch.randn(16, generator=generator).to(torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", enabled=False):  # probed from any context
        try:
            got = _fused(x, weight, bias, (0, 0), (1, 1), (1, 1), 1).float()
        except (AttributeError, RuntimeError, TypeError) as err:
            return False, f"oneDNN's fused convolution is unavailable: {str(err).splitlines()[0]}"
        expected = F.gelu(F.conv2d(x.float(), weight.float(), bias.float()))
    # The inputs are bf16 already; the primitive rounds its output to bf16 (8 bits): 2**-8 relative.
    if not torch.allclose(got, expected, rtol=2**-7, atol=2**-7 * float(expected.abs().max())):
        return False, "oneDNN's fused convolution gives other numbers than conv + GELU"
    return True, "oneDNN runs 1x1 convolution + GELU as one bf16 primitive"


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
            return _fused(
                input,
                self.weight,
                self.bias,
                self.padding,
                self.stride,
                self.dilation,
                self.groups,
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
    yields how many (0 where the primitive fails its `probe` or is turned off). Parameters are
    untouched; the modules' classes are swapped back after the block."""
    mlps = (
        [m for m in model.modules() if _fusable(m)] if choose("fused_conv_gelu", *probe()) else []
    )
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
