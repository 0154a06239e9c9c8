"""Triplets page: browse the query / positive / negative rows of each split, and the data-check report."""

from __future__ import annotations

import html

import pandas as pd
import streamlit as st

from mildnet.ui import data as uidata
from mildnet.ui import owner, resources, widgets
from mildnet.ui.layout import Context

PAGE_SIZE = 10
SEED_KEY = "mn_triplets_seed"
PAGE_KEY = "mn_triplets_page"


# Drawn by layout.run_page before anything slow (the sidebar, preparing the data): the first thing on screen.
HERO = ("Triplets", "The training data of deep ranking: a query, a positive (the same product) and a "
        "negative (another product). In-class negatives share the query's category and are the hard case.")


def render(ctx: Context) -> None:
    ds = ctx.dataset
    if not owner.owner_only("browse the training data"):
        return
    counts = resources.split_counts(ds)
    columns = st.columns(len(counts) + 1)
    for column, row in zip(columns, counts.itertuples()):
        column.metric(f"{row.split} triplets", f"{row.triplets:,}", border=True,
                      help=f"{row.images:,} distinct images" + (f"; {row._4} bad rows skipped" if row._4 else ""))
    catalog_size = len(resources.gallery(ds))
    columns[-1].metric("Catalog images", f"{catalog_size:,}", border=True)
    note = uidata.kind_note(ds)
    if note:
        st.info(note, icon=":material/content_copy:")

    browse, report = st.tabs([":material/view_module: Browse", ":material/fact_check: Data check"])
    with browse:
        _browse(ds)
    with report:
        _data_check(ds)


def _browse(ds: uidata.Dataset) -> None:
    splits = ds.split_names
    c1, c2, c3, c4, c5 = st.columns([1.6, 1.6, 1.4, 1.6, 1], vertical_alignment="bottom")
    split = c1.segmented_control("Split", splits, default="train" if "train" in splits else splits[0],
                                 key="mn_triplets_split", required=True)
    table = resources.annotated(ds, split)
    negative_types = sorted(t for t in table["negative_type"].unique() if t != "unknown")
    views = sorted(v for v in table["query_view"].unique() if v != "unknown")
    categories = sorted(c for c in table["category"].unique() if c)
    chosen_type = c2.segmented_control("Negative", negative_types, selection_mode="multi",
                                       key="mn_triplets_type", help="In-class: same category as the query.") \
        if negative_types else []
    chosen_view = c3.segmented_control("Query photo", views, selection_mode="multi", key="mn_triplets_view") \
        if views else []
    chosen_category = c4.selectbox("Category", ["All"] + categories, key="mn_triplets_category") \
        if categories else "All"
    if c5.button("Shuffle", icon=":material/shuffle:", key="mn_triplets_shuffle", width="stretch"):
        st.session_state[SEED_KEY] = st.session_state.get(SEED_KEY, 0) + 1

    shown = table
    if chosen_type:
        shown = shown[shown["negative_type"].isin(chosen_type)]
    if chosen_view:
        shown = shown[shown["query_view"].isin(chosen_view)]
    if chosen_category != "All":
        shown = shown[shown["category"] == chosen_category]
    shown = uidata.shuffled(shown.reset_index(drop=True), st.session_state.get(SEED_KEY))
    if shown.empty:
        st.info("No triplet matches these filters.", icon=":material/filter_alt_off:")
        return

    pages = max(1, -(-len(shown) // PAGE_SIZE))
    summary = _type_summary(shown)
    st.caption(f"{len(shown):,} of {len(table):,} {split} triplets{summary} · page size {PAGE_SIZE}")
    # Filters change the page count: a key per filter state resets to page 1 instead of pointing past the end.
    page_key = f"{PAGE_KEY}_{split}_{len(shown)}_{st.session_state.get(SEED_KEY, 0)}"
    page = st.pagination(pages, key=page_key) if pages > 1 else 1
    start = (page - 1) * PAGE_SIZE
    header = st.columns([1, 1, 1, 2.4])
    for column, role in zip(header, ("Query", "Positive", "Negative", "")):
        column.html(f'<div class="mn-role">{role}</div>')
    catalog = resources.gallery_rows(ds)
    for offset, row in enumerate(shown.iloc[start:start + PAGE_SIZE].itertuples(index=False)):
        _triplet_row(ds, row, start + offset + 1, catalog)


def _type_summary(frame: pd.DataFrame) -> str:
    counts = frame["negative_type"].value_counts()
    parts = [f"{counts[t]:,} {t}" for t in ("in-class", "out-of-class") if t in counts]
    return f" ({', '.join(parts)})" if parts else ""


def _triplet_row(ds: uidata.Dataset, row, number: int, catalog: pd.DataFrame) -> None:
    with st.container(border=True, key=f"mn_triplet_{number}"):
        cols = st.columns([1, 1, 1, 2.4], vertical_alignment="center")
        for column, name in zip(cols, (row.query, row.positive, row.negative)):
            with column:
                widgets.image(ds.image_root / name)
        with cols[3]:
            q, n = _info(catalog, row.query), _info(catalog, row.negative)
            st.html(
                f'<div><span class="mn-rank">{number}</span> {widgets.tags(row.negative_type, row.query_view)}</div>'
                f'<div class="mn-meta"><b>query</b> {html.escape(q)}<br><b>negative</b> {html.escape(n)}</div>'
                f'<div class="mn-meta" style="margin-top:0.3rem">{html.escape(row.query)}</div>'
            )


def _info(catalog: pd.DataFrame, image: str) -> str:
    if image not in catalog.index:
        return image
    row = catalog.loc[image]
    product = str(row.get("product_id", "") or "")
    text = widgets.describe_item(dict(row))
    return " · ".join(b for b in (product, text) if b)


def _data_check(ds: uidata.Dataset) -> None:
    st.caption("Every triplet file of the dataset checked against the image folder: malformed or duplicate "
               "rows, missing or unreadable images, and leaks (triplets or queries shared between splits).")
    report = resources.data_check(ds)
    counts = report.counts()
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Images referenced", f"{report.n_images:,}", border=True)
    c2.metric("Missing / unreadable", f"{counts.get('missing', 0) + counts.get('unreadable', 0):,}", border=True)
    c3.metric("Bad rows", f"{sum(v for k, v in counts.items() if k not in ('missing', 'unreadable')):,}",
              border=True)
    c4.metric("Leaks", f"{len(report.leaks):,}", border=True)
    if report.ok:
        st.success("No problems found: every image exists and decodes, and the splits do not share triplets "
                   "or queries.", icon=":material/check_circle:")
    else:
        for leak in report.leaks:
            st.warning(f"Leak: {leak.describe()}", icon=":material/warning:")
        if report.problems:
            st.error(f"{widgets.count(len(report.problems), 'problem')}: "
                     + ", ".join(f"{n:,} {kind}" for kind, n in counts.items()), icon=":material/error:")
    with st.expander("Full report", expanded=not report.ok):
        st.code(report.format(), language=None)
