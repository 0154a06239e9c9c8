"""Data layer: images, triplet files, catalogs, the sample catalog, the dataset registry, downloads."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
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


def csv_rows(text: str) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """``(line number, cells, None)`` per CSV record of ``text``, or ``(line number, None, reason)`` for a
    record the csv module refuses (a field over its 131,072-character limit, a NUL byte): the caller
    reports that one row instead of the whole file failing with a csv traceback."""
    reader = csv.reader(io.StringIO(text))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, None, f"unreadable CSV row ({exc})"
            continue
        yield reader.line_num, row, None
