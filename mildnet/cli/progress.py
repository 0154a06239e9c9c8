"""CLI progress on stderr, driven by the core modules' ``update(done, total, message)`` callbacks.

On a terminal each stage is a tqdm bar (rate, ETA). Anywhere else (a log file, CI, ``nohup``) redrawing a bar
would write every redraw into the log, so a stage prints plain lines instead: one when it starts, one at most
every :data:`PLAIN_EVERY` seconds, one when it finishes, with tqdm's own rate and ETA figures.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

PLAIN_EVERY = 10.0  # seconds between two plain lines of one stage
_PLAIN_FORMAT = "{desc}: {n_fmt}%s/{total_fmt}%s ({percentage:.0f}%%) [{elapsed}<{remaining}, {rate_fmt}]"
_PLAIN_FORMAT_NO_TOTAL = "{desc}: {n_fmt}%s [{elapsed}, {rate_fmt}]"


class ProgressBar:
    """One CLI phase (``label``), possibly in several stages (a ``message`` per stage: the file being fetched,
    "extracting" after "downloading"). Usable as a context manager; ``total`` may be None when unknown (a
    download without Content-Length). ``unit="B"`` shows bytes as kB/MB/GB."""

    def __init__(self, label: str, unit: str = "", stream=None, plain: bool | None = None, edges: bool = True):
        """``plain``: lines instead of a bar (default: when ``stream`` is not a terminal); ``edges=False`` leaves
        out a plain stage's first and last lines, for callers that print their own summary."""
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.plain = (not (isatty is not None and isatty())) if plain is None else plain
        self._bar: tqdm | None = None
        self._stage: str | None = None
        self._stage_unit = unit
        self._started = 0.0
        self._last_line = float("-inf")
        self._last_done: float | None = None
        self._total: float | None = None
        self._done_printed = False
        self._postfix = ""
        self._printed: float | None = None
        self.edges = edges

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Ends the current stage's line (a bar left mid-way stays on screen, and an error starts below it)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif (self.plain and self.edges and self._stage is not None and not self._done_printed
              and self._last_done is not None and self._last_done != self._printed):
            self._line(self._last_done, self._total)
        self._stage = None

    def update(self, done: float, total: float | None = None, message: str = "", unit: str | None = None,
               postfix: str = "") -> None:
        """``message`` names the stage (a new one starts a new line); ``postfix`` is a figure that changes within
        it (a training step's loss)."""
        unit = self.unit if unit is None else unit
        self._postfix = postfix
        if message != self._stage or unit != self._stage_unit:
            self.close()
            self._stage, self._stage_unit = message, unit
            self._started = time.monotonic()
            self._last_line = float("-inf") if self.edges else self._started
            self._done_printed = False
            self._printed = None
        self._total, self._last_done = total, done
        if self.plain:
            now = time.monotonic()
            finished = total is not None and done >= total
            if (finished and self.edges and not self._done_printed) or now - self._last_line >= PLAIN_EVERY:
                self._line(done, total)
                self._last_line = now
                self._done_printed = finished
            return
        if self._bar is None:
            self._bar = tqdm(total=total, desc=self._description(), file=self.stream, leave=True,
                             dynamic_ncols=True, mininterval=0.1, **self._units())
        if total != self._bar.total:
            self._bar.total = total
            self._bar.refresh()
        if postfix:
            self._bar.set_postfix_str(postfix, refresh=False)
        self._bar.update(done - self._bar.n)

    def _description(self) -> str:
        return f"{self.label} {self._stage}".strip() if self._stage else self.label

    def _units(self) -> dict:
        if self._stage_unit == "B":
            return {"unit": "B", "unit_scale": True, "unit_divisor": 1024}
        return {"unit": f" {self._stage_unit}" if self._stage_unit else "it"}

    def _line(self, done: float, total: float | None) -> None:
        self._printed = done
        if total is None and not done:  # a stage announced before it counts anything ("copying FOLDER")
            self.stream.write(f"{self._description()} ...\n")
            self.stream.flush()
            return
        units = self._units()
        suffix = "B" if self._stage_unit == "B" else ""
        text = tqdm.format_meter(done, total, time.monotonic() - self._started, prefix=self._description(),
                                 bar_format=(_PLAIN_FORMAT % (suffix, suffix) if total
                                             else _PLAIN_FORMAT_NO_TOTAL % suffix),
                                 unit=units["unit"], unit_scale=units.get("unit_scale", False),
                                 unit_divisor=units.get("unit_divisor", 1000))
        self.stream.write(text + (f" {self._postfix}" if self._postfix else "") + "\n")
        self.stream.flush()
