"""zoobot.data.fast_paths: the `ZOOBOT_DISABLE` setting, the one log line per choice, and the CPU's
native bf16 read from its flags and capped by `ONEDNN_MAX_CPU_ISA`."""

import logging

import pytest

from zoobot.data import fast_paths


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """No choices announced yet, the bf16 answer recomputed, no user settings."""
    monkeypatch.setattr(fast_paths, "_announced", set())
    monkeypatch.delenv(fast_paths.DISABLE, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    fast_paths.native_bf16.cache_clear()
    yield
    fast_paths.native_bf16.cache_clear()


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


@pytest.mark.parametrize(
    ("flags", "cap", "native"),
    [
        ({"avx2", "avx512bw", "avx512_bf16"}, "", True),
        ({"avx2", "amx_bf16"}, "AVX512_CORE_AMX", True),
        ({"avx2", "avx512bw", "avx512_bf16"}, "avx2", False),
        ({"avx2", "avx512bw", "avx512_bf16"}, "AVX512_CORE", False),
        ({"avx2", "fma"}, "", False),  # AMD Zen 3, Intel Haswell to Comet Lake
        ({"avx2", "avx512bw", "avx512vl"}, "", False),  # Skylake-SP: bf16 emulated by oneDNN
        ({"fp", "asimd", "bf16"}, "", True),  # Arm with BF16 (Graviton 3)
        (set(), "", False),
    ],
)
def test_native_bf16_needs_the_instructions_and_no_lower_onednn_cap(
    monkeypatch, flags, cap, native
):
    monkeypatch.setattr(fast_paths, "_cpu_flags", lambda: frozenset(flags))
    if cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    found, reason = fast_paths.native_bf16()
    assert found == native
    if cap and not native:
        assert cap.upper() in reason
