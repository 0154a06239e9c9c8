"""The frame of every page: style, sidebar, dataset preparation, and the error boundary.

Pages call :func:`run_page` with their body; a :class:`MildnetError` anywhere becomes a red box with its
one-line message, and any other exception becomes a short message (the traceback goes to the server
log only), so the UI never shows a traceback.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import streamlit as st
from streamlit.runtime.scriptrunner import script_runner

from mildnet.data.user_datasets import refresh_dataset
from mildnet.errors import MildnetError
from mildnet.ui import data as uidata
from mildnet.ui import resources, sidebar, widgets
from mildnet.ui.runs import Run


def keep_keras_session() -> None:
    """Stops Streamlit from calling ``keras.backend.clear_session()`` after every script run.

    Streamlit does that for scripts that build a model on each run; this app keeps its models in
    ``st.cache_resource``, and the reset (a full ``gc.collect`` of a TensorFlow-sized heap, and TensorFlow's
    kernel cache emptied, so the next upload re-creates every kernel) measured ~0.5 s of every rerun, most of
    an upload's time to results in the browser. Matplotlib figures are still closed as Streamlit does.
    """
    current = getattr(script_runner, "_clean_problem_modules", None)
    if current is None or getattr(current, "keeps_keras_session", False):
        return

    def clean_problem_modules() -> None:
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            plt.close("all")

    clean_problem_modules.keeps_keras_session = True
    script_runner._clean_problem_modules = clean_problem_modules


keep_keras_session()


def one_blas_thread_per_query() -> None:
    """Each search's matrix product on one BLAS thread: sessions are answered from threads at once, and OpenBLAS's
    own threads per call then spin against each other. Measured in-process (2 cores, other jobs running): 10k x
    256, one query 8.2 ms -> 1.2 ms, 8 threads at once 37 -> 1,450 queries/s; 100k, 17 -> 15 ms and 14 -> 86 q/s
    (`serve --blas-threads`, bench/bench_api.py). TensorFlow (embedding, training) keeps its own thread pools."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


one_blas_thread_per_query()  # once per server process: this module is imported once


@dataclass
class Context:
    dataset: uidata.Dataset
    run: Run | None
    runs: list[Run]


def run_page(body: Callable, needs_dataset: bool = True, hero: tuple[str, str] | None = None) -> None:
    """Draws the page frame and calls ``body(Context)``; with ``needs_dataset=False`` it calls
    ``body(selection)`` without preparing the selected dataset (the page that adds a catalogue must work
    while the selected one is unavailable). ``hero`` (title, subtitle) is drawn first: on a fresh server the
    sidebar (TensorFlow's import) and the first use of a dataset take many seconds before the body starts."""
    widgets.page_style()
    if hero is not None:
        widgets.hero(*hero)
    with widgets.error_boundary():
        selection = sidebar.render()
        if not needs_dataset:
            body(selection)
            return
        ds = ensure_dataset(selection.dataset)
        ds = refresh_if_changed(ds)
        body(Context(dataset=ds, run=selection.run, runs=selection.runs))


def refresh_if_changed(ds: uidata.Dataset) -> uidata.Dataset:
    """A catalogue added from a folder follows the folder: new, removed or replaced photos are taken in (views
    and triplets for those only) before the page uses it; the embeddings then update incrementally."""
    try:
        changes = resources.folder_changes(ds.name)
    except MildnetError as exc:
        # The catalogue still works from our copy of the photos: say why it cannot follow the folder.
        st.warning(f"{exc}; showing the catalogue as it was added.", icon=":material/folder_off:")
        return ds
    if not changes:
        return ds
    with st.status(f"Your folder changed: {changes.describe()} photos. Updating **{ds.name}**…",
                   expanded=True) as status:
        bar = st.progress(0.0, text="Starting…")
        result = refresh_dataset(ds.name, progress=progress_to(bar))
        note = f" ({len(result.left_out)} unreadable, left out)" if result.left_out else ""
        status.update(label=f"**{ds.name}** updated from your folder: {changes.describe()}{note}; "
                            f"{widgets.count(result.photos, 'photo')}", state="complete", expanded=False)
    resources.forget_folder_changes()
    return resources.dataset(ds.name)


def progress_to(bar, min_interval: float = 0.1):
    """A ``progress(done, total, message)`` callback drawing on ``bar`` (an ``st.progress``), at most every
    ``min_interval`` seconds unless the message changes or the work is done: each redraw is a message to the
    browser, and one per rendered sample image (1,200) cost the first start ~2 s."""
    last = {"at": float("-inf"), "message": None}

    def progress(done: int, total: int | None, message: str = "") -> None:
        now = time.monotonic()
        finished = bool(total) and done >= total
        if not finished and message == last["message"] and now - last["at"] < min_interval:
            return
        last.update(at=now, message=message)
        label = message or "working"
        if total:
            bar.progress(min(1.0, done / total), text=f"{label}: {done:,}/{total:,}")
        else:
            bar.progress(0.0, text=f"{label}…")

    return progress


def ensure_dataset(name: str) -> uidata.Dataset:
    """The dataset, prepared first if needed (the sample is rendered on first use) with visible progress."""
    if uidata.is_ready(name, resources.splits(name)):
        return resources.dataset(name)
    slot = st.empty()  # the box goes once the dataset is ready: a one-off step, not part of the page
    with slot.status(f"Preparing dataset **{name}** (first use)…", expanded=True) as status:
        bar = st.progress(0.0, text="Starting…")
        try:
            uidata.prepare(name, progress=progress_to(bar))
        except MildnetError:
            status.update(label=f"Dataset **{name}** is not available", state="error")
            bar.empty()
            st.caption("With a local copy of its files (an archive or a folder), prepare it from the command line, "
                       "then reload this page:")
            st.code(f"python -m mildnet data fetch {name} --from PATH", language="bash")
            raise
        status.update(label=f"Dataset **{name}** is ready", state="complete", expanded=False)
    slot.empty()
    return resources.dataset(name)


def ensure_engine(run: Run | None, ds: uidata.Dataset):
    """The search engine of ``run`` over catalogue ``ds``, its embeddings brought up to date first (progress
    shown) when the catalogue changed or was never embedded with this model; None without a run."""
    if run is None:
        return None
    found = resources.engine(run, ds)
    changes = resources.pending(found)
    if changes is not None and changes.up_to_date:
        return found
    return build_embeddings(run, ds)


def build_embeddings(run: Run, ds: uidata.Dataset):
    """Embeds what the engine is missing (everything the first time) with a progress bar; the engine."""
    found = resources.engine(run, ds)
    changes = resources.pending(found)
    updating = changes is not None and changes.status == "updated"
    what = (f"Catalog changed since it was embedded ({changes.describe()}): updating the embeddings"
            if updating else f"Embedding the **{ds.name}** catalog")
    slot = st.empty()
    with slot.status(f"{what} with {run.label}…", expanded=True) as status:
        bar = st.progress(0.0, text="Loading the model…")

        def progress(done: int, total: int) -> None:
            bar.progress(min(1.0, done / max(total, 1)), text=f"Embedded {done:,} of {total:,} images")

        try:
            found.update(progress, batch_size=int(os.environ.get("MILDNET_EMBED_BATCH", "64")))
        except MildnetError:
            status.update(label="Embedding the catalog failed", state="error")
            raise
        resources.forget_pending()
        done = f"Catalog updated ({changes.describe()})" if updating else "Catalog embedded"
        status.update(label=f"{done}: {len(found):,} images", state="complete", expanded=False)
    if not updating:
        slot.empty()  # a first embedding is a one-off step; an update's "N new, M removed" stays to be read
    return found


def no_model_message(ctx: Context) -> None:
    st.info(
        f"There is no trained model for **{ctx.dataset.name}** yet. Open **Train a model** in the sidebar: "
        "`tiny_cnn` at 64 px trains in about a minute on a CPU. The shipped real-photo model "
        "(`mildnet/pretrained/real/`), the default for every dataset, is missing from this installation.",
        icon=":material/info:",
    )
