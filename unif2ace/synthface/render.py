"""SynthFace renderer: draws a face showing every attribute, with PIL on a supersampled canvas.

    import numpy as np
    from unif2ace.synthface.render import render_face
    img = render_face(attrs, 64, np.random.default_rng(0), geometry)   # PIL RGB image

Cartoon style on purpose: each attribute has a distinct colour, shape or region (see
``Category.description``) so a classifier can read it back from 64×64 pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .taxonomy import _choice, sample_geometry, validate_attributes

# =========================================================================== rendering

SKIN = {"pale": (247, 226, 214), "fair": (238, 199, 168), "tan": (208, 158, 112),
        "brown": (158, 104, 68), "dark": (92, 60, 42)}
HAIR = {"black": (30, 26, 26), "brown": (108, 64, 34), "blonde": (236, 200, 112),
        "red": (190, 72, 30), "grey": (172, 172, 176)}
IRIS = {"brown": (96, 52, 22), "blue": (40, 112, 232), "green": (34, 152, 62),
        "grey": (128, 134, 146)}
LIPSTICK = {"red": (208, 18, 40), "pink": (242, 104, 168), "plum": (108, 22, 74)}
BACKGROUNDS = ((196, 218, 240), (214, 236, 208), (238, 226, 204), (228, 210, 232),
               (206, 232, 232), (244, 236, 196))
SHIRTS = ((58, 90, 160), (160, 52, 52), (52, 122, 82), (92, 92, 96), (204, 160, 62),
          (122, 72, 142), (236, 236, 236))
HATS = ((36, 46, 104), (40, 112, 62), (106, 50, 136), (22, 116, 126), (226, 122, 36),
        (52, 92, 202))
INK = (34, 26, 26)
SUPERSAMPLE_PX = 192  # draw on a canvas of at least this side, then downsample
GOLD = (236, 188, 40)


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, round(x + (y - x) * t)))) for x, y in zip(a, b))  # type: ignore[return-value]


@lru_cache(maxsize=64)
def _unit_ramp(k: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, k)


def _lin(a: float, b: float, k: int) -> np.ndarray:
    """``np.linspace(a, b, k)`` without its per-call overhead (called ~10× per face)."""
    return a + (b - a) * _unit_ramp(k)


def _shade(c: Sequence[float], f: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(x * f)))) for x in c)  # type: ignore[return-value]


@lru_cache(maxsize=16)
def _hair_pattern(kind: str, s: int) -> Image.Image:
    """Texture ("L", 2s × 2s, cropped at a random offset per image) for a hair type.

    The texture carries the hair-type signal: vertical strands, wavy strands, or curls.
    """
    y, x = np.mgrid[0:2 * s, 0:2 * s].astype(np.float32) / s
    if kind == "straight":
        p = np.sin(2 * np.pi * 20 * x + 2.0 * np.sin(2 * np.pi * 3 * x))
    elif kind == "wavy":
        p = np.sin(2 * np.pi * 14 * (x + 0.035 * np.sin(2 * np.pi * 7 * y)))
    else:  # curly: rings on a hexagonal-ish grid
        cell = 0.055
        yy = y / cell
        xx = x / cell + 0.5 * (np.floor(yy) % 2)
        d = np.hypot(xx - np.floor(xx) - 0.5, yy - np.floor(yy) - 0.5)
        p = np.cos(2 * np.pi * d * 2.2)
    p = np.sign(p) * np.abs(p) ** 0.5  # sharpen: crisper strands at low resolution
    return Image.fromarray(np.round((p + 1) * 127.5).astype(np.uint8), "L")


@lru_cache(maxsize=16)
def _unit_outline(shape: str, k: int) -> np.ndarray:
    """Face outline of a shape in unit coordinates ([-1, 1]², k points, clockwise)."""
    n, taper, tp, _ = _SHAPES[shape]
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    x = np.sign(c) * np.abs(c) ** (2 / n)
    y = np.sign(s) * np.abs(s) ** (2 / n)
    return np.stack([x * (1 - taper * np.clip(y, 0, None) ** tp), y], 1)


@dataclass
class _Scene:
    """Per-image nuisance drawn in a fixed order, so attributes never shift the stream."""

    bg: tuple[int, int, int]
    shirt: tuple[int, int, int]
    hat: tuple[int, int, int]
    dx: float
    dy: float
    scale: float
    tex: tuple[int, int]
    detail_seed: int

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "_Scene":
        u = rng.random(11)  # one draw, fixed size: the stream never depends on attributes
        bg = _choice(u[0], BACKGROUNDS)
        bg = tuple(int(min(255, max(0, c + 16 * (x - 0.5)))) for c, x in zip(bg, u[1:4]))
        return cls(bg, _choice(u[4], SHIRTS), _choice(u[5], HATS), 0.05 * (u[6] - 0.5),
                   0.05 * (u[7] - 0.5), 0.96 + 0.08 * u[8], (int(u[9] * 65536), int(u[10] * 65536)),
                   int(rng.integers(0, 2**31 - 1)))


_SHAPES = {  # superellipse exponent, lower-half taper, taper power, height/width
    "round": (2.0, 0.10, 1.5, 1.04),
    "oval": (2.0, 0.25, 1.6, 1.34),
    "square": (5.0, 0.10, 2.0, 1.14),
    "heart": (2.5, 0.78, 1.05, 1.22),
}


class _Painter:
    """Draws one face on a supersampled canvas; coordinates are pixels of that canvas."""

    def __init__(self, a: dict[str, str], g: dict[str, float], sc: _Scene, s: int):
        self.a, self.g, self.sc, self.s = a, g, sc, s
        self.img = Image.new("RGB", (s, s), sc.bg)
        self.d = ImageDraw.Draw(self.img)
        self.w = g["face_w"] * sc.scale * s
        asp = _SHAPES[a["face_shape"]][3]
        self.h = self.w * asp * g["aspect"]
        self.cx = (0.5 + sc.dx) * s
        self.top = (0.54 + sc.dy) * s - self.h / 2
        self.cy = self.top + self.h / 2
        self.lw = max(1, round(s / 128))
        skin = np.add(SKIN[a["skin_tone"]], (g["skin_r"], g["skin_g"], g["skin_b"]))
        self.skin = tuple(int(v) for v in np.clip(skin, 0, 255))
        self.hair = _shade(HAIR[a["hair_colour"]], g["hair_l"])
        self.fhair = _shade(self.hair, 0.85)  # facial hair a little darker than the head
        self.ey = self.top + g["eye_y"] * self.h
        self.edx = g["eye_dx"] * self.w
        self.ew = g["eye_w"] * self.w
        self.yn = self.top + 0.655 * self.h
        self.my = self.top + g["mouth_y"] * self.h
        self.mw = g["mouth_w"] * self.w
        self.outline = self._outline(1.0, 1.0)
        self._halves: dict[int, np.ndarray] = {}
        self.rng = np.random.default_rng(sc.detail_seed)
        self._layers: dict[float, Image.Image] = {}
        self._crop: Image.Image | None = None

    # ----------------------------------------------------------------- geometry helpers
    def _outline(self, fx: float, fy: float, k: int = 72) -> np.ndarray:
        """Face outline (k×2, clockwise from the right) scaled about the face centre."""
        u = _unit_outline(self.a["face_shape"], k)
        return u * (self.w / 2 * fx, self.h / 2 * fy) + (self.cx, self.cy)

    def edge_x(self, y, side: int):
        """x of the face outline at height(s) y on the left (-1) or right (+1) side."""
        if side not in self._halves:
            o = self.outline
            half = o[(o[:, 0] - self.cx) * side >= 0]
            self._halves[side] = half[np.argsort(half[:, 1])].T.copy()
        hy_x = self._halves[side]
        x = np.interp(y, hy_x[1], hy_x[0])
        return float(x) if np.ndim(x) == 0 else x

    @staticmethod
    def _flat(pts: np.ndarray | Sequence) -> list[float]:
        return np.asarray(pts, dtype=float).ravel().tolist()

    def poly(self, pts, fill, outline=None, width=1, draw=None) -> None:
        (draw or self.d).polygon(self._flat(pts), fill=fill, outline=outline, width=width)

    def ell(self, x, y, rx, ry, fill=None, outline=None, width=1, draw=None) -> None:
        (draw or self.d).ellipse([x - rx, y - ry, x + rx, y + ry], fill=fill, outline=outline,
                                 width=width)

    def line(self, pts, fill, width) -> None:
        self.d.line(self._flat(pts), fill=fill, width=max(1, int(round(width))), joint="curve")

    # ----------------------------------------------------------------- hair machinery
    def hair_layer(self, factor: float = 1.0) -> Image.Image:
        """Hair colour (× factor) modulated by the hair-type texture, cached per factor."""
        if factor not in self._layers:
            if self._crop is None:
                kind = self.a["hair_type"] if self.a["hair_type"] != "none" else "straight"
                ox, oy = (v % self.s for v in self.sc.tex)
                self._crop = _hair_pattern(kind, self.s).crop((ox, oy, ox + self.s, oy + self.s))
            amp = 24 + 0.1 * (255 - max(self.hair))  # more contrast on dark hair
            base = [c * factor for c in self.hair]
            lo = Image.new("RGB", (self.s, self.s), _mix(base, [c - amp for c in base], 1.0))
            hi = Image.new("RGB", (self.s, self.s), _mix(base, [c + amp for c in base], 1.0))
            self._layers[factor] = Image.composite(hi, lo, self._crop)  # lo→hi along the texture
        return self._layers[factor]

    def hair_mask(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        m = Image.new("L", (self.s, self.s), 0)
        return m, ImageDraw.Draw(m)

    def paste_hair(self, mask: Image.Image, factor: float = 1.0) -> None:
        box = mask.getbbox()  # paste only where the mask is set: most of the canvas is not
        if box is not None:
            self.img.paste(self.hair_layer(factor).crop(box), box[:2], mask.crop(box))

    def curls(self, md: ImageDraw.ImageDraw, pts: np.ndarray, r: float) -> None:
        """Bumpy outline for curly hair: discs along a polyline."""
        for x, y in pts:
            self.ell(x, y, r, r, fill=255, draw=md)

    def wave(self, y: np.ndarray, amp: float) -> np.ndarray:
        return amp * np.sin(2 * np.pi * (y - self.top) / (0.28 * self.w))

    def side_edges(self, y0: float, y1: float, x_in: float, x_out: float, widen: float,
                   side: int, k: int = 14) -> np.ndarray:
        """Polygon of a hair curtain on one side, from y0 to y1, edges as per hair type."""
        ys = _lin(y0, y1, k)
        frac = (ys - y0) / max(1.0, y1 - y0)
        inner = self.cx + side * (x_in + 0 * frac)
        outer = self.cx + side * (x_out + widen * frac)
        if self.a["hair_type"] == "wavy":
            wv = self.wave(ys, 0.035 * self.w)
            inner, outer = inner + wv, outer + wv
        return np.concatenate([np.stack([outer, ys], 1), np.stack([inner, ys], 1)[::-1]])

    # ----------------------------------------------------------------- parts
    def back_hair(self) -> None:
        a, w, h = self.a, self.w, self.h
        m, md = self.hair_mask()
        curly = a["hair_type"] == "curly"
        if a["bald"] == "yes":
            ring = self._outline(1.1, 1.04)
            for side in (-1, 1):
                band = ring[((ring[:, 0] - self.cx) * side > 0)
                            & (ring[:, 1] > self.top + 0.28 * h) & (ring[:, 1] < self.top + 0.55 * h)]
                if len(band) >= 2:
                    self.poly(np.vstack([band, [[self.cx, self.cy]]]), 255, draw=md)
            self.paste_hair(m)
            return
        puff = 1.16 if curly else 1.1
        cap = self._outline(puff, 1.07 if not curly else 1.1)
        cap[:, 1] -= 0.02 * h
        length = a["hair_length"]
        y_cut = self.top + 0.42 * h
        self.poly(cap[cap[:, 1] < y_cut], 255, draw=md)
        if curly:
            self.curls(md, cap[cap[:, 1] < y_cut][::2], 0.06 * w)
        if length in ("medium", "long"):
            y1 = self.top + 0.95 * h if length == "medium" else self.s * 1.02
            widen = 0.04 * w if length == "medium" else 0.22 * w
            x_out = 0.62 * w if not curly else 0.68 * w
            for side in (-1, 1):
                pts = self.side_edges(self.top + 0.3 * h, y1, 0.2 * w, x_out, widen, side)
                self.poly(pts, 255, draw=md)
                if curly:
                    self.curls(md, pts[: len(pts) // 2], 0.065 * w)
            # the mass behind the neck between the two curtains
            self.poly([[self.cx - 0.5 * w, self.top + 0.35 * h], [self.cx + 0.5 * w, self.top + 0.35 * h],
                       [self.cx + 0.5 * w, y1 - 0.03 * h], [self.cx - 0.5 * w, y1 - 0.03 * h]], 255, draw=md)
        self.paste_hair(m)

    def body(self) -> None:
        w, h, s = self.w, self.h, self.s
        chin = self.top + h
        neck_col = _shade(self.skin, 0.86)
        # shoulders: a wide rounded trapezoid in the shirt colour
        sh_y = max(chin + 0.05 * w, 0.86 * s)
        self.ell(self.cx, s + 0.22 * s, 0.62 * s, 0.22 * s + (s - sh_y), fill=self.sc.shirt)
        self.poly([[self.cx - 0.19 * w, self.cy], [self.cx + 0.19 * w, self.cy],
                   [self.cx + 0.2 * w, sh_y + 0.02 * s], [self.cx - 0.2 * w, sh_y + 0.02 * s]],
                  neck_col)
        self.ell(self.cx, sh_y + 0.02 * s, 0.2 * w, 0.05 * w, fill=neck_col)
        if self.a["necklace"] == "yes":
            yb = sh_y + 0.01 * s
            pts = [(self.cx + 0.2 * w * math.cos(t), yb - 0.16 * w + 0.2 * w * math.sin(t))
                   for t in _lin(0.15, math.pi - 0.15, 9)]
            self.line(pts, GOLD, 0.035 * w)
            self.ell(self.cx, yb + 0.06 * w, 0.045 * w, 0.055 * w, fill=GOLD,
                     outline=_shade(GOLD, 0.6), width=self.lw)

    def ears(self) -> None:
        if self.a["hair_length"] in ("medium", "long"):
            return  # covered by hair
        y = self.top + 0.52 * self.h
        for side in (-1, 1):
            x = self.edge_x(y, side)
            self.ell(x, y, 0.07 * self.w, 0.11 * self.w, fill=self.skin,
                     outline=_shade(self.skin, 0.75), width=self.lw)

    def face(self) -> None:
        self.poly(self.outline, self.skin, outline=_shade(self.skin, 0.72), width=self.lw)

    def jaw_region(self, y0: float, out: float) -> np.ndarray:
        """Outline below y0, pushed outward by ``out`` (a fraction of the width)."""
        o = self._outline(1.0 + out, 1.0 + out * 0.8)
        o[:, 1] -= out * 0.3 * self.h
        lower = o[o[:, 1] > y0]
        lower = lower[np.argsort(np.arctan2(lower[:, 1] - self.cy, lower[:, 0] - self.cx))]
        return lower

    def facial_hair(self) -> None:
        a, w, h = self.a, self.w, self.h
        if a["five_o_clock_shadow"] == "yes":
            col = _mix(self.skin, (40, 40, 46), 0.42)
            jaw = self.jaw_region(self.top + 0.6 * h, 0.0)
            upper = [[self.cx + 0.3 * w, self.top + 0.6 * h], [self.cx + 0.1 * w, self.yn + 0.015 * h],
                     [self.cx - 0.1 * w, self.yn + 0.015 * h], [self.cx - 0.3 * w, self.top + 0.6 * h]]
            self.poly(np.vstack([jaw, upper]), col)
            dots = self.rng.uniform(-1, 1, size=(90, 2))
            dk = _mix(self.skin, (20, 20, 24), 0.7)
            r = max(1.0, 0.008 * w)
            xs, ys = self.cx + dots[:, 0] * 0.4 * w, self.top + 0.78 * h + dots[:, 1] * 0.2 * h
            inside = (xs > self.edge_x(ys, -1) + r) & (xs < self.edge_x(ys, 1) - r) & (ys < self.top + h - r)
            for x, y in zip(xs[inside], ys[inside]):
                self.ell(x, y, r, r, fill=dk)
        if a["beard"] == "full":
            m, md = self.hair_mask()
            jaw = self.jaw_region(self.top + 0.55 * h, 0.12)
            upper = [[self.cx + 0.38 * w, self.top + 0.6 * h], [self.cx + 0.2 * w, self.my - 0.03 * h],
                     [self.cx - 0.2 * w, self.my - 0.03 * h], [self.cx - 0.38 * w, self.top + 0.6 * h]]
            self.poly(np.vstack([jaw, upper]), 255, draw=md)
            self._paste_fhair(m)
        elif a["beard"] == "goatee":
            m, md = self.hair_mask()
            cy = self.top + 0.93 * h
            self.poly([[self.cx - 0.6 * self.mw, self.my + 0.06 * h], [self.cx + 0.6 * self.mw, self.my + 0.06 * h],
                       [self.cx + 0.75 * self.mw, cy], [self.cx, self.top + 1.06 * h],
                       [self.cx - 0.75 * self.mw, cy]], 255, draw=md)
            self._paste_fhair(m)
        if a["sideburns"] == "yes":
            for side in (-1, 1):
                y0, y1 = self.top + 0.28 * h, self.top + 0.62 * h
                e0, e1 = self.edge_x(y0, side), self.edge_x(y1, side)
                self.poly([[e0 + side * 0.02 * w, y0], [e0 - side * 0.11 * w, y0],
                           [e1 - side * 0.1 * w, y1], [e1 + side * 0.01 * w, y1]], self.fhair)

    def _paste_fhair(self, m: Image.Image) -> None:
        self.paste_hair(m, 0.75)  # facial hair a shade darker than the head

    def skin_marks(self) -> None:
        a, w, h = self.a, self.w, self.h
        if a["rosy_cheeks"] == "yes":
            col = _mix(self.skin, (238, 84, 110), 0.5)
            for side in (-1, 1):
                self.ell(self.cx + side * 0.27 * w, self.top + 0.635 * h, 0.1 * w, 0.065 * w, fill=col)
        if a["wrinkles"] == "yes":
            col = _shade(self.skin, 0.62)
            lw = 0.028 * w
            if a["bangs"] == "no":
                for i in range(3):
                    y = self.top + (0.255 + 0.045 * i) * h
                    xs = _lin(self.cx - 0.2 * w, self.cx + 0.2 * w, 7)
                    self.line(np.stack([xs, y + 0.01 * w * np.sin(xs / (0.08 * w))], 1), col, lw)
            for side in (-1, 1):
                ox = self.cx + side * (self.edx + self.ew * 1.25)
                for k in (-1, 0, 1):
                    self.line([(ox, self.ey + k * 0.02 * w),
                               (ox + side * 0.08 * w, self.ey + k * 0.05 * w)], col, lw)
                self.line([(self.cx + side * 0.12 * w, self.yn - 0.01 * h),
                           (self.cx + side * (self.mw + 0.1 * w), self.my - 0.02 * h),
                           (self.cx + side * (self.mw + 0.09 * w), self.my + 0.05 * h)], col, lw)
        if a["freckles"] == "yes":
            col = _mix(self.skin, (110, 52, 22), 0.6)
            pts = self.rng.uniform(0, 1, size=(22, 2))
            r = max(1.0, 0.022 * w)
            for i, (u, v) in enumerate(pts):
                side = -1 if i % 2 else 1
                x = self.cx + side * (0.08 + 0.26 * u) * w
                y = self.ey + (0.12 + 0.14 * v) * w
                self.ell(x, y, r, r, fill=col)

    def eyes(self) -> None:
        a, w = self.a, self.w
        expr = a["expression"]
        eh_f = {"neutral": 0.58, "smile": 0.48, "laugh": 0.34, "surprised": 0.78}[expr]
        ew = self.ew * (1.08 if expr == "surprised" else 1.0)
        eh = self.ew * eh_f
        iris = _shade(IRIS[a["eye_colour"]], self.g["iris_l"])
        ri = self.ew * 0.5
        for side in (-1, 1):
            ex = self.cx + side * self.edx
            self.ell(ex, self.ey, ew, eh, fill=(248, 248, 246), outline=INK, width=self.lw * 2)
            self.ell(ex, self.ey, ri, min(ri, eh * 0.96), fill=iris)
            self.ell(ex, self.ey, ri * 0.45, min(ri * 0.45, eh * 0.6), fill=(12, 10, 10))
            self.ell(ex + ri * 0.32, self.ey - min(ri, eh) * 0.35, ri * 0.2, ri * 0.2, fill=(255, 255, 255))
            self.line([(ex - ew * 1.05, self.ey - eh * 0.2), (ex - ew * 0.6, self.ey - eh * 0.95),
                       (ex + ew * 0.6, self.ey - eh * 0.95), (ex + ew * 1.05, self.ey - eh * 0.2)],
                      INK, self.lw * 2)  # upper lid
        self.brows()

    def brows(self) -> None:
        a, w = self.a, self.w
        col = _mix(self.hair, (36, 26, 20), 0.4)
        by = self.ey - self.g["brow_dy"] * w - (0.05 * w if a["expression"] == "surprised" else 0)
        t = _lin(0, 1, 9)
        shape = a["eyebrow_shape"]
        if shape == "straight":
            lift = 0.008 * w * t
        elif shape == "arched":
            lift = 0.06 * w * np.sin(np.pi * t) ** 0.8
        else:  # angled: rises to a sharp peak two thirds out, then drops
            lift = 0.085 * w * np.where(t < 0.65, t / 0.65, 1 - (t - 0.65) / 0.35 * 1.3)
        for side in (-1, 1):
            ex = self.cx + side * self.edx
            xs = ex - side * self.ew * 1.05 + side * t * self.ew * 2.3
            self.line(np.stack([xs, by - lift], 1), col, 0.05 * w)

    def nose(self) -> None:
        w, col = self.w, _shade(self.skin, 0.7)
        nw = self.g["nose_w"] * w
        self.line([(self.cx + 0.02 * w, self.ey + 0.04 * w), (self.cx + 0.045 * w, self.yn - 0.02 * w)],
                  _shade(self.skin, 0.85), self.lw * 2)
        xs = _lin(-1, 1, 7)
        # nose base: a shallow "U", lowest in the middle
        self.line(np.stack([self.cx + xs * nw, self.yn + 0.02 * w * (1 - xs ** 2) - 0.015 * w * xs ** 2], 1),
                  col, self.lw * 2.5)

    def mouth(self) -> None:
        a, w, h = self.a, self.w, self.h
        lip = LIPSTICK[a["lipstick"]] if a["lipstick"] != "none" else _mix(self.skin, (176, 72, 74), 0.55)
        dark, mw, my = (92, 24, 32), self.mw, self.my
        xs = _lin(-1, 1, 13)
        expr = a["expression"]
        lw = self.lw * 2
        if expr == "neutral":
            self.ell(self.cx, my - 0.012 * w, mw, 0.04 * w, fill=lip)
            self.ell(self.cx, my + 0.022 * w, mw * 0.88, 0.05 * w, fill=lip)
            self.line([(self.cx - mw, my), (self.cx + mw, my)], _shade(lip, 0.55), lw)
        elif expr == "smile":
            up = my - 0.055 * w * xs ** 2          # mid-line curving up to the corners
            top_e = up - 0.045 * w * (1 - xs ** 2)
            bot_e = up + 0.075 * w * (1 - xs ** 2)
            X = self.cx + xs * mw * 1.1
            self.poly(np.concatenate([np.stack([X, top_e], 1), np.stack([X, bot_e], 1)[::-1]]), lip)
            self.line(np.stack([X, up], 1), _shade(lip, 0.5), lw)
        elif expr == "laugh":
            X = self.cx + xs * mw * 1.15
            top_e = my - 0.04 * w + 0.03 * w * xs ** 2
            bot_e = my - 0.02 * w + 0.2 * w * (1 - xs ** 2) ** 0.8
            self.poly(np.concatenate([np.stack([X, top_e], 1), np.stack([X, bot_e], 1)[::-1]]), lip)
            Xi = self.cx + xs * mw * 0.9
            ti, bi = top_e + 0.03 * w, bot_e - 0.045 * w
            self.poly(np.concatenate([np.stack([Xi, ti], 1), np.stack([Xi, bi], 1)[::-1]]), dark)
            self.poly(np.concatenate([np.stack([Xi, ti], 1), np.stack([Xi, ti + 0.05 * w], 1)[::-1]]),
                      (250, 250, 246))
        else:  # surprised: an "O"
            self.ell(self.cx, my + 0.02 * w, mw * 0.55, 0.1 * w, fill=lip)
            self.ell(self.cx, my + 0.025 * w, mw * 0.34, 0.066 * w, fill=dark)
        if a["moustache"] == "yes":
            m, md = self.hair_mask()
            t = _lin(-1, 1, 11)
            top_y = my - 0.1 * w + 0.02 * w * t ** 2
            bot_y = my - 0.035 * w + 0.03 * w * t ** 2
            X = self.cx + t * mw * 1.2
            self.poly(np.concatenate([np.stack([X, top_y], 1), np.stack([X, bot_y], 1)[::-1]]), 255, draw=md)
            self._paste_fhair(m)

    def front_hair(self) -> None:
        a, w, h = self.a, self.w, self.h
        if a["bald"] == "yes":
            self.ell(self.cx - 0.12 * w, self.top + 0.12 * h, 0.08 * w, 0.04 * w,
                     fill=_mix(self.skin, (255, 255, 255), 0.35))  # scalp shine
            return
        m, md = self.hair_mask()
        curly = a["hair_type"] == "curly"
        cap = self._outline(1.04, 1.04)
        cap[:, 1] -= 0.015 * h
        xs = _lin(1, -1, 25)
        if a["bangs"] == "yes":
            base = self.ey - 0.26 * w + 0.02 * w * xs ** 2
            if a["hair_type"] == "straight":
                base = base + 0.025 * w * (np.arange(25) % 2)      # blunt, slightly jagged cut
            elif a["hair_type"] == "wavy":
                base = base + 0.03 * w * np.sin(xs * 9)
            y_side = self.ey - 0.12 * w
        else:
            base = self.top + (0.17 + 0.1 * xs ** 2) * h
            y_side = self.top + 0.3 * h
        hx = self.cx + xs * 0.53 * w
        cap_top = cap[cap[:, 1] < y_side]
        cap_top = cap_top[np.argsort(np.arctan2(cap_top[:, 1] - self.cy, cap_top[:, 0] - self.cx))]
        self.poly(np.vstack([cap_top, np.stack([hx, base], 1)]), 255, draw=md)
        if curly:
            self.curls(md, np.stack([hx, base], 1)[::2], 0.045 * w)
            self.curls(md, cap_top[::2], 0.05 * w)
        if a["hair_length"] in ("medium", "long"):
            y1 = self.top + 0.92 * h if a["hair_length"] == "medium" else self.s * 1.02
            widen = 0.0 if a["hair_length"] == "medium" else 0.12 * w
            for side in (-1, 1):
                e = abs(self.edge_x(self.top + 0.45 * h, side) - self.cx)
                pts = self.side_edges(self.top + 0.22 * h, y1, e - 0.07 * w, e + 0.08 * w, widen, side)
                self.poly(pts, 255, draw=md)
                if curly:
                    self.curls(md, pts[: len(pts) // 2: 2], 0.055 * w)
        self.paste_hair(m)

    def glasses(self) -> None:
        kind, w = self.a["glasses"], self.w
        if kind == "none":
            return
        frame = (22, 22, 26)
        for side in (-1, 1):
            ex = self.cx + side * self.edx
            if kind == "round":
                r = 0.165 * w
                self.ell(ex, self.ey, r, r, outline=frame, width=round(0.035 * w))
                inner = ex - side * r
            else:
                hw, top, bot = 0.19 * w, self.ey - 0.11 * w, self.ey + 0.1 * w
                box = [ex - hw, top, ex + hw, bot]
                if kind == "rectangular":
                    self.d.rounded_rectangle(box, radius=0.03 * w, outline=frame, width=round(0.055 * w))
                else:
                    self.d.rounded_rectangle(box, radius=0.08 * w, fill=(24, 24, 34), outline=frame,
                                             width=round(0.03 * w))
                    self.line([(ex - hw * 0.5, top + 0.04 * w), (ex - hw * 0.1, top + 0.04 * w)],
                              (96, 96, 116), 0.025 * w)  # glint
                inner = ex - side * hw
            outer = self.cx + side * (self.edx + (0.165 * w if kind == "round" else 0.19 * w))
            self.line([(outer, self.ey - 0.03 * w), (self.edge_x(self.ey, side), self.ey - 0.05 * w)],
                      frame, 0.03 * w)
            if side == 1:
                self.line([(self.cx - (inner - self.cx), self.ey - 0.04 * w), (inner, self.ey - 0.04 * w)],
                          frame, 0.035 * w)

    def face_mask(self) -> None:
        kind, w, h = self.a["mask"], self.w, self.h
        if kind == "none":
            return
        col = (152, 198, 230) if kind == "surgical" else (44, 44, 54)
        y0 = self.ey + 0.17 * w
        jaw = self.jaw_region(y0, 0.02)
        top = [[self.cx + 0.42 * w, y0], [self.cx + 0.1 * w, y0 - 0.05 * w],
               [self.cx - 0.1 * w, y0 - 0.05 * w], [self.cx - 0.42 * w, y0]]
        self.poly(np.vstack([jaw, top]), col, outline=_shade(col, 0.75), width=self.lw)
        loop = (240, 240, 240) if kind == "surgical" else (30, 30, 36)
        for side in (-1, 1):
            ex = self.edge_x(self.top + 0.5 * h, side)
            self.line([(self.cx + side * 0.4 * w, y0 + 0.01 * w), (ex, self.top + 0.5 * h)], loop, 0.02 * w)
        if kind == "surgical":
            for k in range(3):
                y = y0 + (0.08 + 0.09 * k) * w
                self.line([(self.cx - 0.33 * w, y), (self.cx + 0.33 * w, y)], _shade(col, 0.78), 0.022 * w)

    def hat(self) -> None:
        kind, w, h = self.a["hat"], self.w, self.h
        if kind == "none":
            return
        col, dk = self.sc.hat, _shade(self.sc.hat, 0.72)
        puff = 1.18 if self.a["hair_type"] == "curly" else 1.12
        if kind == "cap":
            yb = self.top + 0.2 * h
            dome = self._outline(puff, 1.1)
            dome[:, 1] -= 0.04 * h
            self.poly(dome[dome[:, 1] < yb], col, outline=dk, width=self.lw)
            self.line([(self.cx, dome[:, 1].min() + 0.01 * h), (self.cx, yb)], dk, self.lw * 2)
            self.ell(self.cx, yb + 0.01 * h, 0.56 * w, 0.085 * w, fill=dk)
            self.ell(self.cx, dome[:, 1].min() + 0.01 * h, 0.035 * w, 0.025 * w, fill=dk)
        elif kind == "beanie":
            yb = min(self.top + 0.27 * h, self.ey - 0.29 * w)
            dome = self._outline(puff, 1.14)
            dome[:, 1] -= 0.05 * h
            self.poly(dome[dome[:, 1] < yb], col, outline=dk, width=self.lw)
            xl, xr = self.cx - 0.55 * w * puff / 1.12, self.cx + 0.55 * w * puff / 1.12
            self.d.rounded_rectangle([xl, yb - 0.12 * w, xr, yb], radius=0.03 * w, fill=dk)
            for x in _lin(xl + 0.04 * w, xr - 0.04 * w, 9):
                self.line([(x, yb - 0.11 * w), (x, yb - 0.01 * w)], _shade(col, 0.55), self.lw * 2)
            ytop = dome[:, 1].min()
            self.ell(self.cx, ytop - 0.02 * w, 0.09 * w, 0.09 * w, fill=_mix(col, (255, 255, 255), 0.3))
        else:  # fedora
            yb = self.top + 0.16 * h
            self.poly([[self.cx - 0.42 * w, yb], [self.cx - 0.38 * w, self.top - 0.2 * w],
                       [self.cx - 0.1 * w, self.top - 0.16 * w], [self.cx, self.top - 0.12 * w],
                       [self.cx + 0.1 * w, self.top - 0.16 * w], [self.cx + 0.38 * w, self.top - 0.2 * w],
                       [self.cx + 0.42 * w, yb]], col, outline=dk, width=self.lw)
            self.poly([[self.cx - 0.415 * w, yb - 0.02 * w], [self.cx - 0.405 * w, yb - 0.12 * w],
                       [self.cx + 0.405 * w, yb - 0.12 * w], [self.cx + 0.415 * w, yb - 0.02 * w]], (28, 24, 24))
            self.ell(self.cx, yb, 0.86 * w, 0.09 * w, fill=dk, outline=_shade(col, 0.5), width=self.lw)

    def earrings(self) -> None:
        if self.a["earrings"] != "yes":
            return
        w = self.w
        y = self.top + 0.6 * self.h
        for side in (-1, 1):
            x = self.edge_x(y, side) + side * 0.03 * w
            self.ell(x, y + 0.07 * w, 0.055 * w, 0.065 * w, outline=GOLD, width=round(0.03 * w))
            self.ell(x, y, 0.025 * w, 0.025 * w, fill=GOLD)

    def paint(self) -> Image.Image:
        self.back_hair()
        self.body()
        self.ears()
        self.face()
        self.facial_hair()
        self.skin_marks()
        self.nose()
        self.mouth()
        self.eyes()
        self.front_hair()
        self.face_mask()
        self.glasses()
        self.hat()
        self.earrings()
        return self.img


def render_face(attrs: dict[str, str], size: int = 64, rng: np.random.Generator | None = None,
                geometry: dict[str, float] | None = None) -> Image.Image:
    """Render one face (RGB, ``size``×``size``) showing every attribute in ``attrs``.

    ``rng`` draws the per-image nuisance (pose jitter, background, clothing and hat colours)
    in a fixed order, then the geometry when none is given; the same rng state, geometry
    and attributes give identical pixels, and changing one attribute changes only the
    pixels that attribute draws. Drawn ``ceil(SUPERSAMPLE_PX/size)``× larger, then
    box-downsampled (anti-aliasing).
    """
    validate_attributes(attrs)
    if size < 16:
        raise ValueError(f"size={size} is too small to show the attributes (need >= 16)")
    rng = rng if rng is not None else np.random.default_rng(0)
    scene = _Scene.draw(rng)
    geometry = geometry if geometry is not None else sample_geometry(rng)
    ss = max(1, math.ceil(SUPERSAMPLE_PX / size))
    img = _Painter(attrs, geometry, scene, size * ss).paint()
    return img.reduce(ss) if ss > 1 else img
