"""Peak memory of `predict` as the catalog grows: 10^6 rows against 10^4 (target <= 1.2x).

A synthetic catalog of many rows and few distinct images (a few dozen 32 px JPEGs, cycled through
the rows) is written as a Parquet file in row groups of 65,536, then predicted by a tree model with
timm's tiny `test_resnet` at 32 px, streaming the catalog from the file, each size in a fresh
process. The figure is the RSS high-water mark of the predicting process (`ru_maxrss`), merge
included, and, informative, that of its decoding workers (`RUSAGE_CHILDREN`: the largest). What
grows with rows here would be the catalog or anything indexed by row held in memory; the model,
the batches in flight and one part at a time do not grow.

Run: OMP_NUM_THREADS=1 python benchmarks/predict_memory.py [--framework torch|tf]
     [--rows 10000,1000000] [--json out.json]   (about 10 minutes on 2 cores for 10^6 rows)
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from zoobot.shared.io import atomic_write_text

IMAGES = 48
SIZE = 32
ROW_GROUP = 65_536
OPTIONS = {"image_size": SIZE, "batch_size": 512, "chunk_rows": 16_384, "num_workers": 1}


def write_catalog(folder: Path, rows: int) -> Path:
    """`rows` galaxies cycling through `IMAGES` small JPEGs, written a row group at a time."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(IMAGES):
        pixels = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.jpg", quality=90)
    path = folder / f"catalog-{rows}.parquet"
    schema = pa.schema([("id_str", pa.string()), ("file_loc", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, ROW_GROUP):
            index = np.arange(start, min(rows, start + ROW_GROUP))
            writer.write_table(
                pa.table(
                    {
                        "id_str": pa.array([f"galaxy-{i:09d}" for i in index]),
                        "file_loc": pa.array([f"images/{i % IMAGES}.jpg" for i in index]),
                    },
                    schema=schema,
                ),
                row_group_size=ROW_GROUP,
            )
    return path


def worker(framework: str, catalog: Path, model: Path, save_loc: Path) -> dict:
    """Predict `catalog` in this process; report the peak RSS of it and of its children."""
    package = __import__(f"zoobot.{framework}", fromlist=["predict"])
    start = time.perf_counter()
    files = package.predict(catalog, str(model), save_loc, progress=False, **OPTIONS)
    seconds = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "rows": files.n_predicted,
        "seconds": seconds,
        "peak_rss_mb": own,
        "peak_child_rss_mb": children,
    }


def save_model(framework: str, folder: Path) -> Path:
    package = __import__(f"zoobot.{framework}", fromlist=["ZoobotTree"])
    return package.ZoobotTree("decals_dr5", "test_resnet").save_pretrained(folder / "model")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=["torch", "tf"], default="torch")
    parser.add_argument("--rows", default="10000,1000000", help="catalog sizes, smallest first")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", nargs=3, metavar=("CATALOG", "MODEL", "SAVE_LOC"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.framework, *map(Path, args.worker))))
        return
    sizes = [int(n) for n in args.rows.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="zoobot-memory-") as scratch:
        folder = Path(scratch)
        model = save_model(args.framework, folder)
        for rows in sizes:
            catalog = write_catalog(folder, rows)
            command = [sys.executable, __file__, "--framework", args.framework, "--worker"]
            command += [str(catalog), str(model), str(folder / f"preds-{rows}.parquet")]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"the {rows:,}-row run failed:\n{done.stderr[-4000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(result)
            print(
                f"{rows:>9,} rows: peak RSS {result['peak_rss_mb']:.0f} MB (decoding worker "
                f"{result['peak_child_rss_mb']:.0f} MB), {result['seconds']:.0f} s",
                flush=True,
            )
    small, large = results[0], results[-1]
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    print(f"peak RSS {large['rows']:,} vs {small['rows']:,} rows: {ratio:.3f}x (target <= 1.2x)")
    print(f"CPU: {cpu_name()}")
    if args.json:
        figure = {
            "title": f"{args.framework} predict peak RSS, {large['rows']:,} vs "
            f"{small['rows']:,} rows (streamed Parquet)",
            "unit": "MB",
            "ours_median": large["peak_rss_mb"],
            "baseline_median": small["peak_rss_mb"],
            "baseline_is": f"ours at {small['rows']:,} rows",
            "target": 1.2,
            "target_is": "<=",
        }
        payload = {"cpu": cpu_name(), "results": results, "figures": {"rss": figure}}
        atomic_write_text(args.json, json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
