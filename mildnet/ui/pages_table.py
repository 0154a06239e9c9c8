"""The app's pages beside Home, in one table: ``navigation`` declares them, the Home page links to them.

Data only (no page module is imported here), so both can use it without importing each other.
"""

from __future__ import annotations

from typing import NamedTuple


class Page(NamedTuple):
    path: str  # relative to app.py; every .py in pages/ is a page
    title: str
    icon: str
    blurb: str  # the Home page's card
    owner: bool = False  # only the shop's owner sees it (mildnet.ui.owner)


PAGES = (
    Page("pages/search.py", "Search", ":material/image_search:",
         "Upload a photo or click a product and get the most similar products."),
    Page("pages/triplets.py", "Triplets", ":material/view_module:",
         "Browse the training triplets, their types and the data-check report.", owner=True),
    Page("pages/evaluation.py", "Evaluation", ":material/monitoring:",
         "Triplet accuracy, distance distributions, retrieval metrics; compare runs.", owner=True),
    Page("pages/add.py", "Add a catalogue", ":material/add_photo_alternate:",
         "Your own photos: a folder on this machine or a zip, searchable in minutes.", owner=True),
)


def visible(is_owner: bool) -> tuple[Page, ...]:
    """The pages a visitor sees: all for the owner, the shoppers' ones otherwise."""
    return tuple(page for page in PAGES if is_owner or not page.owner)
