"""The published Zoobot encoders, from `pretrained_encoders.json` beside this module.

Each entry names a Hub repo (`hf_hub:mwalmsley/zoobot-encoder-*`) with its timm architecture and
`model_args`, channels, input size, parameter count, licence, training data and files; the JSON
says which fields are known, computed or inferred. `list_pretrained()` is the table both
frameworks export; `format_table` and `markdown_table` print it (the `models` command, README.md).
"""

from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

CATALOGUE_FILE = Path(__file__).with_name("pretrained_encoders.json")
COLUMNS = ("name", "architecture", "channels", "input size", "params", "licence", "data")
"""What `format_table` and `markdown_table` show of each encoder."""


@dataclass(frozen=True)
class PublishedEncoder:
    """One published encoder: where it lives, what builds it, and what it may be used for."""

    name: str
    """The repo name, e.g. `zoobot-encoder-convnext_nano` (also accepted as a model name)."""
    repo_id: str
    family: str
    architecture: str
    """The timm architecture that builds it (with `model_args`), as its `config.json` names it."""
    model_args: dict = field(hash=False)
    channels: int
    input_size: int
    """Pixels per side of the images it was trained on."""
    params: int
    num_features: int
    license: str
    data: str
    files: tuple[str, ...]
    weights_mb: float | None
    """Size of its weights file as the Hub shows it (MB), where known."""
    inferred: tuple[str, ...]
    """Fields that are inferred rather than read from the Hub or Zoobot's documentation."""
    notes: str

    @property
    def hub_name(self) -> str:
        """The name every Zoobot loader (and timm) takes: `hf_hub:owner/repo`."""
        return f"hf_hub:{self.repo_id}"

    @property
    def architecture_label(self) -> str:
        """The architecture with its model arguments, e.g. `maxvit_rmlp_tiny_rw_256(img_size=224)`."""
        args = ", ".join(f"{key}={value}" for key, value in self.model_args.items())
        return f"{self.architecture}({args})" if args else self.architecture


@functools.cache
def _catalogue() -> dict:
    return json.loads(CATALOGUE_FILE.read_text(encoding="utf-8"))


@functools.cache
def published_encoders() -> tuple[PublishedEncoder, ...]:
    """Every published encoder, in the catalogue's order."""
    owner = _catalogue()["owner"]
    return tuple(
        PublishedEncoder(
            **{
                **entry,
                "repo_id": f"{owner}/{entry['name']}",
                "files": tuple(entry["files"]),
                "inferred": tuple(entry["inferred"]),
            }
        )
        for entry in _catalogue()["encoders"]
    )


def data_description(key: str) -> str:
    """What a catalogue `data` key (e.g. `GZ Evo`) stands for."""
    return _catalogue()["data"][key]


def published_encoder(name: str) -> PublishedEncoder:
    """The entry named `name`: the repo name, `owner/repo`, or `hf_hub:owner/repo`."""
    found = find_published(name)
    if found is None:
        names = [e.name for e in published_encoders()]
        close = difflib.get_close_matches(name.rsplit("/", 1)[-1], names, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(
            f"{name!r} is not a published Zoobot encoder{hint} (see list_pretrained())"
        )
    return found


def find_published(name: str) -> PublishedEncoder | None:
    """The entry named `name` (as `published_encoder` takes it), else None."""
    for prefix in ("hf_hub:", "hf-hub:"):
        name = name.removeprefix(prefix)
    for entry in published_encoders():
        if name in (entry.name, entry.repo_id):
            return entry
    return None


def is_published_name(name: str) -> bool:
    """Whether `name` starts like a published encoder's repo name (`zoobot-encoder-`)."""
    return name.startswith(_catalogue()["prefix"])


def list_pretrained():
    """Every published Zoobot encoder as a pandas DataFrame, one row each, with the name to load
    it by (`hub_name`), its timm architecture and `model_args`, channels, input size, parameter
    count, licence (most Apache-2.0; `zoobot-encoder-efficientnet_b0` is GPL-3.0), training data
    and the files its repo holds."""
    import pandas as pd

    return pd.DataFrame(records())


def records() -> list[dict]:
    """The rows of `list_pretrained()` as plain dicts (JSON-ready)."""
    return [
        {
            "name": e.name,
            "hub_name": e.hub_name,
            "family": e.family,
            "architecture": e.architecture,
            "model_args": dict(e.model_args),
            "channels": e.channels,
            "input_size": e.input_size,
            "params": e.params,
            "num_features": e.num_features,
            "license": e.license,
            "data": e.data,
            "files": list(e.files),
            "weights_mb": e.weights_mb,
            "inferred": list(e.inferred),
            "notes": e.notes,
        }
        for e in published_encoders()
    ]


def _cells(entry: PublishedEncoder) -> tuple[str, ...]:
    return (
        entry.name,
        entry.architecture_label,
        str(entry.channels),
        f"{entry.input_size} px",
        f"{entry.params / 1e6:.1f}M",
        entry.license,
        entry.data,
    )


def format_table() -> str:
    """The catalogue as aligned text columns (what `zoobot-torch models` prints)."""
    rows = [COLUMNS, *(_cells(e) for e in published_encoders())]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    owner = _catalogue()["owner"]
    lines += ["", f"Load one by its name, or as hf_hub:{owner}/<name> (as timm does)."]
    return "\n".join(lines)


def markdown_table() -> str:
    """The catalogue as the Markdown table README.md shows (`zoobot-torch models --markdown`)."""
    header = (f"encoder (`hf_hub:{_catalogue()['owner']}/...`)", *COLUMNS[1:])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in published_encoders():
        name, architecture, *rest = _cells(entry)
        if entry.license != "Apache-2.0":
            rest[3] = f"**{rest[3]}**"
        lines.append("| " + " | ".join([f"`{name}`", f"`{architecture}`", *rest]) + " |")
    return "\n".join(lines)
