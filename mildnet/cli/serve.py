"""``python -m mildnet serve``: the HTTP API (mildnet/api) over one or more catalogues, with uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mildnet.cli.common import (
    UsageError,
    add_index_arguments,
    add_model_arguments,
    add_store_arguments,
    index_from_args,
    loaded_model_from_args,
    open_store_from_args,
)
from mildnet.data.images import MAX_FILE_BYTES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve search over HTTP (JSON API with OpenAPI docs at /docs)",
        description="Opens each catalogue with the model (embedding what is new first, unless --no-embed) and "
        "serves POST /v1/search, GET /v1/products/{id}/similar, GET /v1/catalogues, /healthz and /readyz. "
        "Writes (POST /v1/catalogues/{name}/reload) need an API key: $MILDNET_API_KEYS (comma-separated) or "
        "--api-key-file.",
    )
    parser.add_argument("--dataset", action="append", default=[], metavar="NAME",
                        help="a registered dataset (`data list`) to serve; repeatable")
    parser.add_argument("--images", action="append", default=[], type=Path, metavar="DIR",
                        help="a folder of photos to serve (its catalog.csv rows, else every photo), named as "
                        "`embed --images DIR` names it; repeatable")
    add_model_arguments(parser)
    add_store_arguments(parser)
    add_index_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                        "machine only; 0.0.0.0 for every interface, behind an HTTPS proxy)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--api-key-file", type=Path, metavar="FILE",
                        help="API keys for writes, one a line (added to $MILDNET_API_KEYS)")
    parser.add_argument("--max-upload-mb", type=float, default=None,
                        help="largest photo accepted, in MB (default and most: 20, the app's limit)")
    parser.add_argument("--max-k", type=int, default=None, help="most results one query may ask for (default 100)")
    parser.add_argument("--no-embed", action="store_true",
                        help="serve what the store holds; a catalogue not embedded yet answers 503 until reloaded")
    parser.add_argument("--batch-size", type=int, default=64, help="photos per model call when embedding")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="threads one query's matrix product may use (default 1: concurrent requests run on "
                        "the other cores; with OpenBLAS's own threads spinning against them, 32 concurrent id "
                        "queries on 10k photos ran at 11 q/s instead of 1,600 on 2 cores, bench/bench_api.py)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level (default info: one access line a request)")
    parser.set_defaults(func=cmd_serve)


def _openers(args: argparse.Namespace) -> dict:
    """Catalogue name -> how to read it from disk (at start, and again on reload)."""
    from mildnet.search.catalogue import Catalogue

    openers = {}
    sources = [(name, lambda n=name: Catalogue.registered(n)) for name in args.dataset]
    for folder in args.images:
        if not folder.is_dir():
            raise UsageError(f"--images {folder}: not a folder")
        sources.append((None, lambda f=folder: Catalogue.folder(f)))
    for _, open_catalogue in sources:
        catalogue = open_catalogue()
        if catalogue.name in openers:
            raise UsageError(f"catalogue {catalogue.name} is given twice")
        openers[catalogue.name] = (catalogue, open_catalogue)
    return openers


def cmd_serve(args: argparse.Namespace) -> int:
    if not args.dataset and not args.images:
        raise UsageError("name what to serve: --dataset NAME or --images DIR (repeatable)")
    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be from 0 to 65535")
    if args.max_upload_mb is not None and not 0 < args.max_upload_mb <= MAX_FILE_BYTES / 2**20:
        raise UsageError(f"--max-upload-mb must be above 0 and at most {MAX_FILE_BYTES >> 20} (what the photo "
                         "decoder accepts)")
    if args.max_k is not None and args.max_k < 1:
        raise UsageError("--max-k must be at least 1")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.blas_threads < 1:
        raise UsageError("--blas-threads must be at least 1")
    # Checked before the model loads: a missing web stack or key file is said at once.
    try:
        import uvicorn

        from mildnet.api.server import Settings, create_app, load_api_keys
    except ImportError as exc:
        raise UsageError(f"the HTTP API needs FastAPI and uvicorn ({exc}); pip install -r requirements.txt") \
            from None
    api_keys = load_api_keys(args.api_key_file)
    index, index_options = index_from_args(args)

    from mildnet.cli import _import_tensorflow_quietly
    from mildnet.cli.progress import ProgressBar
    from mildnet.search.engine import SearchEngine

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _import_tensorflow_quietly()
    model = loaded_model_from_args(args)
    store = open_store_from_args(args)
    openers = _openers(args)
    engines = []
    for name, (catalogue, _) in openers.items():
        engine = SearchEngine.open(model, catalogue, store, index=index, index_options=index_options)
        if not args.no_embed:
            pending = engine.pending()
            if not pending.up_to_date:
                print(f"{name}: {pending.describe()}; embedding", file=sys.stderr)
                with ProgressBar(f"embedding {name}") as bar:
                    engine.update(bar.update, batch_size=args.batch_size)
        state = f"{len(engine):,} photos" if engine.ready else "not embedded (503 until reloaded)"
        print(f"{name}: {state}; key {engine.key}", file=sys.stderr)
        engines.append(engine)

    settings = Settings(
        api_keys=api_keys,
        reopen=lambda name: openers[name][1](),
        **({"max_upload_bytes": int(args.max_upload_mb * 2**20)} if args.max_upload_mb is not None else {}),
        **({"max_k": args.max_k} if args.max_k is not None else {}))
    app = create_app(engines, settings)
    # After the start-up embedding and calibration (one job, all cores), before the requests (many jobs at once).
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=args.blas_threads, user_api="blas")
    writes = f"{len(api_keys)} API key(s)" if api_keys else "none (no API key configured)"
    print(f"model: {model.label}\nstore: {store.describe()}\nindex: {index}\nwrites: {writes}\n"
          f"serving on http://{args.host}:{args.port} (docs: /docs)", file=sys.stderr)
    # uvicorn takes SIGINT/SIGTERM while it runs: requests in flight finish, then run() returns.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    print("stopped", file=sys.stderr)
    return 0
