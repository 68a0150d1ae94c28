"""Depthwise convolutions with the fast CPU backward: same outputs and gradients as nn.Conv2d."""

import pytest
import timm
import torch
from torch import nn

from zoobot.torch.depthwise import DepthwiseConv2d, fast_depthwise


def twins(channels: int, kernel: int, padding: int, bias: bool, dtype=torch.float64):
    """An nn.Conv2d and a DepthwiseConv2d with the same weights."""
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, channels, kernel, padding=padding, groups=channels, bias=bias)
    conv = conv.to(dtype)
    fast = nn.Conv2d(channels, channels, kernel, padding=padding, groups=channels, bias=bias)
    fast = fast.to(dtype)
    fast.load_state_dict(conv.state_dict())
    fast.__class__ = DepthwiseConv2d
    return conv, fast


def gradients(conv, images, grad_out):
    images = images.detach().clone().requires_grad_(True)
    out = conv(images)
    out.backward(grad_out)
    return out.detach(), images.grad, [p.grad for p in conv.parameters()]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(("kernel", "padding", "bias"), [(7, 3, True), (3, 0, False), (5, 1, True)])
def test_same_outputs_and_gradients_as_nn_conv2d(layout, kernel, padding, bias):
    conv, fast = twins(6, kernel, padding, bias)
    images = torch.randn(3, 6, 11, 9, dtype=torch.float64).contiguous(memory_format=layout)
    grad_out = torch.randn_like(conv(images))
    expected, got = gradients(conv, images, grad_out), gradients(fast, images, grad_out)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-12, atol=1e-12)
    assert got[1].is_contiguous(memory_format=layout)
    for g, e in zip(got[2], expected[2], strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_bf16_autocast_runs_in_bf16_like_nn_conv2d():
    conv, fast = twins(8, 7, 3, True, dtype=torch.float32)
    images = torch.randn(4, 8, 14, 14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = conv(images), fast(images)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, conv.parameters(), grad_out)
    got_grads = torch.autograd.grad(got, fast.parameters(), grad_out)
    for g, e in zip(got_grads, expected_grads, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-2 * e.abs().max().item())


def test_fast_depthwise_swaps_only_depthwise_layers_and_restores_them():
    model = timm.create_model("convnext_atto", num_classes=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    depthwise = sum(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = model(images)
    with fast_depthwise(model) as swapped:
        assert swapped == depthwise > 0
        assert sum(type(m) is DepthwiseConv2d for m in model.modules()) == depthwise
        with torch.no_grad():
            torch.testing.assert_close(model(images), before, rtol=0, atol=0)
        model(images).sum().backward()
    assert not any(type(m) is DepthwiseConv2d for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
