"""The built-in synthetic chest-radiograph data set.

A fresh machine with no download can run the whole pipeline on it, and Grad-CAM localisation can be
checked against ground truth: every "pneumonia" image carries 1-3 opacities inside a lung field,
mottled and crossed by air bronchograms as consolidation is (since generator v5), and the binary
mask of each opacity is saved. Images are drawn analytically in normalised
coordinates ([-1, 1] across the image, y pointing down), so one patient's anatomy renders the same
at any size and each image only differs by pose, noise and exposure.

The task is meant to be learnable but not trivial: opacities range from faint to dense and from
small to lobar, and label-free confounders (breast-tissue-like brightening in the lower lungs,
a bright "L"/"R" marker outside the thorax) appear in both classes with the same probability, so
nothing outside the lungs carries the label. Patients hold 1-3 images sharing one label and one
anatomy, so a patient-wise split matters. The class balance defaults to Kermany's (27% NORMAL).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import track
from scipy import ndimage

GENERATOR_VERSION = 5
CLASSES = ("NORMAL", "PNEUMONIA")
MANIFEST_COLUMNS = ("path", "label", "patient_id", "mask")
_LESION_LEVEL = 0.35  # an opacity's mask is where it exceeds this share of its own peak


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: image count, square image size, seed and the share of NORMAL images."""

    n_images: int = 540
    size: int = 128
    seed: int = 0
    normal_fraction: float = 0.27

    def __post_init__(self) -> None:
        if not isinstance(self.n_images, int) or self.n_images < 1:
            raise ValueError(f"n_images={self.n_images!r} must be a positive integer (e.g. 540)")
        if not isinstance(self.size, int) or self.size < 16:
            raise ValueError(f"size={self.size!r} is too small; use an integer >= 16 (e.g. 64, 128, 224)")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be a non-negative integer")
        if not 0.0 <= self.normal_fraction <= 1.0:
            raise ValueError(f"normal_fraction={self.normal_fraction!r} must lie in [0, 1] (Kermany: 0.27)")

    def key(self) -> str:
        """Short stable hash of the spec and the generator version; names the cache folder."""
        blob = json.dumps({**asdict(self), "generator_version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    """``$CXR_EDGE_CACHE`` if set, else ``~/.cache/cxr-edge``."""
    env = os.environ.get("CXR_EDGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cxr-edge"


# ---------------------------------------------------------------- drawing primitives


def _soft(d: np.ndarray, edge: float) -> np.ndarray:
    """Soft inside-indicator of the region ``d < 1`` with an edge about ``edge`` wide."""
    return 0.5 * (1.0 - np.tanh((d - 1.0) / edge))


def _gauss(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _lung_coords(x: np.ndarray, y: np.ndarray, lung: dict) -> tuple[np.ndarray, np.ndarray]:
    """Local lung coordinates: ``v`` from -1 (apex) to 1 (base), ``u`` across, width-normalised."""
    c, s = np.cos(lung["tilt"]), np.sin(lung["tilt"])
    dx, dy = x - lung["cx"], y - lung["cy"]
    v = (s * dx + c * dy) / lung["b"]
    width = 0.55 + 0.45 * np.clip((v + 1.0) / 2.0, 0.0, 1.0) ** 0.7  # narrow apex, wide base
    u = (c * dx - s * dy) / (lung["a"] * width)
    return u, v


def _lung_field(x: np.ndarray, y: np.ndarray, lung: dict, edge: float = 0.12) -> np.ndarray:
    u, v = _lung_coords(x, y, lung)
    return _soft(u**2 + np.abs(v) ** 2.6, edge)


def _smooth_field(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal((n, n)), sigma, mode="wrap")
    return f / (f.std() + 1e-8)


def _sample(field: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Read a square field defined over [-1, 1]^2 at the (posed) coordinates ``x, y``."""
    n = field.shape[0]
    coords = np.stack([(y + 1.0) * 0.5 * (n - 1), (x + 1.0) * 0.5 * (n - 1)])
    return ndimage.map_coordinates(field, coords, order=1, mode="nearest")


# ---------------------------------------------------------------- anatomy, lesions, images


def _anatomy(rng: np.random.Generator) -> dict:
    """One patient's body: fixed across that patient's images."""
    lungs = []
    for side in (-1.0, 1.0):  # image left, image right
        lungs.append(
            dict(
                cx=side * rng.uniform(0.36, 0.42), cy=rng.uniform(-0.10, -0.02),
                a=rng.uniform(0.25, 0.30), b=rng.uniform(0.52, 0.60),
                tilt=side * rng.uniform(-0.02, 0.10),
            )
        )
    return dict(
        lungs=lungs,
        thorax_w=rng.uniform(0.82, 0.92), thorax_h=rng.uniform(0.85, 0.95), thorax_cy=rng.uniform(0.05, 0.12),
        heart=dict(cx=rng.uniform(0.08, 0.14), cy=rng.uniform(0.30, 0.38),
                   sx=rng.uniform(0.24, 0.30), sy=rng.uniform(0.19, 0.24)),
        rib_spacing=rng.uniform(0.15, 0.19), rib_phase=rng.uniform(0, 1), rib_curve=rng.uniform(0.6, 1.0),
        lung_dark=rng.uniform(0.28, 0.36), soft_tissue=rng.uniform(0.48, 0.56),
        markings=_smooth_field(rng, 48, 1.2), clavicles=rng.random() < 0.8,
    )


def _lesion_center(rng: np.random.Generator, anat: dict) -> tuple[dict, float, float]:
    """A point well inside a lung field and off the heart shadow (rejection sampling)."""
    h = anat["heart"]
    while True:
        lung = anat["lungs"][int(rng.integers(2))]
        r, t = np.sqrt(rng.uniform(0, 0.5)), rng.uniform(0, 2 * np.pi)
        u, v = r * np.cos(t), r * np.sin(t) * 1.05 + 0.1
        width = 0.55 + 0.45 * np.clip((v + 1.0) / 2.0, 0.0, 1.0) ** 0.7
        lx, ly = u * lung["a"] * width, v * lung["b"]
        c, s = np.cos(lung["tilt"]), np.sin(lung["tilt"])
        px, py = lung["cx"] + c * lx + s * ly, lung["cy"] - s * lx + c * ly
        if ((px - h["cx"]) / h["sx"]) ** 2 + ((py - h["cy"]) / h["sy"]) ** 2 > 1.6:
            return lung, float(px), float(py)


def _opacities(rng: np.random.Generator, anat: dict, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum of 1-3 soft opacities (intensity) and their union mask (before the lung clip)."""
    total = np.zeros_like(x)
    mask = np.zeros(x.shape, bool)
    for _ in range(int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))):
        lung, cx, cy = _lesion_center(rng, anat)
        size = float(np.exp(rng.uniform(np.log(0.11), np.log(0.28))))  # small nodule .. lobar
        shape = np.zeros_like(x)
        for k in range(int(rng.integers(1, 6))):  # k > 0: blobs around the centre make it irregular
            ox, oy = (rng.normal(0, 0.7 * size, 2) if k else (0.0, 0.0))
            sx, sy = size * rng.uniform(0.6, 1.2, 2)
            shape += rng.uniform(0.5, 1.0) * _gauss(x, y, cx + ox, cy + oy, sx, sy)
        shape *= _lung_field(x, y, lung, edge=0.08)  # consolidation stops at the pleura
        peak = shape.max()
        if peak < 1e-3:
            continue
        shape /= peak
        mask |= shape > _LESION_LEVEL
        faint = rng.random() < 0.05  # some faint ground glass, most denser consolidation
        total += rng.uniform(0.15, 0.25) * shape if faint else rng.uniform(0.45, 0.80) * shape
    return total, mask


def _lesions(rng: np.random.Generator, anat: dict, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The opacities of :func:`_opacities` with the texture of consolidation (generator v5).

    A fine mottle scales each opacity between 0.55 and 1.45 of its smooth intensity, and 2-4 dark tubes run
    from the densest point (air bronchograms). Generator v4 drew the opacities smooth; a model could then
    find them by the absence of normal lung texture, evidence that Grad-CAM's positive maps cannot show
    (docs/findings/gradcam-localisation.md). Masks and placement are those of the smooth opacities.
    """
    total, mask = _opacities(rng, anat, x, y)
    if not mask.any():
        return total, mask
    peak = total.max()
    mottle = 0.5 + 0.5 * np.tanh(_sample(_smooth_field(rng, 64, 1.0), x, y))  # 0..1, fine grain
    tex = total * (0.55 + 0.9 * mottle)
    iy, ix = np.unravel_index(np.argmax(total), total.shape)
    cx, cy = x[iy, ix], y[iy, ix]
    tubes = np.zeros_like(x)
    for _ in range(int(rng.integers(2, 5))):
        ang, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.08, 0.2)
        dx, dy = length * np.cos(ang), length * np.sin(ang)
        t = np.clip(((x - cx) * dx + (y - cy) * dy) / (dx * dx + dy * dy), 0, 1)
        tubes = np.maximum(tubes, np.exp(-0.5 * (np.hypot(x - cx - t * dx, y - cy - t * dy) / 0.012) ** 2))
    tex -= 0.6 * tubes * np.clip(total / peak, 0, 1) * peak
    return np.clip(tex, 0, None), mask


def _render_one(rng: np.random.Generator, anat: dict, label: int,
                size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image of a patient: (uint8 image, bool lesion mask, bool lung mask)."""
    # Pose: image coordinates -> body coordinates (inverse of shift, rotation, scale).
    g = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    gx, gy = np.meshgrid(g, g)
    ang, scale = rng.normal(0, 0.05), rng.uniform(0.92, 1.08)
    tx, ty = rng.normal(0, 0.04, 2)
    c, s = np.cos(ang), np.sin(ang)
    x = (c * (gx - tx) + s * (gy - ty)) / scale
    y = (-s * (gx - tx) + c * (gy - ty)) / scale

    # Thorax: a rounded trapezoid, wider at the base, with soft edges.
    ty_ = (y - anat["thorax_cy"]) / anat["thorax_h"]
    half_w = anat["thorax_w"] * (0.82 + 0.18 * np.clip(ty_ + 1, 0, 2) / 2)
    thorax = _soft(np.abs(x / half_w) ** 3 + np.abs(ty_) ** 4, 0.25)
    neck = _soft(np.abs(x / 0.16) ** 2 + np.abs((y + 0.95) / 0.3) ** 2, 0.3)
    # Shoulders: soft tissue sloping down from the neck to the image edges, above the thorax.
    shoulders = _soft(np.maximum(-0.6 - 0.3 * x**2 - y, 0.0) / 0.2 + np.abs(x) ** 4, 0.4)
    shoulders *= _soft(np.maximum(y + 0.5, 0.0) / 0.2, 0.4)
    body = np.maximum(np.maximum(thorax, neck), 0.85 * shoulders)

    h = anat["heart"]
    heart = _soft(((x - h["cx"]) / h["sx"]) ** 2 + ((y - h["cy"]) / h["sy"]) ** 2, 0.35)
    lungs = np.maximum(*(_lung_field(x, y, lung) for lung in anat["lungs"]))
    lung_only = lungs * (1.0 - heart)
    medi = _soft(np.abs(x / 0.11) ** 2 + np.abs((y + 0.15) / 0.75) ** 4, 0.4)
    spine = _soft(np.abs(x / 0.055) ** 2, 0.5) * body * (0.85 + 0.15 * np.cos(y * 55.0))

    # Posterior ribs: bands that arc down laterally, visible over the lungs.
    phase = (y - anat["rib_curve"] * x**2) / anat["rib_spacing"] + anat["rib_phase"]
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * phase)) ** 6 * _soft(np.abs(x / 0.8) ** 2, 0.3) * thorax
    ribs *= _soft(np.maximum(y + 0.9, 0.0) / 1.35, 0.15)  # none below the diaphragm

    img = 0.04 + anat["soft_tissue"] * body
    img += 0.22 * medi * body + 0.10 * heart + 0.12 * spine
    img -= anat["lung_dark"] * lung_only * (1.0 - 0.35 * medi)
    img += 0.055 * ribs + 0.025 * _sample(anat["markings"], x, y) * lung_only
    if anat["clavicles"]:
        for side in (-1.0, 1.0):
            d = y + 0.62 - 0.35 * (side * x - 0.15)
            img += 0.09 * np.exp(-0.5 * (d / 0.025) ** 2) * _soft(np.abs((side * x - 0.32) / 0.27) ** 2, 0.3)

    # Label-free confounders, equally likely in both classes.
    if rng.random() < 0.35:  # breast tissue / soft-tissue overlap over the lower lungs
        amp = rng.uniform(0.04, 0.10)
        for side in (-1.0, 1.0):
            img += amp * _gauss(x, y, side * 0.45, 0.5, 0.22, 0.16) * thorax
    if rng.random() < 0.5:  # a radiographer's marker in a corner, outside the thorax
        mx, my = rng.choice([-0.82, 0.82]), rng.choice([-0.82, 0.82])
        box = (np.abs(gx - mx) < 0.07) & (np.abs(gy - my) < 0.06)
        strokes = (np.abs(gx - mx + 0.03) < 0.012) | (np.abs(gy - my - 0.035) < 0.012)
        img = np.where(box, np.where(strokes, 0.95, 0.55), img)

    mask = np.zeros((size, size), bool)
    lung_mask = lung_only > 0.5
    if label == 1:
        for _ in range(10):  # a lesion peaking under the heart shadow can miss the lung mask: redraw
            opacity, mask = _lesions(rng, anat, x, y)
            mask &= lung_mask
            if mask.any():
                break
        img += opacity * lung_only

    # Exposure, blur and noise.
    contrast, bright, gamma = rng.uniform(0.75, 1.25), rng.uniform(-0.08, 0.08), rng.uniform(0.8, 1.25)
    img = np.clip((img - 0.3) * contrast + 0.3 + bright, 0.0, 1.0) ** gamma
    img = ndimage.gaussian_filter(img, rng.uniform(0.4, 0.9) * size / 128.0)
    img += rng.normal(0.0, rng.uniform(0.01, 0.035), img.shape)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mask, lung_mask


def _render_patient_full(rng: np.random.Generator, label: int, n: int,
                         size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    anat = _anatomy(rng)
    return [_render_one(rng, anat, label, size) for _ in range(n)]


def render_patient(rng: np.random.Generator, label: int, n: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` images of one patient (label 0 NORMAL, 1 PNEUMONIA): ``(uint8 HxW image, bool HxW lesion mask)``.

    The anatomy is shared; pose, exposure, noise and (for pneumonia) lesion placement differ per
    image. Normal images get an all-False mask.
    """
    if label not in (0, 1):
        raise ValueError(f"label={label!r} is not known; use 0 (NORMAL) or 1 (PNEUMONIA)")
    return [(img, mask) for img, mask, _ in _render_patient_full(rng, label, n, size)]


# ---------------------------------------------------------------- data set on disk


def _plan(spec: SyntheticSpec) -> list[tuple[int, int]]:
    """``(label, n_images)`` per patient: 1-3 images each, NORMAL images close to the asked share."""
    rng = np.random.default_rng([spec.seed, 0])
    sizes: list[int] = []
    while sum(sizes) < spec.n_images:
        sizes.append(min(int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2])), spec.n_images - sum(sizes)))
    target, normal = round(spec.normal_fraction * spec.n_images), 0
    labels = [1] * len(sizes)
    for i in rng.permutation(len(sizes)):
        if normal + sizes[i] <= target:
            labels[i], normal = 0, normal + sizes[i]
    return list(zip(labels, sizes))


def _write_patients(spec: SyntheticSpec, out_dir: str, patients: list[tuple[int, int, int]]) -> list[tuple[str, ...]]:
    """Render and save the given ``(index, label, n_images)`` patients; their manifest rows, in order."""
    rows = []
    for i, label, n in patients:
        pid = f"synth-p{i:05d}"
        rng = np.random.default_rng([spec.seed, 1, i])  # per patient: independent of the others
        for j, (img, mask) in enumerate(render_patient(rng, label, n, spec.size)):
            rel = f"{CLASSES[label]}/{pid}-{j}.png"
            Image.fromarray(img).save(Path(out_dir) / rel)
            mask_rel = ""
            if label == 1:
                mask_rel = f"masks/{pid}-{j}.png"
                Image.fromarray(mask.astype(np.uint8) * 255).save(Path(out_dir) / mask_rel)
            rows.append((rel, CLASSES[label], pid, mask_rel))
    return rows


def default_workers(spec: SyntheticSpec) -> int:
    """Processes for :func:`generate`: one per 500 images, at most one per core (the demo's 540: one)."""
    return max(1, min(os.cpu_count() or 1, spec.n_images // 500))


def generate(spec: SyntheticSpec, out_dir: Path, progress: bool = True, workers: int | None = None) -> Path:
    """Write the data set described by ``spec`` into ``out_dir`` (created if missing); returns it.

    ``workers`` processes (default :func:`default_workers`) render patients in chunks; every patient
    has its own generator, so the bytes written do not depend on the number of workers.
    """
    out_dir = Path(out_dir)
    for sub in (*CLASSES, "masks"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    patients = [(i, label, n) for i, (label, n) in enumerate(_plan(spec))]
    workers = default_workers(spec) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers={workers!r} must be at least 1")
    chunks = [patients[k:k + 25] for k in range(0, len(patients), 25)]
    with contextlib.ExitStack() as stack:
        if workers == 1:
            run = map
        else:
            # spawn, not fork: the parent may hold torch's thread pools, which a forked child can deadlock on
            run = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))).map
        results = run(_write_patients, [spec] * len(chunks), [str(out_dir)] * len(chunks), chunks)
        label = "synthetic CXR" + (f" ({workers} processes)" if workers > 1 else "")
        rows = [r for chunk in track(results, total=len(chunks), description=label, disable=not progress)
                for r in chunk]
    with open(out_dir / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    counts = {c: sum(r[1] == c for r in rows) for c in CLASSES}
    meta = dict(spec=asdict(spec), key=spec.key(), generator_version=GENERATOR_VERSION,
                counts=dict(images=len(rows), patients=len(patients), **counts))
    (out_dir / "spec.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def ensure_synthetic(spec: SyntheticSpec = SyntheticSpec(), cache_dir: Path | None = None,
                     progress: bool = True) -> Path:
    """``<cache>/synthetic-<key>/``, generated on first use and reused afterwards.

    Generation goes to a temporary sibling folder that is renamed into place only when complete,
    so an interrupted run never leaves a half data set behind.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache / f"synthetic-{spec.key()}"
    if (final / "manifest.csv").is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", suffix=".tmp", dir=cache))
    try:
        generate(spec, tmp, progress=progress)
        if final.exists() and not (final / "manifest.csv").is_file():
            shutil.rmtree(final)  # an incomplete folder not made by us: replace it
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "manifest.csv").is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_mask(dataset_dir: Path, relpath: str) -> np.ndarray:
    """A saved lesion mask as a bool ``HxW`` array."""
    return np.asarray(Image.open(Path(dataset_dir) / relpath).convert("L")) > 127
