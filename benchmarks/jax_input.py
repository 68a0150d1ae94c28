"""Which input pipeline feeds zoobot.tf on JAX: `tf.data` (zoobot.tf.data) or a backend-neutral one.

On JAX, zoobot.tf could drop TensorFlow for reading images only if a loader without it fed the
model as fast. Measured in one process with Keras on JAX, on a synthetic survey of 424 px JPEGs
predicted at 224 px (batch 64, the same number of decoding threads for both):

1. `tf.data`: `zoobot.tf.data.eval_dataset` (read_image in parallel `tf.data` threads, the
   evaluation transform in TF ops), each batch handed over as NumPy, as `zoobot.tf.runner` does;
2. backend-neutral: a pool of threads each reading whole batches (`read_image` per galaxy, which
   releases the GIL, then the same arithmetic in NumPy), in order, a few batches ahead;
3. the model alone: the jit-compiled `predict_samples` of a convnext_nano and an efficientnet_b0
   `ZoobotTree` on an in-memory batch, to show what a pipeline has to keep up with.

Images/s, best of --rounds. Run: KERAS_BACKEND=jax python benchmarks/jax_input.py [--images 256]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from zoobot.data.images import read_image  # noqa: E402
from zoobot.data.synthetic import make_survey  # noqa: E402
from zoobot.shared import get_schema  # noqa: E402


def numpy_batch(paths: list[str], size: int) -> np.ndarray:
    """One batch of the evaluation transform's images, without TensorFlow."""
    pixels = np.stack([read_image(path, size) for path in paths])
    return pixels.astype(np.float32) / np.float32(255.0)


def rate(images: int, seconds: float) -> float:
    return images / seconds


def time_tf_data(catalog, size: int, batch: int, workers: int) -> float:
    from zoobot.tf.data import eval_dataset

    start, count = time.perf_counter(), 0
    for element in eval_dataset(catalog, size, 3, batch, num_parallel_calls=workers):
        count += len(np.asarray(element["image"]))
    return rate(count, time.perf_counter() - start)


def time_threads(catalog, size: int, batch: int, workers: int) -> float:
    paths = list(catalog["file_loc"])
    chunks = [paths[i : i + batch] for i in range(0, len(paths), batch)]
    start, count = time.perf_counter(), 0
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for images in pool.map(lambda chunk: numpy_batch(chunk, size), chunks):
            count += len(images)
    return rate(count, time.perf_counter() - start)


def time_model(architecture: str, size: int, batch: int, repeats: int) -> float:
    from zoobot.tf.runner import Forward, compiled
    from zoobot.tf.tree import ZoobotTree

    keras.utils.set_random_seed(0)
    model = ZoobotTree(get_schema("decals_dr5"), architecture)
    forward = Forward(lambda x: model.predict_samples(x, 1, False), (model,))
    step = compiled(model, forward, None, size, 3)
    x = np.random.default_rng(0).random((batch, size, size, 3), dtype=np.float32)
    np.asarray(step(x))  # compile
    start = time.perf_counter()
    for _ in range(repeats):
        np.asarray(step(x))
    return rate(batch * repeats, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "zoobot-bench-cache"
    )
    args = parser.parse_args()
    assert keras.backend.backend() == "jax", "run with KERAS_BACKEND=jax"
    folder = args.cache_dir / f"tf-vs-torch-survey-424-{args.images}"
    catalog = make_survey(args.images, folder, image_size=424, workers=2, progress=False)
    for path in catalog["file_loc"]:
        Path(path).read_bytes()  # page cache: both loaders read warm files
    size, batch, workers = 224, args.batch_size, args.workers
    loaders = {"tf.data": time_tf_data, "threads + NumPy": time_threads}
    best = {name: 0.0 for name in loaders}
    for _ in range(args.rounds):
        for name, timed in loaders.items():
            best[name] = max(best[name], timed(catalog, size, batch, workers))
    print(f"{args.images} JPEGs of 424 px -> {size} px, batch {batch}, {workers} decoding threads")
    for name, value in best.items():
        print(f"  {name:<28} {value:8.1f} img/s (best of {args.rounds})")
    for architecture in ("efficientnet_b0", "convnext_nano"):
        value = time_model(architecture, size, batch, repeats=2)
        print(f"  model alone, {architecture:<15} {value:8.1f} img/s (jit, in-memory batch)")


if __name__ == "__main__":
    main()
