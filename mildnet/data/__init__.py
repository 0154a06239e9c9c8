"""Data layer: images, triplet files, catalogs, the sample catalog, the dataset registry, downloads."""

from __future__ import annotations

import os
from pathlib import Path

from mildnet.errors import DataError


def read_text_file(path: str | os.PathLike, what: str, hint: str = "") -> str:
    """A CSV-like text file's content (a spreadsheet's UTF-8 BOM dropped), or a one-line DataError that
    names ``what`` the file was meant to be (and a ``hint`` for a missing one)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}{hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from None
