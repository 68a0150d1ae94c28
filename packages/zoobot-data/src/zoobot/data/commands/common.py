"""Argument types and option groups shared by the `zoobot-data` subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from zoobot.shared import Schema, get_schema, list_schemas


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and examples; wraps option help as usual."""


def as_flags(message: str, flags: Mapping[str, str]) -> str:
    """A library message for the command line: each Python spelling of an option in `flags`
    (`overwrite=True`) replaced by its flag (`--overwrite`). The library's messages name the
    Python arguments, which the commands share; users of a command need its flags."""
    for python, flag in flags.items():
        message = message.replace(python, flag)
    return message


def schema_type(name: str) -> Schema:
    """A registered schema by name, or a usage error listing the registered ones."""
    if name not in list_schemas():
        raise argparse.ArgumentTypeError(
            f"unknown schema {name!r}; registered: {', '.join(sorted(list_schemas()))}"
        )
    return get_schema(name)


def fractions_type(text: str) -> dict[str, float]:
    """`train=0.8,validation=0.1,test=0.1` as `{split: fraction}` (checked further by the library)."""
    fractions: dict[str, float] = {}
    for pair in text.split(","):
        name, sep, value = (part.strip() for part in pair.partition("="))
        try:
            fraction = float(value)
        except ValueError:
            fraction = None
        if not sep or not name or fraction is None or name in fractions:
            raise argparse.ArgumentTypeError(
                f"expected distinct name=fraction pairs joined by commas, e.g. "
                f"train=0.8,validation=0.1,test=0.1; got {text!r}"
            )
        fractions[name] = fraction
    return fractions


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def add_subcommand(
    commands: argparse._SubParsersAction, name: str, summary: str, description: str, example: str
) -> argparse.ArgumentParser:
    """A subcommand whose --help gives `description` and then `example`."""
    return commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"example:\n{example}",
        formatter_class=HelpFormatter,
    )


def add_catalog_input(parser: argparse.ArgumentParser) -> None:
    """CATALOG (a file or a registered data set) and --root."""
    parser.add_argument(
        "catalog",
        metavar="CATALOG",
        help="catalog file (.csv, .tsv or .parquet with id_str and file_loc columns), or the name "
        "of a registered data set downloaded into --root",
    )
    parser.add_argument(
        "--root",
        type=Path,
        metavar="DIR",
        help="folder a registered data set was downloaded into; for a file, relative file_loc "
        "paths are resolved against it (default: the catalog file's folder)",
    )


def load_input_catalog(
    args: argparse.Namespace, schema: Schema | None = None, check_files: bool = False
) -> pd.DataFrame:
    """The CATALOG of `args`, loaded and validated by `zoobot.data.catalog.load_catalog`."""
    from zoobot.data.catalog import load_catalog

    return load_catalog(args.catalog, args.root, schema=schema, check_files=check_files)


def add_split_options(parser: argparse.ArgumentParser) -> None:
    """--splits / --split-column and --seed, the arguments of `splits.assign_splits`."""
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument(
        "--splits",
        type=fractions_type,
        metavar="NAME=FRACTION,...",
        help="split the galaxies by these fractions, drawn with --seed from the ids (not the row "
        "order), e.g. train=0.7,validation=0.15,test=0.15 (default: the catalog's split column "
        "if it has one, else train=0.8,validation=0.1,test=0.1)",
    )
    choice.add_argument(
        "--split-column",
        metavar="COLUMN",
        help="take each galaxy's split from this catalog column",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="seed of the split (default: %(default)s); shards and Hugging Face datasets of the "
        "same catalog, splits and seed hold the same galaxies in each split",
    )


def splits_of(args: argparse.Namespace) -> str | dict[str, float] | None:
    """The `splits` argument of the library: a column name, fractions, or None for the default."""
    return args.split_column if args.split_column is not None else args.splits


def add_workers(parser: argparse.ArgumentParser, default: str = "one per CPU") -> None:
    """--workers and --no-progress."""
    parser.add_argument(
        "--workers", type=positive_int, help=f"worker processes (default: {default})"
    )
    add_no_progress(parser)


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    """--no-progress."""
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="do not show progress bars",
    )
