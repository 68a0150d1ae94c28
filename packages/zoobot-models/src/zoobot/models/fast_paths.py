"""Fast paths that depend on the CPU or the framework build: the setting that turns them off, the
CPU's native bfloat16 support, and the one log line that says which path a process takes.

`zoobot.torch` and `zoobot.tf` probe each fast path once and fall back to the plain path when the
probe fails or the user turns it off with `ZOOBOT_DISABLE` (comma-separated names, or `all`):

    ZOOBOT_DISABLE=fused_conv_gelu,malloc_tuning zoobot-torch predict ...

Each framework package's README lists its names. Framework-free so both packages read the same
setting and describe their choices the same way.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from pathlib import Path

logger = logging.getLogger(__name__)

DISABLE = "ZOOBOT_DISABLE"
# Per reduced precision: oneDNN's ISA names (`ONEDNN_MAX_CPU_ISA`, honoured by torch and
# TensorFlow) below the first with its arithmetic, where a cap rules it out, and the CPU flags
# (Linux /proc/cpuinfo) of its instructions: x86 AVX-512 and AMX, Arm.
_BELOW_BF16 = {
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
}
REDUCED = {
    "bf16": (frozenset(_BELOW_BF16), frozenset({"avx512_bf16", "amx_bf16", "bf16"})),
    "fp16": (
        frozenset(_BELOW_BF16 | {"AVX512_CORE_BF16"}),
        frozenset({"avx512_fp16", "amx_fp16", "asimdhp"}),
    ),
}
_announced: set[tuple[str, bool, str]] = set()


def disabled(name: str) -> bool:
    """Whether `ZOOBOT_DISABLE` turns off the fast path `name` (read at every call)."""
    names = {n.strip().lower() for n in os.environ.get(DISABLE, "").split(",")}
    return name.lower() in names or "all" in names


def announce(name: str, used: bool, reason: str) -> bool:
    """Log (once per process for each outcome) which path `name` takes and why; return `used`."""
    key = (name, used, reason)
    if key not in _announced:
        _announced.add(key)
        logger.info("%s: %s (%s)", name, "on" if used else "off", reason)
    return used


def choose(name: str, supported: bool, reason: str) -> bool:
    """Whether to take fast path `name` given what its probe found (`supported`, because `reason`),
    with the one log line: off when `ZOOBOT_DISABLE` names it, else as the probe found."""
    if disabled(name):
        return announce(name, False, f"turned off by {DISABLE}")
    return announce(name, supported, reason)


def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def native(kind: str) -> tuple[bool, str]:
    """(whether this CPU computes `kind` ("bf16" or "fp16") natively for oneDNN, why): it has the
    instructions and `ONEDNN_MAX_CPU_ISA` does not cap oneDNN below them. Elsewhere the precision is
    emulated, several times slower than float32 (benchmarks/bf16_cpu.py)."""
    below, flags = REDUCED[kind]
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if cap in below:
        return False, f"ONEDNN_MAX_CPU_ISA={cap} has no {kind} instructions"
    found = sorted(flags & _cpu_flags())
    if found:
        return True, f"CPU has {', '.join(found)}"
    return False, f"{platform.machine() or 'this'} CPU reports no {kind} instructions"


def cpu_runs(kind: str) -> bool:
    """Whether a request for `kind` ("bf16" or "fp16") runs in it on this CPU (else float32), with
    the one log line (`cpu_bf16`, `cpu_fp16`): only where it is `native`, and unless
    `ZOOBOT_DISABLE` names it."""
    supported, why = native(kind)
    reason = why if supported else f"{why}; runs in float32, faster than emulated {kind}"
    return choose(f"cpu_{kind}", supported, reason)


def run_precision(precision: str, on_cpu: bool) -> str:
    """The precision `predict` runs a request for `precision` at: "bf16" on a CPU only where it
    computes bf16 natively (`cpu_runs`), else "32", several times faster than emulated bf16 there
    (benchmarks/bf16_cpu.py). Other devices run what was asked."""
    precision = str(precision)
    if precision == "32" or not on_cpu:
        return precision
    return precision if cpu_runs("bf16") else "32"
