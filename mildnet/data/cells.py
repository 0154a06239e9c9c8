"""CSV cells a spreadsheet will not run as formulas.

Catalogue and triplet CSVs carry photo names and product ids taken from a shop's files. Opened in a
spreadsheet, a cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read as a formula
(``=cmd|' -C calc'!A0`` runs a program in some). We write such a cell with one more leading apostrophe, which
spreadsheets show as plain text, and take it off when we read the file back, so every value round-trips:
``'`` + a formula start is escaped as well, so that a name that really begins with an apostrophe survives.
"""

from __future__ import annotations

import re

import pandas as pd

_ESCAPED = re.compile(r"^'*[=+\-@\t\r]")


def escape(cell: str) -> str:
    return "'" + cell if _ESCAPED.match(cell) else cell


def unescape(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and _ESCAPED.match(cell) else cell


def escape_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` with every string cell escaped (other cells as they are)."""
    return frame.map(lambda v: escape(v) if isinstance(v, str) else v)


def unescape_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.map(lambda v: unescape(v) if isinstance(v, str) else v)
