"""What a rerun of the Search page costs on a large catalogue, this checkout against an older commit.

A Streamlit page runs top to bottom on every click. Issue 20 found the Search page parsing the registry twice,
stat'ing every catalogue photo and rebuilding two tables over the whole catalogue on each rerun. This bench builds
a catalogue of N photos (tiny JPEGs in category folders, a catalog.csv with categories and colours), registers it,
lets the app embed it once with the shipped model, then times reruns of the Search page (Streamlit's AppTest: the
real script, no browser) with a product picked: the same steps in this checkout and in a ``git worktree`` of
``--before`` (default: the commit before the engine landed), alternating, medians.

    python bench/bench_rerun.py [--n 10000] [--reruns 6] [--before 56754bb]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import _common as C  # noqa: E402

# Runs inside a fresh interpreter with the checkout to measure first on sys.path.
CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from streamlit.testing.v1 import AppTest
app = os.path.join(sys.argv[1], "app.py")
at = AppTest.from_file(app, default_timeout=900)
at.run()
at.switch_page("pages/search.py").run()
ids = [o for o in at.selectbox(key="mn_pick_product").options]
at.selectbox(key="mn_pick_product").set_value(at.selectbox(key="mn_pick_product").value).run()
at.button(key="mn_pick_go").click().run()
assert not at.exception, at.exception
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    at.run()
    times.append(time.perf_counter() - t)
assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
print(json.dumps({"times": times}))
"""


def make_catalogue(root: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    categories = ["dress", "shirt", "shoe", "bag", "watch", "hat", "skirt", "coat"]
    colours = ["red", "green", "blue", "black", "white", "grey", "yellow", "pink"]
    rows = ["image,product_id,category,colour"]
    for i in range(n):
        category, colour = categories[i % len(categories)], colours[(i // 8) % len(colours)]
        rel = f"{category}/p{i:06d}.jpg"
        path = root / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path, quality=70)
        rows.append(f"{rel},p{i:06d},{category},{colour}")
    (root / "images" / "catalog.csv").write_text("\n".join(rows) + "\n")


def child_env(root: Path) -> dict:
    env = dict(os.environ)
    # Its own registry too: `data add` would otherwise register "big" in the checkout's data_manifest.user.csv,
    # left pointing at this temporary folder after the run.
    env.update(MILDNET_HOME=str(root / "home"), MILDNET_STORE=str(root / "store"), MILDNET_DATASET="big",
               MILDNET_RUNS=str(root / "runs"), MILDNET_USER_MANIFEST=str(root / "registry" / "user.csv"),
               TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("MILDNET_REDIS_URL", None)
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--reruns", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", default="56754bb")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-rerun-") as tmp:
        root = Path(tmp)
        before = root / "before"
        subprocess.run(["git", "-C", str(C.REPO), "worktree", "add", "--detach", str(before), args.before],
                       check=True, capture_output=True)
        try:
            make_catalogue(root, args.n)
            env = child_env(root)
            subprocess.run([sys.executable, "-m", "mildnet", "data", "add", "big", "--images", str(root / "images")],
                           check=True, env=env, cwd=C.REPO, capture_output=True)
            # Embedded once by the CLI (the same store key for both versions: same model, same catalogue).
            subprocess.run([sys.executable, "-m", "mildnet", "embed", "--dataset", "big"], check=True, env=env,
                           cwd=C.REPO, capture_output=True)
            results: dict[str, list[float]] = {"before": [], "now": []}
            for _ in range(args.rounds):
                for name, tree in (("before", before), ("now", C.REPO)):
                    done = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(args.reruns)], env=env,
                                          cwd=tree, capture_output=True, text=True)
                    if done.returncode != 0:
                        print(done.stderr[-3000:])
                        return 1
                    times = json.loads(done.stdout.strip().splitlines()[-1])["times"]
                    results[name].extend(times[1:])  # the first rerun after the click warms caches
        finally:
            subprocess.run(["git", "-C", str(C.REPO), "worktree", "remove", "--force", str(before)],
                           capture_output=True)

    base = statistics.median(results["before"])
    rows = [[name, f"{statistics.median(t) * 1000:.0f}", f"{min(t) * 1000:.0f}", f"{statistics.median(t) / base:.2f}"]
            for name, t in results.items()]
    C.print_table(f"Search page rerun, {args.n:,}-photo catalogue, a product picked (before = {args.before})",
                  ["version", "median ms", "best ms", "ratio to before"], rows,
                  [f"{len(results['now'])} reruns each over {args.rounds} alternating rounds (AppTest, no browser)",
                   C.machine_line()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
