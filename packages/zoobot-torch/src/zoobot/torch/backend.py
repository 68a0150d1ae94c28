"""zoobot.torch's implementation of the `zoobot.models.backend.Backend` contract.

Everything framework-free (the Hub layout, `predict`, `get_representations`, the command line) is
written once in `zoobot.models`; this module supplies what needs torch: timm encoders from the Hub
layout and back, head tensors, the inference engine (`zoobot.torch.runner`), its launches on several
processes (`zoobot.torch.distributed`, Lightning Fabric) and Lightning training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from zoobot.data.streaming import CatalogRows, open_catalog_rows
from zoobot.models import preprocessing
from zoobot.models.backend import Backend
from zoobot.models.runner import Parts, RunSettings
from zoobot.models.tasks import TaskRegistry
from zoobot.torch import encoders


class TorchBackend(Backend):
    """PyTorch: timm encoders, `nn.Sequential` heads, a DataLoader engine, Lightning training."""

    name = "torch"
    package = "zoobot-torch"
    module = "zoobot.torch"

    def __init__(self):
        self.tasks = TaskRegistry(builtin="zoobot.torch.finetune")

    def head_state(self, head: nn.Module) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().float().numpy() for k, v in head.state_dict().items()}

    def load_head_state(self, head: nn.Module, state: Mapping[str, np.ndarray], what: str) -> None:
        tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
        encoders.load_strict(head, tensors, what)

    def open_rows(self, data: Any) -> tuple[CatalogRows, CatalogRows]:
        rows = open_catalog_rows(data)
        return rows, rows

    def run_predictions(
        self,
        rows: CatalogRows,
        parts: Parts,
        chunks: Sequence[int],
        model: nn.Module,
        n_samples: int,
        mc_dropout: bool,
        settings: RunSettings,
        seed: int,
    ) -> None:
        from zoobot.torch.runner import run_chunks

        def forward(images: torch.Tensor) -> torch.Tensor:
            return model.predict_samples(images, n_samples, mc_dropout)

        run_chunks(rows, parts, chunks, model, forward, settings, seed)

    def run_features(
        self,
        rows: CatalogRows,
        parts: Parts,
        chunks: Sequence[int],
        encoder: nn.Module,
        settings: RunSettings,
    ) -> None:
        from zoobot.torch.runner import run_chunks

        run_chunks(rows, parts, chunks, encoder, encoder, settings)

    def predict_batch(self, model: nn.Module, images: np.ndarray) -> np.ndarray:
        from zoobot.torch.cpu import input_channels
        from zoobot.torch.data.transforms import eval_transform

        transform = eval_transform(input_channels(model), *preprocessing.normalisation(model))
        x = transform(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
        training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                if hasattr(model, "predict_samples"):
                    return model.predict_samples(x)[..., 0].float().numpy()
                return model(x).float().numpy()
        finally:
            model.train(training)

    def device(self, name: str | torch.device | None) -> torch.device | None:
        """The torch device `name` (cpu, cuda, cuda:N, mps), checked to exist here."""
        if name is None:
            return None
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError):
            raise ValueError(f"unknown device={name!r}; use cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if (device.index or 0) >= count:
                raise ValueError(f"device={name!r}, but torch sees {count} CUDA device(s)")
        elif device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device={name!r}, but MPS is not available here")
        elif device.type != "cpu":
            raise ValueError(f"device={name!r} is not supported; use cpu, cuda, cuda:N or mps")
        return device

    def set_threads(self, threads: int) -> None:
        torch.set_num_threads(threads)


BACKEND = TorchBackend()
