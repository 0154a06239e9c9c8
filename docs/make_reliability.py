"""Render docs/reliability.md from the hostile-input matrix's own parameter tables (tests/test_hostile_inputs.py)
and the property tests (tests/test_properties.py), so the document cannot drift from what the tests assert.

    python docs/make_reliability.py          # rewrite docs/reliability.md
    python docs/make_reliability.py --check  # exit 1 if it is stale (tests/test_hostile_inputs.py does the same)
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# Hand-written: what the app exposes to the network and how to run it for others (not a table of the tests, but
# every statement here is checked by the test named beside it).
SERVING = """## Serving the app to others

What a running app exposes, and what keeps it safe when others can reach it:

- **Where it listens.** `.streamlit/config.toml` binds `127.0.0.1`: only this machine can open it. To serve
  others, start it with `streamlit run app.py --server.address 0.0.0.0` behind HTTPS.
- **Owner and shoppers.** Adding and removing catalogues, training (CPU), evaluating and publishing are the
  owner's: signed in through Streamlit's OIDC (`[auth]` in the secrets), or with the owner password
  (`MILDNET_OWNER_PASSWORD` or the secrets), or, with neither configured, a browser on the server itself (a
  loopback connection without proxy headers). Shoppers get the published catalogue and model and see only Home
  and Search (`test_owner_publishes_and_a_shopper_gets_it_across_a_restart`,
  `test_a_shopper_opening_an_owner_page_is_told_it_is_the_owners`).
- **The server's disk.** "Add a catalogue" takes a folder and a labels CSV of the server's disk. Served beyond
  this machine (`server.address` not a loopback address), it reads none unless `MILDNET_ADD_ROOTS` lists the
  folders they may come from (`os.pathsep`-separated; paths are resolved, links included, before the check);
  zip uploads always work (`test_folders_and_labels_only_under_the_owners_roots`). A file that is not a
  labels CSV is refused without showing its content
  (`test_a_labels_file_that_is_not_a_csv_is_refused_without_showing_its_content`); a folder holding links
  that leave it, dangle or loop is refused without naming where they lead
  (`test_unsafe_links_lists_links_leaving_the_root_dangling_or_looping`).
- **Uploads.** The server accepts requests up to `server.maxUploadSize` (300 MB, sized for catalogue zips). A search
  photo over 20 MB is refused from its size before its bytes are copied and is dropped from memory
  (`test_a_refused_oversized_upload_leaves_the_servers_memory_at_once`). A zip uploaded on "Add a catalogue" leaves
  the server's memory in the run that receives it, added or not: it is held on disk instead, as
  `data/uploads/.SESSION.held-PID-HEX.zip`
  (`test_a_zip_uploaded_but_never_added_leaves_memory_at_once_and_is_held_on_disk`,
  `test_a_real_server_holds_an_upload_on_disk_not_in_memory_and_adds_it`), deleted once Add has read it, added or
  not (`test_add_reads_the_held_zip_and_deletes_it`, `test_bad_zip_is_one_clear_error_and_leaves_nothing`) or when
  the owner empties the uploader, replaced by the session's next upload
  (`test_a_second_upload_replaces_the_sessions_held_zip`), and otherwise swept by the next upload or add once the
  server process that held it is gone, or once Streamlit no longer has its session connected and the page has not
  shown it for `server.disconnectedSessionTTL` (120 s)
  (`test_held_zips_of_ended_sessions_or_processes_are_swept_by_the_next_upload_or_add`); a disk that cannot take it
  is one line and leaves nothing (`test_a_full_disk_while_holding_an_upload_is_one_line_and_leaves_nothing`). The
  photo being searched lives until the session ends (two minutes after its tab closes). A zip unpacks at most
  200,000 files and 4 GB, 64 MB a photo, each member judged on its own (compression ratio, name); images other than
  JPEG over 16 Mpx, and any over 50 Mpx, are refused before decoding (the Images table above;
  `test_bad_upload_shows_a_clear_error`).
- **Removing.** `data remove` (and the page) deletes only the dataset's own files and the folder the app
  unpacked for it, never a folder of the user's, even under `data/uploads/`
  (`test_remove_leaves_photos_under_uploads_that_the_app_did_not_unpack_for_this_dataset`).
- **Interruptions.** SIGTERM (`docker stop`, systemd) stops a CLI command like Ctrl-C: cleanup runs, exit 143;
  a training run stops after its step and can be resumed
  (`test_ctrl_c_or_sigterm_stops_training_cleanly_and_the_run_can_be_resumed`).
  What a killed process leaves (staging folders, an upload's temporary zip, a store writer's temporary folder)
  carries its pid and is removed by the next add, upload or write once that process is gone
  (`test_staging_left_by_a_killed_add_is_swept_by_the_next_one`,
  `test_an_upload_stopped_by_a_server_shutdown_leaves_nothing_in_the_names_way`). Registry and dataset locks
  time out with a message naming the lock (`test_a_held_registry_lock_times_out_with_a_message_naming_it`).
"""


def render() -> str:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests import test_hostile_inputs as matrix
    from tests import test_properties as properties

    total = sum(len(table) for _, _, table, _ in matrix.TABLES)
    lines = [
        "# Reliability: hostile inputs and what happens",
        "",
        "<!-- generated by docs/make_reliability.py from the tests' parameter tables; do not edit by hand -->",
        "",
        f"Every row below is one parametrised case of `tests/test_hostile_inputs.py` ({total} cases), generated from",
        "the test's own table: \"expected\" is what the test asserts, so whenever the suite passes it is also the",
        "observed behaviour. `test_the_reliability_doc_is_current` fails when this file no longer matches the tables",
        "(regenerate with `python docs/make_reliability.py`). Errors are always one line (never a traceback); CLI",
        "exit codes: 1 for a problem with the data, model or store, 2 for bad arguments.",
        "",
    ]
    for title, through, table, test in matrix.TABLES:
        lines += [f"## {title}", "", f"Through: {through}." + (f" Test: `{test}[id]`." if test else ""), "",
                  "| case | given | expected |", "|---|---|---|"]
        lines += [f"| `{case.id}` | {_cell(case.given)} | {_cell(case.expected)} |" for case in table]
        lines.append("")
    lines += [SERVING]
    lines += ["## Properties (hypothesis)", "",
              "`tests/test_properties.py`, 200 generated examples per property on every run:", ""]
    for name, fn in inspect.getmembers(properties, inspect.isfunction):
        if name.startswith("test_") and fn.__module__ == properties.__name__:
            lines.append(f"- `{name}`: {name[len('test_'):].replace('_', ' ')}")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/reliability.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = DOC.read_text() if DOC.exists() else ""
        if current != text:
            print(f"{DOC} is stale: run python docs/make_reliability.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
