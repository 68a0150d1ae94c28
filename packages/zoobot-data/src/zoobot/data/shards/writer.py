"""Write a catalog as TFRecord shards in parallel, atomically per shard, resuming finished shards.

A shard folder holds only what the writer claims: before writing, `.manifests/run.json` lists the
shards it plans (with a digest of the plan), and each finished shard gets its manifest. A rerun of
the same plan resumes or repairs; the finished shards of an earlier run of ours with another plan
are replaced only with `overwrite=True`; files we did not write (a shard name without our manifest or claim, a
foreign `shards.json`) are never touched: the run is refused, naming them.

Every image is checked by `zoobot.data.images`' one set of rules (JPEG or PNG by content, not too
large, decodable, carrying signal) as it is stored. A shard with an unusable image is not written;
the others are, and the run fails listing every unusable image (also in `failed.csv`), so fixing
those rows or files and rerunning finishes the folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from zoobot.data.images import ImageDecodeError, check_image
from zoobot.data.shards.errors import ShardError
from zoobot.data.shards.example import FIXED_FEATURES, encode_example
from zoobot.data.shards.layout import (
    FORMAT_VERSION,
    MANIFEST_DIR,
    SHARD_NAME,
    SIDECAR,
    manifest_path,
)
from zoobot.data.shards.plan import (
    ShardTask,
    label_rule,
    plan_shards,
    read_catalog,
    resolve_label_cols,
    split_rows,
    where,
)
from zoobot.data.shards.tfrecord import frame_record
from zoobot.data.splits import Splits, resolve_splits
from zoobot.shared import Schema
from zoobot.shared.io import atomic_path, atomic_write_text, file_digest

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"  # in MANIFEST_DIR: the shards a run planned, written before any of them
RUN_FORMAT = "zoobot-shards-run/1"
FAILED_FILE = "failed.csv"
FAILED_COLUMNS = ["row", "id_str", "file_loc", "error"]
MAX_FAILURES_SHOWN = 10
# Temporary files atomic_path leaves behind only if a run is killed outright (SIGKILL, power loss).
_LEFTOVER = re.compile(
    rf"\.(?:{SHARD_NAME.pattern}(?:\.json)?|{re.escape(SIDECAR)}|{re.escape(FAILED_FILE)}"
    rf"|{re.escape(RUN_FILE)})\.\w+\.part"
)


class _Unusable(Exception):
    """Raised inside a shard's atomic write to discard it: one of its images is unusable."""


def _encode(
    row: int, id_str: str, path: str, labels: list[float], label_cols: Sequence[str]
) -> bytes:
    """Read one image and its header and serialise its Example; errors name the row and file."""
    at = f"{where(row, id_str)}, file {path}"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ShardError(f"{at}: cannot read: {err.strerror or err}") from err
    try:
        image_format, height, width, channels = check_image(data, at)
    except ImageDecodeError as err:
        raise ShardError(str(err)) from err
    return encode_example(data, image_format, height, width, channels, id_str, label_cols, labels)


def _finished(task: ShardTask, shard: Path, manifest: Path) -> dict | None:
    """The manifest of `shard` if it is whole and was written from this same plan, else None."""
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
        if record.get("plan_key") != task.plan_key or record.get("count") != len(task.rows):
            return None
        if shard.stat().st_size != record["bytes"] or file_digest(shard) != record["sha256"]:
            return None
    except (OSError, ValueError, KeyError):
        return None
    return record


def write_shard(task: ShardTask) -> tuple[dict | None, bool, list[tuple]]:
    """Write one shard under a temporary name, rename it, then its manifest.

    Returns (manifest, skipped, failures): a shard holding an unusable image is not written
    (manifest None) and every such image is listed as (row, id_str, path, message).
    """
    out_dir = Path(task.out_dir)
    shard, manifest = out_dir / task.file, manifest_path(out_dir, task.file)
    done = _finished(task, shard, manifest)
    if done is not None:
        return done, True, []
    digest, size, failures = hashlib.sha256(), 0, []
    try:
        with atomic_path(shard) as tmp, open(tmp, "wb") as f:
            rows = zip(task.rows, task.ids, task.paths, task.labels.tolist(), strict=True)
            for row, id_str, path, labels in rows:
                try:
                    record = frame_record(_encode(row, id_str, path, labels, task.label_cols))
                except ShardError as err:
                    failures.append((row, id_str, path, str(err)))
                    continue
                f.write(record)
                digest.update(record)
                size += len(record)
            if failures:
                raise _Unusable
    except _Unusable:
        return None, False, failures
    record = {
        "file": task.file,
        "count": len(task.rows),
        "bytes": size,
        "sha256": digest.hexdigest(),
        "plan_key": task.plan_key,
    }
    atomic_write_text(manifest, json.dumps(record) + "\n")
    return record, False, []


def _plan_digest(tasks: list[ShardTask], sidecar_settings: Mapping) -> str:
    """What a run writes: each shard's name and inputs, and the sidecar's settings."""
    text = json.dumps(
        [[t.file, t.plan_key] for t in tasks] + [sidecar_settings], sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _ours(out_dir: Path) -> tuple[set[str], str | None]:
    """(names of the files our earlier runs wrote or planned here, the last run's plan digest)."""
    manifests = out_dir / MANIFEST_DIR
    names: set[str] = set()
    plan = None
    if manifests.is_dir():
        names |= {p.name.removesuffix(".json") for p in manifests.glob("*.json")}
        try:
            run = json.loads((manifests / RUN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            run = {}
        if run.get("format") == RUN_FORMAT:
            names |= set(run.get("files", [])) | {SIDECAR, FAILED_FILE}
            plan = run.get("plan")
    return names, plan


def _claim(out_dir: Path, planned: set[str], plan: str, overwrite: bool) -> set[str]:
    """Check what is in `out_dir` before writing; return our files of an earlier plan to remove.

    Refused, naming them: files in the way that we did not write (shard names without our claim or
    manifest, a `shards.json` or `failed.csv` of a folder we never wrote), and the finished shards
    of an earlier run of ours with another plan unless `overwrite` (an unfinished run is resumed,
    or replaced when its plan differs).
    """
    if not out_dir.exists():
        return set()
    if not out_dir.is_dir():
        raise ShardError(f"{out_dir} exists and is not a folder")
    ours, previous = _ours(out_dir)
    present = {
        p.name
        for p in out_dir.iterdir()
        if SHARD_NAME.fullmatch(p.name) or p.name in (SIDECAR, FAILED_FILE)
    }
    foreign = sorted(present - ours)
    if foreign:
        raise ShardError(
            f"{out_dir} holds files zoobot-data did not write there: {', '.join(foreign[:10])}"
            f"{' ...' if len(foreign) > 10 else ''}; move them away or write the shards to "
            "another folder"
        )
    finished = SIDECAR in present
    if finished and previous != plan and not overwrite:
        earlier = sorted(n for n in ours & present if SHARD_NAME.fullmatch(n))
        raise ShardError(
            f"{out_dir} holds the finished shards of an earlier run with other inputs (catalog, "
            f"labels, splits, shard size or seed): {', '.join(earlier[:5])}"
            f"{' ...' if len(earlier) > 5 else ''}; pass overwrite=True to replace them, or "
            "write to another folder"
        )
    return {n for n in ours & present if SHARD_NAME.fullmatch(n) and n not in planned}


def _remove_stale(out_dir: Path, stale: set[str]) -> None:
    """Delete our shards (and manifests) of an earlier plan and leftovers of killed runs."""
    manifests = out_dir / MANIFEST_DIR
    for name in sorted(stale):
        logger.info("removing %s (a shard of an earlier run)", out_dir / name)
        (out_dir / name).unlink(missing_ok=True)
        manifest_path(out_dir, name).unlink(missing_ok=True)
    folders = [out_dir, manifests] if manifests.is_dir() else [out_dir]
    for path in (p for folder in folders for p in folder.iterdir()):
        if _LEFTOVER.fullmatch(path.name) and path.is_file():
            path.unlink()


def _report_failures(out_dir: Path, failures: list[tuple]) -> None:
    """Write every unusable image to `failed.csv` and raise listing the first few."""
    failures = sorted(failures)
    table = pd.DataFrame(failures, columns=FAILED_COLUMNS)
    report = out_dir / FAILED_FILE
    atomic_write_text(report, table.to_csv(index=False))
    shown = "\n".join(f"  - {message}" for *_, message in failures[:MAX_FAILURES_SHOWN])
    more = len(failures) - MAX_FAILURES_SHOWN
    raise ShardError(
        f"{len(failures)} image(s) of the catalog cannot be used, listed in {report}; fix the "
        f"files or drop those rows, then rerun to finish (shards without them are kept):\n"
        f"{shown}" + (f"\n  ... and {more} more" if more > 0 else "")
    )


def _run(
    tasks: list[ShardTask], workers: int, total: int, progress: bool
) -> tuple[dict[str, dict], list[tuple]]:
    """Write every shard, in a process pool when workers > 1; ({file: manifest}, failures)."""
    results, skipped, failures = {}, 0, []
    with tqdm(total=total, unit="galaxy", desc="writing shards", disable=not progress) as bar:

        def done(result: tuple[dict | None, bool, list[tuple]]) -> None:
            nonlocal skipped
            record, was_skipped, failed = result
            failures.extend(failed)
            if record is not None:
                results[record["file"]] = record
                bar.update(record["count"])
            skipped += was_skipped

        if workers <= 1:
            for task in tasks:
                done(write_shard(task))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(write_shard, task) for task in tasks]
                try:
                    for future in as_completed(futures):
                        done(future.result())
                except BaseException:
                    # Shards already being written finish whole; the rest wait for a rerun.
                    for future in futures:
                        future.cancel()
                    raise
    if skipped:
        logger.info("resumed: %d of %d shards were already complete", skipped, len(tasks))
    return results, failures


def write_shards(
    catalog: pd.DataFrame,
    out_dir: str | os.PathLike,
    label_cols: Sequence[str] | None = None,
    schema: Schema | str | None = None,
    shard_size: int = 4096,
    splits: Splits = None,
    seed: int = 42,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Write `catalog` (id_str, file_loc, labels) as TFRecord shards plus a `shards.json` sidecar.

    One `tf.train.Example` per galaxy holds the image bytes as stored, their format, height, width
    and channels, `id_str` and one float per label column (`label_cols`, else the `schema`'s).
    `splits` is None (the catalog's `split` column, else 80/10/10), fractions such as
    `{"train": 0.8, "test": 0.2}` drawn with `seed`, or the name of a catalog column holding each
    row's split: `zoobot.data.splits.assign_splits`, so `to_hf_dataset` with the same catalog,
    splits and seed puts every galaxy in the same split. Rows are shuffled with `seed` within each
    split. Labels are checked by `zoobot.data.labels` (a schema's vote counts, else finite
    numbers) and images by `zoobot.data.images`' rules; an unusable image fails the run, listing
    every one (see the module docstring). Shards are written by `workers` processes (default: one
    per CPU); rerunning after an interruption keeps every finished shard. `overwrite` replaces the
    shards of an earlier run with other inputs; files zoobot-data did not write are never touched.
    Returns the sidecar.
    """
    if shard_size < 1:
        raise ShardError(f"shard_size must be at least 1, got {shard_size}")
    if workers is not None and workers < 1:
        raise ShardError(f"workers must be at least 1, got {workers}")
    if len(catalog) == 0:
        raise ShardError("the catalog is empty: there is nothing to shard")
    cols, schema_name = resolve_label_cols(label_cols, schema)
    rule = label_rule(cols, schema_name)
    ids, paths, labels = read_catalog(catalog, rule)
    splits = resolve_splits(catalog, splits)
    assignments = split_rows(catalog, ids, splits, seed)
    out_dir = Path(out_dir)
    tasks = plan_shards(str(out_dir), assignments, ids, paths, labels, cols, shard_size)
    settings = {"schema": schema_name, "splits": splits, "seed": seed, "rule": rule.kind}
    plan = _plan_digest(tasks, settings)
    planned = {task.file for task in tasks}
    stale = _claim(out_dir, planned, plan, overwrite)

    (out_dir / MANIFEST_DIR).mkdir(parents=True, exist_ok=True)
    run = {"format": RUN_FORMAT, "plan": plan, "files": sorted(planned)}
    atomic_write_text(out_dir / MANIFEST_DIR / RUN_FILE, json.dumps(run, indent=2) + "\n")
    # The sidecar marks a finished folder, so it goes first and comes back last.
    (out_dir / SIDECAR).unlink(missing_ok=True)
    _remove_stale(out_dir, stale)
    workers = min(workers or os.cpu_count() or 1, len(tasks))
    results, failures = _run(tasks, workers, len(catalog), progress)
    if failures:
        _report_failures(out_dir, failures)
    (out_dir / FAILED_FILE).unlink(missing_ok=True)

    split_entries = {name: {"count": len(rows), "shards": []} for name, rows in assignments.items()}
    label_check = {"kind": rule.kind}
    if rule.kind == "votes":
        label_check["max_votes"] = rule.max_votes
    for task in tasks:
        record = {k: v for k, v in results[task.file].items() if k != "plan_key"}
        split_entries[task.split]["shards"].append(record)
    sidecar = {
        "format_version": FORMAT_VERSION,
        "schema": schema_name,
        "label_cols": cols,
        "features": {**FIXED_FEATURES, **dict.fromkeys(cols, "float")},
        "label_rule": label_check,
        "split_seed": seed,
        "split_fractions": (
            {k: float(v) for k, v in splits.items()} if isinstance(splits, Mapping) else None
        ),
        "split_column": splits if isinstance(splits, str) else None,
        "shard_size": shard_size,
        "total_count": len(catalog),
        "splits": split_entries,
    }
    atomic_write_text(out_dir / SIDECAR, json.dumps(sidecar, indent=2) + "\n")
    return sidecar
