"""Search page: a photo (uploaded, or a catalog product) in, the most similar catalog products out."""

from __future__ import annotations

import html
import random

import pandas as pd
import streamlit as st

from mildnet.data.images import MAX_FILE_BYTES
from mildnet.errors import ImageError
from mildnet.ui import items, layout, resources, widgets
from mildnet.ui.layout import Context
from mildnet.ui.sidebar import DATASET_KEY

QUERY_KEY = "mn_query"  # {"kind": "upload"} or {"kind": "catalog", "id": image id}
UPLOAD_KEY = "mn_upload"
LAST_UPLOAD_KEY = "mn_last_upload"
UPLOAD_CACHE_KEY = "mn_upload_cache"
K_KEY = "mn_k"
K_WANTED_KEY = "mn_k_wanted"  # the k the user chose, whatever the catalogue
COLUMNS = 5
THUMB_PX = 512


# Drawn by layout.run_page before anything slow (the sidebar, preparing the data): the first thing on screen.
HERO = ("Visual search", "Upload a photo of a garment or pick a product: see the most similar products "
        "in the catalog, by colour, pattern and shape.")


def render(ctx: Context) -> None:
    if ctx.run is None:
        layout.no_model_message(ctx)
        return
    engine = layout.ensure_engine(ctx.run, ctx.dataset)
    info = resources.gallery_rows(ctx.dataset)

    pick_upload, pick_catalog = st.tabs([":material/upload: Upload a photo", ":material/apparel: Pick a product"])
    with pick_upload:
        uploaded = st.file_uploader("Photo of a product (JPG, PNG or WebP)", type=["jpg", "jpeg", "png", "webp"],
                                    key=UPLOAD_KEY, help="Taken with a phone or saved from a web page; at most 20 MB.",
                                    # The server-wide limit is sized for catalogue zips; a photo is refused
                                    # by the browser above the decoder's own limit.
                                    max_upload_size=MAX_FILE_BYTES >> 20)
        if uploaded is not None and uploaded.file_id != st.session_state.get(LAST_UPLOAD_KEY):
            # A new file was dropped in: it becomes the query (a click on a result replaces it later).
            st.session_state[LAST_UPLOAD_KEY] = uploaded.file_id
            st.session_state[QUERY_KEY] = {"kind": "upload"}
        if uploaded is not None and st.session_state.get(QUERY_KEY, {}).get("kind") != "upload":
            st.button("Search with this photo again", icon=":material/search:",
                      on_click=_set_query, args=({"kind": "upload"},))
    with pick_catalog:
        _catalog_picker(ctx, engine)

    query = st.session_state.get(QUERY_KEY)
    if query and query["kind"] == "catalog" and query.get("dataset") not in (None, ctx.dataset.name):
        query = None  # picked in another catalogue: start afresh here rather than say it disappeared
    if not query or (query["kind"] == "upload" and uploaded is None):
        st.info("Upload a photo or pick a product to start.", icon=":material/image_search:")
        return

    left, right = st.columns([1, 4], gap="large")
    with left:
        st.html('<div class="mn-role">Your query</div>')
        if query["kind"] == "upload":
            try:
                vector, thumb = _upload_query(uploaded, engine.model, ctx.run.key)
            except ImageError as exc:
                st.error(f"This file cannot be used as a photo: {exc}", icon=":material/broken_image:")
                return
            with st.container(border=True, key="mn_query_card"):
                st.image(thumb, width="stretch")
                st.html(f'<div class="mn-meta">{html.escape(uploaded.name)}</div>')
        else:
            if query["id"] not in engine.embeddings:
                st.warning("That product is not in this catalog any more.")
                return
            row = _row(info, query["id"])
            with st.container(border=True, key="mn_query_card"):
                widgets.image(ctx.dataset.image_root / query["id"])
                st.html(f'<div class="mn-card-title" title="{html.escape(query["id"])}">'
                        f'<b>{html.escape(items.title(row) or query["id"])}</b></div>'
                        f'<div class="mn-meta">{html.escape(items.details(row))}</div>')
        most = min(50, len(engine))
        # The user's choice (K_WANTED_KEY) is the only state; the widget is drawn from it each run, its default
        # being that choice. A keyed widget fed through session state came back now and then at its own default
        # (1) after an upload redrew the column, and that became the choice for good. The key names the state
        # it was drawn from, so a redraw can only ever offer the same value again.
        shown = min(st.session_state.get(K_WANTED_KEY, 5), most)
        k = st.selectbox("Results", range(1, most + 1), index=shown - 1, key=f"{K_KEY}_{most}_{shown}",
                         help="How many similar products to show.")
        if k != shown:
            # A small catalogue clamps what is shown; the wish is kept, so a larger one shows it again.
            st.session_state[K_WANTED_KEY] = int(k)
        filters = _result_filters(ctx, engine)
    with right:
        if query["kind"] == "upload":
            found = engine.query_vector(vector, k=int(k), filters=filters, query={"image": uploaded.name})
        else:
            found = engine.query_id(query["id"], k=int(k), filters=filters)
        only = f" · only {', '.join(filters.values())}" if filters else ""
        st.html(f'<div class="mn-role">Top {len(found.results)} similar products{html.escape(only)} · '
                f'{found.n_catalog:,} in the catalog · {html.escape(ctx.run.label)}</div>')
        if not found.results:
            st.info("No product of this catalogue passes the filter.", icon=":material/filter_alt_off:")
            return
        if found.close_match is False:
            st.warning("**No close match in this catalogue.** The photo probably shows something this catalogue "
                       "does not sell. The nearest products are listed below anyway, marked as weak.",
                       icon=":material/search_off:")
            st.caption(f"Why: {found.reason}")
        if found.note:
            st.caption(found.note)
        query_product = _row(info, query["id"]).get("product_id") if query["kind"] == "catalog" else None
        _results_grid(found, info, ctx, query_product)


def _result_filters(ctx: Context, engine) -> dict[str, str]:
    """Only results of one category and/or colour (pushed into the search: the top k among those products, not
    the top k filtered afterwards); the choices are the catalogue's own."""
    choices = resources.picker(ctx.dataset, engine)
    filters = {}
    if len(choices.categories) > 1:
        category = st.selectbox("Only category", ["All"] + choices.categories, key="mn_only_category")
        if category != "All":
            filters["category"] = category
    if len(choices.colours) > 1 and choices.colour_column:
        colour = st.selectbox("Only colour", ["All"] + choices.colours, key="mn_only_colour")
        if colour != "All":
            filters[choices.colour_column] = colour
    return filters


def _set_query(query: dict) -> None:
    if query["kind"] == "catalog":  # a product belongs to the catalogue it was picked in
        query = {**query, "dataset": st.session_state.get(DATASET_KEY)}
    st.session_state[QUERY_KEY] = query


def _upload_query(uploaded, model, run_key: str):
    """Embeds an upload once per (file, model weights); reruns (changing k, a click) reuse it. Keyed by the
    weights' fingerprint too: a run that is still training, or resumed, changes its best.keras under the same
    run folder, and the catalogue is then re-embedded; the query must follow."""
    cache = st.session_state.get(UPLOAD_CACHE_KEY)
    key = (uploaded.file_id, run_key, model.fingerprint)
    if cache and cache[0] == key:
        if isinstance(cache[1], ImageError):
            raise cache[1]
        return cache[1]
    try:
        # The browser enforces the uploader's limit, a direct request does not: check before copying the bytes.
        if uploaded.size > MAX_FILE_BYTES:
            widgets.release_upload(uploaded)
            raise ImageError(f"{uploaded.name} is too large ({uploaded.size / 1e6:.1f} MB; at most "
                             f"{MAX_FILE_BYTES >> 20} MB)")
        # One decode (a phone photo's decode is the slowest step of a search) gives the model's pixels, exactly
        # as the catalogue's are decoded (an uploaded catalogue photo finds itself at score 1), and the thumbnail.
        result = model.embed_with_preview(uploaded.getvalue(), THUMB_PX)
    except ImageError as exc:
        st.session_state[UPLOAD_CACHE_KEY] = (key, exc)
        raise
    st.session_state[UPLOAD_CACHE_KEY] = (key, result)
    return result


def _row(info: pd.DataFrame, image_id: str) -> dict:
    if image_id in info.index:
        return {k: str(v) for k, v in info.loc[image_id].items()}
    return {}


def score_html(score: float, match: float | None, weak: bool = False) -> str:
    """A result's score: the match strength ("92% match") with the raw cosine in its tooltip, or the cosine
    itself for an uncalibrated model. ``weak`` (the query has no close match in this catalogue) shows "weak
    match", greyed, with the strength in the tooltip: "95% match" under a "No close match" warning read as a
    contradiction (the verdict also weighs how far the query is from the catalogue, not the strength alone)."""
    if match is None:
        return f'<span class="mn-score" title="cosine similarity {score:.3f}">{score:.3f}</span>'
    if weak:
        tip = f"cosine similarity {score:.3f} · match strength {match:.0%} · no close match in this catalogue"
        return f'<span class="mn-score mn-weak" title="{tip}">weak match</span>'
    return f'<span class="mn-score" title="cosine similarity {score:.3f}">{match:.0%} match</span>'


def _results_grid(found, info: pd.DataFrame, ctx: Context, query_product: str | None = None) -> None:
    hits = found.results
    weak = found.close_match is False
    for start in range(0, len(hits), COLUMNS):
        columns = st.columns(COLUMNS)
        for offset, (column, hit) in enumerate(zip(columns, hits[start:start + COLUMNS])):
            rank = start + offset + 1
            row = _row(info, hit.id)
            with column:
                with st.container(border=True, key=f"mn_hit_{rank}"):
                    widgets.image(ctx.dataset.image_root / hit.id)
                    name = html.escape(items.title(row) or hit.id)
                    # The id stays in the tooltip: the owner may need it, a shopper needs the title.
                    head = (f'<div class="mn-card-title" title="{html.escape(hit.id)}"><span class="mn-rank">'
                            f'#{rank}</span> <b>{name}</b></div>')
                    same = ("same product" if query_product and row.get("product_id") == query_product
                            and not items.names_a_class(row) else "")
                    url = items.link(row)
                    more = html.escape(items.details(row))
                    if url:
                        more += (" · " if more else "") + (f'<a href="{html.escape(url)}" target="_blank" '
                                                          'rel="noopener noreferrer">product page</a>')
                    # A "weak" tag beside "weak match" said it twice; the score says it.
                    meta = (f"{score_html(hit.score, hit.match, weak)} {more} "
                            + widgets.tags(row.get("view", ""), same))
                    st.html(f"{head}<div class='mn-meta mn-card-meta'>{meta}</div>")
                    st.button("Similar", key=f"mn_similar_{rank}", icon=":material/search:", width="stretch",
                              on_click=_set_query, args=({"kind": "catalog", "id": hit.id},),
                              help="Search with this product")


def _catalog_picker(ctx: Context, engine) -> None:
    everything = resources.picker(ctx.dataset, engine)
    c1, c0, c2, c3 = st.columns([2, 1.6, 4, 1.4], vertical_alignment="bottom")
    category = (c1.selectbox("Category", ["All"] + everything.categories, key="mn_pick_category")
                if everything.categories else "All")
    colour = (c0.selectbox("Colour", ["All"] + everything.colours, key="mn_pick_colour")
              if everything.colours else "All")
    choices = resources.picker(ctx.dataset, engine, category, colour)
    ids = choices.ids
    if not ids:
        st.caption("No products of this category and colour.")
        return
    if choices.total > len(ids):
        st.caption(f"Showing {len(ids):,} of {choices.total:,} images; upload a photo to search from any image.")
    current = st.session_state.get(QUERY_KEY) or {}
    index = ids.index(current["id"]) if current.get("kind") == "catalog" and current.get("id") in ids else 0
    labels = choices.labels
    choice = c2.selectbox("Product", ids, index=index, format_func=lambda i: labels.get(i, i), key="mn_pick_product")
    c3.button("Search", icon=":material/search:", key="mn_pick_go", width="stretch", type="primary",
              on_click=_set_query, args=({"kind": "catalog", "id": choice},))
    st.button("Surprise me", icon=":material/shuffle:", key="mn_pick_random", type="tertiary",
              on_click=_set_query, args=({"kind": "catalog", "id": random.choice(ids)},))
