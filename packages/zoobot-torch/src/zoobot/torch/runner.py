"""Run a torch model over a catalog's images in resumable chunks: the engine under `predict` and
`get_representations` (`TorchBackend.run_predictions` / `run_features`).

The framework-free bookkeeping (chunks, part files that survive SIGKILL, the manifest that
fingerprints a run, failures, the final tables, the share of each process) is `zoobot.models`,
shared with `zoobot.tf`. Here: the DataLoader's sampler streams the catalog's rows a batch at a
time (batches never cross a chunk); its workers decode each batch to uint8 with
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from zoobot.data.images import read_image
from zoobot.data.streaming import CatalogRows, RowSlice
from zoobot.models import fast_paths
from zoobot.models.runner import (
    ChunkWriter,
    Failure,
    Parts,
    RunSettings,
    batch_failures,
    chunk_seed,
    decode_rows,
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
from zoobot.torch.gpu_jpeg import decoder, fill_on_device, gpu_decoding, split_rows

logger = logging.getLogger(__name__)


@dataclass
class RowBatch:
    """Rows `start:stop` of a catalog: the decoded images of the readable rows (in row order),
    their positions and ids, and the rows that failed."""

    start: int
    stop: int
    positions: np.ndarray
    ids: list[str]
    images: torch.Tensor
    failures: list[Failure]
    jpegs: list[tuple[int, torch.Tensor, str]] = dataclasses.field(default_factory=list)
    """JPEGs left for the GPU (`zoobot.torch.gpu_jpeg`): (row among `images`, bytes, location)."""

    def pin_memory(self) -> RowBatch:
        """Page-locked images (and JPEG bytes) for fast copies to a GPU (called by the
        DataLoader)."""
        self.images = self.images.pin_memory()
        self.jpegs = [(row, data.pin_memory(), where) for row, data, where in self.jpegs]
        return self


class CatalogImages(Dataset):
    """Decodes a batch of catalog rows (a `RowSlice`, the sampler's item) in the worker that gets
    it: uint8 (n, size, size, 3), an unreadable image caught per row. With `gpu_jpeg`, JPEGs are
    only read, for the main process to decode on the GPU (`zoobot.torch.gpu_jpeg`)."""

    def __init__(self, image_size: int, gpu_jpeg: bool = False):
        self.image_size, self.gpu_jpeg = image_size, gpu_jpeg

    def __getitem__(self, batch: RowSlice) -> RowBatch:
        jpegs = []
        if self.gpu_jpeg:
            images, ok, errors, encoded = split_rows(batch.sources, self.image_size)
            jpegs = [(row, data, batch.location(int(ok[row]))) for row, data in encoded]
        else:
            # read_image is looked up here, at call time, so it can be replaced (tests: a slow
            # disk).
            images, ok, errors = decode_rows(batch.sources, self.image_size, read_image)
        ids = [batch.ids[i] for i in ok]
        return RowBatch(
            batch.start,
            batch.start + len(batch),
            ok + batch.start,
            ids,
            torch.from_numpy(images),
            batch_failures(batch, errors),
            jpegs,
        )


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


def prepare_run(model: nn.Module, settings: RunSettings) -> tuple[RunSettings, dict]:
    """The run's device (`settings.device`, else where the model is) and the precision it computes
    in there (`run_precision`: "bf16" runs float32 on a CPU without native bf16), and what
    identifies the model's numbers for the manifest."""
    if settings.device is not None:
        device = torch.device(settings.device)
    else:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    precision = run_precision(settings.precision, device)
    identity = {
        "framework": "torch",
        "weights": weights_digest(model),
        "channels": input_channels(model),
        "decoder": decoder(device),
    }
    return dataclasses.replace(settings, device=device, precision=precision), identity


def run_chunks(
    rows: CatalogRows,
    parts: Parts,
    chunks: Sequence[int],
    model: nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    settings: RunSettings,
    seed: int = 0,
) -> None:
    """Compute `forward(images) -> (batch, *parts.shape)` for each of `chunks` and write its part.

    `settings` come from `prepare_run` (a device and the precision to run). `model` is the module
    `forward` uses (put in eval mode, moved to the device and made channels-last here). The
    DataLoader's sampler reads the catalog a batch at a time (`Parts.batches`), so no more than the
    batches in flight are in memory.
    """
    device = torch.device(settings.device)
    model.to(device)
    channels_last = settings.channels_last
    if channels_last is None:
        channels_last = prefers_channels_last(model, settings.precision)
    loader = DataLoader(
        CatalogImages(settings.image_size, gpu_decoding(device)),
        batch_size=None,
        sampler=parts.batches(rows, chunks, settings.batch_size),
        num_workers=settings.workers,
        collate_fn=_as_is,
        pin_memory=device.type == "cuda",
        worker_init_fn=_init_worker,
    )
    step = _Step(
        forward,
        eval_transform(input_channels(model), *settings.normalisation),
        device,
        channels_last,
    )
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    dtype = PRECISIONS[str(settings.precision)]
    fused = dtype == torch.bfloat16 and device.type == "cpu"
    with (
        prepared(model, channels_last),
        fused_conv_gelu(model) if fused else contextlib.nullcontext(),
        reused_memory(),
        torch.inference_mode(),
        torch.autocast(device.type, dtype, enabled=dtype is not None),
        torch.random.fork_rng(devices=rng_devices),
        ChunkWriter(parts, chunks, settings.progress) as writer,
    ):
        _stream(_on_device(loader, device), step, writer, seed, settings.image_size)


class _Step:
    """One batch through the model: uint8 NHWC -> evaluation transform -> `forward` -> numpy."""

    def __init__(self, forward, transform, device: torch.device, channels_last: bool):
        self.forward, self.transform, self.device = forward, transform, device
        self.layout = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        x = self.transform(x).contiguous(memory_format=self.layout)
        return self.forward(x).float().cpu().numpy()


def _on_device(batches, device: torch.device):
    """The batches, each one's images copied to a CUDA device on a side stream while the previous
    batch computes (pinned memory makes the copy asynchronous); as they are elsewhere."""
    if device.type != "cuda" or not fast_paths.choose(
        "cuda_prefetch", True, "copies overlap computing"
    ):
        yield from batches
        return
    stream, ready = torch.cuda.Stream(device), None
    for batch in batches:
        with torch.cuda.stream(stream):
            batch.images = batch.images.to(device, non_blocking=True)
        if ready is not None:
            yield ready
        torch.cuda.current_stream(device).wait_stream(stream)
        batch.images.record_stream(torch.cuda.current_stream(device))
        ready = batch
    if ready is not None:
        yield ready


def _gpu_decoded(batch: RowBatch, device: torch.device, size: int):
    """(images, positions, ids, failures) of a batch once its JPEGs are decoded on `device`."""
    images = batch.images.to(device, non_blocking=True)
    failed = fill_on_device(images, [(row, data) for row, data, _ in batch.jpegs], size, device)
    if not failed:
        return images, batch.positions, batch.ids, batch.failures
    where = {row: location for row, _, location in batch.jpegs}
    dropped = {row for row, _ in failed}
    failures = batch.failures + [
        (int(batch.positions[row]), batch.ids[row], where[row], message) for row, message in failed
    ]
    keep = [row for row in range(len(batch.ids)) if row not in dropped]
    ids = [batch.ids[row] for row in keep]
    return images[keep], batch.positions[keep], ids, failures


def _stream(batches, step: _Step, writer: ChunkWriter, seed: int, size: int) -> None:
    """The hot loop: one forward pass per batch, one part file per finished chunk."""
    for batch in batches:
        chunk = writer.new_chunk(batch.start)
        if chunk is not None:
            torch.manual_seed(chunk_seed(seed, chunk))
        images, positions, ids, failures = batch.images, batch.positions, batch.ids, batch.failures
        if batch.jpegs:
            images, positions, ids, failures = _gpu_decoded(batch, step.device, size)
        values = step(images) if len(positions) else None
        writer.add(batch.start, batch.stop, positions, ids, values, failures)
