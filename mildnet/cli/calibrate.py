"""``python -m mildnet calibrate``: fit a run's cosine -> match-strength map on validation triplets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mildnet.cli.common import UsageError
from mildnet.cli.progress import ProgressBar


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="fit a run's match strength (cosine -> probability of the same product) on validation triplets",
        description="Embeds validation triplets with the run's best model and writes RUN/calibration.json, "
        "which `search` and the app use to show a match strength and to say when nothing in the catalog "
        "is a close match. Default triplets: the run's own validation set.",
    )
    parser.add_argument("--run", required=True, type=Path, metavar="RUN_DIR", help="a training run folder")
    parser.add_argument("--images", type=Path, metavar="DIR", help="image root the triplet paths are relative to")
    parser.add_argument("--triplets", type=Path, metavar="CSV", help="validation triplets (with --images)")
    parser.add_argument("--json", action="store_true", help="also print the calibration as one JSON object (last line)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from mildnet.calibration import CALIBRATION_FILE, calibrate_run

    if (args.images is None) != (args.triplets is None):
        raise UsageError("give --images and --triplets together, or neither (the run's own validation triplets)")
    if args.triplets is not None and not args.triplets.is_file():
        raise UsageError(f"triplet file not found: {args.triplets}")
    if args.quiet:
        calibration = calibrate_run(args.run, args.images, args.triplets)
    else:
        with ProgressBar("embedding") as bar:
            calibration = calibrate_run(args.run, args.images, args.triplets, progress=bar.update)

    s = calibration.summary
    pos, neg = s["positive_cosine"], s["negative_cosine"]
    print(f"calibrated on {calibration.n_positive} triplets: {calibration.source.get('triplets')}")
    print(f"positive cosine: median {pos['0.5']:.4f}  5% {pos['0.05']:.4f}  1% {pos['0.01']:.4f}")
    print(f"negative cosine: median {neg['0.5']:.4f}  95% {neg['0.95']:.4f}  99% {neg['0.99']:.4f}")
    half = s.get("cosine_at_match_0.5")
    print("match 0.5 at cosine " + (f"{half:.4f}" if half is not None else "(never reached)"))
    probes = (0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
    print("match at cosine " + "  ".join(f"{c:g}: {m:.3f}" for c, m in zip(probes, calibration.match(probes))))
    print(f"written to {Path(args.run) / CALIBRATION_FILE}")
    if args.json:
        print(json.dumps(calibration.to_dict()))
    return 0
