"""`zoobot-data shards`, `verify-shards`, `hf-dataset` and `publish`: catalogs ready for training."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from zoobot.data.commands.common import (
    add_catalog_input,
    add_no_progress,
    add_split_options,
    add_subcommand,
    add_workers,
    load_input_catalog,
    positive_int,
    schema_type,
    splits_of,
)

if TYPE_CHECKING:
    from datasets import DatasetDict

SPLITS_NOTE = (
    "Splits come from --split-column, or --splits fractions drawn with --seed from the ids, or by\n"
    "default the catalog's split column if it has one, else 80/10/10 train/validation/test:\n"
    "the same rule for shards and Hugging Face datasets, so both hold the same galaxies per split."
)


def _split_counts(counts: dict[str, int]) -> str:
    """`train 80, validation 10, test 10`."""
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def run_shards(args: argparse.Namespace) -> int:
    """Write the catalog as TFRecord shards with their `shards.json` sidecar."""
    from zoobot.data.shards import write_shards

    catalog = load_input_catalog(args)
    sidecar = write_shards(
        catalog,
        args.out_dir,
        schema=args.schema,
        shard_size=args.shard_size,
        splits=splits_of(args),
        seed=args.seed,
        workers=args.workers,
        progress=args.progress,
        overwrite=args.overwrite,
    )
    splits = sidecar["splits"]
    shards = sum(len(entry["shards"]) for entry in splits.values())
    counts = _split_counts({name: entry["count"] for name, entry in splits.items()})
    print(f"{sidecar['total_count']} galaxies in {shards} shards in {args.out_dir}: {counts}")
    labels = sidecar["label_cols"]
    print(
        f"labels: {len(labels)} columns of schema {sidecar['schema']!r}" if labels else "no labels"
    )
    return 0


def run_verify_shards(args: argparse.Namespace) -> int:
    """Re-read every record of a shard folder and check it against the sidecar."""
    from zoobot.data.shards import verify_shards

    summary = verify_shards(args.shard_dir)
    print(
        f"{args.shard_dir}: OK, {summary['records']} records in {summary['shards']} shards "
        f"({summary['bytes']:,} bytes): {_split_counts(summary['splits'])}"
    )
    return 0


@contextlib.contextmanager
def _built_dataset(args: argparse.Namespace, cache_parent: Path | None) -> Iterator[DatasetDict]:
    """The catalog's `DatasetDict`, its Arrow cache in a temporary folder removed afterwards."""
    import datasets

    from zoobot.data.hf import to_hf_dataset

    if not args.progress:
        datasets.disable_progress_bars()
    catalog = load_input_catalog(args)
    with tempfile.TemporaryDirectory(prefix=".zoobot-data-cache-", dir=cache_parent) as cache:
        yield to_hf_dataset(
            catalog,
            args.schema,
            splits=splits_of(args),
            seed=args.seed,
            extra_columns=args.extra_columns,
            cache_dir=cache,
        )


def run_hf_dataset(args: argparse.Namespace) -> int:
    """Build a Hugging Face dataset from the catalog and save it in the Hub layout."""
    from zoobot.data.hf import save_hub_layout

    folder = args.out_folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _built_dataset(args, folder.parent) as dataset:
        save_hub_layout(
            dataset, folder, args.schema, card={"license": args.license}, overwrite=args.overwrite
        )
        counts = _split_counts({name: len(split) for name, split in dataset.items()})
    print(f"saved {folder}: {counts}; load it with datasets.load_dataset({str(folder)!r})")
    return 0


def run_publish(args: argparse.Namespace) -> int:
    """Publish a Hub-layout folder, or a catalog built into one, in one commit."""
    from zoobot.data.hf import publish

    options = {"private": args.private, "revision": args.revision, "dry_run": args.dry_run}
    if Path(args.catalog).is_dir():
        if args.schema is not None:
            args.parser.error(
                "--schema builds a dataset from a catalog; a folder is published as is"
            )
        result = publish(args.catalog, args.repo_id, **options)
    else:
        if args.schema is None:
            args.parser.error("publishing a catalog needs --schema NAME to build its dataset")
        with _built_dataset(args, None) as dataset:
            card = {"license": args.license}
            result = publish(dataset, args.repo_id, schema=args.schema, card=card, **options)
    if not args.dry_run:
        print(
            f"published {len(result.files)} files to datasets/{args.repo_id}: {result.commit_url}"
        )
    return 0


def _add_dataset_options(parser: argparse.ArgumentParser) -> None:
    """Splits, extra columns and the card's license, for building a Hugging Face dataset."""
    add_split_options(parser)
    parser.add_argument(
        "--extra-columns",
        type=lambda text: [c for c in text.split(",") if c],
        default=[],
        metavar="COL,...",
        help="catalog columns to carry over unchanged, e.g. ra,dec",
    )
    parser.add_argument(
        "--license", default="unknown", help="license id for the dataset card, e.g. cc-by-4.0"
    )
    add_no_progress(parser)


def _add_shards(commands: argparse._SubParsersAction) -> None:
    parser = add_subcommand(
        commands,
        "shards",
        "write a catalog as TFRecord shards (no TensorFlow needed)",
        "Write one tf.train.Example per galaxy (the image bytes as stored, format, height, width,\n"
        "channels, id_str and one float per label column of --schema) into OUT_DIR/<split>-NNNNN-\n"
        "of-NNNNN.tfrecord, plus OUT_DIR/shards.json (label columns, schema, counts, checksums,\n"
        "split seed). Shards are written in parallel, each atomically: rerun after an interruption\n"
        "to resume. Rows are shuffled within each split. Every image is checked (JPEG or PNG by\n"
        "content, decodable, not blank): unusable ones fail the run, listed in OUT_DIR/failed.csv.\n"
        "Files in OUT_DIR that zoobot-data did not write are never touched.\n"
        f"{SPLITS_NOTE}",
        "  zoobot-data shards data/survey/catalog.parquet data/shards --schema decals_dr5 \\\n"
        "      --shard-size 4096 --splits train=0.8,validation=0.1,test=0.1 --seed 42",
    )
    add_catalog_input(parser)
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder for the shards")
    parser.add_argument(
        "--schema",
        type=schema_type,
        metavar="NAME",
        help="schema whose label columns to store (omit to store no labels, e.g. galaxies to "
        "predict on)",
    )
    parser.add_argument(
        "--shard-size",
        type=positive_int,
        default=4096,
        help="galaxies per shard at most (default: %(default)s)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the finished shards of an earlier run with other inputs in OUT_DIR",
    )
    add_split_options(parser)
    add_workers(parser)
    parser.set_defaults(run=run_shards)

    parser = add_subcommand(
        commands,
        "verify-shards",
        "re-read a shard folder and check every record against its sidecar",
        "Re-read every record of every shard in DIR, checking its CRCs, that it parses as a\n"
        "tf.train.Example with the sidecar's features, and each shard's count and sha256. Prints\n"
        "a summary, or names the first damaged shard and record and exits 1.",
        "  zoobot-data verify-shards data/shards",
    )
    parser.add_argument("shard_dir", type=Path, metavar="DIR", help="folder written by `shards`")
    parser.set_defaults(run=run_verify_shards)


def _add_hf(commands: argparse._SubParsersAction) -> None:
    parser = add_subcommand(
        commands,
        "hf-dataset",
        "build a Hugging Face dataset from a catalog and save it in the Hub layout",
        "Build a datasets.DatasetDict (an image feature with the bytes as stored, id_str, the\n"
        "vote counts of --schema with their totals and fractions) and save it in OUT_FOLDER as\n"
        "the Hub serves a dataset repo: data/<split>-NNNNN-of-NNNNN.parquet and a README.md card\n"
        "(schema, label columns, license, citation). datasets.load_dataset(OUT_FOLDER) reads it\n"
        f"back; `zoobot-data publish` uploads it.\n{SPLITS_NOTE}",
        "  zoobot-data hf-dataset data/survey/catalog.parquet data/hub --schema decals_dr5 \\\n"
        "      --license cc-by-4.0",
    )
    add_catalog_input(parser)
    parser.add_argument(
        "out_folder", type=Path, metavar="OUT_FOLDER", help="folder for the dataset"
    )
    parser.add_argument(
        "--schema", type=schema_type, required=True, metavar="NAME", help="the catalog's schema"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier dataset in OUT_FOLDER"
    )
    _add_dataset_options(parser)
    parser.set_defaults(run=run_hf_dataset)

    parser = add_subcommand(
        commands,
        "publish",
        "upload a Hub-layout dataset (or a catalog, built first) to the Hugging Face Hub",
        "Upload a folder written by `hf-dataset` to the Hugging Face dataset repo REPO_ID in one\n"
        "commit (creating the repo, and --revision branch, if needed), so a revision is never\n"
        "half uploaded. Given a catalog and --schema instead, builds the dataset first (the\n"
        "options below as for hf-dataset). --dry-run lists the files without network access.\n"
        "Needs a login (`hf auth login` or HF_TOKEN); fails with a clear message when offline.",
        "  zoobot-data publish data/hub my-name/synthetic-galaxy-zoo --private --dry-run",
    )
    parser.add_argument(
        "catalog",
        metavar="FOLDER_OR_CATALOG",
        help="Hub-layout folder, or catalog file / registered data set to build one from",
    )
    parser.add_argument("repo_id", metavar="REPO_ID", help="dataset repo, e.g. owner/name")
    parser.add_argument("--root", type=Path, metavar="DIR", help="as for hf-dataset, when building")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", help="branch to commit to (default: main)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded")
    parser.add_argument(
        "--schema", type=schema_type, metavar="NAME", help="the catalog's schema, when building"
    )
    _add_dataset_options(parser)
    parser.set_defaults(run=run_publish, parser=parser)


def register(commands: argparse._SubParsersAction) -> None:
    """Add `shards`, `verify-shards`, `hf-dataset` and `publish`."""
    _add_shards(commands)
    _add_hf(commands)
