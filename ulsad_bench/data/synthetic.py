"""The built-in synthetic dataset: a deterministic generator writing real dataset layouts.

Two categories, written once into a cache folder and then read by the same loader code
(:mod:`ulsad_bench.data.folder`) as the real datasets:

``texture`` (MVTec AD layout)
    A woven texture with per-image phase and pixel noise. Structural defects: ``scratch``,
    ``hole``, ``stain``, ``crack``; masks in ``ground_truth/<defect>/<stem>_mask.png``.

``pinbox`` (MVTec LOCO layout, like its ``pushpins`` category)
    A box of 2 x 3 compartments; every compartment holds exactly one pin, and all pins of a
    row share one colour, red in one row and blue in the other (which row is red varies from
    image to image, so no single position has a fixed colour). Rendering is noise-free and pins keep a clearance of one
    patch (``resolution // 16`` pixels) from every wall and from each other, so every local
    patch of a logical anomaly also occurs in normal images; only the global arrangement is
    wrong. Logical anomalies: ``missing`` (an empty compartment; mask: the compartment),
    ``extra`` (two pins in one compartment; mask: the extra pin) and ``swapped`` (a top and a
    bottom pin exchange colours; two mask files, one per pin). Structural anomalies:
    ``scratch``, ``hole``, ``stain``, ``crack``, on a pin or on the box floor. Has a
    ``validation/good`` split; masks in ``ground_truth/<kind>/<stem>/000.png, 001.png``, each
    mask file with its defect type's pixel value, listed with a saturation threshold in
    ``defects_config.json`` (MVTec LOCO's format; :data:`PINBOX_DEFECT_TYPES`).

Every defect mask is exactly the set of pixels the defect changed (tests check this).
``render_texture_sample`` and ``render_pinbox_sample`` return the clean image next to the
defective one so that claim can be verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = ("texture", "pinbox")
TEXTURE_DEFECTS = ("scratch", "hole", "stain", "crack")
PINBOX_LOGICAL = ("missing", "extra", "swapped")
PINBOX_STRUCTURAL = ("scratch", "hole", "stain", "crack")

_MANIFEST = "synthetic_manifest.json"
GENERATOR_VERSION = 4  # bump when what is written changes, so cached copies are regenerated
#: pinbox's ``defects_config.json`` (MVTec LOCO's format, for sPRO): mask pixel value and saturation
#: threshold per defect type. ``missing``: half an empty compartment is enough (relative 0.5), as
#: LOCO saturates missing objects early; ``extra``: a pin's worth of pixels (absolute, set from the
#: resolution when written); the rest: the whole defect (relative 1.0), as LOCO's structural defects.
PINBOX_DEFECT_TYPES = {
    "missing": (1, 0.5, True),
    "extra": (2, None, False),
    "swapped": (3, 1.0, True),
    "scratch": (4, 1.0, True),
    "hole": (5, 1.0, True),
    "stain": (6, 1.0, True),
    "crack": (7, 1.0, True),
}


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes of the synthetic dataset. Everything is drawn from ``seed``."""

    resolution: int = 128
    n_train: int = 40
    n_validation: int = 10
    n_test_good: int = 12
    n_per_defect: int = 4
    pin_jitter: float = 1.0  # pinbox: how far pins stray from compartment centres (1 = whole free range)
    seed: int = 0

    def digest(self) -> str:
        """Short hash naming the folder this spec is written to."""
        payload = {**asdict(self), "generator_version": GENERATOR_VERSION}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class Rendered:
    """A rendered image, the same image without its anomaly, and the anomaly's masks."""

    image: np.ndarray  # uint8 [H, W, 3]
    clean: np.ndarray  # uint8 [H, W, 3]
    masks: list[np.ndarray]  # bool [H, W] each; empty for normal images
    defect: str


# ----------------------------------------------------------------------------- drawing helpers


def _shape_mask(resolution: int, draw_fn) -> np.ndarray:
    canvas = Image.new("L", (resolution, resolution), 0)
    draw_fn(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 0


def _paint(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], alpha: float = 1.0) -> None:
    blended = (1 - alpha) * image[mask].astype(np.float64) + alpha * np.asarray(color, dtype=np.float64)
    image[mask] = np.clip(np.round(blended), 0, 255).astype(np.uint8)


def _scratch(rng: np.random.Generator, resolution: int, center: tuple[float, float]) -> np.ndarray:
    angle = rng.uniform(0, np.pi)
    half = rng.uniform(resolution / 8, resolution / 5)
    dx, dy = half * np.cos(angle), half * np.sin(angle)
    cx, cy = center
    width = int(rng.integers(1, 3))
    return _shape_mask(resolution, lambda d: d.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=width))


def _hole(rng: np.random.Generator, resolution: int, center: tuple[float, float]) -> np.ndarray:
    radius = rng.uniform(resolution / 28, resolution / 16)
    cx, cy = center
    return _shape_mask(resolution, lambda d: d.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255))


def _stain(rng: np.random.Generator, resolution: int, center: tuple[float, float]) -> np.ndarray:
    rx, ry = rng.uniform(resolution / 20, resolution / 10, size=2)
    cx, cy = center
    return _shape_mask(resolution, lambda d: d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255))


def _crack(rng: np.random.Generator, resolution: int, center: tuple[float, float]) -> np.ndarray:
    points = [center]
    heading = rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(5, 9))):
        heading += rng.normal(0, 0.6)
        step = rng.uniform(resolution / 40, resolution / 20)
        x, y = points[-1]
        points.append((x + step * np.cos(heading), y + step * np.sin(heading)))
    return _shape_mask(resolution, lambda d: d.line(points, fill=255, width=2))


_STRUCTURAL_SHAPES = {"scratch": _scratch, "hole": _hole, "stain": _stain, "crack": _crack}
# Defect colours differ strongly from every colour of the clean renderings (checked by tests),
# so every pixel of a defect's mask changes.
_STRUCTURAL_COLORS = {
    "scratch": (250, 250, 245),
    "hole": (12, 10, 8),
    "stain": (40, 165, 60),
    "crack": (25, 25, 25),
}


# ----------------------------------------------------------------------------- texture


def _texture_image(rng: np.random.Generator, resolution: int) -> np.ndarray:
    """Woven texture: blocks of horizontal / vertical threads, random phase, pixel noise."""
    period = max(4, resolution // 8)
    ox, oy = rng.integers(0, period * 2, size=2)
    yy, xx = np.mgrid[0:resolution, 0:resolution]
    xx, yy = xx + ox, yy + oy
    block = ((xx // period) + (yy // period)) % 2
    thread = np.where(block == 0, np.sin(2 * np.pi * yy / (period / 2)), np.sin(2 * np.pi * xx / (period / 2)))
    base = np.array([150.0, 120.0, 90.0])
    image = base[None, None, :] + 25.0 * thread[..., None] + rng.normal(0, 3.0, size=(resolution, resolution, 1))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def render_texture_sample(rng: np.random.Generator, resolution: int, defect: str) -> Rendered:
    """One ``texture`` image; ``defect`` is ``good`` or one of :data:`TEXTURE_DEFECTS`."""
    clean = _texture_image(rng, resolution)
    image = clean.copy()
    if defect == "good":
        return Rendered(image, clean, [], defect)
    margin = resolution / 6
    center = tuple(rng.uniform(margin, resolution - margin, size=2))
    mask = _STRUCTURAL_SHAPES[defect](rng, resolution, center)
    alpha = 0.75 if defect == "stain" else 1.0
    _paint(image, mask, _STRUCTURAL_COLORS[defect], alpha)
    return Rendered(image, clean, [mask], defect)


# ----------------------------------------------------------------------------- pinbox


@dataclass(frozen=True)
class PinboxGeometry:
    """Pixel geometry of the ``pinbox`` scene at one resolution."""

    resolution: int
    pin_jitter: float = 1.0

    @property
    def patch(self) -> int:
        """Clearance kept around pins; also the patch size of the 'logical' property."""
        return max(4, self.resolution // 16)

    @property
    def wall(self) -> int:
        return max(2, self.resolution // 64)

    @property
    def radius(self) -> int:
        return max(3, self.resolution // 20)

    def compartments(self) -> list[tuple[int, int, int, int]]:
        """Inner rectangles (x0, y0, x1, y1), inclusive, row-major: 3 top, then 3 bottom."""
        m, w = self.patch, self.wall
        inner0, inner1 = m + w, self.resolution - m - w - 1
        span = inner1 - inner0 + 1
        col_w = (span - 2 * w) // 3
        row_h = (span - w) // 2
        boxes = []
        for row in range(2):
            for col in range(3):
                x0 = inner0 + col * (col_w + w)
                y0 = inner0 + row * (row_h + w)
                boxes.append((x0, y0, x0 + col_w - 1, y0 + row_h - 1))
        return boxes

    def pin_range(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """Range of integer pin centres keeping the clearance from the walls."""
        x0, y0, x1, y1 = box
        c = self.radius + self.patch
        lo_x, hi_x, lo_y, hi_y = x0 + c, x1 - c, y0 + c, y1 - c
        if lo_x > hi_x or lo_y > hi_y:
            raise ValueError(f"pinbox resolution {self.resolution} is too small; use at least 64")
        return lo_x, hi_x, lo_y, hi_y


_FLOOR = (215, 200, 165)
_WALL = (80, 55, 30)
_OUTSIDE = (95, 95, 105)
_RED = (210, 45, 45)
_BLUE = (45, 75, 205)


def _draw_box(geometry: PinboxGeometry) -> np.ndarray:
    r = geometry.resolution
    image = np.empty((r, r, 3), dtype=np.uint8)
    image[:] = _WALL
    m = geometry.patch
    image[:m, :] = _OUTSIDE
    image[-m:, :] = _OUTSIDE
    image[:, :m] = _OUTSIDE
    image[:, -m:] = _OUTSIDE
    for x0, y0, x1, y1 in geometry.compartments():
        image[y0 : y1 + 1, x0 : x1 + 1] = _FLOOR
    return image


def _pin_mask(geometry: PinboxGeometry, center: tuple[int, int]) -> np.ndarray:
    cx, cy = center
    rad = geometry.radius
    yy, xx = np.mgrid[0 : geometry.resolution, 0 : geometry.resolution]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= rad * rad


def _random_pin(rng: np.random.Generator, geometry: PinboxGeometry, box) -> tuple[int, int]:
    """A pin around the compartment's centre, within ``pin_jitter`` of the free range."""
    lo_x, hi_x, lo_y, hi_y = geometry.pin_range(box)
    cx, cy = (lo_x + hi_x) // 2, (lo_y + hi_y) // 2
    jx, jy = round(geometry.pin_jitter * (hi_x - lo_x) / 2), round(geometry.pin_jitter * (hi_y - lo_y) / 2)
    return int(rng.integers(cx - jx, cx + jx + 1)), int(rng.integers(cy - jy, cy + jy + 1))


def _scene(geometry: PinboxGeometry, pins: list[tuple[tuple[int, int], tuple[int, int, int]]]) -> np.ndarray:
    image = _draw_box(geometry)
    for center, color in pins:
        image[_pin_mask(geometry, center)] = color
    return image


def render_pinbox_sample(rng: np.random.Generator, resolution: int, defect: str, pin_jitter: float = 1.0) -> Rendered:
    """One ``pinbox`` image; ``defect`` is ``good``, a logical or a structural defect name."""
    geometry = PinboxGeometry(resolution, pin_jitter)
    boxes = geometry.compartments()
    top_color, bottom_color = (_RED, _BLUE) if rng.random() < 0.5 else (_BLUE, _RED)
    pins = [(_random_pin(rng, geometry, box), top_color if i < 3 else bottom_color) for i, box in enumerate(boxes)]
    clean = _scene(geometry, pins)
    if defect == "good":
        return Rendered(clean.copy(), clean, [], defect)

    if defect == "missing":
        index = int(rng.integers(0, 6))
        x0, y0, x1, y1 = boxes[index]
        image = _scene(geometry, [p for i, p in enumerate(pins) if i != index])
        mask = np.zeros((resolution, resolution), dtype=bool)
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
        return Rendered(image, clean, [mask], defect)

    if defect == "extra":
        index = int(rng.integers(0, 6))
        lo_x, hi_x, lo_y, hi_y = geometry.pin_range(boxes[index])
        gap = 2 * geometry.radius + geometry.patch  # centre distance keeping one patch between pins
        if hi_y - lo_y < gap:
            raise ValueError(f"pinbox resolution {resolution} leaves no room for an extra pin")
        top_y = int(rng.integers(lo_y, hi_y - gap + 1))
        first = (int(rng.integers(lo_x, hi_x + 1)), top_y)
        second = (int(rng.integers(lo_x, hi_x + 1)), int(rng.integers(top_y + gap, hi_y + 1)))
        color = pins[index][1]
        moved = [p if i != index else (first, color) for i, p in enumerate(pins)]
        base = _scene(geometry, moved)  # the normal image with the pin where the first one sits
        image = _scene(geometry, [*moved, (second, color)])
        return Rendered(image, base, [_pin_mask(geometry, second)], defect)

    if defect == "swapped":
        top, bottom = int(rng.integers(0, 3)), int(rng.integers(3, 6))
        swapped = list(pins)
        swapped[top] = (pins[top][0], bottom_color)
        swapped[bottom] = (pins[bottom][0], top_color)
        image = _scene(geometry, swapped)
        masks = [_pin_mask(geometry, pins[top][0]), _pin_mask(geometry, pins[bottom][0])]
        return Rendered(image, clean, masks, defect)

    # structural: on a pin half of the time, else on the box floor
    if rng.random() < 0.5:
        center = pins[int(rng.integers(0, 6))][0]
    else:
        x0, y0, x1, y1 = boxes[int(rng.integers(0, 6))]
        center = (int(rng.integers(x0, x1 + 1)), int(rng.integers(y0, y1 + 1)))
    mask = _STRUCTURAL_SHAPES[defect](rng, resolution, (float(center[0]), float(center[1])))
    image = clean.copy()
    _paint(image, mask, _STRUCTURAL_COLORS[defect])
    return Rendered(image, clean, [mask], defect)


# ----------------------------------------------------------------------------- writing


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _write_texture(root: Path, spec: SyntheticSpec, rng: np.random.Generator) -> list[dict]:
    manifest = []
    for i in range(spec.n_train):
        _save_png(root / "train" / "good" / f"{i:03d}.png", render_texture_sample(rng, spec.resolution, "good").image)
    for i in range(spec.n_test_good):
        _save_png(root / "test" / "good" / f"{i:03d}.png", render_texture_sample(rng, spec.resolution, "good").image)
    for defect in TEXTURE_DEFECTS:
        for i in range(spec.n_per_defect):
            rendered = render_texture_sample(rng, spec.resolution, defect)
            _save_png(root / "test" / defect / f"{i:03d}.png", rendered.image)
            _save_png(root / "ground_truth" / defect / f"{i:03d}_mask.png", rendered.masks[0].astype(np.uint8) * 255)
            manifest.append({"image": f"test/{defect}/{i:03d}.png", "defect": defect, "kind": "structural"})
    return manifest


def _write_pinbox(root: Path, spec: SyntheticSpec, rng: np.random.Generator) -> list[dict]:
    manifest = []
    for split, count in (("train", spec.n_train), ("validation", spec.n_validation), ("test", spec.n_test_good)):
        for i in range(count):
            image = render_pinbox_sample(rng, spec.resolution, "good", spec.pin_jitter).image
            _save_png(root / split / "good" / f"{i:03d}.png", image)
    for folder, kind, defects in (
        ("logical_anomalies", "logical", PINBOX_LOGICAL),
        ("structural_anomalies", "structural", PINBOX_STRUCTURAL),
    ):
        index = 0
        for defect in defects:
            for _ in range(spec.n_per_defect):
                rendered = render_pinbox_sample(rng, spec.resolution, defect, spec.pin_jitter)
                stem = f"{index:03d}"
                _save_png(root / "test" / folder / f"{stem}.png", rendered.image)
                value = PINBOX_DEFECT_TYPES[defect][0]
                for j, mask in enumerate(rendered.masks):
                    _save_png(root / "ground_truth" / folder / stem / f"{j:03d}.png", mask.astype(np.uint8) * value)
                manifest.append({"image": f"test/{folder}/{stem}.png", "defect": defect, "kind": kind})
                index += 1
    pin_area = int(_pin_mask(PinboxGeometry(spec.resolution), (spec.resolution // 2, spec.resolution // 2)).sum())
    config = [
        {
            "defect_name": name,
            "pixel_value": value,
            "saturation_threshold": pin_area if threshold is None else threshold,
            "relative_saturation": relative,
        }
        for name, (value, threshold, relative) in PINBOX_DEFECT_TYPES.items()
    ]
    (root / "defects_config.json").write_text(json.dumps(config, indent=1))
    return manifest


def generate(root: Path, spec: SyntheticSpec) -> None:
    """Write both categories under ``root`` (which must not exist yet)."""
    writers = {"texture": _write_texture, "pinbox": _write_pinbox}
    for offset, category in enumerate(CATEGORIES):
        rng = np.random.default_rng([spec.seed, offset])
        manifest = writers[category](root / category, spec, rng)
        (root / category / _MANIFEST).write_text(json.dumps(manifest, indent=1))
    (root / "spec.json").write_text(json.dumps(asdict(spec), indent=1, sort_keys=True))


def ensure_synthetic(cache_dir: Path, spec: SyntheticSpec) -> Path:
    """The folder holding the synthetic dataset for ``spec``, generating it once if needed.

    Safe when several jobs start at once: each writes into its own temporary folder and
    renames it into place; a job that loses the race discards its copy.
    """
    target = Path(cache_dir) / "synthetic" / spec.digest()
    if (target / "spec.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=target.parent))
    try:
        generate(scratch / "data", spec)
        try:
            os.rename(scratch / "data", target)
        except OSError:
            if not (target / "spec.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
