"""Which model embeds a search: a training run (or the shipped default) or a zoo model, loaded once with the facts
every search needs (weights fingerprint, input size, the run's own calibration)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from mildnet import calibration as cal
from mildnet import embeddings
from mildnet import product_types as pt
from mildnet.data.images import load_image_and_preview

__all__ = ["LoadedModel"]


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedModel:
    """A Keras embedding model and what searches need to know about it.

    ``name``: the zoo name it was built as; ``run_dir``: the run folder it came from (None for a zoo model);
    ``fingerprint``: its weights' hash, which names its stored embeddings; ``calibration``: the run's
    calibration (``calibrate``) when it belongs to these weights, and ``calibration_note`` saying why there is
    none (a shopper-readable sentence), else None; ``product_types``: the run's product-type head when it belongs to
    these weights (``types_note`` says why a damaged one is not used).
    """

    model: Any
    config: dict
    name: str
    image_size: int
    fingerprint: str
    run_dir: Path | None = None
    calibration: cal.Calibration | None = None
    calibration_note: str | None = None
    product_types: pt.ProductTypes | None = None
    types_note: str | None = None

    @classmethod
    def from_run(cls, run_dir) -> LoadedModel:
        """A run folder's best model (also a folder holding only a model file: its settings are then unknown)."""
        from mildnet.runs import open_run

        model, config = open_run(run_dir, bare_model=True)
        size = config.get("image_size") or embeddings.model_image_size(model) or 224
        fingerprint = embeddings.model_fingerprint(model)
        found, note = _run_calibration(Path(run_dir), fingerprint)
        try:
            types, types_note = pt.load(run_dir, fingerprint), None
        except pt.ProductTypesError as exc:
            types, types_note = None, f"The model's product types are not used: {exc}"
        return cls(model, config, str(config.get("model") or model.name), int(size), fingerprint, Path(run_dir),
                   found, note, types, types_note)

    @classmethod
    def from_keras(cls, model, config: dict | None = None) -> LoadedModel:
        """An in-memory model: a zoo model the CLI built (``--model``), a test's, a notebook's; no calibration."""
        config = dict(config or {})
        size = config.get("image_size") or embeddings.model_image_size(model) or 224
        return cls(model, config, str(config.get("model") or model.name), int(size),
                   embeddings.model_fingerprint(model), None, None,
                   "A zoo model has no calibration: scores are raw cosine similarities (1 = identical).")

    @property
    def label(self) -> str:
        """Where the model came from: its run folder, or its zoo name and weights."""
        if self.run_dir is not None:
            return str(self.run_dir.resolve())
        return f"{self.name} (weights: {self.config.get('weights')})"

    def embed(self, source) -> np.ndarray:
        """One photo (a path, uploaded bytes, or a decoded HxWx3 array) -> its unit (D,) float32 vector, decoded
        exactly as the catalogue's photos are, so a catalogue photo finds itself at cosine 1."""
        return embeddings.embed_image(self.model, source, self.image_size)

    def kinds(self, vector: np.ndarray) -> np.ndarray | None:
        """The product-type probabilities of one unit vector, or None without a type head."""
        types = self.product_types
        if types is None or np.shape(vector)[-1] != types.dim:
            return None
        return types.probabilities(vector)

    def embed_with_preview(self, source, preview_px: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`embed` and a display thumbnail of at most ``preview_px`` a side, from one decode."""
        pixels, thumb = load_image_and_preview(source, self.image_size, preview_px)
        return embeddings.normalize_rows(embeddings.run_model(self.model, pixels[None]))[0], thumb


def _run_calibration(run_dir: Path, fingerprint: str) -> tuple[cal.Calibration | None, str | None]:
    """The run's calibration when it belongs to these weights; otherwise None and why, in a shopper's words."""
    command = f"`python -m mildnet calibrate --run {run_dir}`"
    try:
        found = cal.load(run_dir)
    except cal.CalibrationError as exc:
        # A damaged file must not take search down: say what is wrong and fall back to cosines.
        return None, f"Match strengths are unavailable: {exc}"
    if found is None:
        return None, ("This model is not calibrated, so scores are raw cosine similarities (1 = identical). "
                      f"Calibrate it with {command}.")
    if found.model_fingerprint not in (None, fingerprint):
        return None, ("This model's calibration belongs to an earlier version of it, so scores are raw cosine "
                      f"similarities. Re-run {command}.")
    return found, None
