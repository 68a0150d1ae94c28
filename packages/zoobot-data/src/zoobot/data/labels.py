"""The labels a model trains on, checked by one rule wherever a catalog enters Zoobot.

A `LabelRule` says what the label columns must hold for a task: vote counts (a decision tree:
finite, non-negative whole numbers of at most `zoobot.shared.MAX_VOTES`), class indices (a
classifier: whole numbers 0..num_classes-1) or regression targets (numbers finite in float32,
which training holds them in). `validate_catalog`, the shard and Hugging Face writers, both
frameworks' data pipelines and their `fit_catalog` all call `label_problems` / `check_labels`, so
a catalog refused by one is refused by all, with the same message naming each column and the rows
(0-based position and `id_str`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from zoobot.data.rows import describe_rows, problems_error
from zoobot.shared import MAX_VOTES, count_problems

KINDS = ("votes", "classes", "targets")
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class LabelRule:
    """What the label `columns` must hold: `kind` "votes", "classes" (`num_classes` of them, one
    column) or "targets". Build one with `votes`, `classes` or `targets`."""

    kind: str
    columns: tuple[str, ...]
    num_classes: int | None = None
    max_votes: float = MAX_VOTES

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"label kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "classes" and (len(self.columns) != 1 or (self.num_classes or 0) < 2):
            raise ValueError(
                "class labels are one column of class indices for at least 2 classes, got "
                f"columns {list(self.columns)} and num_classes={self.num_classes}"
            )

    @classmethod
    def votes(cls, columns: Iterable[str], max_votes: float = MAX_VOTES) -> LabelRule:
        """Vote counts in each of `columns` (a schema's `label_cols`)."""
        return cls("votes", tuple(columns), max_votes=max_votes)

    @classmethod
    def classes(cls, column: str, num_classes: int) -> LabelRule:
        """Class indices 0..num_classes-1 in `column`."""
        return cls("classes", (column,), num_classes=num_classes)

    @classmethod
    def targets(cls, columns: Iterable[str]) -> LabelRule:
        """Numbers finite in float32 in each of `columns`."""
        return cls("targets", tuple(columns))

    def describe(self) -> str:
        """What the columns must hold, for messages."""
        if self.kind == "votes":
            return f"vote counts (whole numbers 0 to {self.max_votes:g})"
        if self.kind == "classes":
            return f"class indices (whole numbers 0 to {self.num_classes - 1})"
        return "regression targets (finite float32 numbers)"


def _numbers(table: pd.DataFrame, column: str, problems: list[str]) -> np.ndarray:
    """The column as float64 (booleans as 0/1); entries that are not numbers are reported, NaN."""
    raw = table[column]
    if pd.api.types.is_bool_dtype(raw):
        return raw.to_numpy(dtype=np.float64)
    values = pd.to_numeric(raw, errors="coerce")
    not_numbers = (values.isna() & raw.notna()).to_numpy()
    if not_numbers.any():
        problems.append(f"column {column!r} is not a number in {describe_rows(table, not_numbers)}")
    array = values.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    array[not_numbers] = 0.0  # reported once, as not a number
    return array


def _column_problems(values: np.ndarray, rule: LabelRule) -> dict[str, np.ndarray]:
    """{problem: rows} of one column's values under `rule`."""
    if rule.kind == "votes":
        return count_problems(values, rule.max_votes)
    finite = np.isfinite(values)
    masks = {"NaN or infinite": ~finite}
    if rule.kind == "targets":  # training holds them as float32
        masks[f"beyond float32 (over {FLOAT32_MAX:.3g})"] = finite & (np.abs(values) > FLOAT32_MAX)
    if rule.kind == "classes":
        with np.errstate(invalid="ignore"):
            whole = finite & (values == np.floor(values))
            masks["not a whole number"] = finite & ~whole
            masks[f"not a class index 0 to {rule.num_classes - 1}"] = whole & (
                (values < 0) | (values >= rule.num_classes)
            )
    return {problem: mask for problem, mask in masks.items() if mask.any()}


def label_problems(table: pd.DataFrame, rule: LabelRule) -> list[str]:
    """Each way `table`'s label columns break `rule`, naming the column and its rows; [] if none."""
    missing = [c for c in rule.columns if c not in table.columns]
    problems = [f"missing {len(missing)} label column(s): {missing}"] if missing else []
    for column in rule.columns:
        if column in table.columns:
            values = _numbers(table, column, problems)
            for problem, mask in _column_problems(values, rule).items():
                problems.append(f"column {column!r} is {problem} in {describe_rows(table, mask)}")
    return problems


def check_labels(table: pd.DataFrame, rule: LabelRule, what: str = "the catalog") -> None:
    """Raise `CatalogError` listing every problem of `table`'s labels under `rule`."""
    problems = label_problems(table, rule)
    if problems:
        raise problems_error(problems, f"{what}: label columns must hold {rule.describe()}")
