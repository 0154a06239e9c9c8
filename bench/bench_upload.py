"""Server-side upload-to-results latency of the Search page: uploaded bytes -> 5 results, default model.

Compares, photo by photo (interleaved, medians):
- floor: the model on the photo already decoded and resized in memory + a numpy top-5 over the catalogue;
- before: the page's previous path (the upload decoded twice: once for the thumbnail, once for the model);
- now: ``LoadedModel.embed_with_preview`` (one decode, what the Search page calls) + ``Searcher.query``.

The catalogue is N random unit vectors of the model's dimension (search speed does not depend on the values);
the photos are real JPEGs from ../shared/data/clothing-dataset-small.

    python bench/bench_upload.py [--n 10000] [--photos 25]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402

import _common as C  # noqa: E402

PHOTOS = C.SHARED_DATA / "clothing-dataset-small"


def upload_section(n: int, photos: int, out: dict) -> None:
    from PIL import Image

    from mildnet.data.images import load_image
    from mildnet.embeddings import embed_image, run_model
    from mildnet.pretrained import default_run_dir
    from mildnet.runs import open_run
    from mildnet.search import Searcher
    from mildnet.search.model import LoadedModel
    from mildnet.store import EmbeddingSet
    from mildnet.ui.search_page import THUMB_PX

    paths = sorted(PHOTOS.rglob("*.jpg")) if PHOTOS.is_dir() else []
    if not paths:
        print(f"SKIP upload: no photos under {PHOTOS}\n")
        return
    paths = paths[:: max(1, len(paths) // photos)][:photos]
    blobs = [p.read_bytes() for p in paths]
    model, config = open_run(default_run_dir())
    size = int(config["image_size"])
    bundle = LoadedModel.from_run(default_run_dir())
    dim = int(embed_image(model, blobs[0], size).shape[0])
    x = np.random.default_rng(5).standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"item{i:06d}" for i in range(n)]
    searcher = Searcher(EmbeddingSet(ids, ids, x))
    resized = [load_image(b, size)[None] for b in blobs]  # uint8, as every product path feeds the model

    def floor(i: int) -> None:
        v = run_model(model, resized[i])[0]  # the compiled graph: an eager call is several times slower
        s = x @ (v / np.linalg.norm(v))
        part = np.argpartition(s, n - 5)[n - 5:]
        part[np.argsort(-s[part])]

    def before(i: int) -> None:
        pixels = load_image(blobs[i])
        vector = embed_image(model, blobs[i], size)
        thumb = Image.fromarray(pixels)
        thumb.thumbnail((THUMB_PX, THUMB_PX))
        searcher.query(vector, k=5)

    def now(i: int) -> None:
        vector, _ = bundle.embed_with_preview(blobs[i], THUMB_PX)
        searcher.query(vector, k=5)

    for f in (floor, before, now):  # warm-up: traces the model call
        f(0)
    # An uploaded catalogue photo must embed exactly like the catalogue's copy (so it finds itself with score 1).
    same = sum(np.array_equal(bundle.embed_with_preview(b, THUMB_PX)[0], embed_image(model, b, size)) for b in blobs)
    times: dict[str, list[float]] = {"floor": [], "before": [], "now": []}
    for i in range(len(blobs)):
        for name, f in (("floor", floor), ("before", before), ("now", now)):
            a = time.perf_counter()
            f(i)
            times[name].append(time.perf_counter() - a)
    p50 = {k: float(np.median(v)) for k, v in times.items()}
    px = [Image.open(p).size for p in paths]
    C.print_table(
        f"Upload to 5 results (server side), {len(blobs)} real photos, catalogue {n:,} x {dim}, "
        f"default model {config['model']} at {size} px",
        ["path", "p50 ms", "p90 ms", "time vs floor", "speed-up vs before"],
        [["floor: model on pre-decoded pixels + numpy top-5", p50["floor"] * 1e3,
          float(np.percentile(times["floor"], 90)) * 1e3, "1.00", "-"],
         ["before: decoded twice (thumbnail, model) + search", p50["before"] * 1e3,
          float(np.percentile(times["before"], 90)) * 1e3, f"{p50['before'] / p50['floor']:.2f}", "1.0x"],
         ["now: embed_upload (one decode) + Searcher.query", p50["now"] * 1e3,
          float(np.percentile(times["now"], 90)) * 1e3, f"{p50['now'] / p50['floor']:.2f}",
          C.ratio(p50["before"], p50["now"])]],
        notes=[f"target: p50 < 100 ms for 'now'; photos {min(px)} .. {max(px)} px; the three paths alternate "
               "photo by photo",
               f"upload vector identical to the catalogue path's (embed_image) for {same}/{len(blobs)} photos"],
    )
    out["upload"] = {"catalogue": n, "dim": dim, "photos": len(blobs), "p50_s": p50, "identical_to_catalogue": same,
                     "ratio_now_vs_floor": p50["now"] / p50["floor"], "speedup_vs_before": p50["before"] / p50["now"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="catalogue rows")
    p.add_argument("--photos", type=int, default=25)
    args = p.parse_args(argv)
    upload_section(args.n, args.photos, {})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
