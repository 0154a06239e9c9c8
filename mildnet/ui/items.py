"""How a catalogue row reads to a shopper: a title, its details, a link (pure functions, no streamlit).

A ``catalog.csv`` may carry these optional columns beside ``image`` and ``product_id`` (README, "Your own
catalogue"): ``title`` (or ``name``), ``category``, ``colour`` (or ``color``), ``pattern``, ``price`` and ``url``
(a product page, http or https). Where a catalogue has no title, the card says what the photo shows
(colour, pattern, category) rather than an internal id or a file name.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from mildnet.data.catalog import folder_class
from mildnet.data.images import IMAGE_EXTENSIONS


def _cell(row: dict, *keys: str) -> str:
    for key in keys:
        value = str(row.get(key) or "").strip()
        if value and value.lower() != "nan":
            return value
    return ""


def title(row: dict) -> str:
    """The product's title, else what it looks like ("olive solid t-shirt"), else a tidied product id or
    file name ("12469" for ``12469.jpg``)."""
    named = _cell(row, "title", "name")
    if named:
        return named
    described = " ".join(b for b in (_cell(row, "colour", "color"), _cell(row, "pattern"), _cell(row, "category"))
                         if b)
    if described:
        return described[:1].upper() + described[1:]
    product = _cell(row, "product_id") or PurePosixPath(_cell(row, "image")).name
    stem = product[:product.rfind(".")] if product.lower().endswith(IMAGE_EXTENSIONS) else product
    return re.sub(r"[_]+", " ", stem).strip() or product


def details(row: dict) -> str:
    """The short line under the title: category and colour when the title did not already say them, price."""
    bits = []
    if _cell(row, "title", "name"):
        bits += [_cell(row, "category"), _cell(row, "colour", "color")]
    price = _cell(row, "price")
    if price:
        bits.append(price)
    return " · ".join(b for b in bits if b)


def link(row: dict) -> str | None:
    """The product page, when the catalogue gives one that a browser may open (http or https only)."""
    url = _cell(row, "url")
    return url if re.match(r"https?://", url, re.IGNORECASE) else None


def names_a_class(row: dict) -> bool:
    """Whether the row's ``product_id`` is only the class folder it sits in (class folders: every photo of
    "dress" shares it), so two results sharing it are not "the same product"."""
    return folder_class(_cell(row, "image")) == _cell(row, "product_id")
