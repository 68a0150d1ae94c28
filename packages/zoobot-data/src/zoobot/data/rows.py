"""How every zoobot-data error names catalog rows, and the error a catalog that cannot be used raises.

Rows are named by their 0-based position and their `id_str` (`row 3 (id_str 'x')`), so a message
points at the same row whether the catalog is read by pandas, a spreadsheet or `sed`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

MAX_ROWS_LISTED = 5


class CatalogError(ValueError):
    """A catalog that cannot be used as given; `problems` lists each issue found."""

    def __init__(self, message: str, problems: Iterable[str] = ()):
        super().__init__(message)
        self.problems = list(problems)


def row_label(position: int, id_str: object = None) -> str:
    """`row 3 (id_str 'x')`: how every zoobot-data error names a catalog row (0-based position)."""
    return f"row {position}" + ("" if id_str is None else f" (id_str {id_str!r})")


def describe_rows(catalog: pd.DataFrame, mask: np.ndarray) -> str:
    """'N rows: row 3 (id_str 'x'), ...' for the first few rows where `mask` holds (0-based)."""
    positions = np.flatnonzero(mask)
    ids = catalog["id_str"] if "id_str" in catalog.columns else None
    shown = [
        row_label(pos, None if ids is None else ids.iloc[pos])
        for pos in positions[:MAX_ROWS_LISTED]
    ]
    more = len(positions) - len(shown)
    tail = f" and {more} more" if more else ""
    return f"{len(positions)} row(s): {', '.join(shown)}{tail}"


def problems_error(problems: list[str], what: str) -> CatalogError:
    """One `CatalogError` listing every problem of `what` (e.g. "catalog failed validation")."""
    listing = "\n".join(f"  - {p}" for p in problems)
    return CatalogError(
        f"{what} ({len(problems)} problem(s), rows are 0-based positions):\n{listing}", problems
    )
