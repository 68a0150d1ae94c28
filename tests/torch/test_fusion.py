"""Convolution + GELU fused for bf16 CPU inference: the same model, the same outputs."""

import pytest
import timm
import torch
from torch import nn

from zoobot.torch import runner
from zoobot.torch.fusion import ConvGELU, fused_conv_gelu


@pytest.fixture(scope="module")
def convnext():
    """timm's convnext_atto: its MLPs are 1x1 convolutions, like Zoobot's convnext_nano."""
    torch.manual_seed(0)
    return timm.create_model("convnext_atto", num_classes=0).eval()


def blocks(model):
    return sum(type(m).__name__ == "ConvNeXtBlock" for m in model.modules())


def test_fuses_every_block_and_restores_the_model(convnext):
    state = {k: v.clone() for k, v in convnext.state_dict().items()}
    acts = [type(m.mlp.act) for m in convnext.modules() if type(m).__name__ == "ConvNeXtBlock"]
    with fused_conv_gelu(convnext) as fused:
        assert fused == blocks(convnext) > 0
        assert sum(type(m) is ConvGELU for m in convnext.modules()) == fused
        assert convnext.state_dict().keys() == state.keys()
    assert not any(type(m) is ConvGELU for m in convnext.modules())
    after = [type(m.mlp.act) for m in convnext.modules() if type(m).__name__ == "ConvNeXtBlock"]
    assert after == acts
    assert all(torch.equal(v, state[k]) for k, v in convnext.state_dict().items())


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_bf16_inference_matches_unfused_bf16(convnext, layout):
    images = torch.rand(4, 3, 64, 64).contiguous(memory_format=layout)
    model = convnext.to(memory_format=layout)
    with torch.inference_mode():
        fp32 = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            unfused = model(images).float()
            with fused_conv_gelu(model):
                fused = model(images).float()
    convnext.to(memory_format=torch.contiguous_format)
    scale = fp32.abs().max()
    # bf16 keeps 8 bits: both differ from fp32 by rounding, and from each other by no more
    assert (unfused - fp32).abs().max() < 0.02 * scale
    assert (fused - fp32).abs().max() < 0.02 * scale
    assert (fused - unfused).abs().max() < 0.02 * scale
    assert not torch.equal(fused, unfused)  # the fused primitive did run


def test_elsewhere_it_is_exactly_conv_then_gelu(convnext):
    """fp32, or with gradients (training): the two separate operations, bit for bit."""
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = convnext(images)
    with fused_conv_gelu(convnext), torch.no_grad():
        assert torch.equal(convnext(images), expected)
    conv = nn.Conv2d(8, 16, 1)
    fused = nn.Conv2d(8, 16, 1)
    fused.load_state_dict(conv.state_dict())
    fused.__class__ = ConvGELU
    x = torch.randn(2, 8, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fused(x), nn.functional.gelu(conv(x)))


def test_bf16_predict_runs_the_fused_model(monkeypatch, tmp_path):
    """`predict(precision='bf16')` on CPU enters the fusion; fp32 does not."""
    entered = []
    real = runner.fused_conv_gelu

    def spy(model):
        entered.append(type(model).__name__)
        return real(model)

    monkeypatch.setattr(runner, "fused_conv_gelu", spy)
    from zoobot.data.synthetic import make_survey
    from zoobot.torch import ZoobotTree
    from zoobot.torch.predictions import predict

    catalog = make_survey(8, tmp_path / "survey", image_size=48, seed=1, progress=False)
    model = ZoobotTree("decals_dr5", "convnext_atto")
    for precision in ("32", "bf16"):
        predict(
            catalog,
            model,
            tmp_path / f"predictions-{precision}.parquet",
            n_samples=1,
            num_workers=0,
            batch_size=4,
            image_size=48,
            precision=precision,
            progress=False,
        )
    assert len(entered) == 1
