"""Running a model fast for inference on CPU: precision, memory layout and the memory allocator.

Images/s of the bare encoder on a 2-core AVX-512 VM (2 threads, batch 32, 224 px, best of 5
interleaved rounds); "reused" is with `reused_memory`, which every other column also has:

| model           | eager fp32 | reused fp32 | + channels-last | bf16   | bf16 + channels-last |
| --------------- | ---------- | ----------- | --------------- | ------ | -------------------- |
| efficientnet_b0 | 37.6       | 74.8        | 89.2            | 93.9   | 140.1                |
| convnext_nano   | 16.7       | 32.0        | 32.7            | 55.2   | 54.9                 |

hence the defaults: memory reuse always, channels-last for BatchNorm networks and under bf16.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
import threading
from collections.abc import Iterator

import torch
from torch import nn

from zoobot.models import fast_paths
from zoobot.models.fast_paths import announce, choose

PRECISIONS = {"32": None, "bf16": torch.bfloat16}
# glibc mallopt parameters and their defaults (malloc/malloc.c).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
# Environment settings through which a user tunes glibc's allocator; `reused_memory` then leaves it.
MALLOC_ENVIRONMENT = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
)
MALLOC_TUNABLES = (
    "glibc.malloc.trim_threshold",
    "glibc.malloc.mmap_max",
    "glibc.malloc.mmap_threshold",
    "glibc.malloc.top_pad",
)


def input_channels(model: nn.Module) -> int:
    """Image channels the model takes: the `in_channels` of its first convolution (else 3)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return 3 if conv is None else conv.in_channels


def cpu_autocast_dtype() -> torch.dtype | None:
    """The dtype CPU autocast runs convolutions in, or None when it is off."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


def run_precision(precision: str, device: torch.device) -> str:
    """`zoobot.models.fast_paths.run_precision` on `device`: "bf16" runs float32 on a CPU without
    native bf16."""
    return fast_paths.run_precision(precision, device.type == "cpu")


def prefers_channels_last(model: nn.Module, precision: str) -> bool:
    """Whether channels-last is faster: for convolution + BatchNorm networks, and under bf16."""
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return announce("channels_last", False, "no convolutions")
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return announce("channels_last", True, "convolutions with BatchNorm")
    if PRECISIONS[str(precision)] is not None:
        return announce("channels_last", True, "bf16")
    return announce("channels_last", False, "float32 without BatchNorm")


@contextlib.contextmanager
def prepared(model: nn.Module, channels_last: bool) -> Iterator[None]:
    """`model` in eval mode (channels-last if asked) for the block; mode and layout restored after."""
    training = model.training
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.train(training)


def _user_malloc_settings() -> list[str]:
    """The glibc allocator settings the environment makes (`MALLOC_*_`, `GLIBC_TUNABLES`)."""
    found = [name for name in MALLOC_ENVIRONMENT if name in os.environ]
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    found += [t for t in MALLOC_TUNABLES if f"{t}=" in tunables]
    return found


_malloc = threading.Lock()
_malloc_depth = 0


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc with `mallopt` (the allocator `reused_memory` tunes)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def _malloc_tuning() -> ctypes.CDLL | None:
    """glibc, if `reused_memory` should tune it: there, not turned off, not tuned by the user."""
    libc = _glibc()
    if libc is None:
        choose("malloc_tuning", False, "the C library is not glibc")
        return None
    settings = _user_malloc_settings()
    if settings:
        choose("malloc_tuning", False, f"left as {', '.join(settings)} set it")
        return None
    return libc if choose("malloc_tuning", True, "glibc") else None


@contextlib.contextmanager
def reused_memory() -> Iterator[None]:
    """Keep freed activations in the heap for the next batch instead of unmapping them (glibc).

    glibc serves every allocation over 32 MB (a batch's activations) with a fresh `mmap` and unmaps
    it on free, so each forward pass page-faults all its activations in again: hundreds of
    thousands of faults per batch, which halves the speed of efficientnet_b0 on a VM. Inside the
    block large blocks come from the heap and the heap is not trimmed; after it the values from
    before are set again and the free memory returned to the system. glibc has no getter: the
    values before are its defaults, since the block does nothing when the environment tunes the
    allocator (`MALLOC_TRIM_THRESHOLD_`, `MALLOC_MMAP_MAX_`, ... or `GLIBC_TUNABLES`) and nested
    blocks leave it to the outermost. Setting the trim threshold ends glibc's dynamic mmap
    threshold for the process, which no call can restore. Off with `ZOOBOT_DISABLE=malloc_tuning`.
    """
    global _malloc_depth
    libc = _malloc_tuning()
    if libc is None:
        yield
        return
    with _malloc:
        _malloc_depth += 1
        if _malloc_depth == 1:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        with _malloc:
            _malloc_depth -= 1
            if _malloc_depth == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
