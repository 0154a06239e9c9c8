"""Colour-histogram variants, in numpy, on the 64x64 area-resized image that ColourHistogram itself sees.

All return (N, cells) float32 rows, square-rooted and L2-normalised (Hellinger), like the product layer.
"""

import numpy as np

GRID = 64


def centre_weight(grid=GRID, sigma=0.5):
    """The product's Gaussian centre weighting (ColourHistogram.call), (grid*grid,)."""
    c = (grid - 1) / 2.0
    coords = (np.arange(grid, dtype=np.float32) - c) / (grid / 2.0)
    r2 = coords[:, None] ** 2 + coords[None, :] ** 2
    return np.exp(-r2 / (2.0 * sigma**2)).reshape(-1).astype(np.float32)


def _weighted_counts(cells, weights, n_cells):
    """Row-wise weighted bincount: cells (N, P) int, weights (N, P) or (P,) -> (N, n_cells)."""
    n = cells.shape[0]
    w = np.broadcast_to(weights, cells.shape)
    offset = (np.arange(n)[:, None] * n_cells + cells).ravel()
    return np.bincount(offset, weights=w.ravel(), minlength=n * n_cells).reshape(n, n_cells)


def _hellinger(h):
    h = np.sqrt(h)
    return (h / np.sqrt(np.maximum((h**2).sum(-1, keepdims=True), 1e-12))).astype(np.float32)


def rgb_cells(small, bins=8):
    level = np.clip(np.floor(small * (bins / 256.0)), 0, bins - 1).astype(np.int64)
    cell = (level[..., 0] * bins + level[..., 1]) * bins + level[..., 2]
    return cell.reshape(len(small), -1), bins**3


def background_weight(small, border=5, s=30.0, floor=0.05):
    """Per-pixel weight (N, P) that is ~0 for pixels close (RGB distance, 0-255 scale) to the photo's background
    colour, estimated as the per-channel median of a ``border``-px frame (5 of 64 px = 7.8% of each side)."""
    n = len(small)
    mask = np.zeros((GRID, GRID), bool)
    mask[:border], mask[-border:], mask[:, :border], mask[:, -border:] = True, True, True, True
    bg = np.median(small[:, mask, :], axis=1)  # (N, 3)
    d2 = ((small.reshape(n, -1, 3) - bg[:, None, :]) ** 2).sum(-1)
    w = 1.0 - np.exp(-d2 / (2.0 * s**2))
    return floor + (1.0 - floor) * w


def hsv(small):
    """RGB floats in [0, 255] -> h in [0, 1), s, v in [0, 1]."""
    x = small / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx, mn = x.max(-1), x.min(-1)
    delta = mx - mn
    s = np.where(mx > 0, delta / np.maximum(mx, 1e-12), 0.0)
    safe = np.maximum(delta, 1e-12)
    h = np.where(mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    h = np.where(delta > 0, h / 6.0, 0.0)
    return h % 1.0, s, mx


def hsv_cells(small, hue_bins=8, sat_bins=4, val_bins=4, grey_bins=8, grey_sat=0.15, dark_val=0.15, centred=False):
    """Chromatic pixels: hue x saturation x value cells; achromatic ones (saturation < grey_sat or value <
    dark_val, where hue is noise) go to ``grey_bins`` value-only cells after them."""
    h, s, v = hsv(small)
    if centred:  # hue cells centred on red, as the product's ColourHistogram(space="hsv") has them
        hi = np.floor(h * hue_bins + 0.5).astype(np.int64) % hue_bins
    else:
        hi = np.minimum((h * hue_bins).astype(np.int64), hue_bins - 1)
    # Saturation bins over [grey_sat, 1], value bins over [dark_val, 1].
    si = np.clip(((s - grey_sat) / (1 - grey_sat) * sat_bins).astype(np.int64), 0, sat_bins - 1)
    vi = np.clip(((v - dark_val) / (1 - dark_val) * val_bins).astype(np.int64), 0, val_bins - 1)
    chrom = (hi * sat_bins + si) * val_bins + vi
    n_chrom = hue_bins * sat_bins * val_bins
    gi = np.minimum((v * grey_bins).astype(np.int64), grey_bins - 1)
    grey = (s < grey_sat) | (v < dark_val)
    cell = np.where(grey, n_chrom + gi, chrom)
    return cell.reshape(len(small), -1), n_chrom + grey_bins


def histogram(small, space="rgb", sigma=0.5, bg_s=None, soft=False, **kw):
    cells, n_cells = rgb_cells(small, kw.get("bins", 8)) if space == "rgb" else hsv_cells(small, **kw)
    w = centre_weight(GRID, sigma)[None, :]
    if bg_s is not None:
        w = w * background_weight(small, s=bg_s)
    w = np.broadcast_to(w, cells.shape)
    if not soft:
        return _hellinger(_weighted_counts(cells, w, n_cells))
    # Soft hue: a chromatic pixel's weight is shared between the two nearest hue-cell centres (circularly).
    hue_bins = kw.get("hue_bins", 8)
    h, _, _ = hsv(small)
    pos = h.reshape(len(small), -1) * hue_bins - 0.5  # cell centres at (i + 0.5) / hue_bins
    lo = np.floor(pos)
    frac = pos - lo
    lo = lo.astype(np.int64) % hue_bins
    hi = (lo + 1) % hue_bins
    n_chrom = hue_bins * 16
    chrom = cells < n_chrom
    rest = cells % 16  # saturation x value part of a chromatic cell
    hue_of = cells // 16
    c_lo = np.where(chrom, lo * 16 + rest, cells)
    c_hi = np.where(chrom, hi * 16 + rest, cells)
    f = np.where(chrom, frac, 0.0)
    del hue_of
    counts = _weighted_counts(c_lo, w * (1 - f), n_cells) + _weighted_counts(c_hi, w * f, n_cells)
    return _hellinger(counts)
