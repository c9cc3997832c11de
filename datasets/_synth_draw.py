"""Drawing primitives for the synthetic MVTec-layout generator (:mod:`bench.datasets.synthetic`).

Images are ``float32`` arrays ``H x W x 3`` in RGB order with values in ``[0, 1]``; every random choice
comes from the ``numpy.random.Generator`` passed in (never a global RNG), and every OpenCV call used here
is deterministic, so one generator state always gives the same pixels.

Two families of renderers draw a *normal* image (a :class:`Canvas`):

* textures fill the frame: ``fabric`` (plain weave of two thread colours), ``wood`` (warped growth rings
  with grain streaks), ``tile`` (a grid of tiles with grout and speckle);
* objects sit on a plain background and carry a foreground mask: ``nut`` (hexagon with a bore), ``disc``
  (round, no bore), ``ring`` (round with a bore), ``capsule`` (two-coloured stadium), ``screw`` (a
  threaded shaft with a head).

Defect drawers then change the canvas in place and return the binary defect mask; each drawer has one
low-level signature (colour, brightness, edge orientation, blob shape) so that even random convolution
features separate the types, while random size, position, count and intensity keep it from being trivial.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import cv2
import numpy as np

Palette = dict[str, np.ndarray]


@dataclass(frozen=True)
class DefectSpec:
    """How to draw one defect type.

    Attributes:
        drawer: key of :data:`DRAWERS` (``scratch``, ``crack``, ``hole``, ``stain``, ``missing``,
            ``contamination``, ``fold``, ``combined``).
        size: multiplier on the drawer's size range.
        color: RGB override in ``[0, 1]`` (stain tint, scratch/thread colour); ``None`` = the drawer's own.
        zone: ``(cx, cy, spread)`` as fractions of the image size: where this type tends to occur (a Gaussian
            around the centre, clipped to the material); ``None`` = anywhere on the material.
    """

    drawer: str
    size: float = 1.0
    color: tuple[float, float, float] | None = None
    zone: tuple[float, float, float] | None = None


@dataclass
class Canvas:
    """A normal image being drawn on.

    Attributes:
        img: ``H x W x 3`` float32 RGB image.
        fg: foreground mask of an object category (``None`` for textures: everything is foreground).
        under: what shows through where material is removed (the background for objects, a dark
            backing for textures), same shape as ``img``.
        stain: default stain tint of the category (a hue far from the material's).
        zone: the defect type's preferred region while a defect is drawn (see :class:`DefectSpec`).
    """

    img: np.ndarray
    fg: np.ndarray | None
    under: np.ndarray
    stain: np.ndarray
    zone: tuple[float, float, float] | None = None

    @property
    def size(self) -> int:
        return int(self.img.shape[0])


def rgb(*c: float) -> np.ndarray:
    return np.asarray(c, dtype=np.float32)


STYLE_PALETTES: dict[str, tuple[tuple[float, float, float], ...]] = {
    #           a (material)        b (2nd / background)  under (revealed)    stain tint
    "fabric": ((0.62, 0.18, 0.16), (0.78, 0.70, 0.55), (0.22, 0.20, 0.18), (0.15, 0.45, 0.80)),
    "wood": ((0.66, 0.46, 0.27), (0.42, 0.25, 0.12), (0.30, 0.22, 0.16), (0.25, 0.55, 0.30)),
    "tile": ((0.70, 0.72, 0.74), (0.42, 0.42, 0.44), (0.25, 0.25, 0.26), (0.80, 0.55, 0.10)),
    "nut": ((0.66, 0.67, 0.70), (0.10, 0.10, 0.12), (0.10, 0.10, 0.12), (0.75, 0.25, 0.55)),
    "disc": ((0.55, 0.36, 0.20), (0.86, 0.86, 0.84), (0.86, 0.86, 0.84), (0.20, 0.50, 0.75)),
    "ring": ((0.20, 0.28, 0.16), (0.05, 0.05, 0.05), (0.05, 0.05, 0.05), (0.80, 0.35, 0.60)),
    "capsule": ((0.85, 0.40, 0.10), (0.32, 0.34, 0.38), (0.12, 0.12, 0.14), (0.25, 0.35, 0.85)),
    "screw": ((0.72, 0.72, 0.70), (0.94, 0.94, 0.94), (0.94, 0.94, 0.94), (0.70, 0.30, 0.20)),
}
"""Per style: ``a``/``b`` the two material colours (objects: ``b`` is the background), ``under`` what a
removed part reveals on a texture (objects reveal their background), ``stain`` the default stain tint."""


def shift_hue(c: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate the hue of one RGB colour by ``degrees`` (grey stays grey)."""
    h, s, v = colorsys.rgb_to_hsv(*(float(x) for x in c))
    return rgb(*colorsys.hsv_to_rgb((h + degrees / 360.0) % 1.0, s, v))


def palette(style: str, hue_shift: float = 0.0) -> Palette:
    """The palette of ``style`` with the material hue rotated (the stain tint stays distinct: it rotates too)."""
    return {k: shift_hue(rgb(*v), hue_shift) for k, v in zip(("a", "b", "under", "stain"), STYLE_PALETTES[style])}


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    y.flags.writeable = False
    x.flags.writeable = False
    return y, x


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise (about ``cells`` blobs across), roughly unit variance."""
    g = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC)


def _rotated(size: int, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along (u) and across (v) a direction ``angle`` (radians) through ``(cx, cy)``."""
    y, x = _grid(size)
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    dx, dy = x - np.float32(cx), y - np.float32(cy)
    return dx * c + dy * s, -dx * s + dy * c


# ----------------------------------------------------------------------------------------------- textures
def render_fabric(rng: np.random.Generator, size: int, pal: Palette) -> Canvas:
    """Plain weave: warp and weft threads alternate over/under on a checkerboard of thread crossings."""
    s = size / 256.0
    period = 14.0 * s * rng.uniform(0.97, 1.03)
    u, v = _rotated(size, 0.0, 0.0, np.deg2rad(rng.uniform(-3.0, 3.0)))
    u = u / np.float32(period) + np.float32(rng.uniform(0, 2))
    v = v / np.float32(period) + np.float32(rng.uniform(0, 2))
    iu, iv = np.floor(u), np.floor(v)
    top = ((iu + iv) % 2) == 0
    prof = np.where(top, np.sin(np.pi * (u - iu)), np.sin(np.pi * (v - iv))) ** 0.7
    col = np.where(top[..., None], pal["a"], pal["b"])
    img = col * (0.6 + 0.4 * prof[..., None]) * (1.0 + 0.05 * smooth_noise(rng, size, 6)[..., None])
    under = np.broadcast_to(pal["under"], img.shape) * (1.0 + 0.1 * smooth_noise(rng, size, 24)[..., None])
    return Canvas(img.astype(np.float32), None, under.astype(np.float32), pal["stain"])


def render_wood(rng: np.random.Generator, size: int, pal: Palette) -> Canvas:
    """Growth rings bent by smooth noise, plus fine grain streaks running along them."""
    s = size / 256.0
    u, _ = _rotated(size, size / 2, size / 2, np.deg2rad(rng.uniform(-4.0, 4.0)))
    warp = 0.4 * smooth_noise(rng, size, 3) + 0.06 * smooth_noise(rng, size, 10)
    rings = np.sin(2 * np.pi * (u / np.float32(26.0 * s) + warp) + rng.uniform(0, 2 * np.pi))
    t = ((0.5 + 0.5 * rings) ** 2)[..., None]
    streak = np.interp(u, np.arange(-size, size, dtype=np.float32), rng.standard_normal(2 * size).astype(np.float32))
    img = (pal["a"] * (1 - t) + pal["b"] * t) * (1.0 + 0.05 * streak[..., None])
    under = np.broadcast_to(pal["under"], img.shape) * (1.0 + 0.1 * smooth_noise(rng, size, 24)[..., None])
    return Canvas(img.astype(np.float32), None, under.astype(np.float32), pal["stain"])


def render_tile(rng: np.random.Generator, size: int, pal: Palette) -> Canvas:
    """A 4 x 4 grid of slightly different tiles separated by grout lines."""
    s = size / 256.0
    y, x = _grid(size)
    ts = size / 4.0
    gx, gy = x + np.float32(rng.uniform(0, ts)), y + np.float32(rng.uniform(0, ts))
    ix, iy = np.floor(gx / ts).astype(np.int32), np.floor(gy / ts).astype(np.int32)
    shades = 1.0 + 0.05 * rng.standard_normal((6, 6)).astype(np.float32)
    grout_w = 3.5 * s
    fx, fy = gx - ix * ts, gy - iy * ts
    grout = np.clip(grout_w - np.minimum(fx, fy), 0, 1)[..., None]
    speck = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 1.0 * s)
    tile = pal["a"] * shades[iy, ix][..., None] * (1.0 + 0.1 * speck[..., None])
    img = tile * (1 - grout) + pal["b"] * grout
    under = np.broadcast_to(pal["under"], img.shape) * (1.0 + 0.1 * smooth_noise(rng, size, 24)[..., None])
    return Canvas(img.astype(np.float32), None, under.astype(np.float32), pal["stain"])


# ----------------------------------------------------------------------------------------------- objects
def _background(rng: np.random.Generator, size: int, pal: Palette) -> np.ndarray:
    y, _ = _grid(size)
    grad = 1.0 + 0.04 * (y / size - 0.5) * rng.uniform(-1, 1)
    return (pal["b"] * grad[..., None] * (1.0 + 0.008 * smooth_noise(rng, size, 8)[..., None])).astype(np.float32)


def _compose(bg: np.ndarray, obj: np.ndarray, alpha: np.ndarray, pal: Palette) -> Canvas:
    a = alpha[..., None]
    return Canvas((bg * (1 - a) + obj * a).astype(np.float32), alpha > 0.5, bg, pal["stain"])


def _disc(rng: np.random.Generator, size: int, pal: Palette, hexagon: bool, bore: bool) -> Canvas:
    cx, cy = size * (0.5 + rng.uniform(-0.02, 0.02, size=2))
    radius = 0.34 * size * rng.uniform(0.985, 1.015)
    y, x = _grid(size)
    r = np.hypot(x - np.float32(cx), y - np.float32(cy))
    sub = 4
    if hexagon:
        ang = rng.uniform(0, np.pi / 3) + np.arange(6) * np.pi / 3
        pts = np.stack([cx + radius * np.cos(ang), cy + radius * np.sin(ang)], 1)
        layer = np.zeros((size, size), np.uint8)
        cv2.fillPoly(layer, [np.round(pts * sub).astype(np.int32)], 255, cv2.LINE_AA, shift=2)
        alpha = layer.astype(np.float32) / 255.0
    else:
        alpha = np.clip(radius - r + 0.5, 0, 1)
    if bore:
        alpha = alpha * np.clip(r - 0.14 * size + 0.5, 0, 1)
    shade = 0.75 + 0.35 * np.clip(1 - r / radius, 0, 1) + 0.03 * np.sin(r / np.float32(2.5 * size / 256))
    hx, hy = cx - 0.12 * size, cy - 0.12 * size
    spec = 0.25 * np.exp(-((x - hx) ** 2 + (y - hy) ** 2) / np.float32((0.08 * size) ** 2))
    obj = pal["a"] * shade[..., None] + spec[..., None]
    obj = obj * rng.uniform(0.98, 1.02)
    return _compose(_background(rng, size, pal), obj, alpha, pal)


def render_nut(rng: np.random.Generator, size: int, pal: Palette) -> Canvas:
    """A hexagonal nut with a round bore, seen from above."""
    return _disc(rng, size, pal, hexagon=True, bore=True)


def render_disc(rng: np.random.Generator, size: int, pal: Palette) -> Canvas:
    """A round solid object (hazelnut, cable end) seen from above."""
    return _disc(rng, size, pal, hexagon=False, bore=False)


def render_ring(rng: np.random.Generator, size: int, pal: Palette) -> Canvas:
    """A round object with a bore (bottle mouth, bagel) seen from above."""
    return _disc(rng, size, pal, hexagon=False, bore=True)


def render_capsule(rng: np.random.Generator, size: int, pal: Palette) -> Canvas:
    """A two-coloured capsule lying roughly horizontally, with cylinder shading and a highlight."""
    cx, cy = size * (0.5 + rng.uniform(-0.02, 0.02, size=2))
    u, v = _rotated(size, cx, cy, np.deg2rad(rng.uniform(-5, 5) + 180.0 * rng.integers(0, 2)))
    half, rad = 0.31 * size * rng.uniform(0.97, 1.03), 0.13 * size
    d = np.hypot(u - np.clip(u, -half + rad, half - rad), v)
    alpha = np.clip(rad - d + 0.5, 0, 1)
    body = np.where((u < 0)[..., None], pal["a"], rgb(0.9, 0.9, 0.88))
    shade = 0.7 + 0.35 * np.sqrt(np.clip(1 - (d / rad) ** 2, 0, 1))
    hl = 0.2 * np.exp(-(((v + 0.45 * rad) / (0.12 * rad)) ** 2)) * (np.abs(u) < half - rad)
    obj = body * shade[..., None] * rng.uniform(0.98, 1.02) + hl[..., None]
    return _compose(_background(rng, size, pal), obj.astype(np.float32), alpha, pal)


def render_screw(rng: np.random.Generator, size: int, pal: Palette) -> Canvas:
    """A threaded shaft with a round head, at any orientation."""
    cx, cy = size * (0.5 + rng.uniform(-0.03, 0.03, size=2))
    u, v = _rotated(size, cx, cy, rng.uniform(0, 2 * np.pi))
    half, hw, head = 0.30 * size, 0.05 * size, 0.10 * size
    shaft = np.clip(hw - np.abs(v) + 0.5, 0, 1) * np.clip(half - np.abs(u) + 0.5, 0, 1)
    rh = np.hypot(u + half, v)
    alpha = np.maximum(shaft, np.clip(head - rh + 0.5, 0, 1))
    thread = 0.8 + 0.2 * np.sin(2 * np.pi * (u + 0.5 * v) / np.float32(0.035 * size)) * (u > -half + head)
    shade = np.where(rh < head, 0.75 + 0.3 * (1 - rh / head), thread * (0.8 + 0.25 * (1 - np.abs(v) / hw)))
    obj = pal["a"] * shade[..., None] * rng.uniform(0.98, 1.02)
    return _compose(_background(rng, size, pal), obj.astype(np.float32), alpha, pal)


STYLES: dict[str, Callable[[np.random.Generator, int, Palette], Canvas]] = {
    "fabric": render_fabric, "wood": render_wood, "tile": render_tile, "nut": render_nut,
    "disc": render_disc, "ring": render_ring, "capsule": render_capsule, "screw": render_screw,
}  # fmt: skip
TEXTURE_STYLES = ("fabric", "wood", "tile")


# ----------------------------------------------------------------------------------------------- defects
def _point(cv: Canvas, rng: np.random.Generator, margin: float) -> tuple[float, float]:
    """A random point on the material, at least ``margin`` pixels inside it (objects) or the frame.

    With ``cv.zone`` the point is drawn around the zone's centre (Gaussian, clipped to the allowed area).
    """
    n = cv.size
    if cv.fg is not None:
        k = max(1, int(margin)) * 2 + 1
        inner = cv2.erode(cv.fg.astype(np.uint8), np.ones((k, k), np.uint8))
        idx = np.flatnonzero(inner) if inner.any() else np.flatnonzero(cv.fg)
        i = _pick(idx, cv, rng)
        return float(i % n), float(i // n)
    m = min(margin, n / 3)
    if cv.zone is None:
        return float(rng.uniform(m, n - m)), float(rng.uniform(m, n - m))
    cx, cy, spread = (v * n for v in cv.zone)
    x, y = rng.normal(cx, spread), rng.normal(cy, spread)
    return float(np.clip(x, m, n - m)), float(np.clip(y, m, n - m))


def _pick(idx: np.ndarray, cv: Canvas, rng: np.random.Generator) -> int:
    """One of the flat pixel indices ``idx``: uniformly, or Gaussian-weighted around ``cv.zone``."""
    if cv.zone is None:
        return int(idx[rng.integers(0, len(idx))])
    n = cv.size
    cx, cy, spread = (v * n for v in cv.zone)
    d2 = ((idx % n - cx) ** 2 + (idx // n - cy) ** 2) / (2.0 * spread**2)
    w = np.exp(-(d2 - d2.min()))
    return int(idx[rng.choice(len(idx), p=w / w.sum())])


def _restrict(cv: Canvas, layer: np.ndarray) -> np.ndarray:
    return layer if cv.fg is None else layer * cv.fg


def _blend(cv: Canvas, alpha: np.ndarray, target: np.ndarray) -> np.ndarray:
    a = _restrict(cv, alpha)[..., None]
    cv.img = (cv.img * (1 - a) + target * a).astype(np.float32)
    return a[..., 0]


def _polyline(cv: Canvas, pts: np.ndarray, thickness: int) -> np.ndarray:
    layer = np.zeros((cv.size, cv.size), np.uint8)
    cv2.polylines(layer, [np.round(pts * 4).astype(np.int32)], False, 255, thickness, cv2.LINE_AA, shift=2)
    return layer.astype(np.float32) / 255.0


def draw_scratch(cv: Canvas, rng: np.random.Generator, spec: DefectSpec) -> np.ndarray:
    """One to three thin, smooth, bright (or ``spec.color``) lines, straight or gently curved."""
    s, n = cv.size / 256.0, cv.size
    alpha = np.zeros((n, n), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = _point(cv, rng, 0.08 * n)
        length = n * spec.size * rng.uniform(0.2, 0.5)
        ang, bend = rng.uniform(0, np.pi), rng.uniform(-0.25, 0.25) * length
        t = np.linspace(-0.5, 0.5, 16)[:, None]
        d, nrm = np.array([np.cos(ang), np.sin(ang)]), np.array([-np.sin(ang), np.cos(ang)])
        pts = np.array([x0, y0]) + t * length * d + (1 - 4 * t**2) * bend * nrm
        alpha = np.maximum(alpha, _polyline(cv, pts, max(1, int(round(s * rng.uniform(1.5, 3.0))))))
    color = rgb(*spec.color) if spec.color is not None else rgb(0.97, 0.97, 0.95)
    return _blend(cv, alpha * rng.uniform(0.65, 0.95), color)


def draw_crack(cv: Canvas, rng: np.random.Generator, spec: DefectSpec) -> np.ndarray:
    """A dark jagged line (random walk) with two to four shorter, thinner branches."""
    s, n = cv.size / 256.0, cv.size
    length = n * spec.size * rng.uniform(0.25, 0.5)
    steps = int(rng.integers(9, 15))
    p, ang = np.array(_point(cv, rng, 0.1 * n)), rng.uniform(0, 2 * np.pi)
    pts = [p.copy()]
    for _ in range(steps):
        ang += rng.normal(0, 0.55)
        p = p + length / steps * np.array([np.cos(ang), np.sin(ang)])
        pts.append(p.copy())
    main = np.array(pts)
    alpha = _polyline(cv, main, max(1, int(round(s * rng.uniform(2.0, 3.5)))))
    for _ in range(int(rng.integers(2, 5))):
        q, a = main[int(rng.integers(2, steps))].copy(), ang + rng.choice([-1, 1]) * rng.uniform(0.5, 1.3)
        br = [q.copy()]
        for _ in range(int(rng.integers(3, 7))):
            a += rng.normal(0, 0.5)
            q = q + length / steps * np.array([np.cos(a), np.sin(a)])
            br.append(q.copy())
        alpha = np.maximum(alpha, _polyline(cv, np.array(br), max(1, int(round(1.5 * s)))))
    return _blend(cv, alpha * rng.uniform(0.75, 0.95), cv.img * 0.12)


def draw_hole(cv: Canvas, rng: np.random.Generator, spec: DefectSpec) -> np.ndarray:
    """One to four dark round pits with a thin light rim."""
    n = cv.size
    x0, y0 = _point(cv, rng, 0.1 * n)
    dark, rim = np.zeros((n, n), np.uint8), np.zeros((n, n), np.uint8)
    for i in range(int(rng.integers(1, 5))):
        r = n * spec.size * rng.uniform(0.03, 0.075)
        c = (x0, y0) if i == 0 else (x0 + rng.normal(0, 0.08 * n), y0 + rng.normal(0, 0.08 * n))
        ctr, ax = (int(round(c[0] * 4)), int(round(c[1] * 4))), (int(r * 4), int(r * rng.uniform(0.75, 1.0) * 4))
        e = int(rng.uniform(0, 180))
        cv2.ellipse(rim, ctr, (ax[0] + 8, ax[1] + 8), e, 0, 360, 255, -1, cv2.LINE_AA, shift=2)
        cv2.ellipse(dark, ctr, ax, e, 0, 360, 255, -1, cv2.LINE_AA, shift=2)
    a_rim = _blend(cv, rim.astype(np.float32) / 255.0 * 0.35, np.ones(3, np.float32))
    a = _blend(cv, dark.astype(np.float32) / 255.0, rgb(0.04, 0.03, 0.03) * rng.uniform(0.5, 1.5))
    return np.maximum(a, a_rim)


def _blob(cv: Canvas, rng: np.random.Generator, radius: float, hard: float) -> np.ndarray:
    """An irregular soft blob: a union of random ellipses, blurred and re-thresholded."""
    n = cv.size
    x0, y0 = _point(cv, rng, radius * 0.6)
    layer = np.zeros((n, n), np.uint8)
    for _ in range(int(rng.integers(3, 7))):
        c = (int(round((x0 + rng.normal(0, 0.35 * radius)) * 4)), int(round((y0 + rng.normal(0, 0.35 * radius)) * 4)))
        ax = (int(radius * rng.uniform(0.35, 0.75) * 4), int(radius * rng.uniform(0.35, 0.75) * 4))
        cv2.ellipse(layer, c, ax, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA, shift=2)
    b = cv2.GaussianBlur(layer.astype(np.float32) / 255.0, (0, 0), max(0.8, radius * 0.22))
    return np.clip((b - 0.35) * hard, 0, 1)


def draw_stain(cv: Canvas, rng: np.random.Generator, spec: DefectSpec) -> np.ndarray:
    """A soft irregular blotch tinted with a hue far from the material's, keeping its texture."""
    radius = cv.size * spec.size * rng.uniform(0.1, 0.22)
    alpha = _blob(cv, rng, radius, 2.5)
    tint = rgb(*spec.color) if spec.color is not None else shift_hue(cv.stain, rng.uniform(-20, 20))
    lum = cv.img.mean(axis=2, keepdims=True)
    return _blend(cv, alpha * rng.uniform(0.75, 0.95), np.clip((0.35 + lum) * tint * 1.6, 0, 1))


def draw_missing(cv: Canvas, rng: np.random.Generator, spec: DefectSpec) -> np.ndarray:
    """Material removed: a chunk bitten out of the object's outline, or a worn patch of a texture."""
    n = cv.size
    radius = n * spec.size * rng.uniform(0.1, 0.18)
    if cv.fg is None:
        alpha = _blob(cv, rng, radius, 6.0)
    else:
        edge = cv.fg & ~cv2.erode(cv.fg.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        i = _pick(np.flatnonzero(edge), cv, rng)
        layer = np.zeros((n, n), np.uint8)
        cv2.circle(layer, (int((i % n) * 4), int((i // n) * 4)), int(radius * 4), 255, -1, cv2.LINE_AA, shift=2)
        alpha = layer.astype(np.float32) / 255.0
        # paint the background over the whole disc (also the object's anti-aliased rim), report the object part
        cv.img = (cv.img * (1 - alpha[..., None]) + cv.under * alpha[..., None]).astype(np.float32)
        return alpha * cv.fg
    return _blend(cv, alpha, cv.under)


def draw_contamination(cv: Canvas, rng: np.random.Generator, spec: DefectSpec) -> np.ndarray:
    """A cluster of small bright, bluish-white speckles (metal chips, dust)."""
    s, n = cv.size / 256.0, cv.size
    rc = n * spec.size * rng.uniform(0.05, 0.12)
    x0, y0 = _point(cv, rng, rc)
    layer = np.zeros((n, n), np.uint8)
    for _ in range(int(rng.integers(20, 50))):
        c = (int(round((x0 + rng.normal(0, rc * 0.5)) * 4)), int(round((y0 + rng.normal(0, rc * 0.5)) * 4)))
        cv2.circle(layer, c, int(4 * s * rng.uniform(0.8, 2.4)), 255, -1, cv2.LINE_AA, shift=2)
    color = rgb(*spec.color) if spec.color is not None else rgb(0.6, 0.85, 1.0) * rng.uniform(0.9, 1.05)
    return _blend(cv, layer.astype(np.float32) / 255.0, np.clip(color, 0, 1))


def draw_fold(cv: Canvas, rng: np.random.Generator, spec: DefectSpec) -> np.ndarray:
    """A crease: the material is pinched towards a line, dark on one side and bright on the other."""
    n = cv.size
    x0, y0 = _point(cv, rng, 0.15 * n)
    theta = rng.uniform(0, np.pi)
    u, v = _rotated(n, x0, y0, theta)
    w, half = n * spec.size * rng.uniform(0.03, 0.06), n * rng.uniform(0.2, 0.4)
    env = np.exp(-((np.maximum(np.abs(u) - half, 0) / np.float32(0.1 * n)) ** 2))
    g = np.exp(-((v / np.float32(w)) ** 2)) * env
    disp = 0.8 * v * g  # sample from further out: the material is pulled towards the line
    y, x = _grid(n)
    mx = (x - disp * np.float32(np.sin(theta))).astype(np.float32)
    my = (y + disp * np.float32(np.cos(theta))).astype(np.float32)
    folded = cv2.remap(cv.img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    shade = 1.0 + rng.uniform(0.8, 1.4) * rng.choice([-1.0, 1.0]) * (v / np.float32(w)) * g
    out = np.clip(folded * shade[..., None], 0, 1)
    return _blend(cv, np.clip((g - 0.1) * 3.0, 0, 1), out)


_BASIC = ("scratch", "crack", "hole", "stain", "contamination")


def draw_combined(cv: Canvas, rng: np.random.Generator, spec: DefectSpec) -> np.ndarray:
    """Two different basic defects on one image (MVTec's ``combined``)."""
    picks = rng.choice(len(_BASIC), size=2, replace=False)
    masks = [DRAWERS[_BASIC[int(i)]](cv, rng, DefectSpec(_BASIC[int(i)], spec.size * 0.8)) for i in picks]
    return np.maximum(*masks)


DRAWERS: dict[str, Callable[[Canvas, np.random.Generator, DefectSpec], np.ndarray]] = {
    "scratch": draw_scratch, "crack": draw_crack, "hole": draw_hole, "stain": draw_stain,
    "missing": draw_missing, "contamination": draw_contamination, "fold": draw_fold, "combined": draw_combined,
}  # fmt: skip


def render_sample(
    style: str, size: int, rng: np.random.Generator, pal: Palette, defect: DefectSpec | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Draw one image (and its defect mask when ``defect`` is given).

    Returns:
        ``(image, mask)``: ``uint8`` RGB ``H x W x 3`` and ``uint8`` ``H x W`` with values 0/255 (``None``
        for a normal image). A defect that came out empty is redrawn, so a mask is never empty.
    """
    cv = STYLES[style](rng, size, pal)
    mask = None
    if defect is not None:
        cv.zone = defect.zone
        base = cv.img
        for _ in range(20):
            cv.img = base.copy()
            alpha = DRAWERS[defect.drawer](cv, rng, defect)
            mask = np.where(alpha > 0.35, 255, 0).astype(np.uint8)
            if mask.any():
                break
    img = cv2.GaussianBlur(cv.img, (0, 0), 0.6 * size / 256.0)  # optics: soft edges, less aliasing
    return np.clip(img * np.float32(255.0) + np.float32(0.5), 0, 255).astype(np.uint8), mask
