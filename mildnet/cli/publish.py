"""``python -m mildnet publish``: the catalogue and model every visitor of the app gets (:mod:`mildnet.shop`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mildnet.cli.common import UsageError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "publish",
        help="choose the catalogue and model every visitor of the app gets",
        description="Writes shop.json in the data home ($MILDNET_HOME, else .mildnet in the working directory): the "
        "app opens every new session on this catalogue with this model, across reloads and restarts. The app's "
        "owner can do the same from its sidebar.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--dataset", metavar="NAME", help="the catalogue to publish (a registered dataset)")
    what.add_argument("--show", action="store_true", help="print what is published")
    what.add_argument("--clear", action="store_true", help="publish nothing: visitors get the default catalogue")
    parser.add_argument("--run", type=Path, metavar="RUN_DIR",
                        help="the model to publish with it (a training run folder; default: the catalogue's "
                             "default model)")
    parser.set_defaults(func=cmd_publish)


def cmd_publish(args: argparse.Namespace) -> int:
    from mildnet import shop
    from mildnet.data import manifest

    if args.run is not None and not args.dataset:
        raise UsageError("--run goes with --dataset NAME")
    path = shop.shop_file()
    if args.show:
        published = shop.load_published(path)
        if published is None:
            print(f"nothing published ({path}): visitors get the default catalogue")
        else:
            model = published.run or "the catalogue's default model"
            print(f"published: {published.dataset} with {model} (since {published.published_at}; {path})")
        return 0
    if args.clear:
        print("unpublished" if shop.unpublish(path) else "nothing was published", f"({path})")
        return 0
    published = shop.publish(args.dataset, args.run, datasets=manifest.datasets(), path=path)
    print(f"published {published.dataset} with {published.run or 'its default model'}: every new visitor of the "
          f"app gets it ({path})")
    return 0
