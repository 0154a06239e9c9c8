"""Run every benchmark one after the other (quick settings by default) and print their tables.

    python bench/run_all.py            # quick: about 1-2 minutes on 2 busy cores
    python bench/run_all.py --default  # each script's default size (about 2-3 minutes)
    python bench/run_all.py --full     # each script's --full size (several minutes)
    python bench/run_all.py search store   # a subset

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
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", choices=[*BENCHES, []], help="benchmarks to run (default: all)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--default", action="store_true", help="each script's default size")
    size.add_argument("--full", action="store_true", help="each script's --full size")
    args = p.parse_args(argv)
    mode = 2 if args.full else 1 if args.default else 0
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    failed = []
    for name in args.names or list(BENCHES):
        cmd = [sys.executable, str(HERE / f"bench_{name}.py"), *BENCHES[name][mode]]
        print(f"=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=REPO, env=env)
        print(f"=== {name}: exit {rc} in {time.perf_counter() - t0:.1f} s\n", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
