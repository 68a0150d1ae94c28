"""Each CPU fast path of zoobot.torch with its capability check forced to "unsupported" (or turned
off by `ZOOBOT_DISABLE`): the plain path runs and gives the same numbers within float rounding,
one log line says which path was taken, and process-wide state is as it was before."""

import logging

import numpy as np
import pytest
import timm
import torch
from torch import nn

from zoobot.data.synthetic import make_survey
from zoobot.models import fast_paths
from zoobot.shared import get_schema
from zoobot.shared.tables import read_predictions_full
from zoobot.torch import ZoobotTree, cpu, depthwise, optimizers
from zoobot.torch.cpu import reused_memory, run_precision
from zoobot.torch.depthwise import DepthwiseConv2d, fast_depthwise
from zoobot.torch.optimizers import adamw
from zoobot.torch.predictions import predict

SCHEMA = get_schema("decals_dr5")


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """Every choice logged afresh; no user settings."""
    monkeypatch.setattr(fast_paths, "_announced", set())
    monkeypatch.delenv(fast_paths.DISABLE, raising=False)


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("zoobot")]


# --- bf16 on a CPU without native bf16 ---------------------------------------------------------


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    out = tmp_path_factory.mktemp("survey")
    return make_survey(12, out, schema=SCHEMA, image_size=32, seed=3, progress=False)


def test_bf16_predict_without_native_bf16_runs_float32(survey, tmp_path, monkeypatch, caplog):
    """As on an AVX2-only CPU: float32 runs (benchmarks/bf16_cpu.py: faster than emulated bf16)."""
    monkeypatch.setattr(fast_paths, "native", lambda kind: (False, "forced unsupported"))
    torch.manual_seed(0)
    model = ZoobotTree(SCHEMA, "convnext_atto")
    options = {"image_size": 32, "batch_size": 4, "num_workers": 0, "progress": False}
    with caplog.at_level(logging.INFO, logger="zoobot"):
        asked = predict(survey, model, tmp_path / "bf16.parquet", precision="bf16", **options)
    assert "cpu_bf16: off (forced unsupported; runs in float32, faster than emulated bf16)" in (
        messages(caplog)
    )
    fp32 = predict(survey, model, tmp_path / "fp32.parquet", precision="32", **options)
    # Both runs are the same float32 computation on the same batches in one process: bit equal.
    np.testing.assert_array_equal(
        read_predictions_full(asked.predictions).concentrations,
        read_predictions_full(fp32.predictions).concentrations,
    )


def test_run_precision_keeps_bf16_where_native_or_off_cpu(monkeypatch):
    monkeypatch.setattr(fast_paths, "native", lambda kind: (True, "CPU has avx512_bf16"))
    assert run_precision("bf16", torch.device("cpu")) == "bf16"
    monkeypatch.setenv(fast_paths.DISABLE, "cpu_bf16")
    assert run_precision("bf16", torch.device("cpu")) == "32"
    assert run_precision("bf16", torch.device("meta")) == "bf16"  # not a CPU: as asked
    assert run_precision("32", torch.device("cpu")) == "32"


def test_a_predict_that_fails_before_its_first_part_leaves_nothing(survey, tmp_path):
    """The failure the issue saw (a kernel refused by the CPU) leaves no orphan parts folder."""

    class Broken(ZoobotTree):
        def predict_samples(self, images, n_samples=1, mc_dropout=False):
            raise RuntimeError("mkldnn_convolution: bf16 path needs the cpu support ...")

    model = Broken(SCHEMA, "resnet10t")
    with pytest.raises(RuntimeError, match="bf16 path"):
        predict(survey, model, tmp_path / "out" / "p.parquet", image_size=32, num_workers=0)
    assert list((tmp_path / "out").iterdir()) == []


# --- the depthwise backward swap ---------------------------------------------------------------


def training_gradients(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    with fast_depthwise(model):
        model(images).square().mean().backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("why", ["unsupported", "turned off"])
def test_without_the_depthwise_swap_training_gives_the_same_gradients(monkeypatch, caplog, why):
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=4).double()
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    with caplog.at_level(logging.INFO, logger="zoobot"):
        fast = training_gradients(model, images)
        if why == "unsupported":
            monkeypatch.setattr(depthwise, "probe", lambda: (False, "forced unsupported"))
        else:
            monkeypatch.setenv(fast_paths.DISABLE, "fast_depthwise")
        with fast_depthwise(model) as swapped:
            assert swapped == 0 and not any(type(m) is DepthwiseConv2d for m in model.modules())
        plain = training_gradients(model, images)
    reason = "forced unsupported" if why == "unsupported" else "turned off by ZOOBOT_DISABLE"
    assert f"fast_depthwise: off ({reason})" in messages(caplog)
    assert messages(caplog)[0].startswith("fast_depthwise: on")
    # float64: the two backwards sum the same n*h*w <= 2*8*8 products per weight in other orders,
    # a relative difference of at most 128 * 2**-53 ~ 1.4e-14 of the sum of magnitudes.
    for f, p in zip(fast, plain, strict=True):
        torch.testing.assert_close(f, p, rtol=1e-10, atol=1e-12)


def test_the_depthwise_probe_passes_with_this_torch():
    """Verified torch versions (pyproject bounds) keep `_conv_forward`: the swap is on."""
    assert depthwise.probe() == (True, "the depthwise backward runs as two ordinary convolutions")


# --- fused AdamW -------------------------------------------------------------------------------


@pytest.mark.parametrize("why", ["unsupported", "turned off"])
def test_without_fused_adamw_the_step_is_the_same(monkeypatch, caplog, why):
    torch.manual_seed(0)
    weights = [torch.randn(5, 3), torch.randn(7)]
    grads = [torch.randn(5, 3), torch.randn(7)]

    def step() -> tuple[torch.optim.AdamW, list[torch.Tensor]]:
        params = [nn.Parameter(w.clone()) for w in weights]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer = adamw([{"params": params}], lr=1e-2, weight_decay=0.05)
        optimizer.step()
        return optimizer, [p.detach() for p in params]

    with caplog.at_level(logging.INFO, logger="zoobot"):
        fused, fused_params = step()
        if why == "unsupported":
            monkeypatch.setattr(
                optimizers, "fused_adamw", lambda device: (False, "forced unsupported")
            )
        else:
            monkeypatch.setenv(fast_paths.DISABLE, "fused_adamw")
        plain, plain_params = step()
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    reason = "forced unsupported" if why == "unsupported" else "turned off by ZOOBOT_DISABLE"
    assert messages(caplog)[-1] == f"fused_adamw: off ({reason})"
    # Both evaluate the same elementwise float32 formula; the fused kernel may order (or fuse
    # with FMA) its few operations differently: a few roundings of 2**-24 of each weight.
    for f, p in zip(fused_params, plain_params, strict=True):
        torch.testing.assert_close(f, p, rtol=1e-6, atol=1e-7)


# --- glibc malloc tuning -----------------------------------------------------------------------


class FakeLibc:
    """Records mallopt / malloc_trim calls instead of changing the allocator."""

    def __init__(self):
        self.calls = []

    def mallopt(self, parameter, value):
        self.calls.append(("mallopt", parameter, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.fixture
def libc(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(cpu, "_glibc", lambda: fake)
    for name in cpu.MALLOC_ENVIRONMENT + ("GLIBC_TUNABLES",):
        monkeypatch.delenv(name, raising=False)
    return fake


def test_reused_memory_sets_and_restores_glibc_once_when_nested(libc):
    with reused_memory():
        with reused_memory():
            assert len(libc.calls) == 2, "the inner block leaves it to the outer one"
        assert len(libc.calls) == 2
    assert libc.calls == [
        ("mallopt", cpu.M_MMAP_MAX, 0),
        ("mallopt", cpu.M_TRIM_THRESHOLD, 2**31 - 1),
        ("mallopt", cpu.M_MMAP_MAX, cpu.DEFAULT_MMAP_MAX),
        ("mallopt", cpu.M_TRIM_THRESHOLD, cpu.DEFAULT_TRIM_THRESHOLD),
        ("malloc_trim", 0),
    ]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MALLOC_TRIM_THRESHOLD_", "1048576"),
        ("MALLOC_MMAP_MAX_", "0"),
        ("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0:glibc.malloc.mmap_threshold=65536"),
        (fast_paths.DISABLE, "malloc_tuning"),
    ],
)
def test_reused_memory_leaves_a_tuned_or_opted_out_allocator_alone(
    libc, monkeypatch, caplog, variable, value
):
    monkeypatch.setenv(variable, value)
    with caplog.at_level(logging.INFO, logger="zoobot"), reused_memory():
        pass
    assert libc.calls == []
    (line,) = messages(caplog)
    assert line.startswith("malloc_tuning: off") and (
        variable in line or "glibc.malloc.mmap_threshold" in line
    )


def test_reused_memory_without_glibc_does_nothing(monkeypatch, caplog):
    monkeypatch.setattr(cpu, "_glibc", lambda: None)
    with caplog.at_level(logging.INFO, logger="zoobot"), reused_memory():
        pass
    assert messages(caplog) == ["malloc_tuning: off (the C library is not glibc)"]
