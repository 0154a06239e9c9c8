"""Add a catalogue page: a folder on the machine running the app, an uploaded zip, or the demo catalogue.

Each way ends the same: the dataset is registered (as ``python -m mildnet data add``), embedded with the
default model with visible progress, selected in the sidebar, and the Search page works on it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import streamlit as st

from mildnet.errors import DataError, DownloadError, MildnetError
from mildnet.ui import catalogue, layout, owner, resources, settings, widgets
from mildnet.ui import data as uidata
from mildnet.ui.sidebar import DATASET_KEY, Selection

DONE_KEY = "mn_add_done"  # the message of the catalogue just added, shown after the rerun that selects it
ZIP_KEY = "mn_add_zip"
# The session's uploaded zip, held on disk until it is added: {"file_id", "name", "size", "path"}; "path" is None once
# Add has read it ("failed" if not added), or with "error" (it could not be kept) or "gone" (its file vanished).
# Never its bytes: those leave the server's memory in the run that receives them.
HELD_KEY = "mn_add_zip_held"


# Drawn by layout.run_page before anything slow (the sidebar, preparing the data): the first thing on screen.
HERO = ("Add a catalogue", "Your own product photos, searchable in a few minutes: a folder on this "
        "machine or a zip of photos. Class sub-folders (or a labels CSV) give product groups; a flat "
        "folder works too (each photo is its own product).")


def render(selection: Selection) -> None:
    if not owner.owner_only("add catalogues"):
        return
    done = st.session_state.pop(DONE_KEY, None)
    if done:
        message, notes = done
        st.success(message, icon=":material/check_circle:")
        for note in notes:
            st.warning(note, icon=":material/filter_alt:")
        st.page_link("pages/search.py", label="Search it now", icon=":material/image_search:")

    folder_tab, zip_tab, demo_tab = st.tabs([":material/folder: Folder on this machine",
                                             ":material/folder_zip: Upload a zip",
                                             ":material/apparel: Demo catalogue"])
    taken = resources.names()
    with folder_tab:
        _folder_form(taken)
    with zip_tab:
        _zip_form(taken)
    with demo_tab:
        _demo()


def _folder_form(taken: list[str]) -> None:
    roots = settings.add_roots()
    if roots is None and not settings.served_locally(st.get_option("server.address")):
        st.info("This app is served to other machines: folders of the server's disk can be added here only under "
                "the folders its owner lists in MILDNET_ADD_ROOTS. Upload a zip instead, or add the folder with "
                "`python -m mildnet data add` on the server.", icon=":material/lock:")
    elif roots:
        st.caption("Folders and labels files under: " + ", ".join(f"`{root}`" for root in roots))
    with st.form("mn_add_folder_form", border=False):
        folder = st.text_input("Folder", key="mn_add_folder", placeholder="/home/shop/photos",
                               help="A path on the machine running the app. It is only read: our files go to "
                                    "data/<name>/ (photos hard-linked, not copied).")
        name = st.text_input("Name", key="mn_add_folder_name", placeholder="leave empty: the folder's name")
        labels = st.text_input("Labels CSV (optional)", key="mn_add_labels",
                               help="image, product_id (or label), optional category and split columns.")
        submitted = st.form_submit_button("Add this folder", icon=":material/add:", type="primary", key="mn_add_go")
    if submitted:
        chosen = name.strip() or catalogue.suggest_name(folder, taken)
        local = settings.served_locally(st.get_option("server.address"))
        _run_add(chosen, lambda progress: catalogue.add_folder(chosen, folder, labels, progress=progress,
                                                               served_locally=local))


def _zip_form(taken: list[str]) -> None:
    limit = st.get_option("server.maxUploadSize")
    upload = st.file_uploader(f"Zip of product photos (at most {limit} MB)", type=["zip"], key=ZIP_KEY,
                              help="Only the photos are unpacked (jpg, png, webp, bmp, gif); anything else, links and "
                                   "paths leaving the folder are skipped and listed.")
    held = _held_upload(upload)
    name = st.text_input("Name", key="mn_add_zip_name", placeholder="leave empty: the zip's name")
    ready = held is not None and held.get("path") is not None
    if st.button("Add this zip", icon=":material/add:", type="primary", key="mn_add_zip_go", disabled=not ready):
        chosen = name.strip() or catalogue.suggest_name(held["name"], taken)
        try:
            catalogue.check_name(chosen)
        except DataError as exc:  # nothing was read yet: the held zip stays for a better name
            st.error(str(exc), icon=":material/error:")
            return
        _run_add(chosen, lambda progress: _add_held(chosen, held, progress))


def _held_upload(upload) -> dict | None:
    """The zip this session uploaded, kept in a file of its own instead of the server's memory (issue 18 F12:
    Streamlit holds an upload until the session ends, two minutes after its tab closes). A new upload is copied
    to disk and released from memory in the run that receives it, replacing the session's previous one; later
    reruns, which no longer get its bytes from the uploader, show and add the file. Emptying the uploader (or
    leaving the page, which empties it) discards it; a session that ends without either leaves it to the sweep
    at the next upload or add (:func:`mildnet.data.staging.sweep_held`)."""
    held = st.session_state.get(HELD_KEY)
    if upload is not None and (held is None or held["file_id"] != upload.file_id):
        held = _hold(upload, held)
    elif upload is not None and len(upload.getvalue()):
        widgets.release_upload(upload)  # handed back with its bytes again: they are on disk already
    # What the uploader shows: the file, or (its bytes released) Streamlit's DeletedFile with the same file_id;
    # None once the owner removed it.
    shown = getattr(st.session_state.get(ZIP_KEY), "file_id", None)
    if held is not None and shown != held["file_id"]:
        if held.get("path"):
            catalogue.discard_upload(held["path"])
        st.session_state.pop(HELD_KEY, None)
        return None
    if held is None:
        return None
    if held.get("path") and not Path(held["path"]).is_file():
        held = {**held, "path": None, "gone": True}  # swept (the session was taken for ended), or deleted by hand
        st.session_state[HELD_KEY] = held
    if held.get("error"):
        st.error(held["error"], icon=":material/error:")
    elif held.get("failed"):  # the reason was shown under the status box of that try
        st.caption(f"**{held['name']}** was not added; upload it (or a corrected zip) again.")
    elif held.get("gone"):
        st.warning(f"**{held['name']}** is no longer on the server; upload it again.", icon=":material/folder_off:")
    elif held.get("path"):
        with contextlib.suppress(OSError):  # seen: the sweep leaves a session's file alone while it reruns
            os.utime(held["path"])
        st.caption(f":material/folder_zip: **{held['name']}** ({_size(held['size'])}) is on the server, "
                   "ready to add.")
    return held


def _hold(upload, previous: dict | None) -> dict:
    """Copy ``upload`` to this session's held file (replacing ``previous``), then drop it from memory, whatever
    the outcome: a disk that cannot take it is said in one line and leaves no file."""
    session = widgets.session_id() or "local"
    record = {"file_id": upload.file_id, "name": upload.name, "size": upload.size, "path": None}
    try:
        _sweep_held(session)
        held = catalogue.hold_upload(upload, upload.name, upload.size, session,
                                     previous=(previous or {}).get("path"))
    except DataError as exc:
        record["error"] = str(exc)
    else:
        record["path"] = str(held.path)
    finally:
        widgets.release_upload(upload)
    st.session_state[HELD_KEY] = record
    return record


def _sweep_held(session: str) -> None:
    """Held zips of ended sessions (disconnected for longer than Streamlit keeps them for a reconnect) or ended
    server processes: swept at every upload and add."""
    catalogue.sweep_held_uploads(widgets.session_active, float(st.get_option("server.disconnectedSessionTTL")),
                                 keep_session=session)


def _add_held(name: str, held: dict, progress):
    """Add the held zip, then delete it whatever the outcome (a failed one is uploaded again)."""
    st.session_state[HELD_KEY] = {**held, "path": None}
    try:
        _sweep_held(widgets.session_id() or "local")
        return catalogue.add_zip(name, Path(held["path"]), progress=progress)
    except BaseException:
        st.session_state[HELD_KEY] = {**held, "path": None, "failed": True}
        raise
    finally:
        catalogue.discard_upload(held["path"])


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n / 1e3:,.0f} kB" if n >= 1000 else f"{n} bytes"


def _run_add(name: str, work) -> None:
    """Registration, then embedding with the default model, each with progress; then select the dataset."""
    failure = None
    with st.status(f"Adding **{name}**…", expanded=True) as status:
        bar = st.progress(0.0, text="Starting…")
        try:
            outcome = work(layout.progress_to(bar))
        except MildnetError as exc:
            failure = str(exc)
            status.update(label=f"**{name}** was not added", state="error", expanded=False)
        else:
            added, extracted = outcome if isinstance(outcome, tuple) else (outcome, None)
            status.update(label=f"**{name}** registered: {widgets.count(added.photos, 'photo')}, "
                                f"{widgets.count(sum(added.triplets.values()), 'triplet')} ({added.seconds:.0f} s)",
                          state="complete", expanded=False)
    if failure is not None:
        # Below the status box, not inside it: a finished status shows collapsed, and the reason must be seen.
        st.error(failure, icon=":material/error:")
        return
    # Shown after the rerun that selects the dataset (a rerun clears this run's elements).
    notes = []
    if extracted is not None and extracted.skipped:
        notes.append(f"Skipped {len(extracted.skipped):,} entries of the zip: {extracted.summary()}")
    if added.left_out:
        notes.append(f"Left out {widgets.count(len(added.left_out), 'photo')}: "
                     f"{catalogue.left_out_summary(added.left_out)}")
    resources.forget_runs()
    runs = resources.runs(name)
    if runs:
        layout.build_embeddings(runs[0], resources.dataset(name))
    kind = ("each photo is its own product (instance-level triplets)" if added.kind == "instance"
            else f"{added.products:,} products")
    if not sum(added.triplets.values()):
        kind += "; too few photos for any triplet, so it can be searched but not trained or evaluated on"
    st.session_state[DONE_KEY] = (f"**{name}** is ready and selected: {widgets.count(added.photos, 'photo')}, {kind}."
                                  + ("" if runs else " Train a model from the sidebar to search it."), notes)
    st.session_state[DATASET_KEY] = name
    st.rerun()


def _demo() -> None:
    if not catalogue.demo_available():
        st.caption(f"The registry lists no {catalogue.DEMO} dataset.")
        return
    name = catalogue.DEMO
    st.markdown(f"**{name}**: 3,781 real clothing photos in 10 classes (CC0), from {catalogue.demo_url()}")
    if uidata.is_ready(name):
        st.caption("Already on this machine.")
        if st.button("Use it", key="mn_demo_use", icon=":material/check:"):
            _select_demo(name)
        return
    local = st.text_input("Or a local copy on this server (the archive, or its extracted folder)",
                          key="mn_demo_local", placeholder="/home/shop/clothing-dataset-small.zip",
                          help="For a server without internet access: copy the archive from the address above.")
    if not st.button("Use the local copy" if local.strip() else "Download it", key="mn_demo_go",
                     icon=":material/download:", type="primary",
                     help="About 70 MB; an interrupted download resumes where it stopped."):
        return
    failure = None
    with st.status(f"Fetching **{name}**…", expanded=True) as status:
        bar = st.progress(0.0, text="Copying…" if local.strip() else "Connecting…")
        try:
            catalogue.fetch_demo(progress=layout.progress_to(bar), source=local.strip() or None,
                                 served_locally=settings.served_locally(st.get_option("server.address")))
        except DownloadError as exc:
            failure = catalogue.offline_message(exc) if not local.strip() else str(exc)
        except MildnetError as exc:
            failure = str(exc)
        bar.empty()  # a stale "Connecting…" bar under a failure would read as still trying
        if failure is not None:
            status.update(label=f"**{name}** could not be fetched", state="error", expanded=False)
        else:
            status.update(label=f"**{name}** is on this machine", state="complete", expanded=False)
    if failure is not None:
        # Below the (collapsed) status box, where it is seen: the way out is in the message.
        st.error(failure, icon=":material/cloud_off:")
        return
    runs = resources.runs(name)
    if runs:
        layout.build_embeddings(runs[0], resources.dataset(name))
    _select_demo(name)


def _select_demo(name: str) -> None:
    st.session_state[DONE_KEY] = (f"**{name}** is ready and selected: search it, or train a model on it from "
                                  "the sidebar.", [])
    st.session_state[DATASET_KEY] = name
    st.rerun()
