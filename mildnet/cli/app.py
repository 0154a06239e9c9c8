"""``python -m mildnet app``: start the Streamlit app from anywhere, a checkout or an installed wheel.

A checkout runs its own ``app.py``; a wheel ships ``app.py``, ``pages/`` and ``.streamlit/config.toml`` under the
environment's ``share/mildnet`` (pyproject's data-files). Streamlit reads its config from the folder it starts
in, so it starts there, with the data home pinned to the caller's (``$MILDNET_HOME``, else ``.mildnet`` in the
folder the command was run from).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from mildnet.errors import DataError

CHECKOUT = Path(__file__).resolve().parents[2]
INSTALLED = Path(sys.prefix) / "share" / "mildnet"


def register(subparsers) -> None:
    parser = subparsers.add_parser("app", help="start the Streamlit app (Search, your catalogues, training)",
                                   description="Runs `streamlit run app.py` with the project's settings, from a "
                                   "checkout or an installed package; open the printed URL.")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--address", default=None,
                        help="interface to listen on (default 127.0.0.1: this machine only; README, 'Serving the "
                             "app to others')")
    parser.set_defaults(func=cmd_app)


def app_folder() -> Path:
    for folder in (CHECKOUT, INSTALLED):
        if (folder / "app.py").is_file() and (folder / "pages").is_dir():
            return folder
    raise DataError(f"the app's files are missing (looked for app.py and pages/ in {CHECKOUT} and {INSTALLED}); "
                    "reinstall the package")


def command(port: int, address: str | None) -> list[str]:
    args = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
    return args + (["--server.address", address] if address else [])


def cmd_app(args: argparse.Namespace) -> int:
    from mildnet.home import HOME_ENV, data_home

    folder = app_folder()
    env = dict(os.environ)
    env[HOME_ENV] = str(data_home().resolve())
    # The app's folder on the import path first: the app then runs the package it came with.
    print(f"starting the app from {folder}; data home {env[HOME_ENV]}", file=sys.stderr)
    try:
        return subprocess.call(command(args.port, args.address), cwd=folder, env=env)
    except KeyboardInterrupt:
        return 130
