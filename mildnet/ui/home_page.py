"""Home page: what the app does, the active dataset and model, and the state of the catalog cache."""

from __future__ import annotations

import random

import streamlit as st

from mildnet.ui import data as uidata
from mildnet.ui import layout, owner, resources, widgets
from mildnet.ui.layout import Context
from mildnet.ui.pages_table import visible
from mildnet.ui.runs import headline_accuracy

BROWSE_COLUMNS = 8
BROWSE_PAGE = 16


def model_figure(run, dataset: str, kind: str) -> tuple[str, str]:
    """The Home page's model figure and its explanation: an accuracy only where it was measured on this
    catalogue, on held-out triplets, and says which; otherwise where the model was trained."""
    trained_on = run.dataset
    best = run.metrics.get("best") if isinstance(run.metrics.get("best"), dict) else {}
    accuracy = headline_accuracy(run.metrics)
    if trained_on != dataset or accuracy is None:
        where = f"trained on {trained_on}" if trained_on else "trained on other photos"
        return where, (f"{run.label}. Its accuracy was measured on {trained_on or 'other data'}, not on this "
                       "catalogue: the Evaluation page measures it here.")
    if kind == "instance":
        return "trained here", (f"{run.label}. This catalogue has no product labels: its triplets pair a photo "
                                f"with augmented views of itself, which even an untrained model gets mostly right "
                                f"({accuracy:.0%} here), so they say little about similar-product search.")
    split = "validation" if isinstance(best.get("val_accuracy"), (int, float)) else "training"
    return f"{accuracy:.0%} accurate", (f"{run.label}. Triplet accuracy on this catalogue's {split} triplets at "
                                        "the end of training (the Evaluation page recomputes it per split).")


# Drawn by layout.run_page before anything slow (the sidebar, preparing the data): the first thing on screen.
HERO = ("MILDNet visual search",
        "Similar-product search for e-commerce images: a deep-ranking network (Fynd's MILDNet / RankNet) "
        "turns every product photo into a vector; products with close vectors look alike.")


def render(ctx: Context) -> None:
    gallery = resources.gallery(ctx.dataset)
    products = gallery.loc[gallery["product_id"] != "", "product_id"].nunique() if "product_id" in gallery else 0

    c1, c2, c3, c4 = st.columns([1, 1, 1.3, 1])
    c1.metric("Dataset", ctx.dataset.name, border=True, help=ctx.dataset.notes or None)
    c2.metric("Catalog images", f"{len(gallery):,}", border=True,
              help=(f"{products:,} products" if products else None) if ctx.dataset.kind != "instance"
              else "No product labels: each photo is its own product (instance-level triplets).")
    if ctx.run is None:
        c3.metric("Model", "none yet", border=True, help="Train one from the sidebar")
    else:
        value, note = model_figure(ctx.run, ctx.dataset.name, ctx.dataset.kind)
        c3.metric(f"Model · {ctx.run.model_name or ctx.run.name}", value, border=True, help=note)
    cache_slot = c4.empty()

    if ctx.run is None:
        cache_slot.metric("Embedding cache", "—", border=True)
        layout.no_model_message(ctx)
    else:
        found = resources.engine(ctx.run, ctx.dataset)
        if not found.ready:
            cache_slot.metric("Embedding cache", "building…", border=True)
        found = layout.ensure_engine(ctx.run, ctx.dataset)
        cache_slot.metric("Embedding cache", "ready", border=True,
                          help=f"{len(found):,} vectors of dimension {found.embeddings.dim} "
                               f"in {resources.store().describe()}")

    st.space("small")
    shown = visible(owner.is_owner())
    cols = st.columns(len(shown))
    for col, page in zip(cols, shown):
        with col.container(border=True, height="stretch"):
            st.page_link(page.path, label=page.title, icon=page.icon)
            st.caption(page.blurb)

    st.subheader("From the catalog")
    sample = gallery
    if "view" in gallery.columns and (gallery["view"] == "catalog").any():
        sample = gallery[gallery["view"] == "catalog"]
    # A stable shuffle (a mix of products on every page), paged: a large catalogue never sends more than
    # one page of thumbnails to the browser.
    ids = list(sample["image"])
    random.Random(len(gallery)).shuffle(ids)
    pages = max(1, -(-len(ids) // BROWSE_PAGE))
    page = st.pagination(pages, key=f"mn_home_page_{ctx.dataset.name}_{len(ids)}") if pages > 1 else 1
    picks = ids[(page - 1) * BROWSE_PAGE:page * BROWSE_PAGE]
    info = gallery.drop_duplicates("image").set_index("image")
    for start in range(0, len(picks), BROWSE_COLUMNS):
        cols = st.columns(BROWSE_COLUMNS)
        for col, image_id in zip(cols, picks[start:start + BROWSE_COLUMNS]):
            with col:
                widgets.image(ctx.dataset.image_root / image_id)
                row = info.loc[image_id] if image_id in info.index else {}
                st.caption(widgets.describe_item(dict(row)) or image_id)

    with st.expander("About this dataset"):
        counts = resources.split_counts(ctx.dataset)
        st.dataframe(counts, hide_index=True)
        note = uidata.kind_note(ctx.dataset)
        if note:
            st.caption(note)
        st.caption(f"Images: `{ctx.dataset.image_root}` · source: {ctx.dataset.origin or ctx.dataset.source}"
                   + (f" · licence: {ctx.dataset.licence}" if ctx.dataset.licence else ""))
        if ctx.dataset.notes:
            st.caption(ctx.dataset.notes)
