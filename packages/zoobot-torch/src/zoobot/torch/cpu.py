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
import platform
from collections.abc import Iterator

import torch
from torch import nn

PRECISIONS = {"32": None, "bf16": torch.bfloat16}
# glibc mallopt parameters and their defaults.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536


def input_channels(model: nn.Module) -> int:
    """Image channels the model takes: the `in_channels` of its first convolution (else 3)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return 3 if conv is None else conv.in_channels


def cpu_autocast_dtype() -> torch.dtype | None:
    """The dtype CPU autocast runs convolutions in, or None when it is off."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


def prefers_channels_last(model: nn.Module, precision: str) -> bool:
    """Whether channels-last is faster: for convolution + BatchNorm networks, and under bf16."""
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    has_batchnorm = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    return has_batchnorm or PRECISIONS[str(precision)] is not None


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


def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (whose allocator `reused_memory` tunes), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c"))


@contextlib.contextmanager
def reused_memory() -> Iterator[None]:
    """Keep freed activations in the heap for the next batch instead of unmapping them (glibc).

    glibc serves every allocation over 32 MB (a batch's activations) with a fresh `mmap` and unmaps
    it on free, so each forward pass page-faults all its activations in again: hundreds of
    thousands of faults per batch, which halves the speed of efficientnet_b0 on a VM. Inside the
    block large blocks come from the heap and the heap is not trimmed; after it the defaults are
    restored and the free memory returned to the system.
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
