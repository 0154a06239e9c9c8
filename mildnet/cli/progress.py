"""A dependency-free progress bar for the CLI, driven by ``update(done, total)`` callbacks."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """Draws ``label [#####.....] done/total`` on stderr, redrawn at most every 0.1 s.

    Usable as a context manager; the ``update(done, total)`` signature matches the progress
    callbacks of the core modules (``total`` may be None when unknown, e.g. a download without
    Content-Length).
    """

    def __init__(self, label: str, unit: str = "", width: int = 30, stream=None):
        self.label = label
        self.unit = unit
        self.width = width
        self.stream = stream or sys.stderr
        self._last_draw = 0.0
        self._drawn = False
        self._message = ""


    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()

    def _format(self, value: float, unit: str) -> str:
        if unit == "B":
            for suffix in ("B", "KB", "MB", "GB"):
                if value < 1024 or suffix == "GB":
                    return f"{value:.0f}{suffix}" if suffix == "B" else f"{value:.1f}{suffix}"
                value /= 1024
        return f"{value:.0f}"

    def update(self, done: float, total: float | None = None, message: str = "", unit: str | None = None) -> None:
        unit = self.unit if unit is None else unit
        now = time.monotonic()
        finished = total is not None and done >= total
        new_stage = message != self._message
        if not (finished or new_stage) and now - self._last_draw < 0.1:
            return
        if new_stage and self._drawn:
            # A new stage (another file, extracting after downloading) starts on its own line.
            self.stream.write("\n")
        self._message = message
        self._last_draw = now
        if total:
            filled = int(self.width * min(done / total, 1.0))
            bar = "#" * filled + "." * (self.width - filled)
            text = f"\r{self.label} [{bar}] {self._format(done, unit)}/{self._format(total, unit)}"
        else:
            text = f"\r{self.label} {self._format(done, unit)}"
        if message:
            text += f" {message}"
        self.stream.write(text)
        self.stream.flush()
        self._drawn = True
