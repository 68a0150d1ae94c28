"""The registry of public Galaxy Zoo decision trees, stored as JSON files beside this module."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources

from zoobot.shared.schema import Schema, SchemaError


def _schema_files() -> dict[str, resources.abc.Traversable]:
    folder = resources.files("zoobot.shared") / "schemas"
    return {f.name[: -len(".json")]: f for f in folder.iterdir() if f.name.endswith(".json")}


def list_schemas() -> list[str]:
    """Names of every registered schema, sorted."""
    return sorted(_schema_files())


@cache
def get_schema(name: str) -> Schema:
    """The registered schema `name` (e.g. `decals_dr5`, `gz2`, `gz_evo`)."""
    files = _schema_files()
    if name not in files:
        raise KeyError(f"unknown schema {name!r}; registered schemas: {', '.join(sorted(files))}")
    data = json.loads(files[name].read_text(encoding="utf-8"))
    if "union_of" in data:
        parts = [get_schema(part) for part in data["union_of"]]
        schema = Schema.union(parts, name=data["name"], description=data.get("description", ""))
    else:
        schema = Schema.from_dict(data)
    if schema.name != name:
        raise SchemaError(f"schema file {name}.json names itself {schema.name!r}")
    expected = data.get("expected_n_label_cols")
    if expected is not None and len(schema.label_cols) != expected:
        raise SchemaError(
            f"schema {name!r} has {len(schema.label_cols)} label columns, its file expects {expected}"
        )
    return schema


def as_schema(schema: Schema | str | Mapping) -> Schema:
    """What every `schema=` accepts: a `Schema`, a registered schema's name, or the `to_dict()`
    form a saved model's config holds."""
    if isinstance(schema, str):
        return get_schema(schema)
    if isinstance(schema, Mapping):
        return Schema.from_dict(schema)
    return schema
