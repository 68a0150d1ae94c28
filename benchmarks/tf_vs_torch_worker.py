"""One side of `benchmarks/tf_vs_torch.py` (and `jax_vs_tf_torch.py`): `zoobot.tf` or
`zoobot.torch`, never both in one process; `--framework jax` is `zoobot.tf` with Keras on JAX.

The driver starts this script once per framework with the same Python (`--framework torch`, `tf`,
`jax`) and sends each the same tasks, alternating between them. Protocol: one JSON task per line on stdin,
one JSON result per line on this process's original stdout; whatever the libraries print (Lightning
banners, TensorFlow logs, warnings) goes to stderr, which the driver keeps in a log.

Tasks (every figure is timed here, around exactly the call being compared):

- `hello`: versions and thread settings.
- `save_model` (torch only): a randomly initialised `zoobot.torch.ZoobotTree` of an architecture
  (seeded), written with `zoobot.torch.save_pretrained` as a Hub-layout folder that both sides load.
- `predict`: the side's `predict(source, from_pretrained(folder), save_loc, n_samples=1, ...)` with
  its default data pipeline and fp32; `source` is a catalog of image files, or (TF) a folder of
  TFRecord shards. Images/s of the whole call, after one warm-up call per (model, kind of source) on
  a small source of the same kind (graph tracing, oneDNN kernels, loader start-up). The
  concentrations go to `fractions_out` (npz of ids and concentrations) for the driver to compare.
- `train`: training images/s of the side's `ZoobotTree` with its default training pipeline (torch:
  Lightning `Trainer.fit` with `GalaxyDataModule`; TF: Keras `fit` of `zoobot.tf.ZoobotTree` on
  `zoobot.tf.data.train_dataset`), fp32, timed over the steps after the warm-up steps.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

FRAMEWORKS = ("torch", "tf", "jax")
SCHEMA = "decals_dr5"


def _version(distribution: str) -> str | None:
    """The installed version of a distribution (None if it has no metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


class Torch:
    """`zoobot.torch`: save_pretrained / from_pretrained, predict, ZoobotTree + Lightning."""

    name = "torch"

    def __init__(self, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.torch = torch

    def versions(self) -> dict:
        return {p: _version(p) for p in ("zoobot-torch", "torch", "timm", "pytorch-lightning")}

    def threads(self) -> dict:
        return {
            "torch_threads": self.torch.get_num_threads(),
            "cpu_capability": self.torch.backends.cpu.get_cpu_capability(),
        }

    def save_model(self, architecture: str, folder: str, seed: int) -> None:
        from zoobot.torch import ZoobotTree, save_pretrained

        self.torch.manual_seed(seed)
        save_pretrained(ZoobotTree(SCHEMA, architecture=architecture).eval(), folder)

    def load(self, folder: str):
        from zoobot.torch import from_pretrained

        return from_pretrained(folder).eval()

    def predict(self, source, model, save_loc: Path, task: dict) -> None:
        from zoobot.torch.predictions import predict

        predict(
            source,
            model,
            save_loc,
            n_samples=1,
            batch_size=task["batch_size"],
            num_workers=task["num_workers"],
            image_size=task["image_size"],
            progress=False,
        )

    def train(self, catalog: pd.DataFrame, task: dict) -> dict:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from torch_vs_original_worker import Ours  # noqa: PLC0415 - torch only, on demand

        # ZoobotTree(decals_dr5) + GalaxyDataModule (its default augmentations) + Trainer.fit,
        # timed by a callback after the warm-up steps (as in benchmarks/torch_vs_original.py)
        return Ours().train(catalog, task | {"precision": "32-true"})


class TF:
    """`zoobot.tf`: from_pretrained, predict (files or shards), ZoobotTree + Keras fit."""

    name = "tf"

    def __init__(self, threads: int):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        self.tf = tf

    def versions(self) -> dict:
        import keras

        return {
            "zoobot-tf": _version("zoobot-tf"),
            "tensorflow": self.tf.__version__,
            "keras": keras.__version__,
        }

    def threads(self) -> dict:
        cfg = self.tf.config.threading
        return {
            "intra_op": cfg.get_intra_op_parallelism_threads(),
            "inter_op": cfg.get_inter_op_parallelism_threads(),
        }

    def save_model(self, architecture: str, folder: str, seed: int) -> None:
        raise ValueError("models are saved by the torch side, so both load the same folder")

    def load(self, folder: str):
        from zoobot.tf.pretrained import from_pretrained

        return from_pretrained(folder)

    def predict(self, source, model, save_loc: Path, task: dict) -> None:
        from zoobot.tf.predictions import predict

        predict(
            source,
            model,
            save_loc,
            n_samples=1,
            batch_size=task["batch_size"],
            num_workers=task["num_workers"],
            image_size=task["image_size"],
            progress=False,
        )

    def train(self, catalog: pd.DataFrame, task: dict) -> dict:
        import keras

        from zoobot.shared import get_schema
        from zoobot.tf import ZoobotTree
        from zoobot.tf.data import train_dataset

        schema = get_schema(SCHEMA)
        keras.utils.set_random_seed(0)
        model = ZoobotTree(schema, architecture=task["architecture"])
        # its default optimizer (layer-wise AdamW), gradient clipping 1.0; no XLA on TensorFlow,
        # jax.jit on JAX
        model.compile()
        dataset = train_dataset(
            catalog,
            schema.label_cols,
            image_size=224,
            channels=3,
            batch_size=task["batch_size"],
            seed=0,
            split=None,
        ).repeat()
        warmup, steps, batch = task["warmup_steps"], task["steps"], task["batch_size"]

        class StepTimer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.count, self.start, self.end = 0, None, None

            def on_train_batch_end(self, batch_index, logs=None):
                # reading the loss waits for the step (TF may return before the work is done)
                float(np.asarray((logs or {}).get("loss", 0.0)))
                now = time.perf_counter()
                self.count += 1
                if self.count == warmup:
                    self.start = now
                elif self.count > warmup:
                    self.end = now

        timer = StepTimer()
        model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0)
        if timer.start is None or timer.end is None:
            raise RuntimeError("training ended before any timed step")
        seconds = timer.end - timer.start
        return {
            "seconds": seconds,
            "images": steps * batch,
            "images_per_second": steps * batch / seconds,
        }


class JAX(TF):
    """`zoobot.tf` with Keras on JAX (train and predict steps compiled with `jax.jit`);
    TensorFlow reads the data and has `threads` threads for it."""

    name = "jax"

    def __init__(self, threads: int):
        os.environ["KERAS_BACKEND"] = "jax"
        super().__init__(threads)

    def versions(self) -> dict:
        import jax
        import keras

        if keras.backend.backend() != "jax":
            raise RuntimeError(f"Keras runs on {keras.backend.backend()}, not jax")
        return {**super().versions(), "jax": jax.__version__, "jaxlib": _version("jaxlib")}


class Worker:
    def __init__(self, framework: str, threads: int, scratch: Path):
        sides = {"torch": Torch, "tf": TF, "jax": JAX}
        self.side = sides[framework](threads)
        self.scratch = scratch
        self.models: dict[str, object] = {}
        self.warm: set[tuple] = set()
        self.count = 0

    def hello(self, task: dict) -> dict:
        return {
            "framework": self.side.name,
            "python": platform.python_version(),
            "executable": sys.executable,
            "versions": self.side.versions(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "torch_imported": "torch" in sys.modules,
            "tensorflow_imported": "tensorflow" in sys.modules,
            **self.side.threads(),
        }

    def save_model(self, task: dict) -> dict:
        self.side.save_model(task["architecture"], task["folder"], task.get("seed", 0))
        return {"folder": task["folder"]}

    def _save_loc(self) -> Path:
        self.count += 1
        return self.scratch / f"{self.side.name}-{self.count:04d}.parquet"

    @staticmethod
    def _source(path: str):
        """A catalog file is read into a DataFrame (outside the timing); a shard folder stays a path."""
        return str(path) if Path(path).is_dir() else pd.read_parquet(path)

    def predict(self, task: dict) -> dict:
        from zoobot.shared.tables import read_predictions_full

        folder = task["model"]
        if folder not in self.models:
            self.models[folder] = self.side.load(folder)
        model = self.models[folder]
        key = (folder, task["kind"])
        if key not in self.warm:
            self.side.predict(self._source(task["warm_source"]), model, self._save_loc(), task)
            self.warm.add(key)
        source = self._source(task["source"])
        save_loc = self._save_loc()
        gc.collect()
        start = time.perf_counter()
        self.side.predict(source, model, save_loc, task)
        seconds = time.perf_counter() - start
        table = read_predictions_full(save_loc)
        if task.get("fractions_out"):
            np.savez(
                task["fractions_out"],
                ids=np.asarray(table.id_str, dtype=str),
                concentrations=table.concentrations[:, :, 0],
            )
        images = len(table.id_str)
        return {"seconds": seconds, "images": images, "images_per_second": images / seconds}

    def train(self, task: dict) -> dict:
        catalog = pd.read_parquet(task["catalog"])
        gc.collect()
        return self.side.train(catalog, task)

    def run(self, task: dict) -> dict:
        kind = task["task"]
        if kind not in ("hello", "save_model", "predict", "train"):
            raise ValueError(f"unknown task {kind!r}")
        try:
            return getattr(self, kind)(task)
        finally:
            gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=FRAMEWORKS, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scratch", type=Path, required=True)
    args = parser.parse_args()

    # Keep the real stdout for results; everything else printed goes to stderr.
    results = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    args.scratch.mkdir(parents=True, exist_ok=True)
    os.chdir(args.scratch)  # Lightning writes lightning_logs/ etc. here
    worker = Worker(args.framework, args.threads, args.scratch)
    results.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        task = json.loads(line)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                reply = {"ok": True, "result": worker.run(task)}
        except Exception as err:  # reported to the driver, which shows it in the table
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        results.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
