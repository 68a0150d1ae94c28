"""The files of a Zoobot model folder (DESIGN.md contract 3), the same for every framework.

A folder (or Hub repo) holds `config.json` and `model.safetensors` for the encoder exactly as timm
writes them; a task model adds `head.safetensors` (the head's tensors in PyTorch names and layouts),
its task config under `config["zoobot"]`, and a `README.md` model card. Here: the file names, the
checks a config and a set of tensors must pass, atomic folder writes, and the card.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
from safetensors import SafetensorError

from zoobot.shared.schema import Schema

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
LEGACY_NAME = "pytorch_model.bin"
WEIGHTS_NAMES = (SAFETENSORS_NAME, LEGACY_NAME)
HEAD_NAME = "head.safetensors"
CARD_NAME = "README.md"
LAYOUT_FILES = (CONFIG_NAME, SAFETENSORS_NAME, HEAD_NAME, "README.md")
"""Every file `save_pretrained` writes: a folder holding anything else is never replaced."""
RESERVED_KEYS = ("task", "zoobot_version", "preprocessing")
CARD_KEYS = ("description", "training_data", "metrics", "license")
# mkdtemp and safetensors create owner-only paths; a saved model gets the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)


class WeightsMismatchError(ValueError):
    """Checkpoint tensors that do not fit the model; the message names each tensor and both shapes."""


class WeightsFileError(ValueError):
    """A weights file that cannot be read (truncated, damaged) or tensors that must not be saved
    (NaN or infinite); the message names the file and the tensors."""


class ConfigError(ValueError):
    """A model's `config.json` that is not valid JSON or not the timm Hub layout; names the file."""


def check_config(config: object, where: str) -> dict:
    """`config` (parsed from `where`) if it is a timm Hub-layout config: an object with a string
    `architecture`, and `model_args`, `pretrained_cfg` and `zoobot` objects where present (keys
    of `model_args` are names of the architecture's arguments)."""
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: not a JSON object but {type(config).__name__}")
    if not isinstance(config.get("architecture"), str):
        raise ConfigError(f"{where}: names no 'architecture', so it is not the timm Hub layout")
    for key in ("model_args", "pretrained_cfg", "zoobot"):
        value = config.get(key)
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{where}: {key!r} must be an object, not {type(value).__name__}")
    bad = [
        k for k in config.get("model_args") or {} if not (isinstance(k, str) and k.isidentifier())
    ]
    if bad:
        raise ConfigError(f"{where}: model_args keys {bad} are not argument names")
    return config


def parse_config(path: Path, where: str) -> dict:
    """The checked config at `path` (`where` names it in errors, e.g. its Hub repo)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{where}: not valid JSON ({err})") from err
    return check_config(config, where)


@contextlib.contextmanager
def building_encoder(config: Mapping, where: str) -> Iterator[None]:
    """Within the block, an argument of `config["model_args"]` the architecture does not take
    (a `ConfigError`, or timm's `TypeError`) becomes a `ConfigError` naming `where` and the
    arguments."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err
    except TypeError as err:
        args = sorted(config.get("model_args") or {})
        if not args:
            raise
        raise ConfigError(
            f"{where}: the model_args {args} do not fit architecture {config.get('architecture')!r}"
            f" ({err})"
        ) from err


def read_safetensors(path: str | os.PathLike, load: Callable[[Path], dict]) -> dict:
    """`load(path)` of a `.safetensors` file; a truncated or damaged file raises
    `WeightsFileError` naming it."""
    try:
        return load(Path(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsFileError(
            f"{path}: cannot read the weights ({err}); the file is damaged or was cut short: "
            "download or save it again"
        ) from err


# safetensors dtypes that hold floating-point numbers; numpy has no bfloat16, so those are read as
# the high half of float32 (which is what bfloat16 is).
_FLOATS = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}


def nonfinite_tensors(path: str | os.PathLike) -> list[str]:
    """The names of the tensors of a `.safetensors` file holding NaN or infinity.

    Read from the format's documented layout (an 8-byte header length, a JSON header, the data)
    rather than with `safetensors.numpy`, which cannot represent bfloat16.
    """
    data = Path(path).read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    body = memoryview(data)[8 + size :]
    bad = []
    for name, info in header.items():
        dtype = _FLOATS.get(info.get("dtype")) if isinstance(info, dict) else None
        if dtype is None:
            continue
        begin, end = info["data_offsets"]
        values = np.frombuffer(body[begin:end], dtype)
        if info["dtype"] == "BF16":
            values = (values.astype(np.uint32) << 16).view(np.float32)
        if not np.isfinite(values).all():
            bad.append(name)
    return bad


def check_finite(tensors: Mapping[str, np.ndarray], what: str) -> None:
    """Refuse (`WeightsFileError`) to save tensors holding NaN or infinity, naming them."""
    bad = [name for name, value in tensors.items() if not np.isfinite(np.asarray(value)).all()]
    if bad:
        raise WeightsFileError(nonfinite_message(what, bad))


def nonfinite_message(what: str, names: list[str]) -> str:
    """Why a model with non-finite weights is not saved."""
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (
        f"refusing to save {what}: {len(names)} tensor(s) hold NaN or infinity ({shown}); "
        "training diverged or the weights were damaged"
    )


def check_weights_fit(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
    what: str,
    ignored: frozenset[str] | set[str] = frozenset(),
) -> None:
    """Raise `WeightsMismatchError` unless `found` has exactly the `expected` names and shapes.

    Shapes are compared as tuples; names in `ignored` (buffers without inference value) may be
    present in `found` or not. The message lists every shape mismatch, missing name (in the
    model's order) and unexpected name (sorted).
    """
    missing = [key for key in expected if key not in found]
    unexpected = sorted(set(found) - set(expected) - set(ignored))
    mismatched = [
        f"{key}: {tuple(found[key])} in the checkpoint, {tuple(expected[key])} in the model"
        for key in expected
        if key in found and tuple(found[key]) != tuple(expected[key])
    ]
    problems = []
    for label, items in (
        ("shape mismatch", mismatched),
        ("missing from the checkpoint", missing),
        ("unexpected in the checkpoint", unexpected),
    ):
        if items:
            problems.append(f"{len(items)} {label}: " + "; ".join(items))
    if problems:
        raise WeightsMismatchError(f"{what} weights do not fit the model: " + " | ".join(problems))


def first_convs(pretrained_cfg: Mapping) -> tuple[str, ...]:
    """The module names of a timm config's first convolution(s) (`first_conv`, a name or a list)."""
    first = pretrained_cfg.get("first_conv")
    return (first,) if isinstance(first, str) else tuple(first or ())


def checkpoint_channels(
    model_args: Mapping, pretrained_cfg: Mapping, tensors: Mapping | None
) -> int:
    """Input channels of a checkpoint: stated in `model_args`, else read off its first conv's
    weight (any array with a 4-axis `shape`), else its `pretrained_cfg` input size (else 3)."""
    if model_args.get("in_chans"):
        return int(model_args["in_chans"])
    for conv in first_convs(pretrained_cfg):
        weight = (tensors or {}).get(f"{conv}.weight")
        if weight is not None and len(weight.shape) == 4:
            return int(weight.shape[1])
    return int((pretrained_cfg.get("input_size") or (3,))[0])


def write_model_folder(folder: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Let `write` fill a staging folder beside `folder`, then rename it into place atomically.

    Readers never see half a model. An existing folder is replaced only if it is empty or a model
    zoobot saved (a config with a `zoobot` key, and nothing but `LAYOUT_FILES`); any other is
    refused, naming what is in the way.
    """
    folder = Path(folder)
    check_replaceable(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".part", dir=folder.parent))
    try:
        write(staging)
        for path in staging.iterdir():
            os.chmod(path, 0o666 & ~_UMASK)
        os.chmod(staging, 0o777 & ~_UMASK)
        replace_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def check_replaceable(folder: Path) -> None:
    """Refuse to replace `folder` unless it is absent, empty, or a model folder zoobot wrote."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder; refusing to replace it")
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        return
    others = [n for n in names if n not in LAYOUT_FILES]
    if others:
        raise FileExistsError(
            f"{folder} holds files a saved model does not ({', '.join(others[:10])}); refusing to "
            "replace it: move them away or save to another folder"
        )
    try:
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict) or "zoobot" not in config:
        raise FileExistsError(
            f"{folder} is not a model zoobot saved (its {CONFIG_NAME} has no 'zoobot' entry); "
            "refusing to replace it: move it away or save to another folder"
        )


def replace_folder(new: Path, destination: Path) -> None:
    """Rename `new` to `destination`, moving an old `destination` aside first and deleting it after."""
    if not destination.exists():
        os.replace(new, destination)
        return
    old = Path(
        tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".old", dir=destination.parent)
    )
    os.replace(destination, old / "model")
    try:
        os.replace(new, destination)
    except OSError:
        os.replace(old / "model", destination)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def model_card(
    config: Mapping,
    num_features: int,
    card: Mapping | None,
    title: str,
    package: str,
    repo_id: str | None = None,
) -> str:
    """The README.md: front matter, architecture, task (schema or classes), data, metrics, usage.

    `package` ("zoobot-torch" or "zoobot-tf") is the one that wrote the model; the usage section
    shows both frameworks and timm, which all read the same files.
    """
    card = dict(card or {})
    unknown = sorted(set(card) - set(CARD_KEYS))
    if unknown:
        raise ValueError(f"unknown model card fields {unknown}; allowed: {list(CARD_KEYS)}")
    zoobot = config["zoobot"]
    channels = (config.get("pretrained_cfg") or {}).get("input_size", [3])[0]
    hub_name = f"hf_hub:{repo_id}" if repo_id else "hf_hub:<owner>/<repo>"
    front = ["---", "library_name: timm", "tags:"]
    front += [f"- {tag}" for tag in ("image-classification", "timm", "zoobot", "galaxy-zoo")]
    if card.get("license"):
        front.append(f"license: {card['license']}")
    lines = [*front, "---", "", f"# {title}", ""]
    if card.get("description"):
        lines += [card["description"], ""]
    lines += [
        f"A Zoobot `{zoobot['task']}` model ({package} {zoobot['zoobot_version']}).",
        "",
        "## Architecture",
        "",
        f"- encoder: timm `{config['architecture']}`, {num_features} pooled features, "
        f"{channels} input channel(s)",
    ]
    seen = zoobot.get("preprocessing")
    if seen:
        lines.append(
            f"- inputs: the whole cutout resized to {seen['image_size']} px, pixels in [0, 1] "
            f"normalised as (x - {seen['mean']}) / {seen['std']}; `predict` applies this itself"
        )
    lines += _task_lines(zoobot)
    if card.get("training_data"):
        lines += ["", "## Training data", "", card["training_data"]]
    if card.get("metrics"):
        lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {value} |" for name, value in card["metrics"].items()]
    lines += ["", "## Usage", "", "PyTorch or TensorFlow read the same files:", "", "```python"]
    lines += [
        "from zoobot.torch import from_pretrained  # or: from zoobot.tf import from_pretrained"
    ]
    lines += ["", f"model = from_pretrained('{hub_name}')  # or the folder's path", "```", ""]
    lines += ["The encoder alone loads with timm:", "", "```python", "import timm", ""]
    in_chans = f", in_chans={channels}" if channels != 3 else ""
    lines += [
        f"encoder = timm.create_model('{hub_name}', pretrained=True, num_classes=0{in_chans})",
        "```",
        "",
    ]
    return "\n".join(lines)


def _task_lines(zoobot: Mapping) -> list[str]:
    """Model card lines describing the task config: the schema's questions, then other settings."""
    lines = []
    settings = {k: v for k, v in zoobot.items() if k not in (*RESERVED_KEYS, "schema")}
    if settings:
        lines += [f"- {key}: {json.dumps(value)}" for key, value in settings.items()]
    if "schema" in zoobot:
        schema = Schema.from_dict(zoobot["schema"])
        lines += [
            "",
            "## Schema",
            "",
            f"`{schema.name}`: {len(schema.questions)} questions, {len(schema.label_cols)} answers "
            "(head outputs in this order).",
            "",
        ]
        for question in schema.questions:
            after = f" (asked after `{question.asked_after}`)" if question.asked_after else ""
            answers = ", ".join(a.name for a in question.answers)
            lines.append(f"- `{question.name}`{after}: {answers}")
    return lines
