"""Training step throughput (issue 10): the stacked q/p/n step against three separate passes, and what the
default recipe's cached-feature step costs, with each variant's peak RSS (one subprocess per variant, so
the peaks do not mix).

    python bench/bench_train.py [--quick] [--size 128] [--batch 16] [--steps 6] [--json OUT]

- ``stacked``: one forward pass over concat(q, p, n) (3B images), loss, backward: what ``train`` does when the
  whole network trains (the reference interleaved q/p/n rows in one batch too).
- ``separate``: three forward passes (q, p, n) under one tape, then backward: the baseline.
- ``features``: the default ``squeezenet_colour`` recipe, whose frozen backbone's features are computed once
  per image; a step then only runs the linear head (the one-off feature pass is reported separately).
The network is ``squeezenet_colour`` with every layer trainable (``freeze=none``) for the first two.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import machine_line, maxrss_mb, print_table


def _variant(name: str, size: int, batch: int, steps: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from mildnet.losses import get_loss
    from mildnet.models import build_model, freeze_layers
    from mildnet.training import feature_head

    tf.keras.utils.set_random_seed(0)
    model = build_model("squeezenet_colour", size, None, None)
    loss_fn = get_loss("hinge")
    optimizer = tf.keras.optimizers.Adam(1e-3)
    rng = np.random.default_rng(0)
    images = [tf.constant(rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")) for _ in range(3)]
    extra = {}
    if name == "features":
        freeze_layers(model, "features")
        net = feature_head(model)
        extractor = tf.keras.Model(model.inputs[0], model.get_layer("features").output)
        started = time.perf_counter()
        inputs = [extractor(x, training=False) for x in images]
        extra["feature_pass_s_per_image"] = (time.perf_counter() - started) / (3 * batch)
    else:
        net, inputs = model, images
    variables = net.trainable_variables
    optimizer.build(variables)

    @tf.function
    def step(q, p, n):
        with tf.GradientTape() as tape:
            if name == "separate":
                eq, ep, en = net(q, training=True), net(p, training=True), net(n, training=True)
            else:
                k = tf.shape(q)[0]
                e = net(tf.concat([q, p, n], axis=0), training=True)
                eq, ep, en = e[:k], e[k:2 * k], e[2 * k:]
            loss = tf.reduce_mean(loss_fn(eq, ep, en, margin=0.3))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    step(*inputs)  # trace and warm up
    started = time.perf_counter()
    for _ in range(steps):
        float(step(*inputs))
    seconds = (time.perf_counter() - started) / steps
    return {"variant": name, "step_s": seconds, "triplets_per_s": batch / seconds, "peak_rss_mb": maxrss_mb(),
            **extra}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="96 px, 4 steps")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16, help="triplets per step")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.steps = 96, 4
    if args.variant:
        print(json.dumps(_variant(args.variant, args.size, args.batch, args.steps)))
        return 0
    results = {}
    # Alternated twice so that load from other jobs hits both sides alike; the best of the two is kept.
    for _ in range(2):
        for name in ("separate", "stacked", "features"):
            out = subprocess.run([sys.executable, __file__, "--variant", name, "--size", str(args.size),
                                  "--batch", str(args.batch), "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            if name not in results or row["step_s"] < results[name]["step_s"]:
                results[name] = row
    base = results["separate"]["step_s"]
    rows = [[name, f"{r['step_s'] * 1000:.0f}", f"{r['triplets_per_s']:.1f}", f"{base / r['step_s']:.2f}x",
             f"{r['peak_rss_mb']:.0f}"] for name, r in results.items()]
    feature = results["features"].get("feature_pass_s_per_image", 0.0)
    print_table(f"training step, squeezenet_colour, {args.size} px, {args.batch} triplets",
                ["variant", "ms/step", "triplets/s", "speed vs separate", "peak RSS MB"], rows,
                [f"features: plus a one-off frozen-backbone pass of {feature * 1000:.1f} ms per distinct image",
                 machine_line()])
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"size": args.size, "batch": args.batch, "results": results, "machine": machine_line()}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
