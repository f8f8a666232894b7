"""CSV headers read strictly: csv.DictReader keeps the last of two equal column names and
pandas renames the second ("tp.1"), so a column given twice would count once, silently.
Standard library only."""

from __future__ import annotations

import csv
from pathlib import Path

from cost_models.specs import SpecError


def repeated_column(names: list[str] | None) -> str | None:
    """The first column name (stripped) given twice, or None."""
    seen: set[str] = set()
    for name in (n.strip() for n in names or []):
        if name and name in seen:
            return name
        seen.add(name)
    return None


def check_header(path: str | Path, names: list[str] | None = None) -> None:
    """SpecError when a column appears twice in the header of `path` (read from the file
    unless `names` gives it)."""
    if names is None:
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                names = next(csv.reader(handle), [])
        except (OSError, UnicodeDecodeError, csv.Error):
            return  # the reader that follows says what is wrong with the file
    twice = repeated_column(names)
    if twice:
        raise SpecError(f"{path}: column {twice} appears twice in the header (only one can "
                        "count); keep one")
