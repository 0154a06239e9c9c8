"""The runs that ship with the package: trained by us, each a run directory with a model card (README.md).

- ``real/``: squeezenet_colour fine-tuned on real CC0 clothing photos. The default model wherever no trained
  run is chosen: ``embed``/``search``/``evaluate`` without ``--run``, any app dataset without a run of its
  own (a user's folder, clothing-small), and the starting point of training from the app's sidebar.
- ``sample/``: trained from scratch on the synthetic sample catalogue; offered by the app as the sample's
  own model, after the real-photo one (which ranks the sample as well and also spots real photos that are
  not in it: see ``mildnet/ui/runs.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

from mildnet import safe_json
from mildnet.runs import BEST_MODEL, CONFIG_FILE

PRETRAINED_DIR = Path(__file__).resolve().parent
REAL_PHOTOS = "real"


ENV_VAR = "MILDNET_PRETRAINED"  # another folder of shipped runs (tests, deployments)


def pretrained_root() -> Path:
    value = os.environ.get(ENV_VAR, "").strip()
    return Path(value).expanduser() if value else PRETRAINED_DIR


def frozen_imagenet_backbone(root: str | os.PathLike | None = None) -> Path | None:
    """The shipped real-photo model's ``best.keras`` when its SqueezeNet backbone was frozen from the ImageNet
    weights (so its conv layers ARE those weights, a local copy that needs no download), else None."""
    run = default_run_dir(root)
    try:
        config = safe_json.loads((run / CONFIG_FILE).read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    frozen = (config.get("model") == "squeezenet_colour" and config.get("freeze") == "features"
              and config.get("weights") not in (None, "none") and not config.get("init_from"))
    return run / BEST_MODEL if frozen and (run / BEST_MODEL).is_file() else None


def default_run_dir(root: str | os.PathLike | None = None) -> Path:
    """The run used wherever no run is chosen: the real-photo model (under ``$MILDNET_PRETRAINED`` if set)."""
    return (Path(root) if root is not None else pretrained_root()) / REAL_PHOTOS
