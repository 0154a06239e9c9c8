"""The frame of every page: style, sidebar, dataset preparation, and the error boundary.

Pages call :func:`run_page` with their body; a :class:`MildnetError` anywhere becomes a red box with its
one-line message, and any other exception becomes a short message (the traceback goes to the server
log only), so the UI never shows a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import streamlit as st

from mildnet.errors import MildnetError
from mildnet.ui import data as uidata
from mildnet.ui import resources, sidebar, widgets
from mildnet.ui.runs import Run


@dataclass
class Context:
    dataset: uidata.Dataset
    run: Run | None
    runs: list[Run]


def run_page(body: Callable[[Context], None]) -> None:
    from mildnet.ui import navigation

    navigation.ensure_entrypoint()
    widgets.page_style()
    with widgets.error_boundary():
        selection = sidebar.render()
        ds = ensure_dataset(selection.dataset)
        body(Context(dataset=ds, run=selection.run, runs=selection.runs))


def ensure_dataset(name: str) -> uidata.Dataset:
    """The dataset, prepared first if needed (the sample is rendered on first use) with visible progress."""
    if uidata.is_ready(name):
        return resources.dataset(name)
    with st.status(f"Preparing dataset **{name}** (first use)…", expanded=True) as status:
        bar = st.progress(0.0, text="Starting…")

        def progress(done: int, total: int | None, message: str = "") -> None:
            label = message or "working"
            if total:
                bar.progress(min(1.0, done / total), text=f"{label}: {done:,}/{total:,}")
            else:
                bar.progress(0.0, text=f"{label}…")

        try:
            uidata.prepare(name, progress=progress)
        except MildnetError:
            status.update(label=f"Dataset **{name}** is not available", state="error")
            bar.empty()
            st.caption("With a local copy of its files (an archive or a folder), prepare it from the command line, "
                       "then reload this page:")
            st.code(f"python -m mildnet data fetch {name} --from PATH", language="bash")
            raise
        status.update(label=f"Dataset **{name}** is ready", state="complete", expanded=False)
    return resources.dataset(name)


def ensure_searcher(ctx: Context, *, quiet_when_cached: bool = True):
    """The catalog searcher of the selected run; embeds the catalog first (progress shown) when needed."""
    if ctx.run is None:
        return None
    found = resources.cached_searcher(ctx.run, ctx.dataset)
    if found is not None:
        return found
    return build_embeddings(ctx.run, ctx.dataset)


def build_embeddings(run: Run, ds: uidata.Dataset):
    with st.status(f"Embedding the **{ds.name}** catalog with {run.label}…", expanded=True) as status:
        bar = st.progress(0.0, text="Loading the model…")

        def progress(done: int, total: int) -> None:
            bar.progress(min(1.0, done / max(total, 1)), text=f"Embedded {done:,} of {total:,} images")

        try:
            found = resources.searcher(run, ds, progress=progress)
        except MildnetError:
            status.update(label="Embedding the catalog failed", state="error")
            raise
        status.update(label=f"Catalog embedded: {len(found):,} images", state="complete", expanded=False)
    return found


def no_model_message(ctx: Context) -> None:
    st.info(
        f"There is no trained model for **{ctx.dataset.name}** yet. Open **Train a model** in the sidebar: "
        "`tiny_cnn` at 64 px trains in about a minute on a CPU. The shipped real-photo model "
        "(`mildnet/pretrained/real/`), the default for every dataset, is missing from this installation.",
        icon=":material/info:",
    )
