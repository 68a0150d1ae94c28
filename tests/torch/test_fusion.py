"""Convolution + GELU fused for bf16 CPU inference: the same model, the same outputs; where the
primitive is missing, refused by the CPU (AVX2-only) or turned off, the model runs unfused."""

import logging

import pytest
import timm
import torch
from torch import nn

from zoobot.models import fast_paths
from zoobot.torch import fusion, runner
from zoobot.torch.fusion import ConvGELU, fused_conv_gelu


@pytest.fixture(scope="module")
def convnext():
    """timm's convnext_atto: its MLPs are 1x1 convolutions, like Zoobot's convnext_nano."""
    torch.manual_seed(0)
    return timm.create_model("convnext_atto", num_classes=0).eval()


def blocks(model):
    return sum(type(m).__name__ == "ConvNeXtBlock" for m in model.modules())


def test_fuses_every_block_and_restores_the_model(convnext, monkeypatch):
    """The swap itself, on any CPU (no forward pass runs the primitive here)."""
    monkeypatch.setattr(fusion, "probe", lambda: (True, "the test says so"))
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


def bf16_outputs(model, images):
    """(fp32, unfused bf16, bf16 inside `fused_conv_gelu`, MLPs fused) outputs of the model."""
    with torch.inference_mode():
        fp32 = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            unfused = model(images).float()
            with fused_conv_gelu(model) as n_fused:
                fused = model(images).float()
    return fp32, unfused, fused, n_fused


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_bf16_inference_matches_unfused_bf16(convnext, layout):
    """Where the primitive runs (the probe finds it), the fused model is the unfused one up to bf16
    rounding; where it does not (AVX2-only CPUs), nothing is fused and the outputs are unchanged."""
    images = torch.rand(4, 3, 64, 64).contiguous(memory_format=layout)
    fp32, unfused, fused, n_fused = bf16_outputs(convnext.to(memory_format=layout), images)
    convnext.to(memory_format=torch.contiguous_format)
    scale = fp32.abs().max()
    # bf16 keeps 8 bits (relative rounding 2**-9 per operation); the 12 blocks of convnext_atto
    # compound it, and 0.02 of the output scale bounds what was seen with room to spare.
    assert (unfused - fp32).abs().max() < 0.02 * scale
    if fusion.probe()[0]:
        assert n_fused == blocks(convnext)
        assert (fused - fp32).abs().max() < 0.02 * scale
        assert (fused - unfused).abs().max() < 0.02 * scale
        assert not torch.equal(fused, unfused)  # the fused primitive did run
    else:
        # Nothing swapped: the same modules run the same kernels on the same input, bit for bit.
        assert n_fused == 0 and torch.equal(fused, unfused)


@pytest.mark.parametrize("why", ["unsupported", "turned off"])
def test_without_the_primitive_bf16_runs_unfused(convnext, monkeypatch, caplog, why):
    """The probe forced to fail (as on an AVX2-only CPU), or `ZOOBOT_DISABLE`: no module changes,
    the bf16 outputs are the unfused ones, and one log line says why."""
    if why == "unsupported":
        monkeypatch.setattr(fusion, "probe", lambda: (False, "forced unsupported"))
    else:
        monkeypatch.setenv(fast_paths.DISABLE, "fused_conv_gelu")
    monkeypatch.setattr(fast_paths, "_announced", set())
    images = torch.rand(2, 3, 64, 64)
    with caplog.at_level(logging.INFO, logger="zoobot"):
        fp32, unfused, fused, n_fused = bf16_outputs(convnext, images)
    assert n_fused == 0 and not any(type(m) is ConvGELU for m in convnext.modules())
    assert torch.equal(fused, unfused)  # the same modules and kernels: bit for bit
    assert (fused - fp32).abs().max() < 0.02 * fp32.abs().max()  # bf16 rounding, as above
    reason = "forced unsupported" if why == "unsupported" else "turned off by ZOOBOT_DISABLE"
    assert [r.getMessage() for r in caplog.records] == [f"fused_conv_gelu: off ({reason})"]


def test_the_probe_runs_the_primitive_or_says_why_not():
    """On this CPU either the primitive computed gelu(conv(x)) or the reason names the failure."""
    supported, reason = fusion.probe()
    assert (
        reason == "oneDNN runs 1x1 convolution + GELU as one bf16 primitive"
        if supported
        else ("unavailable" in reason or "other numbers" in reason or "without oneDNN" in reason)
    )


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
    """`predict(precision='bf16')` on a CPU with native bf16 enters the fusion; fp32 does not."""
    monkeypatch.setattr(fast_paths, "native", lambda kind: (True, "the test asks for bf16"))
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
