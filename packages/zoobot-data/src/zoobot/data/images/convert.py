"""Convert FITS cutouts and NumPy arrays to 8-bit JPEG/PNG images, one file or a whole catalog.

Outputs are written atomically (a reader sees no file or the whole file), so an interrupted run
leaves nothing half-written and a rerun converts only what is missing. In a catalog conversion an
unreadable input is skipped and listed, with its error, in a CSV report; the other rows convert.
An input that carries no signal (every pixel NaN, or all equal) is such a failure: it would make a
blank image, which `zoobot.data.images.read_image` refuses anyway.

Each image records where it came from (its JPEG comment or PNG text `zoobot-data`: the source
path, size and modification time, and a digest of the conversion settings), so a rerun keeps only
the outputs of the same inputs and settings, `overwrite` redoes only outputs convert wrote, and a
file in the way that convert did not write is never replaced. The CSVs convert writes are listed
in `OUT_DIR/.zoobot-convert.json` for the same reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from PIL import Image, PngImagePlugin
from tqdm.auto import tqdm

from zoobot.data.catalog import CatalogError, id_problems
from zoobot.data.images.stretch import Stretch
from zoobot.shared.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.fz")
FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
EXTENSIONS = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}
# The last bytes of a complete file: JPEG's end-of-image marker, PNG's IEND chunk with its CRC.
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
REPORT_NAME = "conversion_failures.csv"
OWNER_KEY = "zoobot-data"  # the PNG text key, and the JSON key of the JPEG comment
RECORD_NAME = ".zoobot-convert.json"  # the CSV files convert wrote in an output folder


class ConversionError(ValueError):
    """An input that cannot be read or converted; the message names the file and what was expected."""


def read_array(path: str | os.PathLike, hdu: int | str | None = None) -> np.ndarray:
    """Read a FITS image or cube, or a .npy array, as float32 (H, W) or (bands, H, W)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(FITS_SUFFIXES):
        data = _read_fits(path, hdu)
    elif name.endswith(".npy"):
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConversionError(f"{path}: cannot read NumPy array ({exc})") from exc
    else:
        raise ConversionError(
            f"{path}: unsupported input; expected FITS ({', '.join(FITS_SUFFIXES)}) or .npy"
        )
    if data.ndim not in (2, 3) or not np.issubdtype(data.dtype, np.number):
        raise ConversionError(
            f"{path}: expected a numeric 2-D image or 3-D cube (bands, height, width), "
            f"got {data.dtype} array of shape {data.shape}"
        )
    return data.astype(np.float32)


def _read_fits(path: Path, hdu: int | str | None) -> np.ndarray:
    """The image data of HDU `hdu`, or of the first HDU that holds an image when `hdu` is None."""
    try:
        with fits.open(path, memmap=False) as hdul:
            if hdu is not None:
                data = hdul[hdu].data
            else:
                data = next((h.data for h in hdul if h.is_image and h.data is not None), None)
            return _require_image(path, hdu, data)
    except ConversionError:
        raise
    except Exception as exc:  # astropy raises many types for damaged files; all mean "unreadable"
        raise ConversionError(
            f"{path}: cannot read FITS file ({type(exc).__name__}: {exc})"
        ) from exc


def _require_image(path: Path, hdu: int | str | None, data: np.ndarray | None) -> np.ndarray:
    if data is None:
        where = f"HDU {hdu!r}" if hdu is not None else "any HDU"
        raise ConversionError(f"{path}: no image data in {where}; expected a 2-D image or 3-D cube")
    return np.array(data)


def no_signal(array: np.ndarray) -> str | None:
    """Why an image or cube carries no signal (no finite pixel, or each band constant over its
    finite pixels), or None: such data would become a blank image."""
    data = np.asarray(array, dtype=np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        return "every pixel is NaN or infinite"
    planes = data.reshape(-1, *data.shape[-2:])
    for plane, ok in zip(planes, finite.reshape(planes.shape), strict=True):
        values = plane[ok]
        if values.size and values.min() != values.max():
            return None
    if data.ndim == 2:
        return f"every finite pixel is {data[finite][0]:g}"
    return "every band is constant over its finite pixels"


def array_to_image(
    array: np.ndarray,
    bands: str = "grz",
    stretch: Stretch | None = None,
    size: int | None = None,
) -> Image.Image:
    """Stretch a 2-D image (greyscale) or (bands, H, W) cube (RGB) to 8 bits and resize it.

    `bands` names the cube's planes in order; `stretch` defaults to `Stretch()` (arcsinh). `size`
    gives a size x size output, resized with Pillow's antialiased LANCZOS filter; None keeps the
    input's pixels. An array with no signal (`no_signal`), or whose stretch is blank (every pixel
    the same colour), raises `ConversionError`.
    """
    reason = no_signal(array)
    if reason is not None:
        raise ConversionError(f"no signal: {reason}")
    pixels = (stretch or Stretch()).apply(array, bands)
    if (pixels == pixels[0, 0]).all():
        raise ConversionError(
            f"no signal: the stretched image is blank (every pixel {pixels[0, 0].tolist()})"
        )
    image = Image.fromarray(pixels)
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return image


def write_image(
    image: Image.Image,
    destination: str | os.PathLike,
    quality: int = 90,
    provenance: dict | None = None,
) -> Path:
    """Encode `image` as JPEG or PNG (by the suffix of `destination`) and write it atomically;
    `provenance` (JSON) goes in the JPEG comment or PNG text `zoobot-data` (`provenance_of`)."""
    destination = Path(destination)
    fmt = FORMATS.get(destination.suffix.lower())
    if fmt is None:
        raise ConversionError(
            f"{destination}: unknown output suffix; expected one of {list(FORMATS)}"
        )
    options: dict = {"quality": quality} if fmt == "JPEG" else {}
    if provenance is not None:
        text = json.dumps({OWNER_KEY: provenance}, sort_keys=True)
        if fmt == "JPEG":
            options["comment"] = text.encode()
        else:
            options["pnginfo"] = PngImagePlugin.PngInfo()
            options["pnginfo"].add_text(OWNER_KEY, text)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    with atomic_path(destination) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return destination


def provenance_of(path: str | os.PathLike) -> dict | None:
    """What convert recorded in an image it wrote (source, size, mtime, settings), else None."""
    try:
        with Image.open(path) as image:
            text = image.info.get("comment") or image.info.get(OWNER_KEY)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    try:
        record = json.loads(text)[OWNER_KEY]
    except (TypeError, ValueError, KeyError):
        return None
    return record if isinstance(record, dict) else None


def _source_identity(source: str | os.PathLike) -> dict:
    """The source's path, size and modification time, as recorded in its output."""
    try:
        stat = os.stat(source)
    except OSError:
        return {"source": os.fspath(source)}
    return {"source": os.fspath(source), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def convert_file(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    bands: str = "grz",
    stretch: Stretch | None = None,
    size: int | None = None,
    quality: int = 90,
    hdu: int | str | None = None,
    settings: str | None = None,
) -> Path:
    """Convert one FITS or .npy file to an 8-bit JPEG/PNG; see `array_to_image` for the arguments.

    The output records its source (path, size, modification time) and `settings` (a digest of
    the conversion settings, for `convert_catalog` to tell whether a rerun may keep it).
    """
    identity = _source_identity(source)
    array = read_array(source, hdu)  # its errors name the file
    try:
        image = array_to_image(array, bands, stretch, size)
    except ValueError as exc:  # no signal, or a stretch that does not fit the bands or shape
        raise ConversionError(f"{source}: {exc}") from exc
    return write_image(image, destination, quality, {**identity, "settings": settings})


def is_complete(path: str | os.PathLike) -> bool:
    """Whether `path` is a whole JPEG or PNG: it exists and ends with the format's end marker."""
    path = Path(path)
    marker = END_MARKERS.get(FORMATS.get(path.suffix.lower(), ""))
    if marker is None or not path.is_file() or path.stat().st_size < len(marker):
        return False
    with path.open("rb") as f:
        f.seek(-len(marker), os.SEEK_END)
        return f.read() == marker


@dataclass(frozen=True)
class _Options:
    """The per-file conversion settings sent to each worker process."""

    bands: str
    stretch: Stretch | None
    size: int | None
    quality: int
    hdu: int | str | None

    def digest(self) -> str:
        """A short digest of the settings, recorded in every output."""
        settings = asdict(self)
        settings["stretch"] = asdict(self.stretch or Stretch())
        text = json.dumps(settings, sort_keys=True, default=str)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _convert_task(task: tuple[str, str, _Options]) -> str:
    """Convert one catalog row in a worker; return "" on success or the error that stopped it."""
    source, destination, options = task
    try:
        convert_file(
            source,
            destination,
            options.bands,
            options.stretch,
            options.size,
            options.quality,
            options.hdu,
            options.digest(),
        )
    except Exception as exc:  # any failure of one input is reported, never fatal to the others
        return f"{type(exc).__name__}: {exc}"
    return ""


def _check_ids(catalog: pd.DataFrame) -> None:
    """Ids become file names: valid catalog ids (`id_problems`) free of path separators."""
    problems = id_problems(catalog)
    ids = catalog["id_str"].astype(str)
    unsafe = [i for i in ids if i in (".", "..") or any(c in i for c in "/\\\0")]
    if unsafe:
        problems.append(f"id_str values cannot be used as file names: {unsafe[:5]}")
    if problems:
        raise CatalogError("cannot name the output images: " + "; ".join(problems), problems)


def _record(out_dir: Path) -> set[str]:
    """The names of the CSV files convert wrote in `out_dir`."""
    try:
        return set(json.loads((out_dir / RECORD_NAME).read_text(encoding="utf-8"))["written"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def claim_outputs(out_dir: str | os.PathLike, paths: Sequence[str | os.PathLike]) -> None:
    """Refuse (`ConversionError` naming them) files at `paths` that convert did not write in
    `out_dir` (per its record); the CSVs it writes there replace only its own."""
    out_dir = Path(out_dir)
    ours = _record(out_dir)
    foreign = [
        str(p)
        for p in map(Path, paths)
        if p.exists() and not (p.parent == out_dir and p.name in ours)
    ]
    if foreign:
        raise ConversionError(
            f"{', '.join(foreign)} exist(s) and convert did not write them; move them away or "
            "choose another output folder"
        )


def write_owned_text(out_dir: str | os.PathLike, path: str | os.PathLike, text: str) -> None:
    """Write a text file convert owns (after `claim_outputs`), recorded when in `out_dir`."""
    out_dir, path = Path(out_dir), Path(path)
    atomic_write_text(path, text)
    if path.parent == out_dir:
        written = sorted(_record(out_dir) | {path.name})
        atomic_write_text(out_dir / RECORD_NAME, json.dumps({"written": written}) + "\n")


def _existing(outputs: list[str], sources: list[str], digest: str, overwrite: bool) -> list[str]:
    """The status of each output before converting: "existing" (a complete output of the same
    source and settings, kept), "" (to convert). Refuses outputs in the way that convert did not
    write, and (unless `overwrite`) outputs of other sources or settings."""
    status, foreign, stale = [], [], []
    for output, source in zip(outputs, sources, strict=True):
        if not os.path.lexists(output):
            status.append("")
            continue
        record = provenance_of(output)
        if record is None:
            foreign.append(output)
            status.append("")
            continue
        same = record == {**_source_identity(source), "settings": digest}
        if same and is_complete(output) and not overwrite:
            status.append("existing")
        else:
            if not same and not overwrite:
                stale.append(output)
            status.append("")
    if foreign:
        raise ConversionError(
            f"{len(foreign)} output(s) exist that convert did not write, e.g. {foreign[0]}; "
            "move them away or choose another output folder"
        )
    if stale:
        raise ConversionError(
            f"{len(stale)} output(s) were converted from other inputs or settings, e.g. "
            f"{stale[0]}; pass overwrite=True to convert them again"
        )
    return status


def convert_catalog(
    catalog: pd.DataFrame,
    out_dir: str | os.PathLike,
    image_format: str = "jpeg",
    bands: str = "grz",
    stretch: Stretch | None = None,
    size: int | None = None,
    quality: int = 90,
    hdu: int | str | None = None,
    workers: int = 1,
    overwrite: bool = False,
    report: str | os.PathLike | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Convert each row's `file_loc` (FITS or .npy) to `out_dir/<id_str>.jpg|.png`, in parallel.

    Outputs already present, complete and converted from the same inputs with the same settings
    are kept (resume) unless `overwrite`; outputs of other inputs or settings need `overwrite`, and
    files convert did not write are refused (see the module docstring). Returns a copy of the
    catalog with `file_loc` set to the output (None where conversion failed), the input path in
    `source_loc` and `status` ("converted", "existing" or "failed"). Failed rows are listed with
    their error in `report` (default `out_dir/conversion_failures.csv`, rewritten on every run).
    """
    missing = {"id_str", "file_loc"} - set(catalog.columns)
    if missing:
        raise ValueError(f"the catalog needs columns {sorted(missing)}; it has {list(catalog)}")
    ext = EXTENSIONS.get(image_format.lower())
    if ext is None:
        raise ValueError(f"image_format must be one of {sorted(EXTENSIONS)}, got {image_format!r}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    _check_ids(catalog)
    ids = catalog["id_str"].astype(str)
    out_dir = Path(out_dir)
    report = Path(report) if report is not None else out_dir / REPORT_NAME
    claim_outputs(out_dir, [report])
    options = _Options(bands, stretch, size, quality, hdu)
    sources = catalog["file_loc"].astype(str).tolist()
    outputs = [str(out_dir / f"{i}{ext}") for i in ids]
    status = _existing(outputs, sources, options.digest(), overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    errors = [""] * len(outputs)
    todo = [n for n, s in enumerate(status) if not s]
    tasks = [(sources[n], outputs[n], options) for n in todo]
    for n, error in zip(todo, _run(tasks, workers, progress), strict=True):
        status[n], errors[n] = ("failed", error) if error else ("converted", "")

    result = catalog.copy()
    result["source_loc"] = sources
    result["file_loc"] = [
        o if s != "failed" else None for o, s in zip(outputs, status, strict=True)
    ]
    result["status"] = status
    failures = pd.DataFrame(
        [(ids.iloc[n], sources[n], errors[n]) for n in range(len(status)) if status[n] == "failed"],
        columns=["id_str", "source", "error"],
    )
    write_owned_text(out_dir, report, failures.to_csv(index=False))
    if len(failures):
        log.warning("%d of %d inputs failed; see %s", len(failures), len(sources), report)
    return result


def _run(tasks: list, workers: int, progress: bool) -> Iterable[str]:
    """Yield each task's error ("" for success) in order, with a progress bar over the tasks."""
    bar = tqdm(total=len(tasks), desc="converting", unit="image", disable=not progress)
    with bar:
        if workers == 1 or len(tasks) <= 1:
            results = map(_convert_task, tasks)
            yield from _counted(results, bar)
            return
        chunksize = max(1, min(64, len(tasks) // (workers * 8)))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            yield from _counted(pool.map(_convert_task, tasks, chunksize=chunksize), bar)


def _counted(results: Iterable[str], bar: tqdm) -> Iterable[str]:
    """Pass results through, advancing the progress bar and counting failures on it."""
    failed = 0
    for error in results:
        failed += bool(error)
        bar.update(1)
        bar.set_postfix(failed=failed, refresh=False)
        yield error
