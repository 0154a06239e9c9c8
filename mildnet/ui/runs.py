"""Training runs as the app lists them: the shipped real-photo model, a dataset's own shipped model, the user's runs.

A run is a folder holding a best model and, when written by :mod:`mildnet.training`, its settings, metrics
and history (layout and reading: :mod:`mildnet.runs`). Reading never raises for a damaged side file: the
app still lists the run (a model without history can still search) and shows what is missing.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mildnet import runs
from mildnet.pretrained import REAL_PHOTOS
from mildnet.runs import headline_accuracy
from mildnet.ui import settings


@dataclass(frozen=True)
class Run:
    path: Path
    name: str
    pretrained: bool = False
    config: dict = field(default_factory=dict, compare=False, hash=False)
    metrics: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def model_file(self) -> Path:
        return runs.model_path(self.path)

    @property
    def stamp(self) -> float:
        """Modification time of the model file: part of every cache key, so a retrained run is reloaded."""
        try:
            return self.model_file.stat().st_mtime
        except OSError:
            return 0.0

    @property
    def key(self) -> str:
        return str(self.path)

    @property
    def settings(self) -> dict:
        """The training settings (``{}`` for a folder holding only a model)."""
        return runs.settings_of(self.config)

    @property
    def dataset(self) -> str | None:
        return _text(self.settings, "dataset")

    @property
    def model_name(self) -> str | None:
        return _text(self.settings, "model")

    @property
    def image_size(self) -> int | None:
        value = self.settings.get("image_size")
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def status(self) -> str:
        return str(self.metrics.get("status") or ("completed" if self.metrics else "unfinished"))

    @property
    def label(self) -> str:
        parts = [f"★ {self.short_name}" if self.pretrained else self.name]
        if self.model_name and (self.pretrained or not self.name.startswith(self.model_name)):
            parts.append(self.model_name)
        accuracy = headline_accuracy(self.metrics)
        if accuracy is not None:
            parts.append(f"{accuracy:.0%} acc")
        return " · ".join(parts)

    @property
    def short_name(self) -> str:
        """What the app calls the run: a shipped one by what it was trained on, a user's by its folder."""
        if not self.pretrained:
            return self.name
        return "real-photo model" if self.is_real_photo_default else f"{self.name} model"

    @property
    def is_real_photo_default(self) -> bool:
        return self.pretrained and self.path.name == REAL_PHOTOS

    def history(self) -> pd.DataFrame | None:
        return runs.history_table(self.path)


def _text(mapping: dict, key: str) -> str | None:
    value = mapping.get(key)
    return value if isinstance(value, str) and value else None


def read_run(path: Path, pretrained: bool = False) -> Run | None:
    path = Path(path)
    if not runs.model_path(path).is_file():
        return None
    return Run(path=path, name=path.name, pretrained=pretrained,
               config=runs.read_config_file(path), metrics=runs.read_metrics(path))


def list_runs(dataset: str | None) -> list[Run]:
    """The runs usable with ``dataset``: the shipped real-photo model first (the default everywhere), then
    the dataset's own shipped model if it has one, then user runs, newest first.

    The real-photo model leads even on the synthetic sample, which has a model of its own: there it ranks
    as well (triplet accuracy 0.939 vs 0.947, recall@1 0.61 vs 0.46) and, unlike the sample's model, it
    tells a real photo from the sample's renderings ("no close match" for 94% of real photos vs 58%).

    A user run whose config names another dataset is left out (its embeddings would search the wrong
    catalog's style); a run that names none is kept.
    """
    found: list[Run] = []
    real = read_run(settings.pretrained_dir() / REAL_PHOTOS, pretrained=True)
    if real is not None:
        found.append(real)
    if dataset and dataset != REAL_PHOTOS:
        own = read_run(settings.pretrained_dir() / dataset, pretrained=True)
        if own is not None:
            found.append(own)
    root = settings.runs_dir()
    user: list[Run] = []
    if root.is_dir():
        for child in root.iterdir():
            if child.is_dir() and not child.name.startswith("."):
                run = read_run(child)
                if run is not None and (dataset is None or run.dataset in (None, dataset)):
                    user.append(run)
    user.sort(key=lambda r: (r.stamp, r.name), reverse=True)
    return found + user


def describe_time(run: Run) -> str:
    """When the run was trained: its own record (``created``, or its last resume), not the model file's time,
    which for a shipped model is when the project was cloned."""
    meta = run.config if isinstance(run.config, dict) else {}
    resumed = runs.read_resume_record(meta)
    last = resumed[-1] if resumed else {}
    recorded = last.get("at") or meta.get("created")
    if isinstance(recorded, str):
        try:
            when = _dt.datetime.fromisoformat(recorded)
        except ValueError:
            when = None
        if when is not None:
            return "trained " + when.strftime("%Y-%m-%d")
    if not run.stamp:
        return ""
    return _dt.datetime.fromtimestamp(run.stamp).strftime("%Y-%m-%d %H:%M")
