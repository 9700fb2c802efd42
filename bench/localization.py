"""Where a heatmap points, against where the lesion is: the images fidelity is measured on, with their
lesion masks (the synthetic set's own, or boxes from a CSV), and the localisation scores.

- :func:`fidelity_images`: a seeded draw of one side of a run's split, preprocessed, with masks;
- :func:`pointing_points`, :func:`pointing_game`: the heatmap's top cell inside the lesion (Zhang et al. 2018);
- :func:`energy_in_mask`: the share of heatmap energy inside the lesion, beside the mask's area;
- :func:`read_boxes`, :func:`box_mask`: RSNA-style ``image,x,y,width,height`` boxes as masks.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.data import DataError

# ----------------------------------------------------------------------------- localization


def pointing_points(grids: np.ndarray, size: int) -> np.ndarray:
    """Input-pixel ``(row, col)`` of each heatmap's maximum: the centre of the top cell of the target
    layer's grid (``N x h x w``). The maximum of the upsampled map is not used: bilinear upsampling
    clamps at the border, so a corner cell's maximum spreads to the image corner. ``-1`` for a constant map."""
    g = np.asarray(grids, np.float64)
    n, gh, gw = g.shape
    pts = np.full((n, 2), -1, np.int64)
    for i in range(n):
        if np.ptp(g[i]) == 0:
            continue
        r, c = np.unravel_index(int(np.argmax(g[i])), (gh, gw))
        pts[i] = (min(size - 1, int((r + 0.5) * size / gh)), min(size - 1, int((c + 0.5) * size / gw)))
    return pts


def default_tolerance(size: int) -> int:
    """Pointing-game tolerance in input pixels: 15 px at 224 (Zhang et al. 2018), scaled to ``size`` (9 at 128)."""
    return int(round(15 * size / 224))


def pointing_game(points: np.ndarray, masks: np.ndarray, tolerance: int = 0) -> dict[str, Any]:
    """Pointing game (Zhang et al. 2018): a hit when the heatmap's maximum (``points``, row/col per
    image) lies within ``tolerance`` pixels (Euclidean) of the lesion mask. Images without any lesion are left out;
    a constant heatmap (point ``-1``) is a miss."""
    from scipy import ndimage

    hits = []
    for (r, c), m in zip(np.asarray(points), np.asarray(masks, bool)):
        if not m.any():
            continue
        if r < 0:
            hits.append(False)
            continue
        hits.append(bool(m[r, c]) or (tolerance > 0 and float(ndimage.distance_transform_edt(~m)[r, c]) <= tolerance))
    return {"pointing_game": float(np.mean(hits)) if hits else None, "hits": int(sum(hits)), "n_images": len(hits),
            "tolerance_px": tolerance}


def energy_in_mask(cams: np.ndarray, masks: np.ndarray) -> dict[str, Any]:
    """Share of heatmap energy (sum of values) inside the lesion mask, per image with a lesion, and the
    share of the image the masks cover (what a uniform heatmap would score)."""
    shares, areas = [], []
    for cam, m in zip(np.asarray(cams, np.float64), np.asarray(masks, bool)):
        if not m.any():
            continue
        total = cam.sum()
        shares.append(float(cam[m].sum() / total) if total > 0 else 0.0)
        areas.append(float(m.mean()))
    return {"energy_in_mask": float(np.mean(shares)) if shares else None,
            "mask_area": float(np.mean(areas)) if areas else None, "n_images": len(shares)}


BOX_COLUMNS = ("image", "x", "y", "width", "height")


def read_boxes(path: str | Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """Boxes of a CSV with header ``image,x,y,width,height`` (RSNA pneumonia style: one row per box,
    pixel coordinates of the original image, ``x,y`` the top-left corner). A row whose four numbers
    are all empty names an image without a box. Returns image -> list of ``(x, y, width, height)``.
    Any malformed row is a :class:`~core.data.DataError` naming the line and the fix."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"box file {path} does not exist; give a CSV with columns {','.join(BOX_COLUMNS)}")
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [h.strip().lower() for h in (reader.fieldnames or [])]
        lacking = [c for c in BOX_COLUMNS if c not in fields]
        if not fields or lacking:
            raise DataError(f"box file {path} lacks column(s) {', '.join(lacking or BOX_COLUMNS)} "
                            f"(found: {', '.join(fields) or 'nothing'}); the header must be {','.join(BOX_COLUMNS)}")
        for raw in reader:
            row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if isinstance(k, str)}
            where = f"{path} line {reader.line_num}"
            if not row["image"]:
                raise DataError(f"{where}: the image name is empty; fill it in or delete the row")
            nums = [row[c] for c in BOX_COLUMNS[1:]]
            boxes.setdefault(row["image"], [])
            if not any(nums):
                continue
            try:
                x, y, w, h = (float(v) for v in nums)
            except ValueError:
                raise DataError(f"{where}: x,y,width,height must be numbers (got {','.join(nums)}); "
                                f"leave all four empty for an image without a box") from None
            if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0 or x < 0 or y < 0:
                raise DataError(f"{where}: box {x:g},{y:g},{w:g},{h:g} is not valid: x and y must be >= 0 and "
                                f"width and height > 0 (pixels of the original image)")
            boxes[row["image"]].append((x, y, w, h))
    if not boxes:
        raise DataError(f"box file {path} has a header but no rows; add one row per box")
    return boxes


def boxes_for(boxes: dict[str, list], image_path: str | Path) -> list | None:
    """The boxes of an image, matched by full path, file name or file stem (RSNA uses patient ids);
    None when the box file does not list it."""
    p = Path(image_path)
    for key in (str(image_path), p.name, p.stem):
        if key in boxes:
            return boxes[key]
    return None


def box_mask(boxes: Sequence[tuple[float, float, float, float]], original_size: tuple[int, int],
             size: int) -> np.ndarray:
    """Boxes in original pixels (width, height = ``original_size``) -> bool ``size x size`` mask after the
    preprocessing's squash resize."""
    ow, oh = original_size
    m = np.zeros((size, size), bool)
    for x, y, w, h in boxes:
        if x >= ow or y >= oh:
            raise DataError(f"box {x:g},{y:g},{w:g},{h:g} lies outside its {ow}x{oh} image; check the box file")
        c0, r0 = int(math.floor(x * size / ow)), int(math.floor(y * size / oh))
        c1, r1 = int(math.ceil((x + w) * size / ow)), int(math.ceil((y + h) * size / oh))
        m[max(0, r0):min(size, r1), max(0, c0):min(size, c1)] = True
    return m


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A lesion mask at the image's original resolution -> ``size x size``, by the same squash resize
    (PIL bilinear) that :class:`~core.preprocess.Preprocess` applies to the image, then > 0.5."""
    from PIL import Image

    m = np.asarray(mask, bool)
    if m.shape == (size, size):
        return m
    img = Image.fromarray(m.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)
    return np.asarray(img) > 127


# ----------------------------------------------------------------------------- images and masks


@dataclass
class FidelitySet:
    """The images fidelity is measured on, prepared with the run's preprocessing."""

    images: np.ndarray  # uint8 N x H x W x C
    inputs: np.ndarray  # normalised float32 N x C x H x W
    labels: np.ndarray  # 0/1
    paths: list[str]
    masks: np.ndarray | None  # bool N x H x W lesion masks at the input size, or None when none are known
    mask_source: str | None


def synthetic_masks(split_source: str) -> dict[str, str]:
    """Absolute image path -> absolute mask path, from a synthetic manifest's ``mask`` column."""
    src = Path(split_source)
    if src.suffix.lower() != ".csv" or not src.is_file():
        return {}
    out = {}
    with open(src, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("mask"):
                out[str((src.parent / row["path"]).resolve())] = str((src.parent / row["mask"]).resolve())
    return out


def fidelity_images(run, *, side: str = "test", n: int = 32, positives_only: bool = True,
                    boxes: str | Path | None = None, seed: int = 0) -> FidelitySet:
    """Up to ``n`` images of ``side`` of the run's split (PNEUMONIA only by default: their explanation
    has a known place), drawn seeded, with lesion masks from the synthetic manifest or from a box CSV."""
    from core.data import decode_image, load_images
    from core.synthetic import load_mask

    split, pre = run.split(), run.preprocess
    samples = [s for s in split.samples(side) if s.label == 1 or not positives_only]
    if not samples:
        raise DataError(f"side {side!r} of {run.path / 'split.json'} has no "
                        f"{'PNEUMONIA ' if positives_only else ''}images to measure fidelity on")
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(samples), size=min(n, len(samples)), replace=False).tolist())
    samples = [samples[i] for i in pick]
    images, kept, _ = load_images(samples, pre, skip_bad=split.skip_bad, progress=False)  # recorded bad: not drawn
    paths = [s.path for s in kept]
    masks, source = None, None
    if boxes is not None:
        table = read_boxes(boxes)
        listed = [boxes_for(table, p) for p in paths]
        if all(b is None for b in listed):
            raise DataError(f"box file {boxes} lists none of the {len(paths)} images measured (e.g. "
                            f"{Path(paths[0]).name}); name images by path, file name or stem")
        masks = np.stack([box_mask(b or [], decode_image(p).size, pre.size) for b, p in zip(listed, paths)])
        source = f"boxes {boxes}"
    else:
        known = synthetic_masks(split.source)
        if known:
            masks = np.stack([resize_mask(load_mask(Path(known[p]).parent, Path(known[p]).name), pre.size)
                              if p in known else np.zeros((pre.size, pre.size), bool) for p in paths])
            source = "synthetic lesion masks"
    return FidelitySet(images, pre.normalize(images), np.asarray([s.label for s in kept]), paths, masks, source)


def _away(mask: np.ndarray) -> np.ndarray:
    """The same region moved to where it overlaps itself least (half and quarter turns of a roll)."""
    h, w = mask.shape
    shifts = [(0, w // 2), (h // 2, 0), (h // 2, w // 2), (h // 4, w // 2), (h // 2, w // 4)]
    moved = [np.roll(mask, s, axis=(0, 1)) for s in shifts]
    return min(moved, key=lambda m: int((m & mask).sum()))


def lesion_occlusion(predict_fn, inputs: np.ndarray, masks: np.ndarray, *, dilate: int | None = None,
                     batch_size: int = 32) -> dict[str, Any]:
    """Does the model use the lesion? The probability of PNEUMONIA with each image's lesion (mask dilated by
    ``dilate`` px, default 3 px at 128, to take the opacity's soft edge) set to the data set's mean colour
    (0 after normalisation), against the same region moved elsewhere in the image. A large ``lesion_drop``
    with a small ``elsewhere_drop`` means the model relies on the lesion, so a heatmap that misses it is the
    explainer's failure, not the model's. Images without a lesion are left out."""
    from scipy import ndimage

    from bench.fidelity import _batched, _sigmoid, baseline_image  # here: bench.fidelity imports this module

    x, m = np.asarray(inputs, np.float32), np.asarray(masks, bool)
    keep = np.array([mm.any() for mm in m])
    if not keep.any():
        return {"lesion_drop": None, "elsewhere_drop": None, "n_images": 0}
    x, m = x[keep], m[keep]
    size = x.shape[-1]
    it = max(1, round(3 * size / 128)) if dilate is None else dilate
    region = np.stack([ndimage.binary_dilation(mm, iterations=it) if it > 0 else mm for mm in m])
    elsewhere = np.stack([_away(r) for r in region])

    fill = baseline_image(x, "mean")

    def prob(z: np.ndarray) -> np.ndarray:
        return _sigmoid(_batched(predict_fn, z, batch_size))

    p0 = prob(x)
    p_lesion = prob(np.where(region[:, None], fill, x))
    p_else = prob(np.where(elsewhere[:, None], fill, x))
    return {"p_original": float(p0.mean()), "p_lesion_removed": float(p_lesion.mean()),
            "p_elsewhere_removed": float(p_else.mean()), "lesion_drop": float((p0 - p_lesion).mean()),
            "elsewhere_drop": float((p0 - p_else).mean()), "region_area": float(region.mean()),
            "dilate_px": it, "n_images": int(len(x)), "fill": "mean colour (0 after normalisation)"}
