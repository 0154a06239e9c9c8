"""The shop's published choice: the catalogue and model every visitor of the app gets.

The owner publishes a catalogue (a registered dataset) and, optionally, one of its models (a run folder; none:
the catalogue's default model). It is kept in ``shop.json`` in the data home (:mod:`mildnet.home`), written
atomically, so it survives reloads and server restarts and the CLI sees the same choice
(``python -m mildnet publish``). Reading never fails the app: a missing or damaged file means nothing is
published (a damaged one is logged).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from mildnet import safe_json
from mildnet.errors import DataError
from mildnet.home import data_home

log = logging.getLogger(__name__)

SHOP_FILE = "shop.json"
FORMAT = 1


def shop_file(home: str | os.PathLike | None = None) -> Path:
    return (Path(home) if home is not None else data_home()) / SHOP_FILE


@dataclass(frozen=True)
class Published:
    dataset: str
    run: str | None  # a run folder (absolute path); None: the catalogue's default model
    published_at: str  # ISO 8601, UTC

    def to_dict(self) -> dict:
        return {"format": FORMAT, "dataset": self.dataset, "run": self.run, "published_at": self.published_at}

    @classmethod
    def from_dict(cls, data) -> Published:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a shop settings object of format 1")
        dataset, run, when = data.get("dataset"), data.get("run"), data.get("published_at")
        if not isinstance(dataset, str) or not dataset or not (run is None or isinstance(run, str)):
            raise ValueError("'dataset' must be a name and 'run' a path or null")
        return cls(dataset, run or None, when if isinstance(when, str) else "")


def load_published(path: str | os.PathLike | None = None) -> Published | None:
    """What the owner published, or None (nothing published, or a damaged file: logged, never raised)."""
    path = Path(path) if path is not None else shop_file()
    try:
        return Published.from_dict(safe_json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("ignoring the shop settings %s (%s): nothing is published until the owner publishes again",
                    path, exc)
        return None


def publish(dataset: str, run: str | os.PathLike | None = None, datasets: list[str] | None = None,
            path: str | os.PathLike | None = None) -> Published:
    """Make ``dataset`` (and ``run``, a run folder) what every visitor gets; DataError when the dataset is not
    among ``datasets`` (the registered names, when given) or the run folder holds no model."""
    from mildnet.runs import model_path

    if datasets is not None and dataset not in datasets:
        raise DataError(f"no dataset named {dataset!r} (registered: {', '.join(datasets) or 'none'})")
    if run is not None:
        run = Path(run).expanduser().absolute()  # as the app lists runs: a linked run keeps its own path
        if not model_path(run).is_file():
            raise DataError(f"{run} is not a training run folder with a model ({model_path(run).name})")
    published = Published(dataset, str(run) if run is not None else None,
                          _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    _write(Path(path) if path is not None else shop_file(), published.to_dict())
    return published


def unpublish(path: str | os.PathLike | None = None) -> bool:
    """Forget the published choice (visitors then get the default catalogue); whether there was one."""
    path = Path(path) if path is not None else shop_file()
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot save the shop settings to {path}: {exc.strerror or exc}") from None
