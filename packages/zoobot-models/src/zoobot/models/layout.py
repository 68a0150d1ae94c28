"""The files of a Zoobot model folder (DESIGN.md contract 3), the same for every framework.

A folder (or Hub repo) holds `config.json` and `model.safetensors` for the encoder exactly as timm
writes them; a task model adds `head.safetensors` (the head's tensors in PyTorch names and layouts),
its task config under `config["zoobot"]`, and a `README.md` model card. Here: the file names, the
checks a config and a set of tensors must pass, atomic folder writes, and the card.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from zoobot.shared.schema import Schema

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
LEGACY_NAME = "pytorch_model.bin"
WEIGHTS_NAMES = (SAFETENSORS_NAME, LEGACY_NAME)
HEAD_NAME = "head.safetensors"
CARD_NAME = "README.md"
RESERVED_KEYS = ("task", "zoobot_version")
CARD_KEYS = ("description", "training_data", "metrics", "license")
# mkdtemp and safetensors create owner-only paths; a saved model gets the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)


class WeightsMismatchError(ValueError):
    """Checkpoint tensors that do not fit the model; the message names each tensor and both shapes."""


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

    Readers never see half a model; an existing model folder is replaced, any other non-empty
    folder is refused.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not (folder / CONFIG_NAME).is_file():
        raise FileExistsError(f"{folder} exists and is not a saved model; refusing to replace it")
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
