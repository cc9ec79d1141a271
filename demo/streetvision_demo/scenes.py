"""Deterministic procedural dashcam scenes: the pictures of the bundled demo dataset.

Each dashcam *sequence* is one random street scene (sky, road in perspective, buildings, trees, poles,
cars, people) drawn once on a 2x supersampled canvas; its frames are crops of that canvas with a little
forward motion (zoom about the vanishing point), lateral drift, exposure change and sensor noise, so
frames of a sequence are near-duplicates that must stay in one split.

Roadwork scenes contain cones, striped barriers, warning signs, chevron boards or an excavator. Each
roadwork group has a colour-matched *stand-in* that ordinary scenes draw instead (people in orange
hi-vis, red/white striped awnings, round red/white traffic signs, orange cars and vans), on top of
label-independent distractors (orange/red cars, orange facades, autumn trees, dusk skies, brake lights,
sodium lamps, zebra crossings). Colour statistics of the two classes therefore overlap and a classifier
has to learn shapes: tapered cones, diagonally striped boards, triangular signs.

Every random draw of sequence ``i`` comes from ``numpy.random.default_rng([seed, i])``: the same config
writes byte-identical files, raising ``num_sequences`` only appends sequences, and ``label_noise`` moves
frames between label folders without changing a pixel."""

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
Draw = ImageDraw.ImageDraw

ORANGE: Color = (240, 110, 25)
RED: Color = (205, 35, 35)
WHITE: Color = (238, 238, 232)
YELLOW: Color = (242, 196, 30)
DARK: Color = (28, 28, 30)


@dataclass(frozen=True)
class DemoRecord:
    """One generated JPEG; ``label`` is the published (possibly noise-flipped) label."""

    path: str  # relative to out_dir, POSIX separators, e.g. "roadwork/seq00012_f03.jpg"
    label: int  # 1 = roadwork, 0 = no roadwork
    group_id: str  # the dashcam sequence, e.g. "seq00012"
    source: str  # always "demo"


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
Item = tuple[float, Callable[[Draw], None]]


def _later(fn: Callable[..., None], *args: object) -> Callable[[Draw], None]:
    """Bind a draw function's arguments now; draw later, once the scene's items are sorted by depth."""
    return lambda draw: fn(draw, *args)


def generate_demo_dataset(
    out_dir: pathlib.Path,
    cfg: DemoConfig,
    label_names: tuple[str, str] = ("no_roadwork", "roadwork"),
) -> list[DemoRecord]:
    """Write JPEGs under out_dir/<label name>/ and return one record per file, in a stable order.

    Records come sequence by sequence, frame by frame. Files of the same name are overwritten; other
    files already in out_dir are left alone (and are not returned).
    """
    _validate(label_names)
    negative, positive = label_names
    out_dir = pathlib.Path(out_dir)
    for name in label_names:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    records: list[DemoRecord] = []
    for index in range(cfg.num_sequences):
        records.extend(_write_sequence(out_dir, cfg, (negative, positive), index))
    return records


def _validate(label_names: tuple[str, str]) -> None:
    # The config's own limits are DemoConfig's field constraints (checked when it is built); only the label
    # names, which come from data.label_names, are checked here as folder names.
    problems = []
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
    group_id = f"seq{index:05d}"
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
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


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
    sides = _draw_buildings(draw, view, rng, night)
    _add_background(items, view, rng, night, lanes, sides)
    # Roadwork groups and their colour-matched stand-ins come from the same layout draw, so the two
    # classes get about the same amount of orange, red and white.
    for kind, near in _sample_layout(rng):
        if roadwork:
            _add_roadwork(items, view, rng, kind, near, lanes)
        else:
            _add_stand_in(items, view, rng, kind, near, lanes, sides)
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


def _draw_sky(draw: Draw, view: _View, rng: np.random.Generator) -> bool:
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


def _draw_ground(draw: Draw, view: _View, rng: np.random.Generator) -> int:
    """Sidewalk, road, kerbs, lane markings, maybe a zebra crossing; returns lanes per direction."""
    sidewalk = _jitter(rng, _pick(rng, [(165, 160, 150), (140, 140, 140), (180, 170, 150)]), 10)
    draw.rectangle([0, view.horizon, view.w, view.h], fill=sidewalk)
    asphalt = _jitter(rng, (int(rng.uniform(65, 125)),) * 3, 6)
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


# ----------------------------------------------------------------------------------------------------
# Buildings


FACADES: list[Color] = [
    (200, 190, 170),
    (160, 160, 165),
    (225, 215, 190),
    (150, 90, 70),  # beige, grey, cream, brick
    (215, 120, 60),
    (190, 80, 50),
    (235, 225, 160),
    (120, 135, 150),  # orange, terracotta, yellow, slate
]


@dataclass(frozen=True)
class _Side:
    """A street side: the facade plane at lateral u (its sign gives the side)."""

    u: float


def _draw_buildings(draw: Draw, view: _View, rng: np.random.Generator, night: bool) -> list[_Side]:
    """Distant skyline and facades along both sides of the street, far segments first."""
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
        for z0, z1 in reversed(list(zip(bounds[:-1], bounds[1:]))):
            _draw_facade(draw, view, rng, side.u, z0, z1, night)
    return sides


def _facade_quad(view: _View, u: float, z0: float, z1: float, h0: float, h1: float) -> list[Point]:
    return [view.at(z0, u, h0), view.at(z1, u, h0), view.at(z1, u, h1), view.at(z0, u, h1)]


def _draw_facade(
    draw: Draw, view: _View, rng: np.random.Generator, u: float, z0: float, z1: float, night: bool
) -> None:
    """One building: a wall with a grid of windows, sometimes a shop awning."""
    height = float(rng.uniform(1.2, 4.0))
    wall = _jitter(rng, _pick(rng, FACADES), 12)
    if night:
        wall = _mix(wall, (0, 0, 0), 0.6)
    draw.polygon(_facade_quad(view, u, z0, z1, 0, height), fill=wall)
    glass = _jitter(rng, (60, 75, 95), 10)
    lit = (235, 200, 110)
    # Far facades are a few pixels wide: their windows would be sub-pixel, so skip them (speed).
    if abs(u) * view.road * (1 / z0 - 1 / z1) >= 6:
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
        color = _jitter(rng, _pick(rng, [ORANGE, RED, (40, 130, 70)]), 10)
        stripes = int(rng.integers(4, 9)) if rng.random() < 0.7 else 0
        a, b = z0 + (z1 - z0) * 0.1, z1 - (z1 - z0) * 0.1
        _draw_awning(draw, view, u, a, b, color, stripes, 0.55)


def _draw_awning(
    draw: Draw, view: _View, u: float, z0: float, z1: float, color: Color, stripes: int, top: float
) -> None:
    """Shop awning on a facade, plain or with white stripes running down it (vertical on screen)."""
    draw.polygon(_facade_quad(view, u, z0, z1, 0.35, top), fill=color)
    zs = np.linspace(z0, z1, 2 * stripes + 1)
    for i in range(0, 2 * stripes, 2):
        draw.polygon(_facade_quad(view, u, zs[i], zs[i + 1], 0.35, top), fill=WHITE)


# ----------------------------------------------------------------------------------------------------
# Everyday objects: label-independent distractors, and the stand-ins for roadwork in ordinary scenes

CAR_COLORS: list[Color] = [
    (235, 235, 235),
    (30, 30, 35),
    (150, 155, 160),
    (40, 70, 140),
    (200, 35, 35),
    (240, 120, 30),
    (90, 110, 90),
    (230, 200, 40),
]
SKINS: list[Color] = [(230, 190, 160), (170, 120, 90), (110, 75, 55)]
CLOTHES: list[Color] = [(40, 40, 45), (60, 80, 130), (150, 40, 40), (230, 110, 30), (200, 200, 195)]


def _upright(view: _View, z: float, u0: float, u1: float, h0: float, h1: float) -> list[Point]:
    """Screen quad of an upright rectangle facing the camera at depth z."""
    return [view.at(z, u0, h0), view.at(z, u1, h0), view.at(z, u1, h1), view.at(z, u0, h1)]


def _draw_car(draw: Draw, view: _View, z: float, u: float, color: Color, brake: bool, van: bool) -> None:
    """A car (or van) seen from behind: body, rear window, wheels, brake lights, plate."""
    half = 0.38 if van else 0.33
    body_top = 0.75 if van else 0.32
    draw.polygon(_upright(view, z, u - half * 1.05, u + half * 1.05, 0.0, 0.03), fill=(20, 20, 20))  # shadow
    for s in (-1, 1):
        draw.polygon(_upright(view, z, u + s * half * 0.62, u + s * half * 0.98, 0.0, 0.12), fill=DARK)
    draw.polygon(_upright(view, z, u - half, u + half, 0.07, body_top), fill=color)
    if van:  # the gap between the two rear doors
        gap = _upright(view, z, u - half * 0.05, u + half * 0.05, 0.1, body_top)
        draw.polygon(gap, fill=_mix(color, DARK, 0.4))
    else:
        cab = [
            view.at(z, u - half * 0.9, body_top),
            view.at(z, u + half * 0.9, body_top),
            view.at(z, u + half * 0.7, 0.5),
            view.at(z, u - half * 0.7, 0.5),
        ]
        draw.polygon(cab, fill=_mix(color, (0, 0, 0), 0.15))
        glass = [
            view.at(z, u - half * 0.8, body_top + 0.01),
            view.at(z, u + half * 0.8, body_top + 0.01),
            view.at(z, u + half * 0.64, 0.48),
            view.at(z, u - half * 0.64, 0.48),
        ]
        draw.polygon(glass, fill=(45, 55, 70))
    light = (255, 40, 30) if brake else (150, 25, 25)
    for s in (-1, 1):
        draw.polygon(_upright(view, z, u + s * half * 0.72, u + s * half * 0.95, 0.2, 0.27), fill=light)
    draw.polygon(_upright(view, z, u - 0.08, u + 0.08, 0.12, 0.18), fill=WHITE)


def _draw_person(
    draw: Draw,
    view: _View,
    z: float,
    u: float,
    clothes: Color,
    skin: Color,
    hivis: bool = False,
    k: float = 1.0,
) -> None:
    """A pedestrian about 0.6*k tall: legs, torso (maybe with a reflective stripe), arms, head."""
    legs = (45, 50, 70)
    for s in (-1, 1):
        draw.polygon(_upright(view, z, u + s * 0.01 * k, u + s * 0.05 * k, 0.0, 0.25 * k), fill=legs)
    draw.polygon(_upright(view, z, u - 0.075 * k, u + 0.075 * k, 0.24 * k, 0.5 * k), fill=clothes)
    for s in (-1, 1):
        draw.polygon(_upright(view, z, u + s * 0.075 * k, u + s * 0.1 * k, 0.28 * k, 0.49 * k), fill=clothes)
    if hivis:
        draw.polygon(_upright(view, z, u - 0.075 * k, u + 0.075 * k, 0.33 * k, 0.37 * k), fill=WHITE)
    cx, cy = view.at(z, u, 0.56 * k)
    r = view.px(z, 0.055 * k)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=skin)


def _draw_pole(draw: Draw, view: _View, z: float, u: float, top: float, color: Color = (95, 95, 100)) -> None:
    draw.polygon(_upright(view, z, u - 0.015, u + 0.015, 0.0, top), fill=color)


def _draw_lamp(draw: Draw, view: _View, z: float, u: float, glow: Color, night: bool) -> None:
    """Street lamp: tall pole, arm over the road, lamp head (sodium orange or white)."""
    _draw_pole(draw, view, z, u, 2.2)
    inward = -math.copysign(0.35, u)
    width = max(1, int(view.px(z, 0.025)))
    draw.line([view.at(z, u, 2.2), view.at(z, u + inward, 2.2)], fill=(95, 95, 100), width=width)
    cx, cy = view.at(z, u + inward, 2.15)
    r = view.px(z, 0.11 if night else 0.07)
    draw.ellipse([cx - r * 1.4, cy - r, cx + r * 1.4, cy + r], fill=glow)


def _draw_traffic_light(draw: Draw, view: _View, z: float, u: float, lit: int) -> None:
    """Pole with a dark box and three lamps; one of red/amber/green (0/1/2) is lit."""
    _draw_pole(draw, view, z, u, 0.9)
    draw.polygon(_upright(view, z, u - 0.07, u + 0.07, 0.9, 1.35), fill=(25, 25, 25))
    on = [(255, 40, 30), (255, 170, 20), (40, 220, 90)]
    off = [(80, 20, 20), (80, 60, 15), (20, 70, 35)]
    for i in range(3):
        cx, cy = view.at(z, u, 1.27 - i * 0.135)
        r = view.px(z, 0.045)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=on[i] if i == lit else off[i])


def _draw_round_sign(draw: Draw, view: _View, z: float, u: float, size: float, kind: str) -> None:
    """Round regulatory sign on a pole: "no_entry", "speed" (limit) or "blue" (mandatory direction)."""
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
            dx = cx + s * r * 0.28
            draw.rectangle([dx - r * 0.12, cy - r * 0.35, dx + r * 0.12, cy + r * 0.35], fill=DARK)
    else:
        draw.ellipse(box, fill=(30, 80, 170))
        draw.polygon([(cx, cy - r * 0.6), (cx + r * 0.4, cy), (cx - r * 0.4, cy)], fill=WHITE)
        draw.rectangle([cx - r * 0.12, cy, cx + r * 0.12, cy + r * 0.6], fill=WHITE)


def _draw_rect_sign(draw: Draw, view: _View, z: float, u: float, size: float, color: Color) -> None:
    """Upright rectangular sign or shop banner on a pole (not a diamond): dark border and a text bar."""
    _draw_pole(draw, view, z, u, 0.75)
    cx, cy = view.at(z, u, 0.75 + size * 0.45)
    a, b = view.px(z, size * 0.6), view.px(z, size * 0.45)
    draw.rectangle([cx - a, cy - b, cx + a, cy + b], fill=DARK)
    draw.rectangle([cx - a * 0.88, cy - b * 0.84, cx + a * 0.88, cy + b * 0.84], fill=color)
    draw.rectangle([cx - a * 0.6, cy - b * 0.15, cx + a * 0.6, cy + b * 0.15], fill=DARK)


def _draw_tree(draw: Draw, view: _View, z: float, u: float, leaves: Color, size: float) -> None:
    """Trunk and a two-tone round canopy."""
    draw.polygon(_upright(view, z, u - 0.03, u + 0.03, 0.0, 0.8 * size), fill=(90, 65, 45))
    cx, cy = view.at(z, u, 1.05 * size)
    r = view.px(z, 0.4 * size)
    draw.ellipse([cx - r, cy - r * 1.1, cx + r, cy + r * 0.9], fill=leaves)
    hx, hy, r2 = cx - r * 0.3, cy - r * 0.45, r * 0.6
    draw.ellipse([hx - r2, hy - r2, hx + r2, hy + r2], fill=_mix(leaves, WHITE, 0.12))


def _draw_crossing(draw: Draw, view: _View, z: float) -> None:
    """Zebra crossing: white stripes across the road (stripes that are *not* roadwork)."""
    u = -0.95
    while u < 0.95:
        draw.polygon(_ground_quad(view, z, z + 0.35, u, u + 0.11), fill=WHITE)
        u += 0.22


def _add_background(
    items: list[Item], view: _View, rng: np.random.Generator, night: bool, lanes: int, sides: list[_Side]
) -> None:
    """Label-independent objects: trees, lamps, traffic lights, signs, cars, pedestrians."""
    for side in sides:
        s = math.copysign(1.0, side.u)
        if rng.random() < 0.6:
            leaves = _pick(
                rng,
                [(60, 120, 50), (40, 95, 45), (90, 140, 60), (210, 110, 30), (180, 60, 30)],
                [0.3, 0.25, 0.2, 0.15, 0.1],
            )  # autumn orange/red trees too
            size = float(rng.uniform(0.9, 1.5))
            z = float(rng.uniform(1.0, 3.0))
            for _ in range(int(rng.integers(1, 4))):
                u = s * float(rng.uniform(1.2, 1.45))
                col = _jitter(rng, leaves, 12)
                items.append((z, _later(_draw_tree, view, z, u, col, size)))
                z += float(rng.uniform(1.0, 3.0))
        if rng.random() < 0.5:
            glow = _pick(rng, [(255, 160, 50), (255, 245, 210)])  # sodium orange or white
            z = float(rng.uniform(1.2, 3.0))
            for _ in range(int(rng.integers(1, 4))):
                items.append((z, _later(_draw_lamp, view, z, s * 1.12, glow, night)))
                z *= float(rng.uniform(1.6, 2.4))
    if rng.random() < 0.3:
        z, u = float(rng.uniform(1.5, 4.0)), float(_pick(rng, [-1.15, 1.15]))
        lit = int(rng.choice(3, p=[0.5, 0.2, 0.3]))
        items.append((z, _later(_draw_traffic_light, view, z, u, lit)))
    if rng.random() < 0.3:
        z, u = float(rng.uniform(1.3, 4.0)), float(_pick(rng, [-1.15, 1.15]))
        kind = _pick(rng, ["no_entry", "speed", "blue"])
        items.append((z, _later(_draw_round_sign, view, z, u, 0.3, kind)))
    for _ in range(int(rng.integers(0, 3))):
        _add_car(items, view, rng, lanes, float(rng.uniform(1.3, 6.0)))
    for _ in range(int(rng.integers(0, 3))):
        z = float(rng.uniform(1.3, 4.5))
        u = float(_pick(rng, [-1, 1])) * float(rng.uniform(1.1, 1.45))
        clothes = _jitter(rng, _pick(rng, CLOTHES))
        skin = _pick(rng, SKINS)
        items.append((z, _later(_draw_person, view, z, u, clothes, skin)))


def _add_car(
    items: list[Item],
    view: _View,
    rng: np.random.Generator,
    lanes: int,
    z: float,
    color: Color | None = None,
    van: bool | None = None,
    u: float | None = None,
) -> None:
    """Add a car at depth z; lane, colour and body type are random unless given."""
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
    items.append((z, _later(_draw_car, view, z, u, color, brake, van)))


# ----------------------------------------------------------------------------------------------------
# Roadwork objects


def _clip_to_box(poly: list[Point], x0: float, y0: float, x1: float, y1: float) -> list[Point]:
    """Clip a convex polygon to an axis-aligned box (Sutherland-Hodgman), for stripes on a board."""

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


def _draw_cone(draw: Draw, view: _View, z: float, u: float, height: float, color: Color) -> None:
    """Traffic cone: dark square base, orange/red tapered body, two white bands."""
    bx, by = view.at(z, u)
    hp = view.px(z, height)
    base = hp * 0.09
    draw.rectangle([bx - hp * 0.36, by - base, bx + hp * 0.36, by], fill=_mix(color, DARK, 0.35))
    bottom, top = by - base, by - hp
    half_bottom, half_top = hp * 0.28, hp * 0.05

    def band(f0: float, f1: float) -> list[Point]:  # the body between fractions f0 < f1 of its height
        ya, yb = top + (bottom - top) * f0, top + (bottom - top) * f1
        wa = half_top + (half_bottom - half_top) * f0
        wb = half_top + (half_bottom - half_top) * f1
        return [(bx - wa, ya), (bx + wa, ya), (bx + wb, yb), (bx - wb, yb)]

    draw.polygon(band(0.0, 1.0), fill=color)
    draw.polygon(band(0.3, 0.45), fill=WHITE)
    draw.polygon(band(0.6, 0.72), fill=WHITE)


def _draw_barrier(draw: Draw, view: _View, z: float, u: float, width: float, color: Color) -> None:
    """Barrier board with diagonal colour/white stripes, on two legs with feet."""
    legs = (70, 70, 75)
    for s in (-1, 1):
        leg = u + s * width * 0.4
        draw.polygon(_upright(view, z, leg - 0.02, leg + 0.02, 0.0, 0.3), fill=legs)
        draw.polygon(_upright(view, z, leg - 0.09, leg + 0.09, 0.0, 0.03), fill=legs)
    x0, y1 = view.at(z, u - width / 2, 0.22)
    x1, y0 = view.at(z, u + width / 2, 0.22 + 0.3 * width)
    draw.rectangle([x0, y0, x1, y1], fill=WHITE)
    slant = y1 - y0  # 45-degree stripes, narrow enough that one 8 px patch at 64 px sees a stripe pair
    period = slant * 0.6
    x = x0 - slant
    while x < x1:
        stripe = [(x, y1), (x + period / 2, y1), (x + period / 2 + slant, y0), (x + slant, y0)]
        pts = _clip_to_box(stripe, x0, y0, x1, y1)
        if len(pts) >= 3:
            draw.polygon(pts, fill=color)
        x += period


def _draw_chevron(draw: Draw, view: _View, z: float, u: float, width: float, color: Color, right: bool) -> None:
    """Chevron board: white arrow heads on a red/orange board, on two legs."""
    for s in (-1, 1):
        leg = u + s * width * 0.35
        draw.polygon(_upright(view, z, leg - 0.02, leg + 0.02, 0.0, 0.25), fill=(70, 70, 75))
    x0, y1 = view.at(z, u - width / 2, 0.2)
    x1, y0 = view.at(z, u + width / 2, 0.5)
    draw.rectangle([x0, y0, x1, y1], fill=color)
    hgt = y1 - y0
    n = max(2, int(round((x1 - x0) / (hgt * 0.75))))
    step = (x1 - x0) / n
    th, a = step * 0.35, hgt * 0.35  # stroke thickness and arrow depth
    sign = 1 if right else -1
    top, mid, bottom = y0 + hgt * 0.12, y0 + hgt / 2, y1 - hgt * 0.12
    for i in range(n):
        cx = x0 + step * (i + 0.5) + sign * a * 0.4
        back, front = cx - sign * a, cx - sign * a + sign * th
        arrow = [(back, top), (front, top), (cx + sign * th, mid), (front, bottom), (back, bottom), (cx, mid)]
        draw.polygon(arrow, fill=WHITE)


def _draw_warning_sign(draw: Draw, view: _View, z: float, u: float, size: float, diamond: bool, low: bool) -> None:
    """Roadwork sign: red-bordered white triangle or orange diamond, with a dark digging-worker glyph."""
    mount = 0.2 if low else 0.75
    if low:  # on an A-frame stand on the road
        width = max(1, int(view.px(z, 0.025)))
        for s in (-1, 1):
            draw.line([view.at(z, u + s * size * 0.3), view.at(z, u, mount)], fill=(70, 70, 75), width=width)
    else:
        _draw_pole(draw, view, z, u, mount)
    r = view.px(z, size * 0.5)
    cx, cy = view.at(z, u, mount + size * 0.5)
    if diamond:
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=DARK)
        ri = r * 0.85
        draw.polygon([(cx, cy - ri), (cx + ri, cy), (cx, cy + ri), (cx - ri, cy)], fill=ORANGE)
    else:
        cy += r * 0.15
        for apex, half, base, fill in ((1.1, 1.05, 0.75, RED), (0.55, 0.6, 0.5, WHITE)):  # border, then face
            y = cy + base * r
            draw.polygon([(cx, cy - apex * r), (cx + half * r, y), (cx - half * r, y)], fill)
    g = r * 0.28  # glyph: a head, a bent body and a shovel
    draw.ellipse([cx - g * 0.5, cy - g * 1.3, cx + g * 0.1, cy - g * 0.7], fill=DARK)
    draw.line([(cx - g * 0.2, cy - g * 0.7), (cx + g * 0.3, cy + g * 0.3)], DARK, max(1, int(g * 0.4)))
    draw.line([(cx + g * 0.3, cy + g * 0.3), (cx + g * 0.9, cy + g * 0.5)], DARK, max(1, int(g * 0.25)))


def _draw_excavator(draw: Draw, view: _View, z: float, u: float, color: Color, facing: float) -> None:
    """Excavator-ish block: tracks, body, cab with window, boom and bucket (facing is +-1)."""
    draw.polygon(_upright(view, z, u - 0.45, u + 0.45, 0.0, 0.15), fill=DARK)
    draw.polygon(_upright(view, z, u - 0.4, u + 0.4, 0.15, 0.45), fill=color)
    draw.polygon(_upright(view, z, u - 0.35 * facing, u, 0.45, 0.8), fill=color)
    draw.polygon(_upright(view, z, u - 0.3 * facing, u - 0.05 * facing, 0.52, 0.74), fill=(60, 75, 95))
    boom = [view.at(z, u + f * facing, h) for f, h in ((0.2, 0.45), (0.55, 1.0), (0.85, 0.3))]
    draw.line(boom, fill=_mix(color, DARK, 0.2), width=max(2, int(view.px(z, 0.07))))
    bx, by = boom[-1]
    b = view.px(z, 0.12)
    bucket = [(bx - b, by - b), (bx + b, by - b), (bx + b * 0.5, by + b), (bx - b * 0.8, by + b * 0.6)]
    draw.polygon(bucket, DARK)


# ----------------------------------------------------------------------------------------------------
# Layout: roadwork groups, or their colour-matched stand-ins


def _sample_layout(rng: np.random.Generator) -> list[tuple[str, bool]]:
    """Which roadwork groups (or their stand-ins) a scene gets, as (kind, near).

    A worksite has one main group on the road near the camera (cones, barrier or chevron board) and up
    to two more of any kind; warning signs and excavators only come with a main group, as in real sites.
    The main group is what makes the task learnable for a small model trained briefly from scratch.
    """
    main = _pick(rng, ["cones", "barrier", "chevron"], [0.5, 0.4, 0.1])
    n_extra = int(rng.choice([0, 1, 2], p=[0.05, 0.55, 0.4]))
    kinds, weights = ["cones", "barrier", "sign", "chevron", "excavator"], [0.25, 0.2, 0.3, 0.1, 0.15]
    return [(main, True)] + [(_pick(rng, kinds, weights), False) for _ in range(n_extra)]


def _sample_depth(rng: np.random.Generator, near: bool) -> float:
    """Depth of a group: near for the main group, else mid-distance or sometimes far (small)."""
    if near:
        return float(rng.uniform(1.15, 1.8))
    return float(rng.uniform(1.3, 2.6) if rng.random() < 0.75 else rng.uniform(2.6, 4.0))


def _fit_z(view: _View, u: float, z: float, half: float) -> float:
    """Push an object at lateral u (half-width ``half``) back until it fits inside every frame's crop."""
    room = 0.8 * (view.w - view.vx if u >= 0 else view.vx)  # frames zoom in by up to ~20 %
    return max(z, (abs(u) + half) * view.road / room)


def _roadwork_color(rng: np.random.Generator) -> Color:
    return _jitter(rng, _pick(rng, [ORANGE, RED], [0.7, 0.3]), 10)


def _add_roadwork(items: list[Item], view: _View, rng: np.random.Generator, kind: str, near: bool, lanes: int) -> None:
    """Add one group of roadwork objects, on the road or at the kerb."""
    color = _roadwork_color(rng)
    z = _sample_depth(rng, near)
    u = float(rng.uniform(-0.9, 0.9))
    # The main group is drawn larger than life (a cone as tall as a car) so that it stays clearly visible
    # once the frame is squeezed to 64x64; the extra groups keep realistic, often small, sizes.
    big = 1.5 if near else 1.0
    if kind == "cones":  # a line of cones along the road
        height = float(rng.uniform(0.36, 0.5)) * big
        z = _fit_z(view, u, z, 0.2)
        for _ in range(int(rng.integers(3 if near else 1, 8))):
            items.append((z, _later(_draw_cone, view, z, u, height, color)))
            z += float(rng.uniform(0.4, 1.2))
            u += float(rng.normal(0, 0.05))
    elif kind == "barrier":
        width = float(rng.uniform(0.7, 1.0)) * big
        z = _fit_z(view, u, z, width / 2)
        items.append((z, _later(_draw_barrier, view, z, u, width, color)))
        if rng.random() < (0.5 if near else 0.25):  # a second board continues the closure across the lane
            u2 = u - math.copysign(width * 1.05, u)
            items.append((z, _later(_draw_barrier, view, z, u2, width, color)))
    elif kind == "sign":
        low = bool(rng.random() < 0.4)  # on an A-frame on the road, else on a pole at the kerb
        if not low:
            u = float(_pick(rng, [-1.12, 1.12]))
        diamond = bool(rng.random() < 0.35)
        size = float(rng.uniform(0.36, 0.5))
        z = _fit_z(view, u, z, size / 2)
        items.append((z, _later(_draw_warning_sign, view, z, u, size, diamond, low)))
    elif kind == "chevron":
        width = float(rng.uniform(0.7, 1.0)) * big
        right = bool(rng.random() < 0.5)
        z = _fit_z(view, u, z, width / 2)
        items.append((z, _later(_draw_chevron, view, z, u, width, color, right)))
    else:  # an excavator beside the road, boom towards it
        u = float(_pick(rng, [-1.2, 1.2]))
        ecolor = _jitter(rng, _pick(rng, [YELLOW, ORANGE]), 10)
        facing = -math.copysign(1.0, u)
        z = _fit_z(view, u, max(z, 1.5), 0.45)
        items.append((z, _later(_draw_excavator, view, z, u, ecolor, facing)))
    if rng.random() < 0.2:  # something in front: a passing car or a pole partly hides the roadwork
        if rng.random() < 0.5:  # offset sideways so that part of the roadwork stays visible
            shift = float(rng.uniform(0.3, 0.5)) * float(_pick(rng, [-1, 1]))
            _add_car(items, view, rng, lanes, z * 0.85, u=u + shift)
        else:
            zp, up = z * 0.8, u + float(rng.uniform(-0.15, 0.15))
            items.append((zp, _later(_draw_pole, view, zp, up, 1.5)))


def _add_stand_in(
    items: list[Item],
    view: _View,
    rng: np.random.Generator,
    kind: str,
    near: bool,
    lanes: int,
    sides: list[_Side],
) -> None:
    """Add the colour-matched stand-in of a roadwork group to an ordinary scene: same colours, other shapes.

    The stand-in of a near main group is drawn larger too, so that the amount of orange, red and white per
    image stays similar across the classes.
    """
    color = _roadwork_color(rng)
    z = _sample_depth(rng, near)
    big = 1.4 if near else 1.0
    if kind == "cones":  # a line of orange cones -> people in orange (often hi-vis) clothes
        for _ in range(int(rng.integers(2 if near else 1, 6))):
            u = float(_pick(rng, [-1, 1])) * float(rng.uniform(1.05, 1.4))
            hivis = bool(rng.random() < 0.6)
            skin = _pick(rng, SKINS)
            zi = _fit_z(view, u, z, 0.1)
            items.append((zi, _later(_draw_person, view, zi, u, color, skin, hivis, big)))
            z += float(rng.uniform(0.3, 1.0))
        if near and rng.random() < 0.5:  # white stripes on the ground, like the cones' bands
            items.append((50.0, _later(_draw_crossing, view, z)))
    elif kind == "barrier":  # striped board -> striped awning, or zebra crossing plus a coloured car
        if rng.random() < 0.6:
            u = _pick(rng, sides).u
            z0 = float(rng.uniform(0.9, 2.0))
            z1 = z0 * (2.1 if near else 1.6)
            items.append((50.0, _later(_draw_awning, view, u, z0, z1, color, 6, 0.65)))
        else:
            items.append((50.0, _later(_draw_crossing, view, z)))
            _add_car(items, view, rng, lanes, z * 1.2, color=color, van=False)
        if near and rng.random() < 0.5:
            _add_car(items, view, rng, lanes, float(rng.uniform(1.3, 2.5)), color=_roadwork_color(rng))
    elif kind == "sign":  # warning triangle -> round red/white sign, or orange rectangular sign
        u = float(_pick(rng, [-1.12, 1.12]))
        size = float(rng.uniform(0.36, 0.5))
        z = _fit_z(view, u, z, size / 2)
        if rng.random() < 0.65:
            sign = _pick(rng, ["no_entry", "speed"])
            items.append((z, _later(_draw_round_sign, view, z, u, size, sign)))
        else:
            items.append((z, _later(_draw_rect_sign, view, z, u, size, ORANGE)))
    elif kind == "chevron":  # red/orange board -> red/orange car with brake lights, maybe a red light
        _add_car(items, view, rng, lanes, z, color=color, van=bool(near and rng.random() < 0.5))
        if rng.random() < 0.5:
            u = float(_pick(rng, [-1.15, 1.15]))
            z = _fit_z(view, u, z, 0.1)
            items.append((z, _later(_draw_traffic_light, view, z, u, 0)))
        if near and rng.random() < 0.5:
            items.append((50.0, _later(_draw_crossing, view, z)))
    else:  # excavator -> an orange/yellow van at the kerb
        u = float(_pick(rng, [-0.85, 0.85]))
        vcolor = _jitter(rng, _pick(rng, [YELLOW, ORANGE]), 10)
        _add_car(items, view, rng, lanes, _fit_z(view, u, max(z, 1.5), 0.4), color=vcolor, van=True, u=u)
