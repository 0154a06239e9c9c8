"""Run every benchmark one after the other (quick settings by default) and print their tables.

    python bench/run_all.py --quick    # quick (also without a flag): under 5 minutes on 2 busy cores
    python bench/run_all.py --default  # each script's default size
    python bench/run_all.py --full     # each script's --full size (more repeats)
    python bench/run_all.py search store   # a subset
    python bench/run_all.py --quick --real-store /tmp/st   # float16 recall on a store of real embeddings

``perf`` (bench_perf.py: the issue-10 figures against their floors, with machine info) writes its JSON to
bench/results/perf-<mode>.json.

Exits non-zero if any benchmark failed (a skipped one, e.g. missing data, counts as passed).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# name -> (quick args, default args, full args)
BENCHES = {
    "search": (["--quick"], [], ["--full"]),
    "check": ([], [], ["--full"]),
    "embed": (["--n", "150"], [], ["--full"]),
    "store": (["--quick"], [], ["--repeat", "5"]),
    "train": (["--quick", "--json", "bench/results/train-quick.json"], [], ["--json", "bench/results/train.json"]),
    "perf": (["--quick", "--json", "bench/results/perf-quick.json"],
             ["--quick", "--json", "bench/results/perf-quick.json"],
             ["--full", "--json", "bench/results/perf-full.json"]),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", choices=[*BENCHES, []], help="benchmarks to run (default: all)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="quick sizes (the default)")
    size.add_argument("--default", action="store_true", help="each script's default size")
    size.add_argument("--full", action="store_true", help="each script's --full size")
    p.add_argument("--real-store", default=None, help="perf: local store of real embeddings for float16 recall")
    args = p.parse_args(argv)
    mode = 2 if args.full else 1 if args.default else 0
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    failed = []
    t_all = time.perf_counter()
    for name in args.names or list(BENCHES):
        cmd = [sys.executable, str(HERE / f"bench_{name}.py"), *BENCHES[name][mode]]
        if name == "perf" and args.real_store:
            cmd += ["--real-store", args.real_store]
        print(f"=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=REPO, env=env)
        print(f"=== {name}: exit {rc} in {time.perf_counter() - t0:.1f} s\n", flush=True)
        if rc:
            failed.append(name)
    print(f"all benchmarks: {time.perf_counter() - t_all:.0f} s")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
