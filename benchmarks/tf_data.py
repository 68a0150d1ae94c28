"""Benchmark: images/s of zoobot.tf's evaluation pipeline from TFRecord shards vs from image files.

Makes `--n` synthetic 424 px galaxy JPEGs (smooth profiles, noise and stars, so they compress like
survey cutouts), writes them as shards with `zoobot.data.shards.write_shards`, and times a full
pass of `zoobot.tf.data.eval_dataset` (decode + resize to `--size` by `read_image`, evaluation
transform, batches of `--batch-size`) over the files and over the shards, alternating sources for
`--rounds` rounds after one warm-up pass each; the best round of each is reported, in images
per wall-clock second and in images per CPU-second of the process (robust on a shared machine).
`--train` also times `train_dataset` (in-graph decode and augmentations) from both sources.

Within each round the two sources run one after the other, the order reversing every round.
Target: shards at least as fast as files. Run (2 cores):
`OMP_NUM_THREADS=1 python benchmarks/tf_data.py [--n 1000] [--train] [--json out.json]`.
The JSON holds every round and, under `figures`, the rows of `benchmarks/run_all.py`'s table
(best round of each source; ratio shards / files; target >= 1.0x for the evaluation pipeline).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from zoobot.data.shards import write_shards  # noqa: E402
from zoobot.shared.io import atomic_write_text  # noqa: E402
from zoobot.tf.data import eval_dataset, train_dataset  # noqa: E402


def galaxy(rng: np.random.Generator, size: int) -> np.ndarray:
    """A uint8 RGB cutout: a Sersic-like galaxy of random shape, a few stars, sky noise."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32) - (size - 1) / 2
    angle, q = rng.uniform(0, np.pi), rng.uniform(0.3, 1.0)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = (-xx * np.sin(angle) + yy * np.cos(angle)) / q
    r = np.sqrt(u**2 + v**2) / rng.uniform(10, 40)
    flux = np.exp(-(r ** rng.uniform(0.5, 1.0)))
    for _ in range(rng.integers(0, 6)):
        x0, y0 = rng.uniform(0, size, 2)
        flux += rng.uniform(0.2, 1) * np.exp(
            -((xx + size / 2 - x0) ** 2 + (yy + size / 2 - y0) ** 2) / 4
        )
    colour = np.array([1.0, 0.85, 0.7], np.float32) * rng.uniform(0.8, 1.2, 3)
    image = np.arcsinh(8 * flux[..., None] * colour) / np.arcsinh(8)
    image += rng.normal(0, 0.02, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def make_catalog(folder: Path, n: int, size: int, seed: int = 0) -> pd.DataFrame:
    """n distinct 424 px JPEGs (quality 90) in `folder`, one label column."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        path = folder / "images" / f"{i // 1000:03d}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(galaxy(rng, size)).save(path, quality=90)
        rows.append({"id_str": f"{i:06d}", "file_loc": str(path), "label": float(i % 7)})
    return pd.DataFrame(rows)


def drain(dataset: tf.data.Dataset) -> int:
    """Iterate the whole dataset; the number of images it yielded."""
    count = 0
    for batch in dataset:
        images = batch["image"] if isinstance(batch, dict) else batch[0]
        count += int(images.shape[0])
    return count


def timed(make) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU second) of one full pass over `make()`.

    CPU seconds are this process's, all threads (user + system): on a shared machine they
    measure the pipeline's cost better than the wall clock does.
    """
    dataset = make()
    wall, cpu = time.perf_counter(), time.process_time()
    count = drain(dataset)
    return count / (time.perf_counter() - wall), count / (time.process_time() - cpu)


def main() -> None:
    """Parse the options, run the benchmark, print the figures (and write them as JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="galaxies")
    parser.add_argument("--source-size", type=int, default=424, help="JPEG side in pixels")
    parser.add_argument("--size", type=int, default=224, help="image_size of the pipeline")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train", action="store_true", help="also time train_dataset")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--workdir", type=Path, help="keep (and reuse) the images and shards here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.workdir or Path(tmp)
        start = time.perf_counter()
        listing, shard_dir = tmp / "catalog.csv", tmp / "shards"
        if args.workdir and listing.is_file() and (shard_dir / "shards.json").is_file():
            catalog = pd.read_csv(listing, dtype={"id_str": str})
        else:
            catalog = make_catalog(tmp, args.n, args.source_size)
            write_shards(
                catalog,
                shard_dir,
                label_cols=["label"],
                shard_size=args.shard_size,
                splits={"train": 1.0},
                progress=False,
            )
            catalog.to_csv(listing, index=False)
        mean_bytes = np.mean([os.path.getsize(p) for p in catalog["file_loc"]])
        print(
            f"{len(catalog)} JPEGs of {args.source_size} px (mean {mean_bytes / 1024:.1f} KiB) and "
            f"shards ready in {time.perf_counter() - start:.1f} s; cpus: {os.cpu_count()}"
        )

        sources = {"files": catalog, "shards": shard_dir}
        results: dict[str, dict] = {}

        def evaluate(source):
            return eval_dataset(source, args.size, 3, args.batch_size)

        def train(source):
            return train_dataset(
                source, ["label"], args.size, 3, args.batch_size, seed=0, split=None
            )

        pipelines = {"eval": evaluate, **({"train": train} if args.train else {})}
        for name, make in pipelines.items():
            for source in sources.values():
                drain(make(source))  # warm up: page cache, graph tracing
            rates = {key: [] for key in sources}
            for r in range(args.rounds):
                order = list(sources.items())
                for key, source in order if r % 2 == 0 else order[::-1]:
                    rates[key].append(timed(lambda s=source, m=make: m(s)))
            for key, values in rates.items():
                wall, cpu = (max(v[i] for v in values) for i in (0, 1))
                results[f"{name}_{key}"] = {
                    "best_images_per_s": wall,
                    "best_images_per_cpu_s": cpu,
                    "rounds": values,
                }
                shown = ", ".join(f"{v[0]:.0f}" for v in values)
                print(
                    f"{name:5s} from {key:6s}: best {wall:7.1f} images/s ({shown}); "
                    f"{cpu:7.1f} images per CPU-second"
                )
            for i, unit in enumerate(("wall", "cpu")):
                ratio = max(v[i] for v in rates["shards"]) / max(v[i] for v in rates["files"])
                results[f"{name}_shards_over_files_{unit}"] = ratio
                print(f"{name:5s} shards / files ({unit}): {ratio:.2f}x")

    if args.json:
        payload = {
            "args": {k: str(v) for k, v in vars(args).items()},
            **results,
            "figures": figures(results, args),
        }
        atomic_write_text(args.json, json.dumps(payload, indent=2) + "\n")


def figures(results: dict, args: argparse.Namespace) -> dict:
    """The rows of `benchmarks/run_all.py`'s table: each pipeline from shards over from files."""
    out = {}
    for name, title, target in (
        ("eval", "eval pipeline, shards vs files", 1.0),
        ("train", "train pipeline (in-graph decode + augmentations), shards vs files", None),
    ):
        if f"{name}_shards" not in results:
            continue
        shards, files = results[f"{name}_shards"], results[f"{name}_files"]
        out[f"{name}_shards_vs_files"] = {
            "title": f"{title}, {args.source_size} px JPEGs to {args.size} px, best of {args.rounds}",
            "unit": "img/s",
            "ours_median": shards["best_images_per_s"],
            "baseline_median": files["best_images_per_s"],
            "baseline_is": "image files",
            "ratio": results[f"{name}_shards_over_files_wall"],
            "ratio_cpu": results[f"{name}_shards_over_files_cpu"],
            "target": target,
            "target_is": ">=",
            "target_on": "ratio",
        }
    return out


if __name__ == "__main__":
    main()
