"""``python -m mildnet``: one sub-module per command group, each exposing ``register(subparsers)``.

Every command handler returns an exit code. Errors the user can cause (``MildnetError``) are printed
as one line on stderr with exit code 1; bad arguments exit with 2 (argparse's convention).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import signal
import sys
import tempfile
import threading

from mildnet.cli.common import UsageError
from mildnet.errors import MildnetError

# Command groups, imported lazily so `data check` does not pay for importing TensorFlow.
COMMANDS = {
    "data": "mildnet.cli.data",
    "train": "mildnet.cli.train",
    "evaluate": "mildnet.cli.evaluate",
    "embed": "mildnet.cli.embed",
    "search": "mildnet.cli.search",
    "calibrate": "mildnet.cli.calibrate",
    "publish": "mildnet.cli.publish",
    "app": "mildnet.cli.app",
    "serve": "mildnet.cli.serve",
}


# Commands that run a model import TensorFlow; the others stay light.
_TENSORFLOW_COMMANDS = ("train", "evaluate", "embed", "search", "calibrate")


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up lines (oneDNN notice, CPU features) kept off stderr, so a
    command's one-line error is all the user sees. TF_CPP_MIN_LOG_LEVEL cannot silence them: they are
    written before absl's logging is initialised. Anything printed is replayed if the import fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _peek_command(argv: list[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mildnet",
        description="MILDNet visual search: data, training, evaluation, embeddings and search.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            # Listed in --help without importing the module.
            sub.add_parser(name, help=f"{name} commands")
            continue
        module = importlib.import_module(module_name)
        module.register(sub)
    return parser


class _StderrLines(logging.Handler):
    """The package's warnings as the CLI prints its errors: ``warning: message``, one line on the stderr of the
    moment (not the one at start-up: tests and callers swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(f"{record.levelname.lower()}: {record.getMessage()}\n")


def _log_to_stderr() -> None:
    logger = logging.getLogger("mildnet")
    if not any(isinstance(h, _StderrLines) for h in logger.handlers):
        handler = _StderrLines(logging.WARNING)
        logger.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _log_to_stderr()
    command = _peek_command(argv)
    parser = build_parser(only=command if command in COMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad arguments, 0 on --help
        return int(exc.code or 0)
    if command in _TENSORFLOW_COMMANDS:
        # TensorFlow's later C++ log lines; the same for `python -m mildnet` and the `mildnet` console script.
        # Users can still raise it by setting the variable themselves.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        _import_tensorflow_quietly()
    try:
        with _sigterm_stops():
            return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MildnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Terminated:
        print("\nstopped: terminated (SIGTERM); unfinished work was cleaned up", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a full or read-only disk, a vanished folder: not a bug in our code
        if exc.errno == errno.ENOSPC:  # the path would be whichever file was being copied: say what to do
            print("error: the disk is full (no space left on device); free some space and try again",
                  file=sys.stderr)
            return 1
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (docker stop, systemd, kill) raised where the command is, so that its cleanup runs as after
    Ctrl-C: staging folders removed, a training run stopped after its step (see ``cli.train``)."""


@contextlib.contextmanager
def _sigterm_stops():
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread (tests call main() from others)
        return

    def on_sigterm(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
