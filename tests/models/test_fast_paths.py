"""zoobot.models.fast_paths: the `ZOOBOT_DISABLE` setting, the one log line per choice, and the CPU's
native bf16 / fp16 read from its flags and capped by `ONEDNN_MAX_CPU_ISA`."""

import logging

import pytest

from zoobot.models import fast_paths


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """No choices announced yet, the bf16 answer recomputed, no user settings."""
    monkeypatch.setattr(fast_paths, "_announced", set())
    monkeypatch.delenv(fast_paths.DISABLE, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    fast_paths.native.cache_clear()
    yield
    fast_paths.native.cache_clear()


def test_disable_names_paths_or_all(monkeypatch):
    monkeypatch.setenv(fast_paths.DISABLE, " Fused_Conv_Gelu , malloc_tuning")
    assert fast_paths.disabled("fused_conv_gelu") and fast_paths.disabled("malloc_tuning")
    assert not fast_paths.disabled("fast_depthwise")
    monkeypatch.setenv(fast_paths.DISABLE, "all")
    assert fast_paths.disabled("fast_depthwise")


def test_each_choice_is_logged_once(monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="zoobot"):
        assert fast_paths.choose("path", True, "probe passed")
        assert fast_paths.choose("path", True, "probe passed")
        monkeypatch.setenv(fast_paths.DISABLE, "path")
        assert not fast_paths.choose("path", True, "probe passed")
    assert [r.getMessage() for r in caplog.records] == [
        "path: on (probe passed)",
        "path: off (turned off by ZOOBOT_DISABLE)",
    ]


ZEN4 = {"avx2", "avx512bw", "avx512_bf16"}
SAPPHIRE_RAPIDS = {"avx2", "avx512bw", "avx512_bf16", "avx512_fp16", "amx_bf16"}


@pytest.mark.parametrize(
    ("kind", "flags", "cap", "native"),
    [
        ("bf16", ZEN4, "", True),
        ("bf16", {"avx2", "amx_bf16"}, "AVX512_CORE_AMX", True),
        ("bf16", ZEN4, "avx2", False),
        ("bf16", ZEN4, "AVX512_CORE", False),
        ("bf16", {"avx2", "fma"}, "", False),  # AMD Zen 3, Intel Haswell to Comet Lake
        ("bf16", {"avx2", "avx512bw", "avx512vl"}, "", False),  # Skylake-SP: bf16 emulated
        ("bf16", {"fp", "asimd", "bf16"}, "", True),  # Arm with BF16 (Graviton 3)
        ("bf16", set(), "", False),
        ("fp16", ZEN4, "", False),
        ("fp16", SAPPHIRE_RAPIDS, "", True),
        ("fp16", SAPPHIRE_RAPIDS, "AVX512_CORE_BF16", False),
        ("fp16", SAPPHIRE_RAPIDS, "AVX512_CORE_FP16", True),
    ],
)
def test_native_needs_the_instructions_and_no_lower_onednn_cap(
    monkeypatch, kind, flags, cap, native
):
    monkeypatch.setattr(fast_paths, "_cpu_flags", lambda: frozenset(flags))
    if cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    found, reason = fast_paths.native(kind)
    assert found == native
    if cap and not native:
        assert cap.upper() in reason and kind in reason


def test_cpu_runs_logs_the_precision_chosen(monkeypatch, caplog):
    monkeypatch.setattr(fast_paths, "_cpu_flags", lambda: frozenset({"avx2"}))
    with caplog.at_level(logging.INFO, logger="zoobot"):
        assert not fast_paths.cpu_runs("bf16")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("cpu_bf16: off (") and "runs in float32" in line
