"""Depthwise convolutions that train faster on CPU: the same forward, a faster backward.

On CPU, torch's backward of a depthwise convolution (oneDNN) is 5-15x slower than its forward: for
convnext_nano's 7x7 depthwise layers at batch 16 it is a sixth of a fp32 training step and a quarter
of a bf16 one. Its gradients are two ordinary convolutions that oneDNN runs fast:

- input: the transposed depthwise convolution of the output gradient;
- weight: per channel, the correlation of the input with the output gradient, summed over the batch:
  one convolution with a group per (channel, image) and the output gradient as kernel.

`fast_depthwise(model)` switches a model's depthwise `nn.Conv2d` layers (stride 1, no dilation, zero
padding) to `DepthwiseConv2d` for a block and back: same parameters, same forward, the same gradients
up to float rounding. The fast backward only runs on CPU when a gradient is needed; anything else
takes `nn.Conv2d`'s path. The swap overrides `nn.Conv2d`'s private `_conv_forward`, so it is
tried once on a tiny layer (`probe`) and skipped if that no longer gives `nn.Conv2d`'s numbers
through the fast backward. Off with `ZOOBOT_DISABLE=fast_depthwise`.
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


def _memory_format(tensor: torch.Tensor) -> torch.memory_format:
    """channels_last for a tensor laid out so (and not also contiguous), else contiguous."""
    if tensor.is_contiguous() or not tensor.is_contiguous(memory_format=torch.channels_last):
        return torch.contiguous_format
    return torch.channels_last


class _DepthwiseConv(torch.autograd.Function):
    """`F.conv2d(x, weight, bias, padding=padding, groups=channels)` at stride 1, with the backward
    of the module docstring."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        n, c, h, w = x.shape
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:  # in the input's layout, as torch's own backward gives it
            grad_x = F.conv_transpose2d(grad, weight, padding=ctx.padding, groups=c)
            grad_x = grad_x.contiguous(memory_format=_memory_format(x))
        if ctx.needs_input_grad[1]:
            images = x.transpose(0, 1).reshape(1, c * n, h, w)
            kernels = grad.transpose(0, 1).reshape(c * n, 1, *grad.shape[-2:])
            per_image = F.conv2d(images, kernels, padding=ctx.padding, groups=c * n)
            total = torch.promote_types(per_image.dtype, torch.float32)  # bf16 sums lose digits
            grad_weight = per_image.view(c, n, *weight.shape[-2:]).sum(1, keepdim=True, dtype=total)
            grad_weight = grad_weight.to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            total = torch.promote_types(grad.dtype, torch.float32)
            grad_bias = grad.sum((0, 2, 3), dtype=total).to(grad.dtype)
        return grad_x, grad_weight, grad_bias, None


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise `nn.Conv2d` (stride 1, no dilation, zero padding) with a fast CPU backward."""

    def _conv_forward(self, input, weight, bias):
        if input.device.type != "cpu" or not torch.is_grad_enabled() or input.ndim != 4:
            return super()._conv_forward(input, weight, bias)
        dtype = cpu_autocast_dtype() or input.dtype  # what autocast would have run it in
        with torch.autocast("cpu", enabled=False):
            bias = None if bias is None else bias.to(dtype)
            return _DepthwiseConv.apply(input.to(dtype), weight.to(dtype), bias, self.padding)


def _is_depthwise(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv2d
        and module.groups == module.in_channels == module.out_channels
        and module.stride == (1, 1)
        and module.dilation == (1, 1)
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)
    )


@functools.cache
def probe() -> tuple[bool, str]:
    """(whether a swapped layer runs the fast backward with `nn.Conv2d`'s numbers, why), tried once
    in float64 on a tiny layer."""
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding=1, groups=3).double()
    fast = nn.Conv2d(3, 3, 3, padding=1, groups=3).double()
    fast.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, generator=generator)
    try:
        fast.__class__ = DepthwiseConv2d
        with torch.enable_grad(), torch.autocast("cpu", enabled=False):
            out = fast(x)
            ran = type(out.grad_fn).__name__.startswith(_DepthwiseConv.__name__)
            got = torch.autograd.grad(out.square().sum(), list(fast.parameters()))
            plain = conv(x)
            expected = torch.autograd.grad(plain.square().sum(), list(conv.parameters()))
    except (AttributeError, RuntimeError, TypeError) as err:
        return False, f"the swapped layer fails: {str(err).splitlines()[0]}"
    if not ran:
        return False, "nn.Conv2d no longer calls _conv_forward"
    pairs = [(out, plain), *zip(got, expected, strict=True)]
    same = all(torch.allclose(g, e, rtol=1e-10, atol=1e-12) for g, e in pairs)
    if not same:
        return False, "the fast backward gives other gradients than nn.Conv2d"
    return True, "the depthwise backward runs as two ordinary convolutions"


@contextlib.contextmanager
def fast_depthwise(model: nn.Module) -> Iterator[int]:
    """Within the block the model's depthwise convolutions are `DepthwiseConv2d`; yields how many
    (0 where the `probe` fails or the swap is turned off)."""
    enabled = choose("fast_depthwise", *probe())
    swapped = [m for m in model.modules() if _is_depthwise(m)] if enabled else []
    for module in swapped:
        module.__class__ = DepthwiseConv2d
    try:
        yield len(swapped)
    finally:
        for module in swapped:
            module.__class__ = nn.Conv2d
