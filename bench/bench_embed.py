"""Image decoding + embedding throughput: ``decode_batches`` (batches decoded ahead in a thread pool, as used by
``embed_images``) and a tf.data pipeline of ``tf_load_image`` (training's streaming path) vs a sequential loop of
``load_image``
(+ ``model.predict`` per batch).

Photos: real JPEGs from ``../shared/data/clothing-dataset-small`` (skipped with a message if absent). Model:
``mildnet_squeezenet`` with ``weights=None`` (random init; speed does not depend on the weights), or
``--model tiny_cnn`` to isolate decoding. The image count is chosen so the last batch is partial, and the
benchmark checks that every image was embedded (N embedded == N images).

    python bench/bench_embed.py               # 250 images at 96 px, batch 32
    python bench/bench_embed.py --full        # 1000 images at 224 px
    python bench/bench_embed.py --n 256 --size 224 --model tiny_cnn
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

PHOTOS = C.SHARED_DATA / "clothing-dataset-small"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=None, help="images (default 250; --full 1000)")
    p.add_argument("--size", type=int, default=None, help="input size in px (default 96; --full 224)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--model", default="mildnet_squeezenet", help="zoo model name (weights=None)")
    p.add_argument("--full", action="store_true")
    args = p.parse_args(argv)
    n = args.n or (1000 if args.full else 250)
    size = args.size or (224 if args.full else 96)

    paths = sorted(str(x) for x in PHOTOS.rglob("*.jpg")) if PHOTOS.is_dir() else []
    if not paths:
        print(f"SKIP bench_embed: no photos under {PHOTOS}")
        return 0
    paths = paths[:: max(1, len(paths) // n)][:n]  # spread over classes/splits
    n = len(paths)

    import numpy as np
    import tensorflow as tf

    from mildnet.data.images import decode_batches, load_image, tf_load_image
    from mildnet.embeddings import embed_images
    from mildnet.models import build_model

    model = build_model(args.model, input_size=size, weights=None)
    print(C.machine_line())
    print(f"{n} photos from {PHOTOS.name}, {size} px, batch {args.batch} (last batch {n % args.batch or args.batch}),"
          f" model {args.model} (weights=None)\n", flush=True)

    # Warm-up: trace the model and the pipeline once on a few images (not timed).
    embed_images(model, paths[: args.batch + 1], image_size=size, batch_size=args.batch)
    model.predict(np.zeros((args.batch, size, size, 3), np.float32), verbose=0)

    def sequential_decode():
        return [np.stack([load_image(x, size) for x in paths[s:s + args.batch]]) for s in range(0, n, args.batch)]

    def pool_decode():
        return [b.pixels for b in decode_batches(paths, size, args.batch)]

    def pipeline_decode():
        dataset = tf.data.Dataset.from_tensor_slices(paths)
        dataset = dataset.map(lambda p: tf_load_image(p, size), num_parallel_calls=tf.data.AUTOTUNE)
        return [b.numpy() for b in dataset.batch(args.batch).prefetch(tf.data.AUTOTUNE)]

    def sequential_embed():
        out = []
        for s in range(0, n, args.batch):
            batch = np.stack([load_image(x, size) for x in paths[s:s + args.batch]]).astype(np.float32)
            out.append(model.predict(batch, verbose=0))
        return np.concatenate(out)

    def pipeline_embed():
        return embed_images(model, paths, image_size=size, batch_size=args.batch)

    t_sd, dec_seq = C.best_of(sequential_decode)
    t_bd, dec_pool = C.best_of(pool_decode)
    t_pd, dec_pipe = C.best_of(pipeline_decode)
    t_se, emb_seq = C.best_of(sequential_embed)
    t_pe, emb_pipe = C.best_of(pipeline_embed)

    n_dec_pipe = sum(len(b) for b in dec_pipe)
    same_pixels = all(np.array_equal(a.astype(np.float32), b) and np.array_equal(a, c)
                      for a, b, c in zip(dec_seq, dec_pipe, dec_pool))
    seq_norm = emb_seq / np.linalg.norm(emb_seq, axis=1, keepdims=True)
    max_diff = float(np.abs(seq_norm - emb_pipe).max())
    rows = [
        ["decode only: sequential load_image loop", n, t_sd, n / t_sd, "1.0x"],
        ["decode only: decode_batches (thread pool, as embed_images)", n, t_bd, n / t_bd, C.ratio(t_sd, t_bd)],
        ["decode only: tf.data of tf_load_image (training)", n_dec_pipe, t_pd, n_dec_pipe / t_pd, C.ratio(t_sd, t_pd)],
        ["decode+embed: load_image loop + model.predict per batch", len(emb_seq), t_se, n / t_se, "1.0x"],
        ["decode+embed: embed_images (decode_batches + compiled model)", len(emb_pipe), t_pe, len(emb_pipe) / t_pe,
         C.ratio(t_se, t_pe)],
    ]
    ok = len(emb_pipe) == n and n_dec_pipe == n and sum(len(b) for b in dec_pool) == n
    C.print_table(
        f"Image decoding / embedding throughput ({n} photos, {size} px, batch {args.batch})",
        ["method", "images", "seconds", "images/s", "ratio vs sequential"], rows,
        notes=[f"count check: N embedded == N images: {len(emb_pipe)} == {n} -> {'OK' if ok else 'FAIL'} "
               f"(last partial batch of {n % args.batch or args.batch} kept)",
               f"pipelines' pixels identical to load_image: {same_pixels}; max |embedding diff| vs sequential "
               f"(L2-normalised) = {max_diff:.2e}",
               "each ratio is against the sequential row of its kind (decode only, decode+embed)"],
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
