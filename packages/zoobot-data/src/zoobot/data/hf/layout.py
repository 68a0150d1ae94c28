"""Save a `DatasetDict` exactly as the Hub serves a dataset repo: `data/*.parquet` plus `README.md`.

The folder is written beside its final name and renamed into place when whole, so a crash leaves
either the previous folder or the new one, never a half-written dataset under the final name.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path

from datasets import Dataset, DatasetDict, Image, SplitInfo
from datasets.table import embed_table_storage

from zoobot.data.hf.card import CARD_FILE, DATA_DIR, build_card, read_card
from zoobot.data.hf.errors import HubDatasetError
from zoobot.data.splits import SPLIT_NAME
from zoobot.shared import Schema, as_schema

# datasets' own default for push_to_hub: big enough for few files, small enough to stream.
DEFAULT_MAX_SHARD_SIZE = 500_000_000
SHARD_NAME = re.compile(
    rf"(?P<split>{SPLIT_NAME.pattern})-(?P<index>\d{{5}})-of-(?P<count>\d{{5}})\.parquet"
)


def shard_path(split: str, index: int, count: int) -> str:
    """`data/train-00000-of-00001.parquet`: the path in the repo, as `push_to_hub` names shards."""
    return f"{DATA_DIR}/{split}-{index:05d}-of-{count:05d}.parquet"


def layout_files(folder: str | os.PathLike) -> list[Path]:
    """The files of a Hub-layout folder, card first then shards; raises if it is not one."""
    folder = Path(folder)
    card = folder / CARD_FILE
    shards = sorted((folder / DATA_DIR).glob("*.parquet"))
    if not card.is_file() or not shards:
        raise HubDatasetError(
            f"{folder} is not a Hub-layout dataset folder (it needs {CARD_FILE} and "
            f"{DATA_DIR}/*.parquet; write one with save_hub_layout)"
        )
    odd = [p.name for p in shards if not SHARD_NAME.fullmatch(p.name)]
    if odd:
        raise HubDatasetError(f"{folder / DATA_DIR} holds files not named like shards: {odd}")
    return [card, *shards]


def _check_dataset(dataset: DatasetDict, schema: Schema) -> None:
    """Refuse datasets the Hub layout or the card cannot describe, before writing anything."""
    if not isinstance(dataset, DatasetDict) or not dataset:
        raise HubDatasetError("save a non-empty datasets.DatasetDict (see to_hf_dataset)")
    for name, split in dataset.items():
        if not SPLIT_NAME.fullmatch(name):
            raise HubDatasetError(f"split name {name!r} must be letters, digits or '_'")
        missing = [c for c in ("id_str", "image", *schema.label_cols) if c not in split.features]
        if missing:
            raise HubDatasetError(f"split {name!r} lacks column(s) {missing}")
        if not isinstance(split.features["image"], Image):
            raise HubDatasetError(f"split {name!r}: column 'image' is not a datasets.Image feature")
    first = next(iter(dataset.values())).features
    if any(split.features != first for split in dataset.values()):
        raise HubDatasetError("every split must have the same features")


def _write_split(
    split: Dataset, name: str, root: Path, max_shard_size: int
) -> tuple[SplitInfo, int]:
    """Write one split's parquet shards; return its `SplitInfo` and the bytes written."""
    # Arrow size of the rows this split selects (a split may view part of a bigger table).
    num_bytes = split.data.nbytes * len(split) // max(1, len(split.data))
    count = min(max(1, math.ceil(num_bytes / max_shard_size)), max(1, len(split)))
    written = 0
    for index in range(count):
        shard = split.shard(num_shards=count, index=index, contiguous=True)
        # Images referenced by local path get their bytes embedded, as push_to_hub does.
        shard = shard.with_format("arrow").map(
            embed_table_storage, batched=True, keep_in_memory=True
        )
        path = root / shard_path(name, index, count)
        shard.to_parquet(path)
        written += path.stat().st_size
    return SplitInfo(name=name, num_bytes=num_bytes, num_examples=len(split)), written


def _is_replaceable(folder: Path) -> bool:
    """Only a Hub layout zoobot-data wrote (its card carries our `zoobot` key, and the folder
    holds nothing but the card and shards), or an empty folder, is ever deleted for a new one."""
    names = {p.name for p in folder.iterdir()}
    if not names:
        return True
    if not names <= {CARD_FILE, DATA_DIR, ".gitattributes"}:
        return False
    data = folder / DATA_DIR
    if data.exists() and not all(SHARD_NAME.fullmatch(p.name) for p in data.iterdir()):
        return False
    try:
        card = read_card(folder)
    except (OSError, ValueError):  # an unreadable card is not one of ours
        return False
    return card is not None and "zoobot" in card.data.to_dict()


def _sibling(folder: Path, suffix: str) -> Path:
    # A new hidden folder beside `folder` (same filesystem, so renames are atomic), with the umask's
    # permissions rather than mkdtemp's owner-only ones, since it becomes the published folder.
    path = folder.parent / f".{folder.name}.{secrets.token_hex(6)}{suffix}"
    path.mkdir()
    return path


def _move_into_place(tmp: Path, folder: Path) -> None:
    """Rename the finished folder over `folder`, restoring the old one if the rename fails."""
    if not folder.exists():
        os.replace(tmp, folder)
        return
    old = _sibling(folder, ".old")
    os.replace(folder, old / folder.name)
    try:
        os.replace(tmp, folder)
    except BaseException:
        os.replace(old / folder.name, folder)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def save_hub_layout(
    dataset: DatasetDict,
    folder: str | os.PathLike,
    schema: Schema | str,
    card: Mapping | None = None,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
) -> Path:
    """Write `dataset` to `folder` as the Hub serves it; `datasets.load_dataset(folder)` reads it back.

    `card` adds `license` (an SPDX-style Hub id such as `cc-by-4.0`; default `unknown`), `citation`
    (BibTeX, after the Galaxy Zoo release's), `description`, `pretty_name` and `tags`. Splits larger
    than `max_shard_size` bytes are cut into several parquet shards. `overwrite` replaces an earlier
    Hub-layout folder written by zoobot-data; any other existing folder is left alone and an error
    raised.
    """
    schema = as_schema(schema)
    _check_dataset(dataset, schema)
    if max_shard_size <= 0:
        raise HubDatasetError(
            f"max_shard_size must be a positive number of bytes, got {max_shard_size}"
        )
    folder = Path(folder)
    if folder.exists():
        if not overwrite:
            raise FileExistsError(f"{folder} exists; pass overwrite=True to replace it")
        if not folder.is_dir() or not _is_replaceable(folder):
            raise HubDatasetError(
                f"{folder} exists and is not a Hub-layout dataset folder written by zoobot-data; "
                "refusing to replace it (move it away or choose another folder)"
            )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(folder, ".part")
    try:
        (tmp / DATA_DIR).mkdir()
        splits, download_size = [], 0
        for name, split in dataset.items():
            info, size = _write_split(split, name, tmp, max_shard_size)
            splits.append(info)
            download_size += size
        features = next(iter(dataset.values())).features
        text = str(build_card(schema, features, splits, download_size, card))
        (tmp / CARD_FILE).write_text(text, encoding="utf-8")
        _move_into_place(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
