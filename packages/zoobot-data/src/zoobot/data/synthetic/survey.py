"""The synthetic Galaxy Zoo survey: draw galaxies, render their JPEGs in parallel, simulate votes.

Every galaxy's randomness comes from `SeedSequence(seed, spawn_key=(index,))`, split into
independent streams for its morphology, its image and its volunteers, so a survey is the same
whatever the number of workers, and galaxy `i` is the same in surveys of any size. Images are
written atomically and kept when a survey is made again in the same folder with the same rendering
settings (an interrupted run resumes); the catalog is rewritten each time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from zoobot.data.synthetic.answers import check_schema
from zoobot.data.synthetic.morphology import Morphology, draw_morphology
from zoobot.data.synthetic.volunteers import simulate_votes
from zoobot.shared import Schema, as_schema
from zoobot.shared.io import atomic_path, atomic_write_text

GENERATOR_VERSION = 2  # bump when rendering changes, so old images are never mixed with new ones
CATALOG_FILES = ("catalog.parquet", "catalog.csv")
MANIFEST = "survey.json"
IMAGE_DIR = "images"
CHUNK = 8  # galaxies per task sent to a worker
RENDER_KEYS = ("seed", "image_size", "quality", "generator_version")


class SurveyError(ValueError):
    """A survey request that cannot be carried out as given (the message says what to change)."""


def galaxy_rngs(seed: int, index: int) -> tuple[np.random.Generator, ...]:
    """Independent generators for galaxy `index`: morphology, image, volunteers."""
    children = np.random.SeedSequence(seed, spawn_key=(index,)).spawn(3)
    return tuple(np.random.default_rng(child) for child in children)


def galaxy_id(seed: int, index: int) -> str:
    """The `id_str` of a galaxy: the seed is part of it, so surveys with other seeds never clash."""
    return f"synth-{seed}-{index:06d}"


def draw_galaxy(seed: int, index: int) -> Morphology:
    """The true morphology of galaxy `index` of the survey with this seed."""
    return draw_morphology(galaxy_rngs(seed, index)[0])


def render_galaxy(seed: int, index: int, image_size: int, quality: int = 90) -> bytes:
    """The JPEG bytes of galaxy `index` of the survey with this seed."""
    from zoobot.data.synthetic.render import encode_jpeg, render_rgb

    morphology_rng, image_rng, _ = galaxy_rngs(seed, index)
    rgb = render_rgb(draw_morphology(morphology_rng), image_rng, image_size)
    return encode_jpeg(rgb, quality)


def _init_worker() -> None:
    """One GalSim thread per worker: its OpenMP threads would oversubscribe the shared CPUs."""
    from zoobot.data.synthetic.render import use_one_thread

    use_one_thread()


def _render_chunk(task: tuple[int, Sequence[int], int, int, str]) -> int:
    """Render and atomically write the images of a few galaxies; return how many."""
    seed, indices, image_size, quality, image_dir = task
    for index in indices:
        with atomic_path(Path(image_dir) / f"{galaxy_id(seed, index)}.jpg") as tmp:
            tmp.write_bytes(render_galaxy(seed, index, image_size, quality))
    return len(indices)


def _chunks(indices: list[int], size: int) -> Iterator[list[int]]:
    """Consecutive slices of `size` indices: one task each, to amortise inter-process overhead."""
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def _render_all(
    seed: int,
    indices: list[int],
    image_size: int,
    quality: int,
    image_dir: Path,
    workers: int,
    progress: bool,
) -> None:
    """Render the galaxies at `indices` in this process (workers <= 1) or in a process pool."""
    tasks = [
        (seed, chunk, image_size, quality, str(image_dir)) for chunk in _chunks(indices, CHUNK)
    ]
    with tqdm(
        total=len(indices), desc="rendering galaxies", unit="galaxy", disable=not progress
    ) as bar:
        if workers <= 1:
            for task in tasks:
                bar.update(_render_chunk(task))
            return
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
            for done in pool.map(_render_chunk, tasks):
                bar.update(done)


def _check_manifest(out_dir: Path, manifest: dict) -> None:
    """Refuse to resume into a folder whose images were rendered with other settings."""
    path = out_dir / MANIFEST
    if not path.exists():
        return
    previous = json.loads(path.read_text(encoding="utf-8"))
    changed = [k for k in RENDER_KEYS if previous.get(k) != manifest[k]]
    if changed:
        settings = ", ".join(f"{k}={previous.get(k)!r} (now {manifest[k]!r})" for k in changed)
        raise SurveyError(
            f"{out_dir} already holds a synthetic survey rendered with {settings}; "
            "use a new folder, or delete this one, to make a survey with other settings"
        )


def survey_catalog(schema: Schema, seed: int, n: int) -> pd.DataFrame:
    """Catalog of the first `n` galaxies: id, relative image path, vote counts, true parameters."""
    rows = []
    for index in range(n):
        morphology_rng, _, volunteer_rng = galaxy_rngs(seed, index)
        morphology = draw_morphology(morphology_rng)
        votes = simulate_votes(schema, morphology, volunteer_rng)
        rows.append((votes, morphology.to_dict()))
    ids = [galaxy_id(seed, i) for i in range(n)]
    catalog = pd.DataFrame({"id_str": ids, "file_loc": [f"{IMAGE_DIR}/{i}.jpg" for i in ids]})
    counts = (
        np.stack([votes for votes, _ in rows]) if rows else np.zeros((0, len(schema.label_cols)))
    )
    labels = pd.DataFrame(counts.astype(np.int64), columns=schema.label_cols)
    truth = pd.DataFrame([t for _, t in rows], columns=list(Morphology.__dataclass_fields__))
    return pd.concat([catalog, labels, truth.add_prefix("true_")], axis=1)


def make_survey(
    n: int,
    out_dir: str | os.PathLike,
    schema: str | Schema = "decals_dr5",
    image_size: int = 128,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    quality: int = 90,
) -> pd.DataFrame:
    """Make a synthetic Galaxy Zoo survey of `n` galaxies in `out_dir` and return its catalog.

    Writes `images/<id_str>.jpg` (RGB, `image_size` pixels square), `catalog.parquet` and
    `catalog.csv` (`file_loc` relative to `out_dir`) and `survey.json`. The returned catalog has
    absolute `file_loc`, the schema's label columns as integer vote counts and the true parameters
    in `true_*` columns. `workers` defaults to the number of CPUs; 1 renders in this process.
    """
    if n < 0 or image_size < 16 or seed < 0:
        raise SurveyError(
            f"need n >= 0, image_size >= 16 and seed >= 0; got {n}, {image_size}, {seed}"
        )
    schema = as_schema(schema)
    check_schema(schema)
    out_dir = Path(out_dir).expanduser().resolve()
    image_dir = out_dir / IMAGE_DIR
    manifest = {
        "n": n,
        "seed": seed,
        "image_size": image_size,
        "quality": quality,
        "schema": schema.name,
        "generator_version": GENERATOR_VERSION,
    }
    _check_manifest(out_dir, manifest)
    image_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2))

    catalog = survey_catalog(schema, seed, n)
    todo = [i for i, loc in enumerate(catalog["file_loc"]) if not (out_dir / loc).exists()]
    workers = min(workers or os.cpu_count() or 1, max(1, -(-len(todo) // CHUNK)))
    _render_all(seed, todo, image_size, quality, image_dir, workers, progress)

    with atomic_path(out_dir / CATALOG_FILES[0]) as tmp:
        catalog.to_parquet(tmp, index=False)
    with atomic_path(out_dir / CATALOG_FILES[1]) as tmp:
        catalog.to_csv(tmp, index=False)
    catalog["file_loc"] = [str(out_dir / loc) for loc in catalog["file_loc"]]
    return catalog
