"""A `Backend` in NumPy, so what zoobot.models does above every framework (shares, spawned ranks,
merging, resuming) is tested without one. Its "regressor" predicts each image's mean red, green and
blue (in [0, 1]), plus uniform noise per Monte Carlo pass seeded per chunk; its encoder gives the
same three means as features.

Test hooks, read from the environment so spawned ranks see them too: `NUMPY_BACKEND_DELAY`
(seconds per batch, a slow disk) and `NUMPY_BACKEND_FAIL` ("<rank>:<chunks>": that rank of a launch
raises `KeyboardInterrupt` after writing that many chunks, as a killed process stops).
"""

from __future__ import annotations

import os
import time

import numpy as np

from zoobot.data.streaming import open_catalog_rows
from zoobot.models.backend import Backend
from zoobot.models.distributed import Rank, spawn
from zoobot.models.runner import ChunkWriter, batch_failures, chunk_seed, decode_rows
from zoobot.models.tasks import TaskRegistry

SIZE = 8
DECODED: list[str] = []  # the images decoded in this process


class MeanColour:
    """A regressor of the mean colour of an image, `offset` added (its "weights")."""

    task = "regressor"

    def __init__(self, offset: float = 0.0):
        self.offset = offset

    def task_config(self) -> dict:
        return {"num_outputs": 3, "offset": self.offset}

    @classmethod
    def from_task_config(cls, config, encoder):
        return cls(config["offset"])


def forward(model: MeanColour, images: np.ndarray, rng, passes: int) -> np.ndarray:
    means = images.reshape(len(images), -1, 3).mean(1) / 255 + model.offset
    noise = rng.uniform(0, 0.1, (len(images), 3, passes)) if passes > 1 else 0.0
    return (means[..., None] + noise).astype(np.float32)


def fail_after(rank: int) -> int | None:
    """Chunks after which this rank stops (`NUMPY_BACKEND_FAIL`), or None."""
    text = os.environ.get("NUMPY_BACKEND_FAIL")
    if not text:
        return None
    index, chunks = text.split(":")
    return int(chunks) if int(index) == rank else None


class NumpyBackend(Backend):
    name, package = "numpy", "zoobot-models"

    def __init__(self):
        self.tasks = TaskRegistry(builtin="json")
        self.rank = 0

    def is_architecture(self, name):
        return name == "mean_colour"

    def load_encoder(self, name, channels=None):
        return MeanColour()

    def encoder_from_config(self, config, weights, channels):
        raise NotImplementedError

    def write_encoder(self, encoder, folder):
        raise NotImplementedError

    def encoder_dim(self, encoder):
        return 3

    def head_state(self, head):
        return {}

    def load_head_state(self, head, state, what):
        raise NotImplementedError

    def open_rows(self, data):
        rows = open_catalog_rows(data)
        return rows, rows

    def prepare_run(self, model, settings):
        return settings, {"framework": "numpy", "weights": model.offset, "channels": 3}

    def run_predictions(self, rows, parts, chunks, model, n_samples, mc_dropout, settings, seed):
        self._run(rows, parts, chunks, model, n_samples if mc_dropout else 1, settings, seed)

    def run_features(self, rows, parts, chunks, encoder, settings):
        self._run(rows, parts, chunks, encoder, 1, settings, 0)

    def _run(self, rows, parts, chunks, model, passes, settings, seed):
        delay = float(os.environ.get("NUMPY_BACKEND_DELAY", 0))
        stop_after = fail_after(self.rank)
        written = 0
        rng = None
        with ChunkWriter(parts, chunks, progress=False) as writer:
            for batch in parts.batches(rows, chunks, settings.batch_size):
                start, stop = batch.start, batch.start + len(batch)
                chunk = writer.new_chunk(start)
                if chunk is not None:
                    if stop_after is not None and written >= stop_after:
                        raise KeyboardInterrupt(f"rank {self.rank} stopped")
                    rng = np.random.default_rng(chunk_seed(seed, chunk))
                time.sleep(delay)
                DECODED.extend(batch.sources)
                images, ok, errors = decode_rows(batch.sources, SIZE)
                values = forward(model, images, rng, passes).reshape(len(images), *parts.shape)
                ids = [batch.ids[i] for i in ok]
                writer.add(start, stop, ok + start, ids, values, batch_failures(batch, errors))
                written += stop == parts.rows(start // parts.chunk_rows)[1]  # a chunk finished

    def predict_batch(self, model, images):
        return forward(model, images, None, 1)[..., 0]

    def set_threads(self, threads):
        pass

    def fit_catalog(self, build, data, label_cols, save_dir, options):
        raise NotImplementedError

    def launch(self, job, launch):
        """One process, or `devices` spawned ranks (`zoobot.models.distributed.spawn`)."""
        if launch.single:
            return job(Rank())
        return spawn(_RankJob(job), [{}] * launch.devices, [None] * launch.devices)


class _RankJob:
    """The job, telling the backend of the spawned process which rank it is (for its hooks)."""

    def __init__(self, job):
        self.job = job

    def __call__(self, rank: Rank):
        BACKEND.rank = rank.index
        return self.job(rank)


BACKEND = NumpyBackend()
