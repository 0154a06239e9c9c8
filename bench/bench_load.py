"""Load bench (issue 11): the app as a server under several shoppers at once, and CLI searches during a rewrite.

1. ``streamlit run app.py`` on a free port over a tiny generated catalogue; N Playwright browser contexts (one
   Chromium) each upload their own photos, round after round, all at the same time, while a training run goes
   on in a background thread of this process (same machine, same cores). Per upload: the latency from handing
   the file to the page until the first result card shows, whether that card is the session's own product
   (every photo is a catalogue photo, so it must find itself first; another session's product there would be
   cross-talk), and any exception box or error alert.
2. ``python -m mildnet search`` processes against one Redis store while ``embed --rebuild`` rewrites that store
   again and again: every search must exit 0 with the query's own product first.

Not a timed test: it prints a table and writes JSON (default bench/results/load.json). Exit 1 only when a
correctness check fails (a wrong result, an exception, a failed search).

    python bench/bench_load.py [--sessions 8] [--rounds 3] [--products 40] [--searches 16] [--rebuilds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import REPO, machine_line, print_table

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HITS = '[class*="st-key-mn_hit_"] [data-testid="stImage"] img'
TIMEOUT_MS = 180_000


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _summary(latencies: list[float]) -> dict:
    return {"n": len(latencies), "p50_s": _percentile(latencies, 50), "p95_s": _percentile(latencies, 95),
            "max_s": max(latencies) if latencies else None,
            "mean_s": statistics.fmean(latencies) if latencies else None}


def prepare(root: Path, products: int) -> dict:
    """A generated catalogue, its manifest, and one trained tiny_cnn run the app and the CLI search with."""
    from mildnet import training
    from mildnet.data.sample import generate_sample

    generate_sample(root / "tiny", products=products, size=48)
    (root / "manifest.csv").write_text("dataset,split,triplets,image_root,catalog,source\n" + "".join(
        f"tiny,{s},tiny/{s}.csv,tiny,tiny/catalog.csv,generated\n" for s in ("train", "val", "test")))
    run = root / "runs" / "served"
    training.train(training.TrainConfig(
        images=str(root / "tiny"), triplets=str(root / "tiny" / "train.csv"),
        val_triplets=str(root / "tiny" / "val.csv"), dataset="tiny", out=str(run),
        model="tiny_cnn", weights=None, image_size=32, epochs=2, batch_size=32))
    photos = sorted((root / "tiny" / "images").glob("p*/catalog.jpg"))
    return {"root": root, "run": run, "images": root / "tiny", "photos": photos}


class BackgroundTraining:
    """A training run in a thread of this process for as long as the load lasts (stopped, not finished)."""

    def __init__(self, env: dict):
        from mildnet import training

        self.stop_event = threading.Event()
        self.epochs_done = 0
        self.error: str | None = None
        config = training.TrainConfig(
            images=str(env["images"]), triplets=str(env["images"] / "train.csv"), dataset="tiny",
            # Outside MILDNET_RUNS: the sessions keep searching with the served run rather than each picking up
            # the newest (still training) run and re-embedding the catalogue with every new best epoch.
            out=str(env["root"] / "background-run"), model="tiny_cnn", weights=None, image_size=32,
            epochs=500, batch_size=8, val_fraction=0.0)
        bench = self

        class Count(training.TrainingCallback):
            def on_epoch_end(self, epoch, logs):
                bench.epochs_done += 1

        def work():
            try:
                training.train(config, callbacks=[Count()], stop_event=self.stop_event)
            except Exception as exc:  # reported in the table, the load figures are still worth having
                self.error = f"{type(exc).__name__}: {exc}"

        self.thread = threading.Thread(target=work, name="bench-training", daemon=True)

    def __enter__(self) -> "BackgroundTraining":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(120)


async def _idle(page) -> None:
    await page.wait_for_selector('[data-testid="stSidebar"]', timeout=TIMEOUT_MS)
    await page.wait_for_timeout(300)
    await page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=TIMEOUT_MS)


async def _session(browser, url: str, index: int, photos: list[Path], start: asyncio.Event, ready: list) -> dict:
    """One shopper: open Search, then upload each of its photos in turn as soon as the last one's results show."""
    record = {"session": index, "uploads": [], "exceptions": 0, "errors": []}
    context = await browser.new_context(viewport={"width": 1280, "height": 1000})
    page = await context.new_page()
    try:
        await page.goto(url + "/search", timeout=TIMEOUT_MS)
        await _idle(page)
        ready.append(index)
        await start.wait()  # every session uploads at the same moment
        for photo in photos:
            product = photo.parent.name
            t0 = time.perf_counter()
            await page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(photo))
            outcome = {"photo": product}
            try:
                # Wait for this photo's results: the first card naming the query's own product. A wrong
                # product there never satisfies it, so cross-talk shows as a timeout plus the card seen.
                await page.wait_for_function(
                    "p => { const c = document.querySelector('.st-key-mn_hit_1');"
                    " return c && c.innerText.includes(p) && document.querySelectorAll("
                    f"'{HITS}').length >= 5; }}", arg=product, timeout=60_000)
                outcome["latency_s"] = time.perf_counter() - t0
                await _idle(page)
            except Exception as exc:
                outcome["timeout"] = type(exc).__name__
            first = await page.locator(".st-key-mn_hit_1").inner_text() if await page.locator(
                ".st-key-mn_hit_1").count() else ""
            found = re.findall(r"\bp\d{4}\b", first)
            outcome["first_result"] = found[0] if found else None
            outcome["correct"] = outcome["first_result"] == product and "latency_s" in outcome
            record["uploads"].append(outcome)
            record["exceptions"] += await page.locator('[data-testid="stException"]').count()
            errors = await page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
            record["errors"] += errors
    except Exception as exc:
        record["errors"].append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
    finally:
        await context.close()
    return record


async def _browsers(url: str, sessions: int, assignments: list[list[Path]]) -> list[dict]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        start = asyncio.Event()
        ready: list[int] = []
        tasks = [asyncio.create_task(_session(browser, url, i, assignments[i], start, ready)) for i in range(sessions)]
        # Every context loads the page first, so the uploads (not the page loads) are what overlap.
        deadline = time.monotonic() + 180
        while len(ready) < sessions and not all(t.done() for t in tasks) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        start.set()
        records = await asyncio.gather(*tasks)
        await browser.close()
    return list(records)


def _tracebacks(log: str) -> list[str]:
    """Each traceback in the server log, from its first line to the exception line, for the JSON report."""
    blocks = []
    for part in log.split("Traceback (most recent call last):")[1:]:
        lines = part.strip("\n").splitlines()
        end = next((i for i, line in enumerate(lines) if line and not line.startswith(" ")), len(lines) - 1)
        blocks.append("\n".join(lines[: end + 1])[-3000:])
    return blocks


def browser_load(env: dict, sessions: int, rounds: int) -> dict:
    photos = env["photos"]
    if len(photos) < sessions * rounds + 1:
        raise SystemExit(f"need {sessions * rounds + 1} products for {sessions} sessions x {rounds} rounds")
    # Each session gets products no other session uploads: any result from another's photo is cross-talk.
    assignments = [[photos[1 + s * rounds + r] for r in range(rounds)] for s in range(sessions)]
    from tests.app_server import app_env, running_app  # the project root is on sys.path (_common)

    with running_app(app_env(env["root"], "tiny"), env["root"] / "server.log") as url:
        warm = asyncio.run(_browsers(url, 1, [[photos[0]]]))[0]  # builds the embeddings once
        with BackgroundTraining(env) as trainer:
            t0 = time.perf_counter()
            records = asyncio.run(_browsers(url, sessions, assignments))
            wall = time.perf_counter() - t0
        log = (env["root"] / "server.log").read_text()
    uploads = [u for r in records for u in r["uploads"]]
    latencies = [u["latency_s"] for u in uploads if "latency_s" in u]
    return {
        "sessions": sessions, "rounds": rounds, "uploads": len(uploads),
        "correct": sum(u["correct"] for u in uploads),
        "wrong": [dict(session=r["session"], **u) for r in records for u in r["uploads"] if not u["correct"]],
        "exceptions": sum(r["exceptions"] for r in records), "error_alerts": [e for r in records for e in r["errors"]],
        "server_tracebacks": log.count("Traceback"), "server_log_tracebacks": _tracebacks(log), "wall_s": wall,
        "latency": _summary(latencies), "warm_upload_s": warm["uploads"][0].get("latency_s"),
        "training_epochs_during_load": trainer.epochs_done, "training_error": trainer.error,
        "sessions_detail": records,
    }


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mildnet", *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=600)


def cli_load(env: dict, searches: int, rebuilds: int, workers: int) -> dict:
    from tests.redis_server import RedisServer  # the project root is on sys.path (_common)

    images, run = env["images"], env["run"]
    photos = env["photos"]
    with RedisServer() as redis:
        url = redis.url
        first = _cli("embed", "--run", str(run), "--images", str(images), "--store", url)
        if first.returncode:
            raise RuntimeError(f"initial embed failed: {first.stderr.strip()}")
        rewrites: list[dict] = []
        done = threading.Event()

        def rewriter():
            for _ in range(rebuilds):
                t0 = time.perf_counter()
                out = _cli("embed", "--rebuild", "--run", str(run), "--images", str(images), "--store", url)
                rewrites.append({"rc": out.returncode, "seconds": time.perf_counter() - t0,
                                 "stderr": out.stderr.strip().splitlines()[-1:] if out.returncode else []})
            done.set()

        results: list[dict] = []
        lock = threading.Lock()
        counter = iter(range(10**9))

        def searcher():
            while True:
                with lock:
                    i = next(counter)
                # At least `searches` searches, and keep searching until the last rewrite has finished.
                if i >= searches and done.is_set():
                    return
                photo = photos[i % len(photos)]
                t0 = time.perf_counter()
                out = _cli("search", "--run", str(run), "--image", str(photo), "--images", str(images),
                           "--store", url, "--json")
                seconds = time.perf_counter() - t0
                first_id = None
                if out.returncode == 0:
                    first_id = json.loads(out.stdout.strip().splitlines()[-1])["results"][0]["id"]
                with lock:
                    correct = out.returncode == 0 and first_id == f"images/{photo.parent.name}/catalog.jpg"
                    results.append({"rc": out.returncode, "seconds": seconds, "during_rewrite": not done.is_set(),
                                    "correct": correct,
                                    "first": first_id, "stderr": out.stderr.strip().splitlines()[-1:]
                                    if out.returncode else []})

        threads = [threading.Thread(target=rewriter)] + [threading.Thread(target=searcher) for _ in range(workers)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    latencies = [r["seconds"] for r in results if r["rc"] == 0]
    return {"searches": len(results), "succeeded": sum(r["rc"] == 0 for r in results),
            "correct": sum(r["correct"] for r in results),
            "during_rewrite": sum(r["during_rewrite"] for r in results),
            "failures": [r for r in results if not r["correct"]], "rewrites": rewrites, "workers": workers,
            "wall_s": wall, "latency": _summary(latencies),
            "rewrite_s": _summary([r["seconds"] for r in rewrites])}


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8, help="browser contexts uploading at once")
    parser.add_argument("--rounds", type=int, default=3, help="uploads per session")
    parser.add_argument("--products", type=int, default=40, help="catalogue size in products (5 photos each)")
    parser.add_argument("--searches", type=int, default=16, help="CLI searches (at least; more while rewrites go on)")
    parser.add_argument("--rebuilds", type=int, default=3, help="embed --rebuild runs during the searches")
    parser.add_argument("--workers", type=int, default=3, help="concurrent CLI search processes")
    parser.add_argument("--skip-browser", action="store_true")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "load.json")
    args = parser.parse_args(argv)

    report: dict = {"machine": machine_line(), "args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="mildnet-load-") as tmp:
        env = prepare(Path(tmp), args.products)
        if not args.skip_browser:
            if not Path(CHROMIUM).is_file():
                print(f"SKIP browser load: no Chromium at {CHROMIUM}")
            else:
                report["browser"] = browser_load(env, args.sessions, args.rounds)
        if not args.skip_cli:
            report["cli"] = cli_load(env, args.searches, args.rebuilds, args.workers)

    rows, ok = [], True
    if "browser" in report:
        b = report["browser"]
        bad = b["uploads"] - b["correct"] + b["exceptions"] + len(b["error_alerts"]) + b["server_tracebacks"]
        ok &= bad == 0
        rows.append([f"app: {b['sessions']} browsers x {b['rounds']} uploads, training in background "
                     f"({b['training_epochs_during_load']} epochs during the load)",
                     f"{b['correct']}/{b['uploads']} own results", f"{b['exceptions']} exc, "
                     f"{len(b['error_alerts'])} alerts, {b['server_tracebacks']} tracebacks",
                     _fmt(b["latency"]["p50_s"]), _fmt(b["latency"]["p95_s"]), _fmt(b["latency"]["max_s"])])
    if "cli" in report:
        c = report["cli"]
        ok &= c["correct"] == c["searches"] and all(r["rc"] == 0 for r in c["rewrites"])
        rows.append([f"CLI: search x {c['searches']} ({c['workers']} at once; {c['during_rewrite']} during "
                     f"{len(c['rewrites'])} embed --rebuild, p50 {_fmt(c['rewrite_s']['p50_s'])} s each)",
                     f"{c['correct']}/{c['searches']} exit 0, own product first",
                     f"{sum(r['rc'] != 0 for r in c['rewrites'])} failed rewrites",
                     _fmt(c["latency"]["p50_s"]), _fmt(c["latency"]["p95_s"]), _fmt(c["latency"]["max_s"])])
    notes = ["app latency: file handed to the page -> first result card shows the session's own product, "
             "with every other session uploading and a training run on the same cores",
             "CLI latency: whole process (Python + TensorFlow start, model load, Redis read, search)"]
    if "browser" in report:
        notes.append(f"warm-up upload (embeds the catalogue once): {_fmt(report['browser']['warm_upload_s'])} s")
    print_table("Load: concurrent app sessions and CLI searches during a rewrite",
                ["load", "correct", "errors", "p50 s", "p95 s", "max s"], rows, notes=notes)
    report["ok"] = bool(ok)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
