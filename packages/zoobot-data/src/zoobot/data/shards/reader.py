"""Read and verify shard folders in pure Python, for inspection and tests (zoobot.tf uses tf.data)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

from google.protobuf.message import DecodeError

from zoobot.data.images.headers import sniff_format
from zoobot.data.shards.errors import CorruptShardError, ShardError
from zoobot.data.shards.example import FIXED_FEATURES, decode_example
from zoobot.data.shards.layout import SHARD_NAME, load_sidecar
from zoobot.data.shards.tfrecord import read_records
from zoobot.shared.io import file_digest


def _shards(sidecar: dict, split: str | None) -> Iterator[tuple[str, dict]]:
    if split is not None and split not in sidecar["splits"]:
        raise ShardError(f"no split {split!r}; the shards hold {list(sidecar['splits'])}")
    for name, entry in sidecar["splits"].items():
        if split is None or name == split:
            for shard in entry["shards"]:
                yield name, shard


def _galaxy(data: bytes, label_cols: list[str], split: str, where: str) -> dict:
    """One record as a dict, after checking it holds exactly the features the sidecar promises."""
    try:
        features = decode_example(data)
    except DecodeError as err:
        raise CorruptShardError(f"{where}: not a tf.train.Example: {err}") from err
    expected = {**FIXED_FEATURES, **dict.fromkeys(label_cols, "float")}
    if features.keys() != expected.keys():
        missing = sorted(expected.keys() - features.keys())
        extra = sorted(features.keys() - expected.keys())
        raise CorruptShardError(f"{where}: features missing {missing}, unexpected {extra}")
    for name, kind in expected.items():
        if features[name][0] != kind or len(features[name][1]) != 1:
            raise CorruptShardError(f"{where}: feature {name!r} is not one {kind} value")
    value = {name: values[0] for name, (_, values) in features.items()}
    image_format = value["format"].decode()
    if sniff_format(value["image"]) != image_format:
        raise CorruptShardError(f"{where}: image bytes are not {image_format!r} as recorded")
    bad = [col for col in label_cols if not math.isfinite(value[col])]
    if bad:
        raise CorruptShardError(
            f"{where}: label(s) {', '.join(f'{c}={value[c]}' for c in bad)} are not finite"
        )
    return {
        "id_str": value["id_str"].decode("utf-8"),
        "image": value["image"],
        "format": image_format,
        "height": value["height"],
        "width": value["width"],
        "channels": value["channels"],
        "labels": {col: value[col] for col in label_cols},
        "split": split,
    }


def read_shards(shard_dir: str | os.PathLike, split: str | None = None) -> Iterator[dict]:
    """Yield every galaxy (id_str, image bytes, format, height, width, channels, labels, split)."""
    shard_dir = Path(shard_dir)
    sidecar = load_sidecar(shard_dir)
    for split_name, shard in _shards(sidecar, split):
        for index, data in enumerate(read_records(shard_dir / shard["file"])):
            where = f"{shard['file']}: record {index}"
            yield _galaxy(data, sidecar["label_cols"], split_name, where)


def verify_shards(shard_dir: str | os.PathLike) -> dict:
    """Re-read every record and CRC, and check counts, checksums and features against the sidecar."""
    shard_dir = Path(shard_dir)
    sidecar = load_sidecar(shard_dir)
    label_cols = sidecar["label_cols"]
    if sidecar["features"] != {**FIXED_FEATURES, **dict.fromkeys(label_cols, "float")}:
        raise ShardError(f"{shard_dir}: the sidecar's features and label_cols disagree")
    counts, listed, total_bytes = {}, set(), 0
    for split, shard in _shards(sidecar, None):
        path = shard_dir / shard["file"]
        if not path.is_file():
            raise ShardError(f"{shard['file']} is listed in the sidecar but missing")
        listed.add(shard["file"])
        n = 0
        for n, data in enumerate(read_records(path), start=1):
            _galaxy(data, label_cols, split, f"{shard['file']}: record {n - 1}")
        if n != shard["count"]:
            raise CorruptShardError(
                f"{shard['file']}: {n} records, the sidecar says {shard['count']}"
            )
        if file_digest(path) != shard["sha256"]:
            raise CorruptShardError(f"{shard['file']}: sha256 differs from the sidecar's")
        counts[split] = counts.get(split, 0) + n
        total_bytes += path.stat().st_size
    for split, entry in sidecar["splits"].items():
        if counts.get(split, 0) != entry["count"]:
            raise ShardError(
                f"split {split!r}: shards hold {counts.get(split, 0)}, sidecar says {entry['count']}"
            )
    if sum(counts.values()) != sidecar["total_count"]:
        raise ShardError(
            f"shards hold {sum(counts.values())}, sidecar says {sidecar['total_count']}"
        )
    unlisted = sorted(
        p.name for p in shard_dir.iterdir() if SHARD_NAME.fullmatch(p.name) and p.name not in listed
    )
    if unlisted:
        raise ShardError(f"shard files not in the sidecar: {unlisted}")
    return {
        "splits": {split: entry["count"] for split, entry in sidecar["splits"].items()},
        "shards": len(listed),
        "records": sidecar["total_count"],
        "bytes": total_bytes,
        "label_cols": label_cols,
        "schema": sidecar["schema"],
    }
