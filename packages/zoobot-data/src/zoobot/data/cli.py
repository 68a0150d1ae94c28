"""The `zoobot-data` command: download, validate, convert, make and publish galaxy data sets.

Each subcommand parses its arguments and calls one library function (see `zoobot.data.commands`).
Errors the library reports about inputs, files or the network are printed as one message on stderr
with exit code 1 (2 for a bad command line), not a traceback; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from zoobot.data.commands import catalogs, datasets, images
from zoobot.data.commands.common import HelpFormatter, as_flags

DESCRIPTION = """\
The framework-free data tools of Zoobot: get a Galaxy Zoo catalog, check it, turn survey cutouts
into images, and write the TFRecord shards and Hugging Face datasets Zoobot trains on.
Run `zoobot-data COMMAND --help` for what each command reads, writes and an example.
"""

# How the library's messages name options, and the flags of this command that set them.
FLAGS = {"overwrite=True": "--overwrite", "workers=": "--workers "}

EPILOG = """\
a typical run on the embedded synthetic survey:
  zoobot-data survey 1000 data/survey --image-size 128
  zoobot-data validate data/survey/catalog.parquet --schema decals_dr5 --check-files
  zoobot-data shards data/survey/catalog.parquet data/shards --schema decals_dr5
  zoobot-data hf-dataset data/survey/catalog.parquet data/hub --schema decals_dr5
  zoobot-data publish data/hub my-name/synthetic-galaxy-zoo --dry-run
"""


def build_parser() -> argparse.ArgumentParser:
    """The `zoobot-data` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="zoobot-data", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback when a command fails"
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True
    for group in (catalogs, images, datasets):
        group.register(commands)
    return parser


def _is_reported(err: Exception) -> bool:
    """Whether `err` is a failure to report in one message rather than a bug to trace back.

    Bad inputs and files raise `ValueError` (every zoobot catalog, shard, dataset and schema
    error is one) or `OSError`; a missing optional dependency raises `ImportError`; the
    download and publish errors are zoobot's own `RuntimeError`s.
    """
    return isinstance(err, (ValueError, OSError, ImportError)) or type(err).__module__.startswith(
        "zoobot."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run `zoobot-data` with `argv` (default: the command line); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"zoobot-data {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug or not _is_reported(err):
            raise
        message = as_flags(str(err), FLAGS)
        print(f"zoobot-data {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
