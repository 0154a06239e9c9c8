"""Small presentational helpers shared by the pages: the error boundary, the page style, image grids and captions."""

from __future__ import annotations

import contextlib
import html
import io
import logging
from pathlib import Path

import streamlit as st

from mildnet.errors import MildnetError
from mildnet.ui.thumbnails import thumbnail

log = logging.getLogger("mildnet.ui")


@contextlib.contextmanager
def error_boundary():
    """Shows a MildnetError as its one-line message and anything else as a short note (traceback to the
    server log only). Streamlit's rerun/stop signals are BaseExceptions and pass through."""
    try:
        yield
    except MildnetError as exc:
        st.error(str(exc), icon=":material/error:")
    except OSError as exc:  # a full or read-only disk, a vanished folder: the server's state, said plainly
        log.warning("page failed: %s", exc)
        st.error(f"The server could not read or write a file: {exc.strerror or exc}. Its owner can free disk "
                 "space or fix the folder's permissions, then reload.", icon=":material/error:")
    except Exception as exc:  # noqa: BLE001 - the boundary: no traceback reaches the browser
        log.exception("page failed")
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        st.error(f"Something went wrong ({type(exc).__name__}{': ' + text if text else ''}). "
                 "The details are in the server log.", icon=":material/error:")


_CSS = """
<style>
/* Product images sit on white cards with a hairline border, like a shop's listing grid. */
[data-testid="stImage"] img { border-radius: 10px; background: #fff; }
.mn-hero { padding: 0.2rem 0 0.6rem 0; }
.mn-hero h1 { font-size: 2.1rem; margin: 0; }
.mn-hero p { color: #5f6368; font-size: 1.05rem; margin: 0.2rem 0 0 0; }
.mn-score { font-weight: 600; color: #d6336c; cursor: help; white-space: nowrap; }
.mn-score.mn-weak { color: #868e96; }
.mn-meta { color: #6b7280; font-size: 0.82rem; line-height: 1.25; }
.mn-rank { display: inline-block; min-width: 1.6rem; padding: 0 0.35rem; border-radius: 0.6rem;
           background: #fde2ec; color: #a61e4d; font-weight: 600; font-size: 0.8rem; text-align: center; }
.mn-tag { display: inline-block; padding: 0 0.45rem; margin: 0 0.2rem 0.2rem 0; border-radius: 0.6rem;
          background: #f1f3f5; color: #495057; font-size: 0.75rem; }
.mn-tag.in-class { background: #fff3bf; color: #8a6100; }
.mn-tag.out-of-class { background: #e7f5ff; color: #1864ab; }
.mn-tag.same-product, .mn-tag.same { background: #d3f9d8; color: #2b8a3e; }
/* Even cards: a title of two lines at most (and at least: short ones keep the height) whatever the catalogue. */
.mn-card-title { display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical; overflow: hidden;
  line-height: 1.35em; height: 2.7em; }
.mn-tag.weak { background: #f1f3f5; color: #868e96; font-style: italic; }
/* Equal-height result cards whatever the length of the description (longer ones are cut, not taller). */
.mn-card-meta { height: 4em; overflow: hidden; }
.mn-role { font-size: 0.78rem; font-weight: 600; letter-spacing: 0.04em; text-transform: uppercase; color: #868e96; }
</style>
"""


def page_style() -> None:
    st.html(_CSS)


def hero(title: str, subtitle: str) -> None:
    st.html(f'<div class="mn-hero"><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></div>')


def tags(*values: str) -> str:
    """Inline tag chips (HTML); empty values are skipped."""
    out = []
    for value in values:
        if value and value != "unknown":
            cls = value if value in ("in-class", "out-of-class", "same-product", "weak") else (
                "same-product" if value == "same product" else "")
            out.append(f'<span class="mn-tag {cls}">{html.escape(str(value))}</span>')
    return "".join(out)


def count(n: int, noun: str) -> str:
    """``1 photo``, ``1,200 photos`` (nouns that take an -s)."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def describe_item(row: dict | None) -> str:
    """A catalog row as a short human description (category, colour, pattern, view)."""
    if not row:
        return ""
    bits = [row.get(k, "") for k in ("category", "colour", "pattern")]
    return " · ".join(b for b in bits if b)


def image(path: str | Path, caption: str | None = None) -> None:
    """A catalogue photo in a grid, as its cached thumbnail (never the full-size original)."""
    path = Path(path)
    if not path.is_file():
        st.warning(f"missing image: {path.name}", icon=":material/broken_image:")
        return
    try:
        shown = thumbnail(path)
    except (OSError, ValueError) as exc:
        st.warning(f"unreadable image: {path.name} ({type(exc).__name__})", icon=":material/broken_image:")
        return
    st.image(str(shown), caption=caption, width="stretch")


def release_upload(uploaded) -> None:
    """Drop an uploaded file's bytes from the server's memory now. Streamlit keeps every upload of a session
    until the browser removes it or the session ends (two minutes after its tab closes): a 300 MB zip already
    unpacked or copied to disk, or a photo refused for its size, would otherwise stay in memory that long.
    Streamlit's chat input frees its files the same way; where the runtime offers no such call, nothing happens.

    The session also keeps the uploader's value (an ``UploadedFile`` sharing the upload's bytes; the widget hands
    the page a copy) until the browser's next message, so a tab closed right after the upload would keep the
    bytes until the session ends: that value, and ``uploaded``, are emptied too (name, size, file_id stay)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    remove = getattr(getattr(ctx, "uploaded_file_mgr", None), "remove_file", None)
    if uploaded is None or remove is None:
        return
    remove(ctx.session_id, uploaded.file_id)
    held = [uploaded]
    for key in list(st.session_state):
        with contextlib.suppress(Exception):  # a value that cannot be read is no upload of ours
            value = st.session_state[key]
            held += [v for v in (value if isinstance(value, list) else [value])
                     if isinstance(v, io.BytesIO) and getattr(v, "file_id", None) == uploaded.file_id]
    for value in held:
        with contextlib.suppress(BufferError, ValueError):  # a view still open on it, or already closed
            value.seek(0)
            value.truncate(0)


def session_id() -> str | None:
    """This script run's Streamlit session id (None outside a script run)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return None if ctx is None else ctx.session_id


def session_active(session_id: str) -> bool | None:
    """Whether this server still has the session ``session_id`` connected; None where that cannot be asked.

    Through ``streamlit.runtime.get_instance().is_active_session`` (the runtime's thread-safe query, stable
    since Streamlit 1.12; no public ``st.`` call says whether another session lives). A session whose tab
    closed is no longer active but can still be resumed for ``server.disconnectedSessionTTL`` seconds: callers
    add that wait (:func:`mildnet.data.staging.sweep_held`). A test harness's stand-in runtime answers None."""
    from streamlit import runtime

    if not runtime.exists():
        return None
    try:
        active = runtime.get_instance().is_active_session(session_id)
    except Exception:  # noqa: BLE001 - a runtime without the call: cannot tell
        return None
    return active if isinstance(active, bool) else None
