"""Tables from results.jsonl: per variant x set, best-epoch val / test means over seeds (per-seed test values),
the zero-learning test accuracy, and two less selection-sensitive figures (mean test over epochs 2-10, and
the paired difference to the default per seed where the init is shared).

    python summarise.py [--seeds 0,1,2] [--results results.jsonl]
"""

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--results", default="results.jsonl", help="relative to $MILDNET_ABLATION_DIR")
ap.add_argument("--seeds", default=None, help="restrict to these seeds (default: all)")
args = ap.parse_args()
keep = None if args.seeds is None else {int(s) for s in args.seeds.split(",")}

runs = defaultdict(dict)  # (variant, set) -> seed -> record
order = []
work = Path(os.environ.get("MILDNET_ABLATION_DIR", "/tmp/mildnet-ablation"))
for line in open(work / args.results):
    r = json.loads(line)
    if keep is not None and r["seed"] not in keep:
        continue
    key = (r["variant"], r["set"])
    if r["variant"] not in order:
        order.append(r["variant"])
    runs[key][r["seed"]] = r

for sname in ("typecolour", "class"):
    print(f"\n## {sname}")
    print("| variant | n | val mean | test mean +- sd | test per seed | test mean over ep 2-10 | zero-shot test | "
          "test - default, paired seeds |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    base = runs.get(("default", sname), {})
    for v in order:
        rs = runs.get((v, sname))
        if not rs:
            continue
        seeds = sorted(rs)
        val = np.array([rs[s]["val"] for s in seeds])
        test = np.array([rs[s]["test"] for s in seeds])
        epoch_mean = np.array([np.mean([h["test_acc"] for h in rs[s]["history"][1:]]) for s in seeds])
        common = [s for s in seeds if s in base]
        diff = np.array([rs[s]["test"] - base[s]["test"] for s in common])
        per_seed = " / ".join(f"{t:.3f}" for t in test[:3]) + (" ..." if len(test) > 3 else "")
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        print(f"| {v} | {len(seeds)} | {val.mean():.3f} | {test.mean():.3f} +- {test.std(ddof=1):.3f} | {per_seed} | "
              f"{epoch_mean.mean():.3f} | {rs[seeds[0]]['zeroshot_test']:.3f} | "
              f"{diff.mean() * 100:+.1f} pt (se {se * 100:.1f}) |")
    secs = [r["train_seconds"] for v in order for r in runs.get((v, sname), {}).values()]
    print(f"\nhead training: {np.mean(secs):.1f} s a run on average ({len(secs)} runs)")
