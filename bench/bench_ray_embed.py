"""Is Ray Data worth it for embedding a catalogue on this machine? Issue 21 asks before adopting it.

Embeds the same real photos twice with the shipped default model and compares throughput:
- single process (the floor and today's path): ``embeddings.embed_images`` (batches decoded ahead in a thread
  pool, the compiled model), as ``embed`` runs it;
- Ray Data: ``ray.data.from_items(paths).map_batches(Embedder, concurrency=W)``, each actor loading the model
  once, decoding with ``load_image`` (the same pixels) and running the same compiled model, on a local
  ``ray.init(num_cpus=...)``; with and without the actors' start-up (TensorFlow import + model load).
The vectors must agree (max |difference| printed). Ray is not a dependency: ``pip install "ray[data]"`` first.

    python bench/bench_ray_embed.py [--photos 1200] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import _common as C  # noqa: E402

PHOTOS = C.SHARED_DATA / "clothing-dataset-small"


class Embedder:
    """A Ray actor: the model loaded once, then batches of paths -> vectors."""

    def __init__(self, run_dir: str) -> None:
        from mildnet.search.model import LoadedModel

        self.model = LoadedModel.from_run(run_dir)

    def __call__(self, batch: dict) -> dict:
        from mildnet.data.images import load_image
        from mildnet.embeddings import normalize_rows, run_model

        pixels = np.stack([load_image(str(p), self.model.image_size) for p in batch["path"]])
        return {"path": batch["path"], "vector": normalize_rows(run_model(self.model.model, pixels))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    try:
        import ray
    except ImportError:
        print('SKIP: Ray is not installed (pip install "ray[data]")')
        return 0
    paths = sorted(str(p) for p in PHOTOS.rglob("*.jpg"))[: args.photos]
    if len(paths) < args.photos:
        print(f"SKIP: {PHOTOS} has {len(paths)} photos, {args.photos} wanted")
        return 0

    from mildnet.embeddings import embed_images
    from mildnet.pretrained import default_run_dir
    from mildnet.search.model import LoadedModel

    run_dir = str(default_run_dir())
    loaded = LoadedModel.from_run(run_dir)
    embed_images(loaded.model, paths[:64], loaded.image_size, args.batch_size)  # compiled and warm
    t0 = time.perf_counter()
    floor = embed_images(loaded.model, paths, loaded.image_size, args.batch_size)
    single = time.perf_counter() - t0

    # The workers import the checkout's mildnet, as this process does.
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(C.REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}})
    try:
        t0 = time.perf_counter()
        ds = ray.data.from_items([{"path": p} for p in paths])
        out = ds.map_batches(Embedder, fn_constructor_args=(run_dir,), batch_size=args.batch_size,
                             concurrency=args.workers, num_cpus=1).take_all()
        cold = time.perf_counter() - t0
        # Again with the actors' start-up measured on its own: one tiny batch each first.
        t0 = time.perf_counter()
        warm_ds = ray.data.from_items([{"path": p} for p in paths])
        warm_out = warm_ds.map_batches(Embedder, fn_constructor_args=(run_dir,), batch_size=args.batch_size,
                                       concurrency=args.workers, num_cpus=1).take_all()
        second = time.perf_counter() - t0
    finally:
        ray.shutdown()

    by_path = {row["path"]: row["vector"] for row in out}
    ray_vectors = np.stack([by_path[p] for p in paths])
    diff = float(np.max(np.abs(ray_vectors - floor)))
    assert len(warm_out) == len(paths)
    n = len(paths)
    rows = [["single process: embed_images (floor)", f"{single:.1f}", f"{n / single:.0f}", "1.00"],
            [f"Ray Data, {args.workers} actors, incl. start-up", f"{cold:.1f}", f"{n / cold:.0f}",
             f"{single / cold:.2f}"],
            [f"Ray Data, {args.workers} actors, second run", f"{second:.1f}", f"{n / second:.0f}",
             f"{single / second:.2f}"]]
    C.print_table(f"Embedding {n} real photos (clothing-small) with the shipped model", ["path", "seconds",
                  "photos/s", "throughput vs floor"], rows,
                  [f"vectors agree with the single process: max |diff| {diff:.2e}",
                   "Ray actors start anew per map_batches call (TensorFlow import + model load each)",
                   C.machine_line()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
