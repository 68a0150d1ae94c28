"""Run a torch model over a catalog's images in resumable chunks: the engine under `predict` and
`get_representations` (`TorchBackend.run_predictions` / `run_features`).

The framework-free bookkeeping (chunks, part files that survive SIGKILL, the manifest that
fingerprints a run, failures, the final tables) is `zoobot.models.runner`, shared with `zoobot.tf`.
Here: DataLoader workers decode each batch (which never crosses a chunk) to uint8 with
`zoobot.data.images.read_image`, catching an unreadable image per row; the main process converts
the batch to float, applies the evaluation transform, and runs the model under
`torch.inference_mode` (optionally channels-last and bf16 autocast, on CPU with convolution + GELU
fused, `zoobot.torch.fusion`), reseeding torch's generator at each chunk so Monte Carlo passes
repeat when a run resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from zoobot.data.images import read_image
from zoobot.models.runner import (
    ChunkWriter,
    Parts,
    RunSettings,
    chunk_seed,
    cleaned_up_on_failure,
    decode_rows,
    start_parts,
)
from zoobot.torch.cpu import (
    PRECISIONS,
    input_channels,
    prefers_channels_last,
    prepared,
    reused_memory,
    run_precision,
)
from zoobot.torch.data.transforms import eval_transform
from zoobot.torch.fusion import fused_conv_gelu

logger = logging.getLogger(__name__)


@dataclass
class RowBatch:
    """Rows `start:stop` of a catalog: the decoded images in row order and the rows that failed."""

    start: int
    stop: int
    positions: np.ndarray
    images: torch.Tensor
    errors: list[tuple[int, str]]

    def pin_memory(self) -> RowBatch:
        """Page-locked images for fast copies to a GPU (called by the DataLoader)."""
        self.images = self.images.pin_memory()
        return self


class CatalogImages(Dataset):
    """Spans of catalog rows decoded in one call: uint8 (n, size, size, 3), failures caught per row."""

    def __init__(self, file_locs: pd.Series, image_size: int):
        # An arrow array holds the paths without Python objects, so forked workers share its pages.
        self.file_locs = pa.array(file_locs.to_numpy(dtype=object), pa.string())
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.file_locs)

    def __getitem__(self, span: tuple[int, int]) -> RowBatch:
        start, stop = span
        paths = self.file_locs[start:stop].to_pylist()
        # read_image is looked up here, at call time, so it can be replaced (tests: a slow disk).
        images, ok, errors = decode_rows(paths, self.image_size, read_image)
        errors = [(start + index, message) for index, message in errors]
        return RowBatch(start, stop, ok + start, torch.from_numpy(images), errors)


def _as_is(batch: RowBatch) -> RowBatch:
    """The DataLoader's collate function: a `RowBatch` is already a batch."""
    return batch


def _init_worker(worker_id: int) -> None:
    """One OpenCV thread per decoding worker: the workers are the parallelism."""
    cv2.setNumThreads(1)


def weights_digest(model: nn.Module) -> str:
    """A digest of every parameter and buffer, so parts from other weights are never mixed in."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(str(data.dtype).encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def run_chunks(
    catalog: pd.DataFrame,
    model: nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    save_loc: str | os.PathLike,
    settings: RunSettings,
    run: Mapping,
    seed: int = 0,
) -> Parts:
    """Compute `forward(images) -> (batch, *shape)` for every chunk of `catalog` not yet on disk.

    `catalog` comes from `read_catalog`; `model` is the module `forward` uses (put in eval mode,
    moved to `settings.device` and made channels-last here). `run` describes what `forward` computes
    beyond the weights (task, passes...) for the manifest. Returns the finished `Parts`.
    `settings.precision` "bf16" runs in float32 on a CPU without native bf16 (`run_precision`); the
    manifest records the precision run.
    """
    if settings.device is not None:
        model.to(settings.device)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    settings = dataclasses.replace(settings, precision=run_precision(settings.precision, device))
    channels = input_channels(model)
    channels_last = settings.channels_last
    if channels_last is None:
        channels_last = prefers_channels_last(model, settings.precision)
    fingerprint = {
        **run,
        "framework": "torch",
        "weights": weights_digest(model),
        "channels": channels,
    }
    parts = start_parts(catalog, save_loc, shape, settings, fingerprint, seed)
    spans = parts.spans(parts.todo(), settings.batch_size)
    loader = DataLoader(
        CatalogImages(catalog["file_loc"], settings.image_size),
        batch_size=None,
        sampler=spans,
        num_workers=settings.workers,
        collate_fn=_as_is,
        pin_memory=device.type == "cuda",
        worker_init_fn=_init_worker,
    )
    step = _Step(forward, eval_transform(channels), device, channels_last)
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    dtype = PRECISIONS[str(settings.precision)]
    fused = dtype == torch.bfloat16 and device.type == "cpu"
    with (
        cleaned_up_on_failure(parts),
        prepared(model, channels_last),
        fused_conv_gelu(model) if fused else contextlib.nullcontext(),
        reused_memory(),
        torch.inference_mode(),
        torch.autocast(device.type, dtype, enabled=dtype is not None),
        torch.random.fork_rng(devices=rng_devices),
        ChunkWriter(parts, spans, settings.progress) as writer,
    ):
        if spans:
            _stream(loader, step, writer, seed)
    return parts


class _Step:
    """One batch through the model: uint8 NHWC -> evaluation transform -> `forward` -> numpy."""

    def __init__(self, forward, transform, device: torch.device, channels_last: bool):
        self.forward, self.transform, self.device = forward, transform, device
        self.layout = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        x = self.transform(x).contiguous(memory_format=self.layout)
        return self.forward(x).float().cpu().numpy()


def _stream(loader, step: _Step, writer: ChunkWriter, seed: int) -> None:
    """The hot loop: one forward pass per batch, one part file per finished chunk."""
    for batch in loader:
        chunk = writer.new_chunk(batch.start)
        if chunk is not None:
            torch.manual_seed(chunk_seed(seed, chunk))
        values = step(batch.images) if len(batch.positions) else None
        writer.add(batch.start, batch.stop, batch.positions, values, batch.errors)
