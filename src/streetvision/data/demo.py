"""Deterministic procedural dashcam scenes: the bundled demo dataset.

Each dashcam *sequence* is one random street scene (sky, road in perspective, buildings, trees, poles,
cars, people) drawn once on a 2x supersampled canvas; its frames are crops of that canvas with a little
forward motion (zoom about the vanishing point), lateral drift and brightness change, so frames of a
sequence are near-duplicates that must stay in one split.

Roadwork scenes contain cones, striped barriers, warning signs, chevron boards or an excavator. Every
roadwork item has a colour-matched *counterpart* that ordinary scenes draw instead (people in orange
hi-vis, red/white striped awnings, round red/white traffic signs, orange vans, ...), on top of
label-independent distractors (orange/red cars, orange facades, autumn trees, dusk skies, brake lights,
sodium lamps, zebra crossings). So colour statistics of the two classes overlap and a classifier has to
learn shapes: triangular cones, diagonally striped boards, triangular signs.

Every random draw of sequence ``i`` comes from ``numpy.random.default_rng([seed, i])``: the same config
writes byte-identical files, and raising ``num_sequences`` only appends sequences.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from streetvision.config.schema import DemoConfig

# Scenes are drawn at this multiple of the output size; the downscale anti-aliases the flat PIL shapes.
SUPERSAMPLE = 2

Color = tuple[int, int, int]
Point = tuple[float, float]

ORANGE: Color = (240, 110, 25)
RED: Color = (205, 35, 35)
WHITE: Color = (238, 238, 232)
YELLOW: Color = (242, 196, 30)
DARK: Color = (28, 28, 30)


@dataclass(frozen=True)
class DemoRecord:
    """One generated JPEG; ``label`` is the published (possibly noise-flipped) label."""

    path: str
    label: int
    group_id: str
    source: str = "demo"


@dataclass(frozen=True)
class _View:
    """Pinhole street geometry in canvas pixels.

    Depth is ``z >= ~1`` (``t = 1/z`` is the fraction of the way from the horizon to the bottom row);
    ``u`` is the lateral position in road half-widths (kerbs at ``u = +-1``). World sizes are in road
    half-widths too, so an object of size ``s`` at depth ``z`` is ``s * road / z`` pixels.
    """

    w: int
    h: int
    horizon: float
    vx: float
    road: float

    def at(self, z: float, u: float, up: float = 0.0) -> Point:
        """Screen point of the world point at depth z, lateral u, height ``up`` above the ground."""
        t = 1.0 / z
        return (self.vx + u * self.road * t, self.horizon + t * (self.h - self.horizon) - up * self.road * t)

    def px(self, z: float, size: float) -> float:
        """Pixel length of a world size at depth z."""
        return size * self.road / z


# One drawable item: (depth, draw function). Items are drawn far to near so near ones occlude.
Item = tuple[float, Callable[[ImageDraw.ImageDraw], None]]


def generate_demo_dataset(
    out_dir: pathlib.Path,
    cfg: DemoConfig,
    label_names: tuple[str, str] = ("no_roadwork", "roadwork"),
) -> list[DemoRecord]:
    """Write JPEGs under out_dir/<label name>/ and return one record per file, in a stable order."""
    _validate(cfg, label_names)
    out_dir = pathlib.Path(out_dir)
    for name in label_names:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    records: list[DemoRecord] = []
    for index in range(cfg.num_sequences):
        records.extend(_write_sequence(out_dir, cfg, tuple(label_names), index))
    return records


def _validate(cfg: DemoConfig, label_names: tuple[str, str]) -> None:
    # Only what the generator itself needs; split-related limits belong to the pipeline's config check.
    problems = []
    if cfg.num_sequences < 0:
        problems.append(f"num_sequences must be >= 0, got {cfg.num_sequences}")
    if not 1 <= cfg.frames_min <= cfg.frames_max:
        problems.append(f"need 1 <= frames_min <= frames_max, got {cfg.frames_min}/{cfg.frames_max}")
    if not 0.0 <= cfg.roadwork_fraction <= 1.0:
        problems.append(f"roadwork_fraction must be in [0, 1], got {cfg.roadwork_fraction}")
    if not 0.0 <= cfg.label_noise <= 1.0:
        problems.append(f"label_noise must be in [0, 1], got {cfg.label_noise}")
    if min(cfg.width, cfg.height) < 16:
        problems.append(f"width/height must be >= 16, got {cfg.width}x{cfg.height}")
    if not 1 <= cfg.jpeg_quality <= 100:
        problems.append(f"jpeg_quality must be in [1, 100], got {cfg.jpeg_quality}")
    if cfg.seed < 0:
        problems.append(f"seed must be >= 0, got {cfg.seed}")
    if len(label_names) != 2 or label_names[0] == label_names[1] or not all(label_names):
        problems.append(f"label_names must be two distinct non-empty names, got {label_names!r}")
    elif any("/" in n or "\\" in n or n in (".", "..") for n in label_names):
        problems.append(f"label_names must be plain folder names, got {label_names!r}")
    if problems:
        raise ValueError("invalid demo config: " + "; ".join(problems))


def _write_sequence(
    out_dir: pathlib.Path, cfg: DemoConfig, label_names: tuple[str, str], index: int
) -> list[DemoRecord]:
    """Draw one scene and write its frames; all randomness comes from this sequence's own RNG."""
    rng = np.random.default_rng([cfg.seed, index])
    roadwork = bool(rng.random() < cfg.roadwork_fraction)
    n_frames = int(rng.integers(cfg.frames_min, cfg.frames_max + 1))
    canvas, view = _render_scene(rng, cfg.width * SUPERSAMPLE, cfg.height * SUPERSAMPLE, roadwork)
    motion = _Motion.sample(rng)
    group_id = f"demo-seq{index:05d}"
    records = []
    for k in range(n_frames):
        frame = _render_frame(rng, canvas, view, motion, k, (cfg.width, cfg.height))
        flipped = bool(rng.random() < cfg.label_noise)
        label = int(roadwork) ^ int(flipped)
        rel = f"{label_names[label]}/seq{index:05d}_f{k:02d}.jpg"
        frame.save(out_dir / rel, format="JPEG", quality=cfg.jpeg_quality)
        records.append(DemoRecord(path=rel, label=label, group_id=group_id, source="demo"))
    return records


# ----------------------------------------------------------------------------------------------------
# Frames of a sequence


@dataclass(frozen=True)
class _Motion:
    """Dashcam motion over a sequence: zoom per frame (driving forward), drift, exposure."""

    zoom0: float
    speed: float
    drift: float
    brightness: float
    noise: float

    @staticmethod
    def sample(rng: np.random.Generator) -> _Motion:
        return _Motion(
            zoom0=float(rng.uniform(1.04, 1.10)),
            speed=float(rng.uniform(0.004, 0.02)),
            drift=float(rng.uniform(-0.008, 0.008)),
            brightness=float(rng.uniform(0.7, 1.2)),
            noise=float(rng.uniform(1.0, 4.0)),
        )


def _render_frame(
    rng: np.random.Generator,
    canvas: Image.Image,
    view: _View,
    motion: _Motion,
    k: int,
    size: tuple[int, int],
) -> Image.Image:
    """Frame k: zoom about the vanishing point (forward motion), shift sideways, vary exposure."""
    cw, ch = canvas.size
    zoom = motion.zoom0 + motion.speed * k
    fx, fy = view.vx, view.horizon
    x0, x1 = fx - fx / zoom, fx + (cw - fx) / zoom
    y0, y1 = fy - fy / zoom, fy + (ch - fy) / zoom
    dx = (motion.drift * k + rng.normal(0.0, 0.004)) * cw
    dy = rng.normal(0.0, 0.004) * ch
    dx = float(np.clip(dx, -x0, cw - x1))  # the box must stay on the canvas
    dy = float(np.clip(dy, -y0, ch - y1))
    frame = canvas.resize(size, Image.Resampling.BILINEAR, box=(x0 + dx, y0 + dy, x1 + dx, y1 + dy))
    gain = motion.brightness * (1.0 + rng.normal(0.0, 0.03))
    arr = np.asarray(frame, dtype=np.float32) * gain
    arr += rng.normal(0.0, motion.noise, size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), mode="RGB")


# ----------------------------------------------------------------------------------------------------
# Scene


def _render_scene(rng: np.random.Generator, w: int, h: int, roadwork: bool) -> tuple[Image.Image, _View]:
    """Draw one street scene on a canvas of w x h pixels."""
    view = _View(
        w=w,
        h=h,
        horizon=h * float(rng.uniform(0.36, 0.5)),
        vx=w * float(rng.uniform(0.4, 0.6)),
        road=w * float(rng.uniform(0.5, 0.75)),
    )
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    night = _draw_sky(draw, view, rng)
    lanes = _draw_ground(draw, view, rng)
    items: list[Item] = []
    sides = _draw_buildings(draw, view, rng, night, items)
    _add_background(items, view, rng, night, lanes, sides)
    # Roadwork items and their colour-matched counterparts come from the same layout draw, so the two
    # classes get the same amount of orange, red and white.
    for kind in _sample_layout(rng):
        if roadwork:
            _add_roadwork(items, view, rng, kind, lanes)
        else:
            _add_counterpart(items, view, rng, kind, lanes, sides)
    for _, paint in sorted(items, key=lambda item: -item[0]):
        paint(draw)
    return img, view


def _jitter(rng: np.random.Generator, color: Color, amount: float = 14.0) -> Color:
    """A colour near ``color`` (per-channel jitter, clipped)."""
    c = np.asarray(color, dtype=np.float64) + rng.normal(0.0, amount, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


def _pick(rng: np.random.Generator, options: list, p: list[float] | None = None):
    """One element of ``options`` (numpy's choice would turn tuples into arrays)."""
    return options[int(rng.choice(len(options), p=p))]


def _mix(a: Color, b: Color, f: float) -> Color:
    return tuple(int(a[i] + (b[i] - a[i]) * f) for i in range(3))  # type: ignore[return-value]


def _draw_sky(draw: ImageDraw.ImageDraw, view: _View, rng: np.random.Generator) -> bool:
    """Vertical gradient for a random time of day; returns whether it is night."""
    mood = _pick(rng, ["day", "overcast", "dusk", "night"], [0.45, 0.25, 0.18, 0.12])
    top, bottom = {
        "day": ((70, 130, 210), (185, 215, 240)),
        "overcast": ((150, 155, 165), (200, 202, 205)),
        "dusk": ((60, 60, 120), (245, 150, 80)),  # an orange sky, in both classes
        "night": ((10, 12, 30), (40, 45, 70)),
    }[mood]
    top, bottom = _jitter(rng, top, 12), _jitter(rng, bottom, 12)
    steps = int(view.horizon) + 2
    for y in range(steps):
        draw.line([(0, y), (view.w, y)], fill=_mix(top, bottom, y / steps))
    return mood == "night"


def _ground_quad(view: _View, z0: float, z1: float, u0: float, u1: float) -> list[Point]:
    return [view.at(z0, u0), view.at(z0, u1), view.at(z1, u1), view.at(z1, u0)]


def _draw_ground(draw: ImageDraw.ImageDraw, view: _View, rng: np.random.Generator) -> int:
    """Sidewalk, road, kerbs, lane markings, maybe a zebra crossing; returns lanes per direction."""
    sidewalk = _jitter(rng, _pick(rng, [(165, 160, 150), (140, 140, 140), (180, 170, 150)]), 10)
    draw.rectangle([0, view.horizon, view.w, view.h], fill=sidewalk)
    asphalt = _jitter(rng, (int(rng.uniform(65, 125)),) * 3, 6)  # type: ignore[arg-type]
    far = 60.0
    draw.polygon([view.at(far, -1), view.at(far, 1), view.at(0.6, 1), view.at(0.6, -1)], fill=asphalt)
    kerb = _jitter(rng, (200, 200, 195), 8)
    for s in (-1, 1):
        draw.polygon(_ground_quad(view, 0.6, far, s * 1.0, s * 1.05), fill=kerb)
    lanes = int(rng.integers(1, 3))
    paint = _pick(rng, [WHITE, WHITE, (225, 190, 60)])
    dash, gap, phase = rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.7), rng.uniform(0, 1)
    lines = [0.0] if lanes == 1 else [-0.5, 0.0, 0.5]
    for u in lines:
        z = 0.6 + phase
        while z < 20:
            draw.polygon(_ground_quad(view, z, z + dash, u - 0.025, u + 0.025), fill=paint)
            z += (dash + gap) * (1 + 0.15 * z)
    if rng.random() < 0.5:
        for s in (-1, 1):
            draw.polygon(_ground_quad(view, 0.6, far, s * 0.9, s * 0.93), fill=WHITE)
    if rng.random() < 0.3:
        _draw_crossing(draw, view, float(rng.uniform(1.3, 3.5)))
    return lanes


def _draw_crossing(draw: ImageDraw.ImageDraw, view: _View, z: float) -> None:
    """Zebra crossing: white stripes across the road (stripes that are *not* roadwork)."""
    u = -0.95
    while u < 0.95:
        draw.polygon(_ground_quad(view, z, z + 0.35, u, u + 0.11), fill=WHITE)
        u += 0.22


# ----------------------------------------------------------------------------------------------------
# Buildings


FACADES: list[Color] = [
    (200, 190, 170), (160, 160, 165), (225, 215, 190), (150, 90, 70),  # beige, grey, cream, brick
    (215, 120, 60), (190, 80, 50), (235, 225, 160), (120, 135, 150),  # orange, terracotta, yellow, slate
]


@dataclass(frozen=True)
class _Side:
    """A street side: facade plane at lateral u (sign gives the side)."""

    u: float


def _draw_buildings(
    draw: ImageDraw.ImageDraw, view: _View, rng: np.random.Generator, night: bool, items: list[Item]
) -> list[_Side]:
    """Distant skyline and facades along both sides, far segments first."""
    haze = _jitter(rng, (120, 125, 140) if not night else (25, 28, 40), 10)
    x = view.vx - view.px(12, 2.5)
    while x < view.vx + view.px(12, 2.5):
        bw = view.px(12, float(rng.uniform(0.3, 0.8)))
        bh = view.px(12, float(rng.uniform(0.8, 3.0)))
        draw.rectangle([x, view.horizon - bh, x + bw, view.horizon + 1], fill=_jitter(rng, haze, 8))
        x += bw
    sides = []
    for s in (-1, 1):
        side = _Side(u=s * float(rng.uniform(1.6, 2.1)))
        sides.append(side)
        bounds = [0.5]
        while bounds[-1] < 14:
            bounds.append(bounds[-1] + float(rng.uniform(0.5, 1.4)) * (1 + 0.2 * bounds[-1]))
        segments = list(zip(bounds[:-1], bounds[1:]))
        for z0, z1 in reversed(segments):
            _draw_facade(draw, view, rng, side.u, z0, z1, night)
    return sides


def _facade_quad(view: _View, u: float, z0: float, z1: float, h0: float, h1: float) -> list[Point]:
    return [view.at(z0, u, h0), view.at(z1, u, h0), view.at(z1, u, h1), view.at(z0, u, h1)]


def _draw_facade(
    draw: ImageDraw.ImageDraw, view: _View, rng: np.random.Generator, u: float, z0: float, z1: float, night: bool
) -> None:
    """One building: a wall with a grid of windows, sometimes a shop awning."""
    height = float(rng.uniform(1.2, 4.0))
    wall = _jitter(rng, _pick(rng, FACADES), 12)
    if night:
        wall = _mix(wall, (0, 0, 0), 0.6)
    draw.polygon(_facade_quad(view, u, z0, z1, 0, height), fill=wall)
    glass = _jitter(rng, (60, 75, 95), 10)
    lit = (235, 200, 110)
    cols = max(1, int((z1 - z0) / 0.35))
    zs = np.linspace(z0, z1, cols + 1)
    h = 0.55
    while h + 0.3 < height:
        for a, b in zip(zs[:-1], zs[1:]):
            pad = (b - a) * 0.22
            fill = lit if night and rng.random() < 0.4 else glass
            draw.polygon(_facade_quad(view, u, a + pad, b - pad, h, h + 0.25), fill=fill)
        h += 0.45
    if rng.random() < 0.15:
        _draw_awning(draw, view, rng, u, z0, z1, _pick(rng, [ORANGE, RED, (40, 130, 70)]))


def _draw_awning(
    draw: ImageDraw.ImageDraw, view: _View, rng: np.random.Generator, u: float, z0: float, z1: float, color: Color
) -> None:
    """Shop awning, plain or with white stripes running *down* the facade (vertical on screen)."""
    a, b = z0 + (z1 - z0) * 0.1, z1 - (z1 - z0) * 0.1
    lo, hi = 0.35, 0.55
    draw.polygon(_facade_quad(view, u, a, b, lo, hi), fill=_jitter(rng, color, 10))
    if rng.random() < 0.7:
        n = int(rng.integers(4, 9)) * 2
        zs = np.linspace(a, b, n + 1)
        for i in range(0, n, 2):
            draw.polygon(_facade_quad(view, u, zs[i], zs[i + 1], lo, hi), fill=WHITE)


# ----------------------------------------------------------------------------------------------------
# Everyday objects (label independent, and the counterparts of roadwork items)

CAR_COLORS: list[Color] = [
    (235, 235, 235), (30, 30, 35), (150, 155, 160), (40, 70, 140), (200, 35, 35), (240, 120, 30),
    (90, 110, 90), (230, 200, 40),
]


def _draw_car(draw: ImageDraw.ImageDraw, view: _View, z: float, u: float, color: Color, brake: bool, van: bool) -> None:
    """A car (or van) seen from behind: body, rear window, wheels, brake lights, plate."""
    half = 0.33 if not van else 0.38
    body_top = 0.32 if not van else 0.75
    draw.polygon(_upright(view, z, u - half * 1.05, u + half * 1.05, 0.0, 0.03), fill=(20, 20, 20))  # shadow
    for s in (-1, 1):
        draw.polygon(_upright(view, z, u + s * half * 0.62, u + s * half * 0.98, 0.0, 0.12), fill=DARK)
    draw.polygon(_upright(view, z, u - half, u + half, 0.07, body_top), fill=color)
    if not van:
        cab = [view.at(z, u - half * 0.9, body_top), view.at(z, u + half * 0.9, body_top),
               view.at(z, u + half * 0.7, 0.5), view.at(z, u - half * 0.7, 0.5)]
        draw.polygon(cab, fill=_mix(color, (0, 0, 0), 0.15))
        glass = [view.at(z, u - half * 0.8, body_top + 0.01), view.at(z, u + half * 0.8, body_top + 0.01),
                 view.at(z, u + half * 0.64, 0.48), view.at(z, u - half * 0.64, 0.48)]
        draw.polygon(glass, fill=(45, 55, 70))
    else:
        draw.polygon(_upright(view, z, u - half * 0.05, u + half * 0.05, 0.1, body_top), fill=_mix(color, DARK, 0.4))
    light = (255, 40, 30) if brake else (150, 25, 25)
    for s in (-1, 1):
        draw.polygon(_upright(view, z, u + s * half * 0.72, u + s * half * 0.95, 0.2, 0.27), fill=light)
    draw.polygon(_upright(view, z, u - 0.08, u + 0.08, 0.12, 0.18), fill=WHITE)


def _upright(view: _View, z: float, u0: float, u1: float, h0: float, h1: float) -> list[Point]:
    """Screen quad of an upright rectangle facing the camera at depth z."""
    return [view.at(z, u0, h0), view.at(z, u1, h0), view.at(z, u1, h1), view.at(z, u0, h1)]


def _draw_person(draw: ImageDraw.ImageDraw, view: _View, z: float, u: float, clothes: Color, hivis: bool) -> None:
    """A pedestrian: legs, torso (maybe with a reflective stripe), arms, head."""
    legs = (45, 50, 70)
    for s in (-1, 1):
        draw.polygon(_upright(view, z, u + s * 0.01, u + s * 0.05, 0.0, 0.25), fill=legs)
    draw.polygon(_upright(view, z, u - 0.075, u + 0.075, 0.24, 0.5), fill=clothes)
    for s in (-1, 1):
        draw.polygon(_upright(view, z, u + s * 0.075, u + s * 0.1, 0.28, 0.49), fill=clothes)
    if hivis:
        draw.polygon(_upright(view, z, u - 0.075, u + 0.075, 0.33, 0.36), fill=WHITE)
    cx, cy = view.at(z, u, 0.56)
    r = view.px(z, 0.055)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_pick_skin(u))


def _pick_skin(u: float) -> Color:
    # Deterministic from position so the function needs no RNG argument.
    return [(230, 190, 160), (170, 120, 90), (110, 75, 55)][int(abs(u) * 1000) % 3]


def _draw_pole(draw: ImageDraw.ImageDraw, view: _View, z: float, u: float, top: float, color: Color = (95, 95, 100)) -> None:
    draw.polygon(_upright(view, z, u - 0.015, u + 0.015, 0.0, top), fill=color)


def _draw_lamp(draw: ImageDraw.ImageDraw, view: _View, z: float, u: float, glow: Color, night: bool) -> None:
    """Street lamp: tall pole, arm over the road, lamp head (sodium orange or white)."""
    _draw_pole(draw, view, z, u, 2.2)
    inward = -math.copysign(0.35, u)
    draw.line([view.at(z, u, 2.2), view.at(z, u + inward, 2.2)], fill=(95, 95, 100), width=max(1, int(view.px(z, 0.025))))
    cx, cy = view.at(z, u + inward, 2.15)
    r = view.px(z, 0.07 if not night else 0.11)
    draw.ellipse([cx - r * 1.4, cy - r, cx + r * 1.4, cy + r], fill=glow)


def _draw_traffic_light(draw: ImageDraw.ImageDraw, view: _View, z: float, u: float, lit: int) -> None:
    """Pole with a dark box and three lamps; one of red/amber/green is lit."""
    _draw_pole(draw, view, z, u, 0.9)
    draw.polygon(_upright(view, z, u - 0.07, u + 0.07, 0.9, 1.35), fill=(25, 25, 25))
    on = [(255, 40, 30), (255, 170, 20), (40, 220, 90)]
    off = [(80, 20, 20), (80, 60, 15), (20, 70, 35)]
    for i in range(3):
        cx, cy = view.at(z, u, 1.27 - i * 0.135)
        r = view.px(z, 0.045)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=on[i] if i == lit else off[i])


def _draw_round_sign(draw: ImageDraw.ImageDraw, view: _View, z: float, u: float, size: float, kind: str) -> None:
    """Round regulatory sign on a pole: no-entry, speed limit, or blue mandatory."""
    _draw_pole(draw, view, z, u, 0.75)
    cx, cy = view.at(z, u, 0.75 + size * 0.5)
    r = view.px(z, size * 0.5)
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind == "no_entry":
        draw.ellipse(box, fill=RED)
        draw.rectangle([cx - r * 0.7, cy - r * 0.18, cx + r * 0.7, cy + r * 0.18], fill=WHITE)
    elif kind == "speed":
        draw.ellipse(box, fill=RED)
        ri = r * 0.72
        draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=WHITE)
        for s in (-1, 1):  # two dark digits
            draw.rectangle([cx + s * r * 0.28 - r * 0.12, cy - r * 0.35, cx + s * r * 0.28 + r * 0.12, cy + r * 0.35], fill=DARK)
    else:
        draw.ellipse(box, fill=(30, 80, 170))
        draw.polygon([(cx, cy - r * 0.6), (cx + r * 0.4, cy), (cx - r * 0.4, cy)], fill=WHITE)
        draw.rectangle([cx - r * 0.12, cy, cx + r * 0.12, cy + r * 0.6], fill=WHITE)


def _draw_rect_sign(draw: ImageDraw.ImageDraw, view: _View, z: float, u: float, size: float, color: Color) -> None:
    """Rectangular sign or shop banner on a pole (square, not a diamond), with a dark border and text bars."""
    _draw_pole(draw, view, z, u, 0.75)
    cx, cy = view.at(z, u, 0.75 + size * 0.45)
    a, b = view.px(z, size * 0.6), view.px(z, size * 0.45)
    draw.rectangle([cx - a, cy - b, cx + a, cy + b], fill=DARK)
    draw.rectangle([cx - a * 0.88, cy - b * 0.84, cx + a * 0.88, cy + b * 0.84], fill=color)
    draw.rectangle([cx - a * 0.6, cy - b * 0.15, cx + a * 0.6, cy + b * 0.15], fill=DARK)


def _draw_tree(draw: ImageDraw.ImageDraw, view: _View, z: float, u: float, leaves: Color, size: float) -> None:
    draw.polygon(_upright(view, z, u - 0.03, u + 0.03, 0.0, 0.8 * size), fill=(90, 65, 45))
    cx, cy = view.at(z, u, 1.05 * size)
    r = view.px(z, 0.4 * size)
    draw.ellipse([cx - r, cy - r * 1.1, cx + r, cy + r * 0.9], fill=leaves)
    r2 = r * 0.6
    draw.ellipse([cx - r2 - r * 0.3, cy - r2 - r * 0.45, cx + r2 - r * 0.3, cy + r2 - r * 0.45], fill=_mix(leaves, WHITE, 0.12))


def _add_background(
    items: list[Item], view: _View, rng: np.random.Generator, night: bool, lanes: int, sides: list[_Side]
) -> None:
    """Label-independent objects: trees, lamps, traffic lights, signs, cars, pedestrians."""
    for side in sides:
        s = math.copysign(1.0, side.u)
        if rng.random() < 0.6:
            leaves = _pick(rng, [(60, 120, 50), (40, 95, 45), (90, 140, 60), (210, 110, 30), (180, 60, 30)],
                           [0.3, 0.25, 0.2, 0.15, 0.1])  # autumn orange/red trees too
            size = float(rng.uniform(0.9, 1.5))
            z = float(rng.uniform(1.0, 3.0))
            for _ in range(int(rng.integers(1, 4))):
                u = s * float(rng.uniform(1.2, 1.45))
                col = _jitter(rng, leaves, 12)
                items.append((z, lambda d, z=z, u=u, c=col, sz=size: _draw_tree(d, view, z, u, c, sz)))
                z += float(rng.uniform(1.0, 3.0))
        if rng.random() < 0.5:
            glow = _pick(rng, [(255, 160, 50), (255, 245, 210)])
            z = float(rng.uniform(1.2, 3.0))
            for _ in range(int(rng.integers(1, 4))):
                items.append((z, lambda d, z=z, u=s * 1.12, g=glow: _draw_lamp(d, view, z, u, g, night)))
                z *= float(rng.uniform(1.6, 2.4))
    if rng.random() < 0.3:
        z, u = float(rng.uniform(1.5, 4.0)), float(_pick(rng, [-1.15, 1.15]))
        lit = int(rng.choice(3, p=[0.5, 0.2, 0.3]))
        items.append((z, lambda d, z=z, u=u, lit=lit: _draw_traffic_light(d, view, z, u, lit)))
    if rng.random() < 0.3:
        z, u = float(rng.uniform(1.3, 4.0)), float(_pick(rng, [-1.15, 1.15]))
        kind = _pick(rng, ["no_entry", "speed", "blue"])
        items.append((z, lambda d, z=z, u=u, k=kind: _draw_round_sign(d, view, z, u, 0.3, k)))
    for _ in range(int(rng.integers(0, 4))):
        _add_car(items, view, rng, lanes, float(rng.uniform(1.3, 6.0)))
    for _ in range(int(rng.integers(0, 3))):
        z = float(rng.uniform(1.3, 4.5))
        u = float(_pick(rng, [-1, 1])) * float(rng.uniform(1.1, 1.45))
        clothes = _jitter(rng, _pick(rng, [(40, 40, 45), (60, 80, 130), (150, 40, 40), (230, 110, 30), (200, 200, 195)]))
        items.append((z, lambda d, z=z, u=u, c=clothes: _draw_person(d, view, z, u, c, False)))


def _add_car(items: list[Item], view: _View, rng: np.random.Generator, lanes: int, z: float,
             color: Color | None = None, van: bool | None = None, u: float | None = None) -> None:
    if u is None:
        centres = [0.5] if lanes == 1 else [0.25, 0.75]
        u = float(_pick(rng, centres)) * float(_pick(rng, [-1, 1]))
        if rng.random() < 0.3:
            u = math.copysign(0.85, u)  # parked at the kerb
    if color is None:
        color = _pick(rng, CAR_COLORS, [0.2, 0.17, 0.17, 0.12, 0.1, 0.1, 0.07, 0.07])
    color = _jitter(rng, color, 10)
    if van is None:
        van = bool(rng.random() < 0.2)
    brake = bool(rng.random() < 0.5)
    items.append((z, lambda d, z=z, u=u, c=color, b=brake, v=van: _draw_car(d, view, z, u, c, b, v)))


# ----------------------------------------------------------------------------------------------------
# Roadwork objects


def _stripe_clip(poly: list[Point], x0: float, y0: float, x1: float, y1: float) -> list[Point]:
    """Clip a convex polygon to an axis-aligned box (Sutherland-Hodgman)."""
    def clip(pts: list[Point], inside: Callable[[Point], bool], cross: Callable[[Point, Point], Point]) -> list[Point]:
        out: list[Point] = []
        for i, cur in enumerate(pts):
            prev = pts[i - 1]
            if inside(cur):
                if not inside(prev):
                    out.append(cross(prev, cur))
                out.append(cur)
            elif inside(prev):
                out.append(cross(prev, cur))
        return out

    def at_x(x: float) -> Callable[[Point, Point], Point]:
        return lambda p, q: (x, p[1] + (q[1] - p[1]) * (x - p[0]) / (q[0] - p[0]))

    def at_y(y: float) -> Callable[[Point, Point], Point]:
        return lambda p, q: (p[0] + (q[0] - p[0]) * (y - p[1]) / (q[1] - p[1]), y)

    pts = poly
    for inside, cross in (
        (lambda p: p[0] >= x0, at_x(x0)),
        (lambda p: p[0] <= x1, at_x(x1)),
        (lambda p: p[1] >= y0, at_y(y0)),
        (lambda p: p[1] <= y1, at_y(y1)),
    ):
        if not pts:
            break
        pts = clip(pts, inside, cross)
    return pts


def _draw_cone(draw: ImageDraw.ImageDraw, view: _View, z: float, u: float, height: float, color: Color) -> None:
    """Traffic cone: dark square base, orange/red triangle, two white bands."""
    bx, by = view.at(z, u)
    hp = view.px(z, height)
    base = hp * 0.09
    draw.rectangle([bx - hp * 0.36, by - base, bx + hp * 0.36, by], fill=_mix(color, DARK, 0.35))
    half_bottom, half_top = hp * 0.28, hp * 0.05
    top = by - hp

    def half_at(y: float) -> float:  # half-width of the cone body at screen row y
        return half_top + (half_bottom - half_top) * (y - top) / (by - base - top)

    draw.polygon([(bx - half_bottom, by - base), (bx + half_bottom, by - base), (bx + half_top, top), (bx - half_top, top)], fill=color)
    for f0, f1 in ((0.3, 0.45), (0.6, 0.72)):
        ya, yb = top + (by - base - top) * f0, top + (by - base - top) * f1
        draw.polygon([(bx - half_at(ya), ya), (bx + half_at(ya), ya), (bx + half_at(yb), yb), (bx - half_at(yb), yb)], fill=WHITE)


def _draw_barrier(draw: ImageDraw.ImageDraw, view: _View, z: float, u: float, width: float, color: Color) -> None:
    """Barrier board with diagonal color/white stripes on two legs."""
    legs = (70, 70, 75)
    for s in (-1, 1):
        draw.polygon(_upright(view, z, u + s * width * 0.4 - 0.02, u + s * width * 0.4 + 0.02, 0.0, 0.3), fill=legs)
        draw.polygon(_upright(view, z, u + s * width * 0.4 - 0.09, u + s * width * 0.4 + 0.09, 0.0, 0.03), fill=legs)
    x0, y1 = view.at(z, u - width / 2, 0.22)
    x1, y0 = view.at(z, u + width / 2, 0.45)
    draw.rectangle([x0, y0, x1, y1], fill=WHITE)
    period = (y1 - y0) * 1.1
    slant = y1 - y0
    x = x0 - slant
    while x < x1:
        stripe = [(x, y1), (x + period / 2, y1), (x + period / 2 + slant, y0), (x + slant, y0)]
        pts = _stripe_clip(stripe, x0, y0, x1, y1)
        if len(pts) >= 3:
            draw.polygon(pts, fill=color)
        x += period


def _draw_chevron(draw: ImageDraw.ImageDraw, view: _View, z: float, u: float, width: float, color: Color, right: bool) -> None:
    """Chevron board: white arrow heads on a red/orange board, on legs."""
    for s in (-1, 1):
        draw.polygon(_upright(view, z, u + s * width * 0.35 - 0.02, u + s * width * 0.35 + 0.02, 0.0, 0.25), fill=(70, 70, 75))
    x0, y1 = view.at(z, u - width / 2, 0.2)
    x1, y0 = view.at(z, u + width / 2, 0.5)
    draw.rectangle([x0, y0, x1, y1], fill=color)
    hgt = y1 - y0
    n = max(2, int(round((x1 - x0) / (hgt * 0.75))))
    step = (x1 - x0) / n
    th = step * 0.35
    a = hgt * 0.35
    sign = 1 if right else -1
    for i in range(n):
        cx = x0 + step * (i + 0.5) + sign * a * 0.4
        pts = [(cx - sign * a, y0 + hgt * 0.12), (cx - sign * a + sign * th, y0 + hgt * 0.12), (cx + sign * th, y0 + hgt / 2),
               (cx - sign * a + sign * th, y1 - hgt * 0.12), (cx - sign * a, y1 - hgt * 0.12), (cx, y0 + hgt / 2)]
        draw.polygon(pts, fill=WHITE)


def _draw_warning_sign(draw: ImageDraw.ImageDraw, view: _View, z: float, u: float, size: float, diamond: bool, low: bool) -> None:
    """Roadwork sign: red-bordered white triangle or orange diamond, with a dark digging-worker glyph."""
    mount = 0.2 if low else 0.75
    if low:  # A-frame stand on the road
        for s in (-1, 1):
            draw.line([view.at(z, u + s * size * 0.3), view.at(z, u, mount)], fill=(70, 70, 75), width=max(1, int(view.px(z, 0.025))))
    else:
        _draw_pole(draw, view, z, u, mount)
    r = view.px(z, size * 0.5)
    cx, cy = view.at(z, u, mount + size * 0.5)
    if diamond:
        outer = [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
        inner = [(cx, cy - r * 0.85), (cx + r * 0.85, cy), (cx, cy + r * 0.85), (cx - r * 0.85, cy)]
        draw.polygon(outer, fill=DARK)
        draw.polygon(inner, fill=ORANGE)
    else:
        cy += r * 0.15
        outer = [(cx, cy - r * 1.1), (cx + r * 1.05, cy + r * 0.75), (cx - r * 1.05, cy + r * 0.75)]
        inner = [(cx, cy - r * 0.55), (cx + r * 0.6, cy + r * 0.5), (cx - r * 0.6, cy + r * 0.5)]
        draw.polygon(outer, fill=RED)
        draw.polygon(inner, fill=WHITE)
    g = r * 0.28  # glyph: a head, a bent body and a shovel
    draw.ellipse([cx - g * 0.5, cy - g * 1.3, cx + g * 0.1, cy - g * 0.7], fill=DARK)
    draw.line([(cx - g * 0.2, cy - g * 0.7), (cx + g * 0.3, cy + g * 0.3)], fill=DARK, width=max(1, int(g * 0.4)))
    draw.line([(cx + g * 0.3, cy + g * 0.3), (cx + g * 0.9, cy + g * 0.5)], fill=DARK, width=max(1, int(g * 0.25)))


def _draw_excavator(draw: ImageDraw.ImageDraw, view: _View, z: float, u: float, color: Color, facing: float) -> None:
    """Excavator-ish block: tracks, body, cab with window, boom and bucket."""
    draw.polygon(_upright(view, z, u - 0.45, u + 0.45, 0.0, 0.15), fill=DARK)
    draw.polygon(_upright(view, z, u - 0.4, u + 0.4, 0.15, 0.45), fill=color)
    draw.polygon(_upright(view, z, u - 0.35 * facing, u + 0.0 * facing, 0.45, 0.8), fill=color)
    draw.polygon(_upright(view, z, u - 0.3 * facing, u - 0.05 * facing, 0.52, 0.74), fill=(60, 75, 95))
    w = max(2, int(view.px(z, 0.07)))
    p0, p1, p2 = view.at(z, u + 0.2 * facing, 0.45), view.at(z, u + 0.55 * facing, 1.0), view.at(z, u + 0.85 * facing, 0.3)
    draw.line([p0, p1, p2], fill=_mix(color, DARK, 0.2), width=w)
    bx, by = p2
    b = view.px(z, 0.12)
    draw.polygon([(bx - b, by - b), (bx + b, by - b), (bx + b * 0.5, by + b), (bx - b * 0.8, by + b * 0.6)], fill=DARK)


def _sample_layout(rng: np.random.Generator) -> list[str]:
    """Which roadwork item groups (or their counterparts) a scene gets: 1-3 of them."""
    kinds = ["cones", "barrier", "sign", "chevron", "excavator"]
    n = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
    return [_pick(rng, kinds, [0.34, 0.26, 0.22, 0.1, 0.08]) for _ in range(n)]


def _sample_depth(rng: np.random.Generator) -> float:
    """Depth of a roadwork group (or counterpart): mostly near enough to be clearly visible, sometimes far."""
    return float(rng.uniform(1.25, 2.4) if rng.random() < 0.8 else rng.uniform(2.4, 4.0))


def _fit_z(view: _View, u: float, z: float, half: float) -> float:
    """Push an object at lateral u (half-width ``half``) back until it fits inside every frame's crop."""
    room = 0.8 * (view.w - view.vx if u >= 0 else view.vx)  # frames zoom in by up to ~20 %
    return max(z, (abs(u) + half) * view.road / room)


def _roadwork_color(rng: np.random.Generator) -> Color:
    return _jitter(rng, _pick(rng, [ORANGE, RED], [0.7, 0.3]), 10)


def _add_roadwork(items: list[Item], view: _View, rng: np.random.Generator, kind: str, lanes: int) -> None:
    """Add one group of roadwork objects on the road or at the kerb, mostly in the near half."""
    color = _roadwork_color(rng)
    z = _sample_depth(rng)
    u = float(rng.uniform(-0.9, 0.9))
    if kind == "cones":
        height = float(rng.uniform(0.36, 0.5))
        z = _fit_z(view, u, z, 0.2)
        for _ in range(int(rng.integers(1, 6))):
            items.append((z, lambda d, z=z, u=u, h=height, c=color: _draw_cone(d, view, z, u, h, c)))
            z += float(rng.uniform(0.4, 1.2))
            u += float(rng.normal(0, 0.05))
    elif kind == "barrier":
        width = float(rng.uniform(0.7, 1.0))
        z = _fit_z(view, u, z, width / 2)
        items.append((z, lambda d, z=z, u=u, w=width, c=color: _draw_barrier(d, view, z, u, w, c)))
        if rng.random() < 0.3:  # a second board continues the closure across the lane
            u2 = u - math.copysign(width * 1.05, u)
            items.append((z, lambda d, z=z, u=u2, w=width, c=color: _draw_barrier(d, view, z, u2, w, c)))
    elif kind == "sign":
        low = bool(rng.random() < 0.4)  # on an A-frame on the road, else on a pole at the kerb
        if not low:
            u = float(_pick(rng, [-1.12, 1.12]))
        diamond = bool(rng.random() < 0.35)
        size = float(rng.uniform(0.36, 0.5))
        z = _fit_z(view, u, z, size / 2)
        items.append((z, lambda d, z=z, u=u, s=size, di=diamond, lo=low: _draw_warning_sign(d, view, z, u, s, di, lo)))
    elif kind == "chevron":
        width = float(rng.uniform(0.7, 1.0))
        right = bool(rng.random() < 0.5)
        z = _fit_z(view, u, z, width / 2)
        items.append((z, lambda d, z=z, u=u, w=width, c=color, r=right: _draw_chevron(d, view, z, u, w, c, r)))
    else:
        u = float(_pick(rng, [-1.2, 1.2]))
        ecolor = _jitter(rng, _pick(rng, [YELLOW, ORANGE]), 10)
        facing = -math.copysign(1.0, u)
        z = _fit_z(view, u, max(z, 1.5), 0.45)
        items.append((z, lambda d, z=z, u=u, c=ecolor, f=facing: _draw_excavator(d, view, z, u, c, f)))
    if rng.random() < 0.2:  # something in front: a passing car or a pole partly hides the roadwork
        if rng.random() < 0.5:  # offset sideways so that part of the roadwork stays visible
            shift = float(rng.uniform(0.3, 0.5)) * float(_pick(rng, [-1, 1]))
            _add_car(items, view, rng, lanes, z * 0.85, u=u + shift)
        else:
            zp, up = z * 0.8, u + float(rng.uniform(-0.15, 0.15))
            items.append((zp, lambda d, z=zp, u=up: _draw_pole(d, view, z, u, 1.5)))


def _add_counterpart(
    items: list[Item], view: _View, rng: np.random.Generator, kind: str, lanes: int, sides: list[_Side]
) -> None:
    """Add the colour-matched ordinary-scene stand-in for a roadwork group (same colours, other shapes)."""
    color = _roadwork_color(rng)
    z = _sample_depth(rng)
    if kind == "cones":  # orange cones -> people in orange (often hi-vis) clothes
        for _ in range(int(rng.integers(1, 4))):
            u = float(_pick(rng, [-1, 1])) * float(rng.uniform(1.05, 1.4))
            hivis = bool(rng.random() < 0.6)
            zi = _fit_z(view, u, z, 0.1)
            items.append((zi, lambda d, z=zi, u=u, c=color, h=hivis: _draw_person(d, view, z, u, c, h)))
            z += float(rng.uniform(0.3, 1.0))
    elif kind == "barrier":  # striped board -> striped awning, or zebra crossing plus a coloured car
        if rng.random() < 0.6:
            side = _pick(rng, sides)
            z0 = float(rng.uniform(0.9, 2.0))
            items.append((50.0, lambda d, u=side.u, a=z0, c=color: _draw_awning_striped(d, view, u, a, a * 1.6, c)))
        else:
            items.append((50.0, lambda d, z=z: _draw_crossing(d, view, z)))
            _add_car(items, view, rng, lanes, z * 1.2, color=color, van=False)
    elif kind == "sign":  # warning triangle -> round red/white sign or orange square sign
        u = float(_pick(rng, [-1.12, 1.12]))
        size = float(rng.uniform(0.36, 0.5))
        z = _fit_z(view, u, z, size / 2)
        if rng.random() < 0.65:
            kind2 = _pick(rng, ["no_entry", "speed"])
            items.append((z, lambda d, z=z, u=u, s=size, k=kind2: _draw_round_sign(d, view, z, u, s, k)))
        else:
            items.append((z, lambda d, z=z, u=u, s=size: _draw_rect_sign(d, view, z, u, s, ORANGE)))
    elif kind == "chevron":  # red/orange board -> red/orange car with brake lights, or a red traffic light
        _add_car(items, view, rng, lanes, z, color=color, van=False)
        if rng.random() < 0.5:
            u = float(_pick(rng, [-1.15, 1.15]))
            z = _fit_z(view, u, z, 0.1)
            items.append((z, lambda d, z=z, u=u: _draw_traffic_light(d, view, z, u, 0)))
    else:  # excavator -> an orange/yellow van at the kerb
        u = float(_pick(rng, [-0.85, 0.85]))
        ecolor = _jitter(rng, _pick(rng, [YELLOW, ORANGE]), 10)
        _add_car(items, view, rng, lanes, _fit_z(view, u, max(z, 1.5), 0.4), color=ecolor, van=True, u=u)


def _draw_awning_striped(draw: ImageDraw.ImageDraw, view: _View, u: float, z0: float, z1: float, color: Color) -> None:
    """A striped awning on a facade, always with white stripes (the counterpart of a barrier board)."""
    lo, hi = 0.35, 0.6
    draw.polygon(_facade_quad(view, u, z0, z1, lo, hi), fill=color)
    n = 12
    zs = np.linspace(z0, z1, n + 1)
    for i in range(0, n, 2):
        draw.polygon(_facade_quad(view, u, zs[i], zs[i + 1], lo, hi), fill=WHITE)
