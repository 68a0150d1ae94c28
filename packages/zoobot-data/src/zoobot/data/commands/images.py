"""`zoobot-data convert`, `cutouts` and `survey`: make the JPEG/PNG images Zoobot trains on."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zoobot.data.commands.common import (
    add_catalog_input,
    add_subcommand,
    add_workers,
    load_input_catalog,
    positive_int,
    schema_type,
)

STRETCHES = ("asinh", "linear", "lupton")
CONVERTED_CATALOG = "catalog.csv"


def _hdu(text: str) -> int | str:
    """A FITS HDU by index (digits) or by name."""
    return int(text) if text.isdigit() else text


def run_convert(args: argparse.Namespace) -> int:
    """Convert every row's FITS/.npy file to JPEG/PNG and write the catalog of the images; exit
    code 1 if no input could be converted."""
    from zoobot.data.images import Stretch, convert_catalog
    from zoobot.data.images.convert import REPORT_NAME, claim_outputs, write_owned_text

    catalog = load_input_catalog(args)
    out_catalog = args.out_dir / CONVERTED_CATALOG
    claim_outputs(args.out_dir, [out_catalog])
    low, high = args.clip
    stretch = Stretch(method=args.stretch, low=low, high=high, softening=args.softening)
    result = convert_catalog(
        catalog,
        args.out_dir,
        image_format=args.format,
        bands=args.bands,
        stretch=stretch,
        size=args.size,
        quality=args.quality,
        hdu=args.hdu,
        workers=args.workers or 1,
        overwrite=args.overwrite,
        progress=args.progress,
    )
    status = result.pop("status")
    write_owned_text(args.out_dir, out_catalog, result[status != "failed"].to_csv(index=False))
    counts = status.value_counts()
    report = args.out_dir / REPORT_NAME
    print(
        f"{counts.get('converted', 0)} converted, {counts.get('existing', 0)} already there, "
        f"{counts.get('failed', 0)} failed (listed in {report})"
    )
    if len(status) and (status == "failed").all():
        print(f"zoobot-data convert: error: every input failed; see {report}", file=sys.stderr)
        return 1
    print(f"catalog of the images: {out_catalog}")
    return 0


def run_cutouts(args: argparse.Namespace) -> int:
    """Cut out the Hubble Deep Field's galaxies and write their catalog."""
    from zoobot.data.hubble_deep_field import CATALOG_NAME, hubble_deep_field_sample

    catalog = hubble_deep_field_sample(
        args.out_dir,
        size=args.size,
        threshold=args.threshold,
        min_area=args.min_area,
        max_sources=args.max_sources,
    )
    print(f"{len(catalog)} sources: {args.out_dir / CATALOG_NAME}, stamps in {args.out_dir}/images")
    return 0


def run_survey(args: argparse.Namespace) -> int:
    """Render a synthetic survey with simulated volunteer votes."""
    from zoobot.data.synthetic import make_survey

    catalog = make_survey(
        args.n,
        args.out_dir,
        schema=args.schema,
        image_size=args.image_size,
        seed=args.seed,
        workers=args.workers,
        progress=args.progress,
        quality=args.quality,
    )
    print(
        f"{len(catalog)} galaxies ({args.image_size} px, schema {args.schema.name!r}, seed "
        f"{args.seed}) in {args.out_dir}: catalog.parquet, catalog.csv, images/"
    )
    return 0


def _add_convert(commands: argparse._SubParsersAction) -> None:
    parser = add_subcommand(
        commands,
        "convert",
        "convert FITS cutouts or .npy arrays to 8-bit JPEG/PNG images",
        "Convert each catalog row's file_loc (a FITS image or g,r,z cube, or a .npy array) to an\n"
        "8-bit image OUT_DIR/<id_str>.jpg (or .png), stretched as astronomers do: arcsinh\n"
        "(default), linear percentile clipping, or Lupton RGB for g,r,z cubes. Runs in parallel\n"
        "and resumes: complete outputs of the same inputs and settings are kept. Unreadable inputs\n"
        "and inputs with no signal (all NaN or constant) are skipped and listed in\n"
        "OUT_DIR/conversion_failures.csv; the others convert (exit code 1 if none does). Writes\n"
        "OUT_DIR/catalog.csv, the input catalog with file_loc pointing at the images (input paths\n"
        "in source_loc). Files in OUT_DIR that convert did not write are never replaced.",
        "  zoobot-data convert cutouts.csv data/images --stretch lupton --size 224 --workers 4",
    )
    add_catalog_input(parser)
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder for the images")
    parser.add_argument(
        "--format", choices=("jpeg", "png"), default="jpeg", help="default: %(default)s"
    )
    parser.add_argument(
        "--bands",
        default="grz",
        help="band of each plane of a cube, in order (default: %(default)s)",
    )
    parser.add_argument(
        "--stretch", choices=STRETCHES, default="asinh", help="default: %(default)s"
    )
    parser.add_argument(
        "--softening",
        type=float,
        default=0.1,
        help="arcsinh softening: smaller lifts faint structure (default: %(default)s)",
    )
    parser.add_argument(
        "--clip",
        type=float,
        nargs=2,
        default=(0.5, 99.5),
        metavar=("LOW", "HIGH"),
        help="percentiles mapped to black and white (default: 0.5 99.5)",
    )
    parser.add_argument("--size", type=positive_int, help="resize to SIZE x SIZE pixels")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default: 90)")
    parser.add_argument("--hdu", type=_hdu, help="FITS HDU index or name (default: first image)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="convert again the outputs of an earlier run (of other inputs or settings)",
    )
    add_workers(parser, default="1")
    parser.set_defaults(run=run_convert)


def _add_cutouts(commands: argparse._SubParsersAction) -> None:
    parser = add_subcommand(
        commands,
        "cutouts",
        "cut out real galaxies from the Hubble Deep Field image in scikit-image",
        "Detect the sources in the Hubble Deep Field image that ships with scikit-image (with\n"
        "sep, SExtractor's algorithm) and cut each out as a square JPEG stamp: real galaxies for\n"
        "demos and tests. Writes OUT_DIR/images/hdf_NNNN.jpg (brightest first) and\n"
        "OUT_DIR/catalog.csv (id_str, file_loc, position, flux, shape). Deterministic.\n"
        "Needs the hubble extra: pip install 'zoobot-data[hubble]'.",
        "  zoobot-data cutouts data/hdf --size 128",
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder for the sample")
    parser.add_argument("--size", type=positive_int, default=128, help="stamp side in pixels")
    parser.add_argument(
        "--threshold", type=float, default=3.0, help="detection threshold in background RMS"
    )
    parser.add_argument(
        "--min-area", type=positive_int, default=50, help="smallest source in pixels"
    )
    parser.add_argument("--max-sources", type=positive_int, help="keep the brightest N sources")
    parser.set_defaults(run=run_cutouts)


def _add_survey(commands: argparse._SubParsersAction) -> None:
    parser = add_subcommand(
        commands,
        "survey",
        "make a synthetic Galaxy Zoo survey: rendered galaxies with simulated votes",
        "Render N galaxies with GalSim (bulges, disks, bars, spiral arms, rings, mergers, stars,\n"
        "a PSF and sky noise, in three bands) and simulate volunteers answering the --schema\n"
        "decision tree for each. Writes OUT_DIR/images/<id_str>.jpg, OUT_DIR/catalog.parquet and\n"
        "catalog.csv (the schema's vote counts plus the true parameters in true_* columns) and\n"
        "OUT_DIR/survey.json. The same seed gives the same survey; a rerun resumes.\n"
        "Needs the synthetic extra: pip install 'zoobot-data[synthetic]'.",
        "  zoobot-data survey 1000 data/survey --schema decals_dr5 --image-size 128 --seed 0",
    )
    parser.add_argument("n", type=int, metavar="N", help="number of galaxies")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder for the survey")
    parser.add_argument(
        "--schema",
        type=schema_type,
        default="decals_dr5",
        metavar="NAME",
        help="decision tree the volunteers answer (default: %(default)s)",
    )
    parser.add_argument(
        "--image-size", type=int, default=128, help="image side in pixels (default: 128)"
    )
    parser.add_argument("--seed", type=int, default=0, help="survey seed (default: 0)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default: 90)")
    add_workers(parser)
    parser.set_defaults(run=run_survey)


def register(commands: argparse._SubParsersAction) -> None:
    """Add `convert`, `cutouts` and `survey`."""
    _add_convert(commands)
    _add_cutouts(commands)
    _add_survey(commands)
