"""Garment geometry of the sample: each garment type as polygons and lines in a unit box."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# --------------------------------------------------------------------------------------------------
# Garment geometry, in a unit box (x right, y down, garment spans roughly [0, 1] x [0, 1]).
# --------------------------------------------------------------------------------------------------

Pts = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Shape:
    body: tuple[Pts, ...]  # union = garment silhouette
    shades: tuple[tuple[Pts, float], ...]  # filled regions multiplied by a factor, painted in order
    lines: tuple[tuple[Pts, float, float], ...]  # seams/hems: (points, width, factor)
    trims: tuple[tuple[str, Pts, float], ...]  # ("line"|"dot", points, width/radius) in a contrast colour
    top: float  # highest y of the silhouette; where a hanger hook attaches


def _bez(p0, p1, p2, n: int = 10) -> list[tuple[float, float]]:
    t = np.linspace(0.0, 1.0, n)[:, None]
    pts = (1 - t) ** 2 * np.array(p0) + 2 * (1 - t) * t * np.array(p1) + t**2 * np.array(p2)
    return [(float(x), float(y)) for x, y in pts]


def arc(cx, cy, rx, ry, a0: float = 0.0, a1: float = 2 * math.pi, n: int = 36) -> list[tuple[float, float]]:
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in np.linspace(a0, a1, n)]


def _mirror_x(pts) -> list[tuple[float, float]]:
    return [(1.0 - x, y) for x, y in pts]


def _closed_half(right) -> Pts:
    """Right half (top centre, clockwise, to bottom centre) -> symmetric closed polygon."""
    return tuple(list(right) + _mirror_x(reversed(right)))


def _sym(pts) -> list[Pts]:
    return [tuple(pts), tuple(_mirror_x(pts))]


def _lines(pts_list, width, factor):
    return tuple((tuple(p), width, factor) for p in pts_list)


def _neck(back_side, back_dip, front_dip, side_y):
    """Neck opening: back neckline (shallow) over front neckline (deep); the gap shows the garment's inside."""
    back = _bez((1 - back_side, side_y), (0.5, 2 * back_dip - side_y), (back_side, side_y))
    front = _bez((back_side, side_y), (0.5, 2 * front_dip - side_y), (1 - back_side, side_y))
    back_half = [p for p in back if p[0] >= 0.5]
    if back_half[0][0] > 0.5:
        back_half.insert(0, (0.5, back_dip))
    return back_half, tuple(back + front), tuple(front)


def _shape_tshirt() -> Shape:
    back_half, opening, front = _neck(0.615, 0.075, 0.15, 0.04)
    right = back_half + [(0.80, 0.085), (0.99, 0.30), (0.885, 0.415), (0.775, 0.31), (0.775, 0.62),
                         (0.785, 0.985), (0.5, 0.99)]
    return Shape(
        body=(_closed_half(right),),
        shades=((opening, 0.45),),
        lines=_lines([front], 0.028, 0.84)
        + _lines(_sym([(0.97, 0.277), (0.865, 0.392)]), 0.008, 0.78)
        + _lines([[(0.22, 0.955), (0.78, 0.955)]], 0.008, 0.78),
        trims=(),
        top=0.04,
    )


def _shape_tank() -> Shape:
    back_half, opening, front = _neck(0.60, 0.11, 0.25, 0.02)
    armhole = _bez((0.71, 0.02), (0.71, 0.33), (0.83, 0.36))
    right = back_half + [(0.71, 0.02)] + armhole + [(0.81, 0.62), (0.825, 0.985), (0.5, 0.99)]
    return Shape(
        body=(_closed_half(right),),
        shades=((opening, 0.45),),
        lines=_lines([front], 0.03, 0.84) + _lines(_sym(armhole), 0.03, 0.86)
        + _lines([[(0.18, 0.955), (0.82, 0.955)]], 0.008, 0.78),
        trims=(),
        top=0.02,
    )


def _shape_long_sleeve() -> Shape:
    back_half, opening, front = _neck(0.61, 0.075, 0.15, 0.04)
    right = back_half + [(0.76, 0.085), (0.985, 0.86), (0.885, 0.895), (0.735, 0.33), (0.74, 0.985),
                         (0.5, 0.99)]
    return Shape(
        body=(_closed_half(right),),
        shades=((opening, 0.45),),
        lines=_lines([front], 0.028, 0.84)
        + _lines(_sym([(0.965, 0.793), (0.866, 0.828)]), 0.008, 0.76)
        + _lines([[(0.26, 0.95), (0.74, 0.95)]], 0.008, 0.78),
        trims=(),
        top=0.04,
    )


def _shape_hoodie() -> Shape:
    right = [(0.5, 0.16), (0.64, 0.15), (0.775, 0.19), (0.99, 0.90), (0.89, 0.935), (0.745, 0.42),
             (0.76, 0.99), (0.5, 0.99)]
    hood = tuple(arc(0.5, 0.17, 0.175, 0.17))
    opening = tuple(arc(0.5, 0.2, 0.12, 0.115, math.pi, 2 * math.pi) + [(0.5, 0.315)])
    pocket = [(0.33, 0.64), (0.67, 0.64), (0.71, 0.87), (0.29, 0.87), (0.33, 0.64)]
    return Shape(
        body=(_closed_half(right), hood),
        shades=((opening, 0.40),),
        lines=_lines([opening + (opening[0],)], 0.024, 0.86)
        + _lines([[(0.5, 0.0), (0.5, 0.08)]], 0.008, 0.8)
        + _lines([pocket], 0.009, 0.74)
        + _lines(_sym([(0.97, 0.835), (0.872, 0.868)]), 0.009, 0.74)
        + _lines([[(0.245, 0.925), (0.755, 0.925)]], 0.009, 0.74),
        trims=(("line", ((0.455, 0.31), (0.445, 0.50)), 0.013), ("line", ((0.545, 0.31), (0.555, 0.50)), 0.013)),
        top=0.0,
    )


def _shape_dress() -> Shape:
    back_half, opening, front = _neck(0.59, 0.045, 0.16, 0.0)
    hem = _bez((0.87, 0.96), (0.70, 1.0), (0.5, 1.0))
    right = back_half + [(0.68, 0.0)] + _bez((0.68, 0.0), (0.68, 0.2), (0.71, 0.25)) + [
        (0.69, 0.31), (0.64, 0.42), (0.80, 0.75)] + hem
    hem_stitch = [(x, y - 0.025) for x, y in _bez((0.865, 0.96), (0.5, 1.04), (0.135, 0.96))]
    return Shape(
        body=(_closed_half(right),),
        shades=((opening, 0.45),),
        lines=_lines([front], 0.026, 0.84)
        + _lines([[(0.36, 0.42), (0.64, 0.42)]], 0.011, 0.74)
        + _lines(_sym([(0.45, 0.44), (0.40, 0.975)]), 0.014, 0.9)
        + _lines([hem_stitch], 0.008, 0.8),
        trims=(),
        top=0.0,
    )


def _shape_shirt() -> Shape:
    tail = _bez((0.745, 0.92), (0.70, 1.0), (0.5, 1.0))
    right = [(0.5, 0.03), (0.60, 0.02), (0.77, 0.08), (0.985, 0.86), (0.885, 0.895), (0.735, 0.32)] + tail
    collar = ((0.5, 0.165), (0.60, 0.02), (0.665, 0.065), (0.61, 0.215), (0.5, 0.165))
    pocket = ((0.57, 0.30), (0.68, 0.30), (0.68, 0.43), (0.625, 0.45), (0.57, 0.43), (0.57, 0.30))
    buttons = tuple(("dot", ((0.5, y),), 0.013) for y in (0.23, 0.37, 0.51, 0.65, 0.79))
    return Shape(
        body=(_closed_half(right),),
        shades=((((0.44, 0.05), (0.56, 0.05), (0.5, 0.15)), 0.42), (collar, 1.0), (tuple(_mirror_x(collar)), 1.0)),
        lines=_lines(_sym(collar), 0.009, 0.66)
        + _lines([[(0.485, 0.17), (0.485, 1.0)], [(0.515, 0.17), (0.515, 1.0)]], 0.006, 0.8)
        + _lines([pocket], 0.008, 0.74)
        + _lines(_sym([(0.965, 0.793), (0.866, 0.828)]), 0.009, 0.74),
        trims=buttons,
        top=0.02,
    )


@lru_cache(maxsize=None)
def garment_shape(category: str) -> Shape:
    return {
        "t-shirt": _shape_tshirt,
        "tank-top": _shape_tank,
        "long-sleeve": _shape_long_sleeve,
        "hoodie": _shape_hoodie,
        "dress": _shape_dress,
        "shirt": _shape_shirt,
    }[category]()


