"""Drawing the sample's photos: a product's packshot on a studio background and its "wild" photos."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mildnet.data.sample.products import COLOURS, Product
from mildnet.data.sample.shapes import arc, garment_shape

# Bump when the rendering changes, so an old sample on disk is regenerated instead of reused.
# 2: drawn at the output size (edges from 2x masks, patterns box-filtered analytically) instead of everything
# at 2x and downsampled: a quarter of the pixels, so the app's first start renders the sample ~3x faster.
GENERATOR_VERSION = 2

# --------------------------------------------------------------------------------------------------
# Rendering at the output size. Only hard edges are drawn at 2x (polygon masks, reduced by a 2x2 box), and
# the fabric patterns are integrated over each pixel's footprint, so nothing aliases.
# --------------------------------------------------------------------------------------------------

SUPERSAMPLE = 2


@dataclass(frozen=True)
class _Look:
    """Per-product constants, so every photo of one product shows the same fabric."""

    rgb1: np.ndarray
    rgb2: np.ndarray
    period: float  # pattern repeat, in garment units
    phase: float
    folds: tuple[tuple[float, float, float], ...]  # (frequency, phase, amplitude) of soft vertical folds


def _look(product: Product, seed: int) -> _Look:
    rng = np.random.default_rng([seed, product.index, 7])
    rgb1 = np.array(COLOURS[product.colour], np.float32)
    rgb2 = np.array(COLOURS[product.colour2], np.float32) if product.colour2 else rgb1
    period = {"horizontal-stripes": (0.075, 0.11), "vertical-stripes": (0.06, 0.09),
              "polka-dots": (0.085, 0.12), "checks": (0.09, 0.13)}.get(product.pattern, (0.1, 0.1))
    folds = tuple((float(rng.uniform(1.5, 4.0)), float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.015, 0.04)))
                  for _ in range(3))
    return _Look(rgb1, rgb2, float(rng.uniform(*period)), float(rng.uniform(0, 1)), folds)


def _stripes(x: np.ndarray, duty: float, width: float) -> np.ndarray:
    """A square wave (1 on the first ``duty`` of each unit period of ``x``) averaged over a box of ``width``
    periods around each sample: the exact share of a pixel's footprint on a stripe, so stripes do not alias."""
    def integral(t):
        return np.floor(t) * duty + np.minimum(t - np.floor(t), duty)

    return ((integral(x + width / 2) - integral(x - width / 2)) / width).astype(np.float32)


def _edge(distance: np.ndarray, width: float) -> np.ndarray:
    """Coverage of a pixel ``width`` wide whose centre lies ``distance`` inside an edge (negative: outside)."""
    return np.clip(distance / width + 0.5, 0.0, 1.0).astype(np.float32)


def _pattern_mix(pattern: str, u: np.ndarray, v: np.ndarray, period: float, phase: float,
                 pixel: float) -> np.ndarray:
    """Share (0..1) of the secondary colour at garment coordinates (u, v); ``pixel`` is one pixel's size in
    garment units, the footprint each value is averaged over."""
    width = pixel / period
    if pattern == "solid":
        return np.zeros_like(u)
    if pattern == "horizontal-stripes":
        return _stripes(v / period + phase, 0.45, width)
    if pattern == "vertical-stripes":
        # Centred on the garment's axis so both halves match, as a cutter would lay the fabric.
        return _stripes((u - 0.5) / period + 0.5, 0.35, width)
    if pattern == "polka-dots":
        row = np.floor(v / period + phase)
        uu = (u - 0.5) / period + 0.5 * (row % 2)  # staggered rows
        du = uu - np.round(uu)
        dv = (v / period + phase) % 1.0 - 0.5
        return _edge(0.27 - np.sqrt(du**2 + dv**2), width)
    if pattern == "checks":
        # Gingham: where the two stripe sets cross the colour is full, where one lies it is half.
        a = _stripes((u - 0.5) / period + 0.25, 0.5, width)
        b = _stripes(v / period + phase, 0.5, width)
        return 0.5 * a + 0.5 * b
    if pattern == "colour-block":
        return _edge(v - 0.56, pixel)
    raise ValueError(f"unknown pattern {pattern!r}")


@dataclass(frozen=True)
class _Pose:
    cx: float  # garment box centre, pixels
    cy: float
    scale: float  # pixels per garment unit
    angle: float  # radians, counter-clockwise on screen


def _to_px(pts, pose: _Pose, zoom: float = 1.0) -> list[tuple[float, float]]:
    """Garment units to pixels; ``zoom`` = SUPERSAMPLE for a layer drawn at the larger size."""
    c, s = math.cos(pose.angle), math.sin(pose.angle)
    out = []
    for x, y in pts:
        dx, dy = (x - 0.5) * pose.scale, (y - 0.5) * pose.scale
        out.append((zoom * (pose.cx + c * dx + s * dy), zoom * (pose.cy - s * dx + c * dy)))
    return out


def _fine(w: int, fill: int = 0) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A greyscale layer at SUPERSAMPLE x the output size, to draw hard edges on."""
    img = Image.new("L", (SUPERSAMPLE * w, SUPERSAMPLE * w), fill)
    return img, ImageDraw.Draw(img)


def _reduce(img: Image.Image) -> Image.Image:
    """A fine layer back at the output size; each pixel the mean of its 2x2 block (anti-aliased edges)."""
    return img.reduce(SUPERSAMPLE)


@lru_cache(maxsize=4)
def _grid(w: int) -> np.ndarray:
    """``np.mgrid[0:w, 0:w]`` as float32, made once per size (read-only): every photo needs it several times."""
    grid = np.mgrid[0:w, 0:w].astype(np.float32)
    grid.flags.writeable = False
    return grid


def _unit_grid(w: int, pose: _Pose) -> tuple[np.ndarray, np.ndarray]:
    """Garment coordinates of every pixel centre (the inverse of ``_to_px``), so patterns follow the pose."""
    ys, xs = _grid(w) + 0.5
    dx, dy = xs - pose.cx, ys - pose.cy
    c, s = math.cos(pose.angle), math.sin(pose.angle)
    u = (c * dx - s * dy) / pose.scale + 0.5
    v = (s * dx + c * dy) / pose.scale + 0.5
    return u, v


def _contrast_rgb(rgb: np.ndarray) -> tuple[int, int, int]:
    return (60, 60, 62) if float(rgb @ np.array([0.299, 0.587, 0.114])) > 150 else (236, 236, 230)


def _render_garment(product: Product, look: _Look, w: int, pose: _Pose) -> tuple[np.ndarray, np.ndarray]:
    """Garment layer: (rgb float32 HxWx3 in 0..255, alpha float32 HxW in 0..1)."""
    shape = garment_shape(product.category)

    def lw(width: float) -> int:  # line widths are in garment units so they scale with the pose (fine layer)
        return max(1, int(round(width * pose.scale * SUPERSAMPLE)))

    fine, draw = _fine(w)
    for poly in shape.body:
        draw.polygon(_to_px(poly, pose, SUPERSAMPLE), fill=255)
    mask = _reduce(fine)

    fine, draw = _fine(w, 255)
    for poly, factor in shape.shades:
        draw.polygon(_to_px(poly, pose, SUPERSAMPLE), fill=int(255 * factor))
    for pts, width, factor in shape.lines:
        draw.line(_to_px(pts, pose, SUPERSAMPLE), fill=int(255 * factor), width=lw(width), joint="curve")
    shade = _reduce(fine)

    u, v = _unit_grid(w, pose)
    mix = _pattern_mix(product.pattern, u, v, look.period, look.phase, 1.0 / pose.scale)[..., None]
    rgb = look.rgb1 * (1.0 - mix) + look.rgb2 * mix

    # Light from above plus soft folds; the blurred mask darkens the rim so the garment reads as 3-D cloth.
    light = 1.04 - 0.08 * v - 0.10 * (u - 0.5) ** 2
    for freq, ph, amp in look.folds:
        light = light + amp * np.sin(2 * math.pi * freq * u + ph) * np.clip(v, 0, 1)
    a = np.asarray(mask, np.float32) / 255.0
    soft = np.asarray(mask.filter(ImageFilter.GaussianBlur(max(0.5, 0.03 * pose.scale))), np.float32) / 255.0
    rim = 0.72 + 0.28 * np.sqrt(np.clip(2.0 * soft - 0.2, 0.0, 1.0))
    edge = a - np.asarray(mask.filter(ImageFilter.MinFilter(3)), np.float32) / 255.0
    outline = 1.0 - 0.25 * edge
    factor = np.asarray(shade, np.float32) / 255.0 * light * rim * outline
    rgb = np.clip(rgb * factor[..., None], 0, 255)

    if shape.trims:
        fine, draw = _fine(w)
        for kind, pts, size in shape.trims:
            px = _to_px(pts, pose, SUPERSAMPLE)
            if kind == "line":
                draw.line(px, fill=255, width=lw(size))
            else:
                r = max(1.0, size * pose.scale * SUPERSAMPLE)
                (x, y), = px
                draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
        trim = np.asarray(_reduce(fine), np.float32)[..., None] / 255.0
        rgb = rgb * (1.0 - trim) + np.array(_contrast_rgb(look.rgb1), np.float32) * trim
    return rgb, a


def _shadow(alpha: np.ndarray, pose: _Pose, dx: float, dy: float, blur: float) -> np.ndarray:
    img = Image.fromarray((alpha * 255).astype(np.uint8))
    img = img.transform(img.size, Image.Transform.AFFINE, (1, 0, -dx * pose.scale, 0, 1, -dy * pose.scale),
                        resample=Image.Resampling.BILINEAR)
    img = img.filter(ImageFilter.GaussianBlur(max(0.5, blur * pose.scale)))
    return np.asarray(img, np.float32) / 255.0


def _composite(bg: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, shadow: np.ndarray, strength: float) -> np.ndarray:
    out = bg * (1.0 - strength * shadow)[..., None]
    return out * (1.0 - alpha[..., None]) + rgb * alpha[..., None]


def _studio_background(w: int, rng: np.random.Generator) -> np.ndarray:
    """Near-white seamless paper, slightly darker towards the corners, as in e-commerce packshots."""
    ys, xs = _grid(w) / w - 0.5
    base = rng.uniform(238, 250)
    tone = np.array([1.0, 1.0, rng.uniform(0.985, 1.0)], np.float32)
    level = base - 14.0 * (xs**2 + ys**2)
    return level[..., None] * tone


def _random_rgb(rng: np.random.Generator, lo: float = 40, hi: float = 230) -> np.ndarray:
    return rng.uniform(lo, hi, 3).astype(np.float32)


def _wood_background(w: int, rng: np.random.Generator) -> np.ndarray:
    base = np.array([(150, 104, 66), (188, 148, 100), (108, 74, 50), (206, 182, 146)][rng.integers(4)], np.float32)
    ys, xs = _grid(w) / w
    if rng.random() < 0.5:
        xs, ys = ys, xs
    planks = rng.integers(3, 6)
    idx = np.floor(ys * planks + rng.random())
    jitter = rng.uniform(0.85, 1.12, 16)[(idx.astype(int)) % 16]
    grain = 1.0 + 0.06 * np.sin(xs * rng.uniform(20, 40) + 9.0 * np.sin(ys * 7.0 + idx)) * np.sin(ys * 90 + idx)
    gap = np.abs(((ys * planks + rng.random()) % 1.0) - 0.5) > 0.485
    level = jitter * grain * np.where(gap, 0.55, 1.0)
    return base * level[..., None]


def _fabric_background(w: int, rng: np.random.Generator) -> np.ndarray:
    ys, xs = _grid(w) / w
    level = 1.0 + sum(rng.uniform(0.03, 0.08) * np.sin(rng.uniform(3, 9) * (xs * math.cos(t) + ys * math.sin(t))
                                                    * 2 * math.pi / 3 + rng.uniform(0, 6))
                      for t in rng.uniform(0, math.pi, 3))
    return _random_rgb(rng, 60, 235) * level[..., None]


def _room_background(w: int, rng: np.random.Generator) -> np.ndarray:
    """Wall over floor with a couple of blurred objects: a garment hung up in a shop or at home."""
    ys = _grid(w)[0] / w
    wall, wall2, floor = _random_rgb(rng, 120, 240), _random_rgb(rng, 100, 230), _random_rgb(rng, 50, 170)
    t = ys[..., None]
    img = wall * (1 - t) + wall2 * t
    horizon = rng.uniform(0.7, 0.9)
    img = np.where(ys[..., None] > horizon, floor, img)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(rng.integers(1, 4)):
        x0, y0 = rng.uniform(-0.2, 0.9, 2) * w
        x1, y1 = x0 + rng.uniform(0.1, 0.4) * w, y0 + rng.uniform(0.1, 0.5) * w
        draw.rectangle((x0, y0, x1, y1), fill=tuple(int(c) for c in _random_rgb(rng)))
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(w / 70)), np.float32)


def _clutter_background(w: int, rng: np.random.Generator) -> np.ndarray:
    pil = Image.new("RGB", (w, w), tuple(int(c) for c in _random_rgb(rng, 60, 220)))
    draw = ImageDraw.Draw(pil)
    for _ in range(rng.integers(8, 16)):
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * w
        x1, y1 = x0 + rng.uniform(0.08, 0.45) * w, y0 + rng.uniform(0.08, 0.45) * w
        fill = tuple(int(c) for c in _random_rgb(rng, 20, 250))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
    # Out of focus, like a background behind a subject.
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(w / 90)), np.float32)


_WILD_BACKGROUNDS = (_wood_background, _fabric_background, _room_background, _clutter_background)


def _to_image(img: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))


def render_catalog(product: Product, size: int, seed: int) -> Image.Image:
    """The packshot: garment centred on a light studio background with a soft drop shadow."""
    w = size
    rng = np.random.default_rng([seed, product.index, 0])
    look = _look(product, seed)
    pose = _Pose(w / 2, w / 2, 0.86 * w, 0.0)
    rgb, alpha = _render_garment(product, look, w, pose)
    bg = _studio_background(w, rng)
    out = _composite(bg, rgb, alpha, _shadow(alpha, pose, 0.012, 0.02, 0.03), 0.28)
    return _to_image(out)


def _hanger(img: np.ndarray, pose: _Pose, top: float) -> np.ndarray:
    curl = arc(0.5, top - 0.075, 0.03, 0.035, math.pi / 2, 2.3 * math.pi, 14)[::-1]
    hook = [(0.5, top + 0.03), (0.5, top - 0.04)] + curl
    fine, draw = _fine(img.shape[0])
    draw.line(_to_px(hook, pose, SUPERSAMPLE), fill=255, width=max(2, int(0.012 * pose.scale * SUPERSAMPLE)),
              joint="curve")
    wire = np.asarray(_reduce(fine), np.float32)[..., None] / 255.0
    return img * (1.0 - wire) + np.array((95, 95, 100), np.float32) * wire


def _occlude(img: np.ndarray, pose: _Pose, rng: np.random.Generator) -> np.ndarray:
    """Something lying over one edge of the garment (a bag, a box, a plant pot), hiding part of it."""
    w = img.shape[0]
    ang = rng.uniform(0, 2 * math.pi)
    r = rng.uniform(0.38, 0.5)
    cx, cy = _to_px([(0.5 + r * math.cos(ang), 0.5 + r * math.sin(ang))], pose)[0]
    half = rng.uniform(0.09, 0.16) * pose.scale
    box = (cx - half, cy - half * rng.uniform(0.6, 1.4), cx + half, cy + half * rng.uniform(0.6, 1.4))
    fine, d = _fine(w)
    big = tuple(SUPERSAMPLE * c for c in box)
    if rng.random() < 0.5:
        d.ellipse(big, fill=255)
    else:
        d.rounded_rectangle(big, radius=half * 0.3 * SUPERSAMPLE, fill=255)
    mask = _reduce(fine)
    a = np.asarray(mask, np.float32) / 255.0
    shadow = np.asarray(mask.filter(ImageFilter.GaussianBlur(w / 60)), np.float32) / 255.0
    shadow = np.roll(shadow, (int(w / 80), int(w / 80)), axis=(0, 1))
    colour = _random_rgb(rng, 30, 240)
    ys = _grid(w)[0]
    body = colour * (1.05 - 0.2 * (ys - box[1]) / max(1.0, box[3] - box[1]))[..., None]
    out = img * (1.0 - 0.3 * shadow)[..., None]
    return out * (1.0 - a[..., None]) + np.clip(body, 0, 255) * a[..., None]


def _relight(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Phone-camera conditions: exposure, white balance, contrast, uneven light, vignette, sensor noise."""
    w = img.shape[0]
    ys, xs = _grid(w) / w - 0.5
    gain = rng.uniform(0.72, 1.15) * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    t = rng.uniform(0, 2 * math.pi)
    ramp = 1.0 + rng.uniform(0.0, 0.18) * (xs * math.cos(t) + ys * math.sin(t))
    vignette = 1.0 - rng.uniform(0.0, 0.5) * (xs**2 + ys**2)
    out = img * gain * (ramp * vignette)[..., None]
    contrast = rng.uniform(0.85, 1.1)
    out = (out - 128.0) * contrast + 128.0
    # Sensor noise at the output size (it was drawn at 2x with sigma 1-5, which the downsampling halved).
    sigma = rng.uniform(0.5, 2.5)
    out = out + rng.standard_normal(out.shape, dtype=np.float32) * np.float32(sigma)
    return out


def render_wild(product: Product, size: int, seed: int, k: int) -> Image.Image:
    """A photo of the same product "in the wild": posed, lit and framed differently, partly hidden."""
    w = size
    rng = np.random.default_rng([seed, product.index, 1 + k])
    look = _look(product, seed)
    bg = _WILD_BACKGROUNDS[int(rng.integers(len(_WILD_BACKGROUNDS)))](w, rng)
    scale = rng.uniform(0.55, 1.0) * w
    pose = _Pose(w / 2 + rng.uniform(-0.14, 0.14) * w, w / 2 + rng.uniform(-0.12, 0.14) * w, scale,
                 math.radians(rng.uniform(-22, 22)))
    shape = garment_shape(product.category)
    if rng.random() < 0.3:
        bg = _hanger(bg, pose, shape.top)
    rgb, alpha = _render_garment(product, look, w, pose)
    shadow = _shadow(alpha, pose, rng.uniform(-0.03, 0.03), rng.uniform(0.0, 0.04), rng.uniform(0.02, 0.05))
    out = _composite(bg, rgb, alpha, shadow, rng.uniform(0.2, 0.45))
    if rng.random() < 0.5:
        out = _occlude(out, pose, rng)
    out = _relight(out, rng)
    pil = _to_image(out)
    if rng.random() < 0.3:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8) * size / 128))
    return pil


