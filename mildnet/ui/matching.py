"""Match strength in the app: a run's calibration and the searched catalogue's nearest-neighbour reference,
loaded once and reused across reruns (the maths lives in :mod:`mildnet.calibration`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import streamlit as st

from mildnet import calibration as cal
from mildnet.ui.runs import Run


@dataclass(frozen=True)
class RunCalibration:
    """The calibration to use (None: show raw cosines) and, when there is none, why, for a short note."""

    calibration: cal.Calibration | None
    note: str | None = None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@st.cache_resource(show_spinner=False, max_entries=16)
def _load(path: str, stamp: float, model_fp: str) -> RunCalibration:
    command = f"`python -m mildnet calibrate --run {Path(path).parent}`"
    try:
        found = cal.load(path)
    except cal.CalibrationError as exc:
        # A damaged file must not take search down: say what is wrong and fall back to cosines.
        return RunCalibration(None, f"Match strengths are unavailable: {exc}")
    if found is None:
        return RunCalibration(None, "This model is not calibrated, so scores are raw cosine similarities "
                                    f"(1 = identical). Calibrate it with {command}.")
    if found.model_fingerprint not in (None, model_fp):
        return RunCalibration(None, "This model's calibration belongs to an earlier version of it, so scores "
                                    f"are raw cosine similarities. Re-run {command}.")
    return RunCalibration(found)


def for_run(run: Run, model_fp: str) -> RunCalibration:
    """The run's calibration, re-read when its file changes."""
    path = run.path / cal.CALIBRATION_FILE
    return _load(str(path), _mtime(path), model_fp)


@st.cache_resource(show_spinner=False, max_entries=8)
def _reference(model_fp: str, catalog_fp: str, n: int, _vectors: np.ndarray) -> np.ndarray:
    return cal.catalogue_reference(_vectors)


def reference(searcher) -> np.ndarray:
    """Leave-one-out nearest-neighbour cosines of the searched catalogue (computed once per catalogue/model)."""
    emb = searcher.embeddings
    return _reference(emb.model_fingerprint, emb.catalog_fingerprint, len(emb), emb.vectors)


def assess(hits, run: Run, model_fp: str, searcher, own=None) -> tuple[cal.Verdict, RunCalibration]:
    """Match strengths of ``hits`` and the close-match verdict (None values when nothing is calibrated).

    ``own``: ``(catalogue calibration or None, note)`` of the searched catalogue; when there is one it decides,
    else the run's calibration and the catalogue's nearest-neighbour reference do."""
    scores = [h.score for h in hits]
    own_calibration, own_note = own if own is not None else (None, None)
    if own_calibration is not None:
        verdict = cal.assess(scores, own_calibration.match, rule=own_calibration.rule, ids=[h.id for h in hits])
        return verdict, RunCalibration(own_calibration.match)
    found = for_run(run, model_fp)
    if found.calibration is None:
        return cal.assess(scores, None), found
    # The run's calibration was fitted on its own validation photos, not this catalogue's: good enough to say
    # "no close match", not to put a percentage on each result. Those show their plain similarity.
    verdict = cal.assess(scores, found.calibration, reference(searcher))
    note = own_note or ("Scores are cosine similarities (1 = identical): match strengths appear once this "
                        "catalogue has its own calibration, made when it is embedded.")
    return replace(verdict, matches=[None] * len(scores)), RunCalibration(found.calibration, note)
