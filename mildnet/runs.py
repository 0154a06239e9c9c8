"""Training run directories: what a run folder holds, and the one place that reads, writes and loads it.

Everything a run produces lives in its **run directory**::

    config.json    {"config": TrainConfig, "fingerprint", "lineage": [...], "data": {...}, "created", ...}
    history.csv    one row per finished epoch: loss, accuracy, val_loss, val_accuracy, seconds, best
    best.keras     the model of the best epoch so far (models.save_model, self-contained)
    last.keras     the model after the last finished epoch (what --resume continues from)
    optimizer.npz  the optimizer state after that epoch (momentum etc.; numpy, no pickle)
    metrics.json   the final summary (also written when a run is stopped)
    val_triplets.csv  the held-out validation triplets, when no validation file was given
    calibration.json  cosine -> match strength for the best model (mildnet.calibration)

:class:`TrainConfig` lives here, not in :mod:`mildnet.training`, because it is what ``config.json`` holds:
reading a run must not import the training loop (which itself reads runs). JSON and CSV writes are atomic
(temp file + rename). The model is loaded only through :func:`load_run_model` / :meth:`RunInfo.load_model` /
:func:`open_run`. What ``config.json`` holds is built here too (:func:`write_run_config`,
:func:`write_resume_record`), not by the training loop.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mildnet import locks, safe_json
from mildnet.errors import MildnetError, ModelError
from mildnet.losses import LOSSES
from mildnet.optimizers import OPTIMIZERS

if TYPE_CHECKING:  # pandas costs ~0.2 s: `python -m mildnet --help` reads run folder names only
    import pandas as pd

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
BEST_MODEL = "best.keras"
LAST_MODEL = "last.keras"
HELDOUT_FILE = "val_triplets.csv"
OPTIMIZER_FILE = "optimizer.npz"
CALIBRATION_FILE = "calibration.json"

RUN_FORMAT = 1
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "best")

# Memory for decoded images (uint8): 2 GB holds ~14,000 images at 224 px.
DEFAULT_CACHE_GB = 2.0


MAX_SEED = 2**31 - 1


class TrainConfigError(MildnetError):
    """A training setting is invalid or contradicts the run it resumes or starts from."""


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the run directory.

    ``None`` for ``model``, ``image_size`` and ``embedding_dim`` means "the parent run's" with
    ``init_from``, else the zoo default (``models.DEFAULT_MODEL``, 224 px, the model's own dim).
    ``weights="auto"`` means ImageNet weights where the model has a pretrained backbone.
    """

    images: str = ""  # image root; triplet paths are relative to it
    triplets: str = ""  # training triplet CSV (MILDNet format)
    val_triplets: str | None = None  # validation CSV; None -> hold out val_fraction of the queries
    dataset: str | None = None  # data_manifest.csv name that filled images/triplets (informational)
    out: str | None = None  # run directory; None -> runs/<model>-<timestamp>
    model: str | None = None
    weights: str | None = "auto"  # auto | imagenet | none | path to backbone weights
    image_size: int | None = None
    embedding_dim: int | None = None
    # Defaults tuned on real photos (docs/training-recipe.md); the reference used 6 epochs of SGD
    # (lr 1e-3, momentum 0.9, Nesterov), 16 triplets a step and margin 1.0.
    epochs: int = 10
    batch_size: int = 32  # triplets per step (3x images through the network)
    steps_per_epoch: int | None = None  # cap on steps per epoch (a fresh random subset each epoch)
    learning_rate: float = 1e-3
    optimizer: str = "adam"  # adam, or sgd: momentum + Nesterov, as the reference
    momentum: float = 0.9
    loss: str = "hinge"
    # Squared distances of unit vectors lie in [0, 4]; 1.0 asks every negative to be far away, which
    # on real photos (where a same-type other-colour negative is genuinely close) fit worse than 0.3.
    margin: float = 0.3
    augment: bool = True
    seed: int = 0
    val_fraction: float = 0.1
    init_from: str | None = None  # run directory whose best.keras starts this run (incremental)
    verify_images: bool = True  # decode-check every image's header before training
    skip_missing: bool = False  # drop triplets with missing/unreadable images instead of failing
    # auto | none | a layer or block name (e.g. "fire5"): freeze every layer feeding it, itself included.
    # auto = the zoo's freeze point of the model (models.zoo) when starting from pretrained weights or a
    # parent run, else none.
    freeze: str = "auto"
    cache_gb: float = DEFAULT_CACHE_GB  # memory for decoded images; 0 = decode from disk every epoch

    def validate(self) -> "TrainConfig":
        """Returns self; raises TrainConfigError listing every invalid field."""
        problems = []

        def need(ok: bool, message: str):
            if not ok:
                problems.append(message)

        def positive_int(name, value, allow_none=False):
            if value is None and allow_none:
                return
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 f"{name} must be a positive integer, got {value!r}")

        positive_int("epochs", self.epochs)
        positive_int("batch_size", self.batch_size)
        positive_int("steps_per_epoch", self.steps_per_epoch, allow_none=True)
        positive_int("embedding_dim", self.embedding_dim, allow_none=True)
        positive_int("image_size", self.image_size, allow_none=True)
        if isinstance(self.image_size, int) and self.image_size < 8:
            problems.append(f"image_size must be at least 8 pixels, got {self.image_size}")
        need(_is_number(self.learning_rate) and self.learning_rate > 0,
             f"learning_rate must be a positive number, got {self.learning_rate!r}")
        need(_is_number(self.momentum) and 0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}")
        need(_is_number(self.margin) and self.margin > 0, f"margin must be a positive number, got {self.margin!r}")
        need(_is_number(self.val_fraction) and 0 <= self.val_fraction < 1,
             f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        need(self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        # numpy's legacy seeding takes < 2**32 and resumed epochs add to the seed: 31 bits leave room.
        need(isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed <= MAX_SEED,
             f"seed must be an integer from 0 to {MAX_SEED}, got {self.seed!r}")
        need(isinstance(self.augment, bool), f"augment must be true or false, got {self.augment!r}")
        need(isinstance(self.freeze, str) and self.freeze.strip() != "",
             f"freeze must be auto, none or a layer name, got {self.freeze!r}")
        need(_is_number(self.cache_gb) and self.cache_gb >= 0,
             f"cache_gb must be a non-negative number, got {self.cache_gb!r}")
        need(bool(self.images), "no image root given (images)")
        need(bool(self.triplets), "no training triplet file given (triplets)")
        if problems:
            raise TrainConfigError("invalid training settings: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainConfigError(f"unknown training settings: {', '.join(unknown)}")
        if "freeze" not in data:
            # Written before the setting existed: that run trained every layer; its resume must too.
            data = {**data, "freeze": "none"}
        return cls(**data)

    def fingerprint(self) -> str:
        """Short hash of the settings that shape the model (not where files live or how long it ran)."""
        ignored = {"out", "epochs", "verify_images", "cache_gb"}
        payload = {k: v for k, v in self.to_dict().items() if k not in ignored}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# --- reading a run -------------------------------------------------------------------------------


@dataclass
class RunInfo:
    """What a run directory holds, for resume, incremental training, evaluation and the app."""

    run_dir: Path
    config: TrainConfig
    meta: dict  # the whole config.json
    history: pd.DataFrame
    metrics: dict | None

    @property
    def lineage(self) -> list[dict]:
        return self.meta.get("lineage", [])

    @property
    def fingerprint(self) -> str:
        return self.meta.get("fingerprint") or self.config.fingerprint()

    @property
    def resumed(self) -> list[dict]:
        """When the run was resumed: ``{"after_epoch", "at"}`` per resume (:func:`write_resume_record`)."""
        return read_resume_record(self.meta)

    def model_path(self, which: str = "best") -> Path:
        return model_path(self.run_dir, which)

    def load_model(self, which: str = "best"):
        """The run's ``best`` (default) or ``last`` model, checked to be the architecture it trained; for a caller
        that has read the run already (:func:`load_run_model` reads it first)."""
        return _load_checked(self, which)


def model_path(run_dir: str | os.PathLike, which: str = "best") -> Path:
    """Where a run keeps its ``best`` or ``last`` model (whether or not it exists yet)."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    return Path(run_dir) / (BEST_MODEL if which == "best" else LAST_MODEL)


def read_run(run_dir: str | os.PathLike) -> RunInfo:
    """Reads a run directory written by :func:`mildnet.training.train`; ModelError if it is not one."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ModelError(f"{run_dir} is not a training run directory (no {CONFIG_FILE})")
    try:
        meta = safe_json.loads(config_path.read_text(encoding="utf-8"))
        fmt = meta.get("format", RUN_FORMAT) if isinstance(meta, dict) else None
        if isinstance(fmt, int) and fmt > RUN_FORMAT:
            raise ModelError(f"{run_dir} was written by a newer mildnet (run format {fmt}; this version reads "
                             f"format {RUN_FORMAT}): upgrade to use it")
        # Validated as well: a hand-edited value of the wrong type ("image_size": "64") would otherwise fail deep
        # inside calibrate, evaluate or resume with a TypeError.
        config = TrainConfig.from_dict(meta["config"]).validate()
    except (ValueError, KeyError, TypeError, TrainConfigError) as exc:
        raise ModelError(f"{config_path} is damaged: {exc}") from None
    history = _read_history(run_dir / HISTORY_FILE)
    metrics = None
    if (run_dir / METRICS_FILE).is_file():
        try:
            metrics = safe_json.loads((run_dir / METRICS_FILE).read_text(encoding="utf-8"))
        except ValueError:
            log.warning("ignoring damaged %s", run_dir / METRICS_FILE)
    return RunInfo(run_dir, config, meta, history, metrics)


def load_run_model(run_dir: str | os.PathLike, which: str = "best"):
    """The run's ``best`` (default) or ``last`` model, checked to be the architecture it trained."""
    info = read_run(run_dir)
    return _load_checked(info, which)


def _load_checked(info: RunInfo, which: str):
    # Imported here: the model code pulls in TensorFlow, which reading a run's files must not.
    from mildnet.models.io import load_model

    path = info.model_path(which)
    if not path.is_file():
        raise ModelError(f"{info.run_dir} has no {path.name} yet (no finished epoch)")
    return load_model(path, expected_name=info.config.model)


def open_run(run_dir: str | os.PathLike, *, bare_model: bool = False) -> tuple[Any, dict]:
    """``(model, config)`` of a run: its best model and its settings as a dict that always holds ``model``
    (name), ``image_size`` and ``run_dir``.

    ``bare_model`` also opens a folder that only holds a ``best.keras`` (a hand-assembled default model,
    not written by training): the file is self-contained, so it still searches; its config is then ``{}``.
    """
    try:
        info = read_run(run_dir)
        model = _load_checked(info, "best")
    except ModelError:
        if not (bare_model and model_path(run_dir).is_file()):
            raise
        from mildnet.models.io import load_model

        return load_model(model_path(run_dir)), {}
    config = info.config.to_dict()
    config["model"] = config.get("model") or model.name
    config["image_size"] = config.get("image_size") or _fixed_input_side(model)
    config["run_dir"] = str(Path(run_dir).resolve())
    return model, config


def _fixed_input_side(model) -> int | None:
    # embeddings.model_image_size says the same, but embeddings imports this module.
    side = tuple(model.inputs[0].shape)[1]
    return int(side) if side is not None else None


def read_metrics(run_dir: str | os.PathLike) -> dict:
    """``metrics.json`` as a dict; ``{}`` when it is missing or damaged (listing runs never fails on it)."""
    return _read_json_or_empty(Path(run_dir) / METRICS_FILE)


def read_config_file(run_dir: str | os.PathLike) -> dict:
    """``config.json`` as a dict; ``{}`` when it is missing or damaged (a folder holding only a model)."""
    return _read_json_or_empty(Path(run_dir) / CONFIG_FILE)


def settings_of(meta: dict) -> dict:
    """The training settings inside a ``config.json`` dict (nested under ``"config"``); ``{}`` without."""
    inner = meta.get("config")
    return inner if isinstance(inner, dict) else {}


def history_table(run_dir: str | os.PathLike) -> pd.DataFrame | None:
    """``history.csv`` for display: None when missing or unreadable (unlike :func:`read_run`, no check)."""
    import pandas as pd

    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    if "epoch" not in frame.columns:
        frame.insert(0, "epoch", range(1, len(frame) + 1))
    return frame


def headline_accuracy(metrics: dict) -> float | None:
    """The best epoch's triplet accuracy in a ``metrics.json`` dict: on validation, else on training (a run
    without validation triplets); None when it has none."""
    best = metrics.get("best")
    if not isinstance(best, dict):
        return None
    for key in ("val_accuracy", "accuracy"):
        value = best.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def _read_json_or_empty(path: Path) -> dict:
    try:
        value = safe_json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_history(path: Path) -> pd.DataFrame:
    import pandas as pd

    if not path.is_file():
        return pd.DataFrame(columns=list(HISTORY_COLUMNS))
    try:
        history = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ModelError(f"{path} is damaged: {exc}") from None
    missing = [c for c in HISTORY_COLUMNS[:5] if c not in history.columns]  # what resume and the charts read
    if missing:
        raise ModelError(f"{path} is damaged: no {', '.join(missing)} column")
    if list(history["epoch"]) != list(range(1, len(history) + 1)):
        raise ModelError(f"{path} is damaged: epochs are not 1..{len(history)}")
    # Resuming compares these numbers to pick the best epoch: 'abc' or inf would fail (or win) mid-run.
    for column in HISTORY_COLUMNS[1:5]:
        values = pd.to_numeric(history[column], errors="coerce")
        bad = (history[column].notna() & values.isna()) | np.isinf(values)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ModelError(f"{path} is damaged: epoch {row + 1}'s {column} is {history[column].iloc[row]!r}, "
                             "not a finite number")
        history[column] = values
    return history


# --- writing a run -------------------------------------------------------------------------------


LOCK_FILE = ".training.lock"


def run_lock(run_dir: Path):
    """Held while a process trains ``run_dir``: a second trainer (a `--resume` from another terminal, the app's
    sidebar) is refused instead of interleaving its epochs and checkpoints with the first one's. The lock is
    the kernel's (flock), so a killed trainer never leaves it held."""
    return locks.exclusive(run_dir / LOCK_FILE, timeout=0, busy=lambda: TrainConfigError(
        f"{run_dir} is being trained by another process right now; wait for it to finish or stop it first"))


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(jsonable(data), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_history(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)).to_csv(tmp, index=False, lineterminator="\n")
    os.replace(tmp, path)


def jsonable(value: Any):
    """``value`` with paths as strings, numpy scalars as Python ones and NaN/inf as None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def new_run_dir(runs_root: str | os.PathLike, name: str) -> Path:
    """A fresh run folder name: ``name`` and local time, with a counter if two start within a second."""
    runs_root = Path(runs_root)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = runs_root / f"{name}-{stamp}"
    n = 2
    while candidate.exists():
        candidate = runs_root / f"{name}-{stamp}-{n}"
        n += 1
    return candidate


def write_run_config(run_dir: Path, config: TrainConfig, *, parent: RunInfo | None, data: dict) -> dict:
    """Writes a new run's ``config.json`` and returns what it holds: the settings, their fingerprint, the lineage
    (``parent``, the ``init_from`` run, and its own ancestors), ``data`` (what was trained on: counts, where
    the validation triplets came from), the creation time and an empty resume record."""
    meta = {
        "format": RUN_FORMAT,
        "config": config.to_dict(),
        "fingerprint": config.fingerprint(),
        "lineage": ([lineage_entry(parent)] + parent.lineage) if parent else [],
        "data": data,
        "created": now(),
        "resumed": [],
    }
    write_json(run_dir / CONFIG_FILE, meta)
    return meta


def write_resume_record(info: RunInfo, config: TrainConfig, after_epoch: int) -> dict:
    """Rewrites the ``config.json`` of a run being resumed after ``after_epoch`` finished epochs: ``config`` (its
    settings, ``epochs`` possibly raised) and one more entry in its resume record; returns what it holds."""
    meta = dict(info.meta)
    meta["config"] = config.to_dict()
    meta["resumed"] = list(meta.get("resumed", [])) + [{"after_epoch": after_epoch, "at": now()}]
    write_json(info.run_dir / CONFIG_FILE, meta)
    return meta


def read_resume_record(meta: dict) -> list[dict]:
    """The resume record of a ``config.json`` dict (:func:`write_resume_record`); lenient, as the app's run list
    reads hand-edited folders too: ``[]`` when missing or not a list, entries that are not objects left out."""
    resumed = meta.get("resumed") if isinstance(meta, dict) else None
    return [entry for entry in resumed if isinstance(entry, dict)] if isinstance(resumed, list) else []


def lineage_entry(parent: RunInfo) -> dict:
    """What a run started from ``parent`` (``init_from``) records about it in its ``lineage``."""
    metrics = parent.metrics or {}
    return {
        "run_dir": str(parent.run_dir.resolve()),
        "fingerprint": parent.fingerprint,
        "model": parent.config.model,
        "triplets": parent.config.triplets,
        "created": parent.meta.get("created"),
        "status": metrics.get("status", "unfinished"),
        "best_epoch": metrics.get("best_epoch"),
        "best": metrics.get("best"),
    }


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
