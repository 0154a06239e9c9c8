"""The app in a real browser: first start on the default data, and upload -> five result images on screen.

``streamlit run app.py`` on a free port with a fresh store, runs folder and data folder (a throw-away
manifest whose ``sample`` rows point into a temp dir), driven by headless Chromium through Playwright:

- first start: from launching ``streamlit run`` to the Home page showing "Embedding cache: ready" (the sample
  catalogue is generated, the default model loaded and the catalogue embedded on the way), with the phases
  taken from the server side (health endpoint up, first page drawn, catalogue ready);
- upload: on the Search page, from setting the file on the uploader to five result images loaded
  (``complete`` and ``naturalWidth > 0``), with the first card showing the photo's own product (a catalogue
  photo finds itself); median and p95 over ``--uploads`` different catalogue photos, after one warm-up.

    python bench/bench_browser.py [--uploads 10] [--json PATH]

Prints ``SKIP`` and exits 0 without Playwright or Chromium; exits 1 when a photo does not find itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402

import _common as C  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HITS = '[class*="st-key-mn_hit_"] [data-testid="stImage"] img'
TIMEOUT_MS = 180_000
# Five loaded result images whose first one is not the previous upload's: a new result set is on screen.
LOADED_JS = """([sel, before]) => {
  const imgs = [...document.querySelectorAll(sel)];
  if (imgs.length < 5 || imgs[0].src === before) return false;
  return imgs.slice(0, 5).every(i => i.complete && i.naturalWidth > 0);
}"""


def _write_manifest(root: Path) -> Path:
    """The project's ``sample`` rows, with their data folder under ``root`` (so the sample is generated)."""
    rows = [line for line in (C.REPO / "data_manifest.csv").read_text().splitlines()
            if line.startswith("sample,") or line.startswith("dataset,")]
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def _idle(page) -> None:
    page.wait_for_selector('[data-testid="stSidebar"]', timeout=TIMEOUT_MS)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=TIMEOUT_MS)


def _photos(root: Path, n: int) -> list[Path]:
    """One catalogue photo from each of n products, spread over the catalogue."""
    images = root / "data" / "sample" / "images"
    products = sorted(p for p in images.iterdir() if p.is_dir())
    picks = products[:: max(1, len(products) // n)][:n]
    return [sorted(p.glob("*.jpg"))[0] for p in picks]


def run(uploads: int, out: dict) -> int:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("SKIP browser: playwright (python) is not installed\n")
        return 0
    if not Path(CHROMIUM).is_file():
        print(f"SKIP browser: no Chromium at {CHROMIUM}\n")
        return 0
    root = Path(tempfile.mkdtemp(prefix="mildnet-browser-"))
    try:
        return _measure(sync_playwright, root, uploads, out)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _measure(sync_playwright, root: Path, uploads: int, out: dict) -> int:
    from tests.app_server import app_env, running_app  # the project root is on sys.path (_common)

    with sync_playwright() as p:
        # Chromium is started before the clock: it is the user's browser, not part of the app's start.
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1440, "height": 1100}).new_page()
        t0 = time.perf_counter()
        # The project's shipped models (no MILDNET_PRETRAINED), a local store, a user registry beside the manifest.
        env = app_env(root, "sample", manifest=_write_manifest(root), own_pretrained=False)
        try:
            with running_app(env, root / "server.log") as url:
                t_health = time.perf_counter() - t0
                page.goto(url)
                page.wait_for_selector(".mn-hero h1", timeout=TIMEOUT_MS)
                t_drawn = time.perf_counter() - t0
                page.wait_for_function(
                    "[...document.querySelectorAll('[data-testid=\"stMetric\"]')].some(m => "
                    "m.innerText.includes('Embedding cache') && m.innerText.includes('ready'))",
                    timeout=TIMEOUT_MS)
                t_ready = time.perf_counter() - t0
                C.print_table(
                    "App first start on the default data (fresh store and data folder; sample catalogue, "
                    "default model)",
                    ["phase (from launching `streamlit run`)", "seconds", "target"],
                    [["server answers /_stcore/health", t_health, "-"],
                     ["Home page drawn (hero visible)", t_drawn, "-"],
                     ["Home page shows 'Embedding cache: ready'", t_ready, "< 20 s"]],
                    notes=["the sample catalogue is generated and embedded in this time (nothing cached)"])
                out["first_start"] = {"health_s": t_health, "drawn_s": t_drawn, "ready_s": t_ready}

                page.goto(url + "/search")
                _idle(page)
                photos = _photos(root, uploads + 1)
                uploader = page.locator('[data-testid="stFileUploader"] input[type="file"]')
                times, failures = [], []
                for i, photo in enumerate(photos):
                    before = page.eval_on_selector_all(HITS, "imgs => imgs.length ? imgs[0].src : ''")
                    a = time.perf_counter()
                    uploader.set_input_files(str(photo))
                    page.wait_for_function(LOADED_JS, arg=[HITS, before], timeout=TIMEOUT_MS, polling="raf")
                    seconds = time.perf_counter() - a
                    _idle(page)
                    # The card shows a title; its id (the photo's path) is the title's tooltip.
                    first = page.locator(".st-key-mn_hit_1 .mn-card-title").get_attribute("title") or ""
                    if photo.parent.name not in first:
                        failures.append(f"{photo.parent.name}/{photo.name}: first result was {first}")
                    if i:  # the first upload also loads the Search page's resources once: a warm-up
                        times.append(seconds)
        except RuntimeError as exc:  # e.g. the server did not start: the reason (its log's tail), no traceback
            raise SystemExit(str(exc)) from None
        finally:
            browser.close()
    median, p95 = float(np.median(times)), float(np.percentile(times, 95))
    C.print_table(
        "Upload -> five result images loaded, real browser (headless Chromium), sample catalogue, default model",
        ["figure", "uploads", "seconds", "target"],
        [["median", len(times), median, "< 0.7 s"], ["p95", len(times), p95, "-"],
         ["min / max", len(times), f"{min(times):.3f} / {max(times):.3f}", "-"]],
        notes=["from set_input_files on the Search page's uploader to 5 result <img> complete with naturalWidth > 0;"
               " one warm-up upload not counted; each photo a different product's catalogue photo",
               f"each photo found itself first: {len(photos) - len(failures)}/{len(photos)}"])
    out["upload"] = {"uploads": len(times), "median_s": median, "p95_s": p95, "times_s": times,
                     "found_itself": len(photos) - len(failures)}
    for failure in failures:
        print(f"FAIL {failure}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=10, help="timed uploads (after one warm-up)")
    parser.add_argument("--json", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.uploads < 1:
        parser.error("--uploads must be at least 1")
    print(C.machine_line(), "\n")
    out: dict = {}
    code = run(args.uploads, out)
    if args.json and out:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
