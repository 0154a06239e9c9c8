"""The runs that ship with the package: trained by us, each a run directory with a model card (README.md).

- ``real/``: squeezenet_colour fine-tuned on real CC0 clothing photos. The default model wherever no trained
  run is chosen: ``embed``/``search``/``evaluate`` without ``--run``, any app dataset without a run of its
  own (a user's folder, clothing-small), and the starting point of training from the app's sidebar.
- ``sample/``: trained from scratch on the synthetic sample catalogue; the app's default for ``sample``.
"""

from __future__ import annotations

import os
from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parent
REAL_PHOTOS = "real"


def default_run_dir(dataset: str | None = None, root: str | os.PathLike | None = None) -> Path:
    """The shipped run for ``dataset`` when one was trained for it, else the real-photo model."""
    root = Path(root) if root is not None else PRETRAINED_DIR
    if dataset and (root / dataset / "best.keras").is_file():
        return root / dataset
    return root / REAL_PHOTOS
