"""Readers of chest X-ray data sets into a flat list of :class:`Sample`, and the image decoder.

A data source is a folder or a CSV file:

- Kermany layout ``root/{train,val,test}/{NORMAL,PNEUMONIA}/*`` (``kind="kermany-split"``): each
  sample remembers the side its folder names, so ``--split official`` can reuse it;
- class folders ``root/{NORMAL,PNEUMONIA}/*`` (``kind="class-folders"``);
- a CSV with columns ``path,label[,patient_id][,side]`` (``kind="csv"``).

Every problem with the user's data raises :class:`DataError`, whose message names the file or value
and says how to fix it; the CLI prints it without a traceback. With ``skip_bad=True`` the
per-file problems (a non-image file, a missing or undecodable image) are collected as
``(path, reason)`` instead, and reported; layout problems are always errors.

Contrast does not depend on how a file was saved: :func:`decode_image` maps every image to 8 bits by its
bit depth, never by the image's own darkest and brightest pixels.

- 8-bit images are kept as they are; colour images become PIL's luma.
- 16-bit PNG/TIFF (PIL ``I;16``): ``round(v / 257)``, so ``257 * k`` gives ``k`` and the same picture saved at 8
  or 16 bits decodes alike (the PNG standard scales samples to the full 16-bit range; ``sBIT`` is ignored).
- 32-bit integer or float images: negatives become 0, and values are scaled from the smallest of the ranges
  0..1 (floats only), 0..255, 0..65535, 0..2**32-1 that holds them.
- DICOM: the modality LUT (rescale slope/intercept) first; then the file's own VOI LUT, or its window
  centre/width (pydicom ``apply_voi_lut``), mapped from its output range; without either, the range its
  stored bit depth allows (``BitsStored``, signed or not, through the rescale). MONOCHROME1 is inverted.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.preprocess import Preprocess

LABELS = ("NORMAL", "PNEUMONIA")  # label index 0, 1
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
SIDE_NAMES = ("train", "val", "test")
# Files that operating systems and archivers leave behind; ignored without a word.
_JUNK_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}
_SKIP_HINT = "remove it or pass --skip-bad"

# Kermany et al. file names: person1000_bacteria_2931 / person447_virus_921_1 -> person1000;
# IM-0115-0001 / IM-0115-0001-0002 -> IM-0115; NORMAL2-IM-1427-0001 -> NORMAL2-IM-1427.
_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+(?:_\d+)*$", re.IGNORECASE),
    re.compile(r"^((?:NORMAL\d+-)?IM-\d+)-\d+(?:-\d+)*$", re.IGNORECASE),
)


class DataError(ValueError):
    """A problem with the user's data: the message names the file/value and the fix (CLI: no traceback).

    ``reason`` is the problem alone, without the fix: what a record of a skipped file stores, since the
    user who skipped it needs no advice to skip it.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


def bad_file(reason: str) -> DataError:
    """The error of one unreadable file: ``reason`` plus how to get past it (remove it or skip bad files)."""
    return DataError(f"{reason}; {_SKIP_HINT}", reason)


@dataclass(frozen=True)
class Sample:
    path: str  # absolute path
    label: int  # 0 NORMAL, 1 PNEUMONIA
    patient: str
    side: str | None = None  # "train"/"val"/"test" when the data set's own folders say so


@dataclass
class DataSource:
    root: str  # folder or CSV path as given, made absolute
    kind: str  # "kermany-split", "class-folders" or "csv"
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    synthetic: dict | None = None  # the built-in synthetic set: its SyntheticSpec fields


def patient_id(filename: str) -> str:
    """The patient a Kermany-style file name belongs to (a bare name or a path).

    Recognised: ``person1000_bacteria_2931.jpeg`` -> ``person1000``, ``IM-0115-0001.jpeg`` and
    ``IM-0115-0001-0002.jpeg`` -> ``IM-0115``, ``NORMAL2-IM-1427-0001.jpeg`` -> ``NORMAL2-IM-1427``.
    Any other name gives its file stem: each unknown file is its own patient, except that files
    with the same stem in different folders count as one patient.

    The id is never prefixed by the folder. The public Kermany train and test folders reuse some
    ``personN`` ids, possibly for different people; grouping conservatively by the id alone keeps
    every image that might be one patient's on one side of a split.
    """
    stem = Path(filename).stem
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


def known_patients(paths: Sequence[str], patients: Sequence[str]) -> list[str] | None:
    """``patients`` when they say more than the file names do (a Kermany name pattern or a CSV ``patient_id``
    grouped some images), else None: with every image its own patient, intervals resample images."""
    if len(paths) != len(patients) or all(p == Path(f).stem for f, p in zip(paths, patients)):
        return None
    return list(patients)


def _label_of(name: str) -> int | None:
    upper = name.strip().upper()
    return LABELS.index(upper) if upper in LABELS else None


def _ignored(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in _JUNK_NAMES


def _listdir(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if not _ignored(p)), key=lambda p: p.name)


def _not_image_reason(path: Path) -> str:
    if path.is_dir():
        return f"{path} is a folder inside a class folder; class folders must hold image files directly"
    return (
        f"{path} is not an image (suffix {path.suffix or 'none'!r}; allowed: "
        f"{', '.join(sorted(IMAGE_SUFFIXES))})"
    )


def _read_class_folder(
    folder: Path, label: int, side: str | None, skip_bad: bool, skipped: list[tuple[str, str]]
) -> list[Sample]:
    samples = []
    for path in _listdir(folder):
        if path.is_dir() or path.suffix.lower() not in IMAGE_SUFFIXES:
            reason = _not_image_reason(path)
            if not skip_bad:
                raise DataError(reason) if path.is_dir() else bad_file(reason)
            skipped.append((os.path.abspath(path), reason))
            continue
        samples.append(Sample(os.path.abspath(path), label, patient_id(path.name), side))
    if not samples:
        raise DataError(
            f"class folder {folder} holds no images; add {LABELS[label]} images to it or remove the folder"
        )
    return samples


def _class_folders(folder: Path) -> dict[int, Path]:
    """The NORMAL/PNEUMONIA subfolders of ``folder``; an unknown subfolder is an error."""
    found: dict[int, Path] = {}
    for sub in (p for p in _listdir(folder) if p.is_dir()):
        label = _label_of(sub.name)
        if label is None:
            raise DataError(
                f"folder {sub} is not a known class; allowed class folders are {', '.join(LABELS)} "
                f"(any case); move or remove it"
            )
        if label in found:
            raise DataError(f"{found[label]} and {sub} name the same class; merge them into one folder")
        found[label] = sub
    return found


def read_folder(root: str | Path, *, skip_bad: bool = False) -> DataSource:
    """Samples of a Kermany-layout or class-folder data set, in sorted (deterministic) order."""
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise DataError(f"data folder {root_path} does not exist; check the path")
    if not root_path.is_dir():
        raise DataError(f"{root_path} is not a folder; give a data folder or a .csv file")
    root_abs = os.path.abspath(root_path)
    subdirs = [p for p in _listdir(root_path) if p.is_dir()]
    sides = {p.name.lower(): p for p in subdirs if p.name.lower() in SIDE_NAMES}
    skipped: list[tuple[str, str]] = []
    samples: list[Sample] = []
    if sides:
        kind = "kermany-split"
        for sub in subdirs:
            if sub.name.lower() not in SIDE_NAMES:
                raise DataError(
                    f"folder {sub} sits next to the split folders {', '.join(sorted(sides))}; "
                    f"allowed there are {', '.join(SIDE_NAMES)}; move or remove it"
                )
        for side in SIDE_NAMES:
            if side in sides:
                for label, folder in sorted(_class_folders(sides[side]).items()):
                    samples += _read_class_folder(folder, label, side, skip_bad, skipped)
    else:
        kind = "class-folders"
        if not any(_label_of(p.name) is not None for p in subdirs):
            found = ", ".join(p.name for p in _listdir(root_path)[:10]) or "nothing"
            raise DataError(
                f"no NORMAL/PNEUMONIA folders in {root_path} (found: {found}); expected "
                f"root/NORMAL/*, root/PNEUMONIA/* or root/{{train,val,test}}/{{NORMAL,PNEUMONIA}}/*, "
                f"or a CSV file with columns path,label"
            )
        for label, folder in sorted(_class_folders(root_path).items()):
            samples += _read_class_folder(folder, label, None, skip_bad, skipped)
    missing = [LABELS[i] for i in range(len(LABELS)) if not any(s.label == i for s in samples)]
    if missing:
        raise DataError(
            f"{root_path} has no {' or '.join(missing)} images; both classes are needed: "
            f"add a {missing[0]} folder with images"
        )
    return DataSource(root_abs, kind, samples, skipped)


def _csv_label(value: str, line: int, path: Path) -> int:
    value = value.strip()
    if value in ("0", "1"):
        return int(value)
    label = _label_of(value)
    if label is None:
        raise DataError(
            f"{path} line {line}: label {value!r} is not known; allowed: {', '.join(LABELS)} "
            f"(any case) or 0, 1"
        )
    return label


def _csv_sample(row: dict[str, str], line: int, csv_path: Path) -> tuple[Sample, str | None]:
    """One CSV row (lower-case keys, stripped values) -> its sample and why it is bad, if it is."""
    where = f"{csv_path} line {line}"
    if not row.get("path"):
        raise DataError(f"{where}: the path is empty; fill it in or delete the row")
    label = _csv_label(row.get("label", ""), line, csv_path)
    side = row.get("side", "").lower() or None
    if side is not None and side not in SIDE_NAMES:
        raise DataError(f"{where}: side {row['side']!r} is not known; allowed: {', '.join(SIDE_NAMES)} or empty")
    file = Path(row["path"]).expanduser()
    file = Path(os.path.abspath(file if file.is_absolute() else csv_path.parent / file))
    reason = None
    if not file.is_file():
        reason = f"{where}: image {file} does not exist (fix the path)"
    elif file.suffix.lower() not in IMAGE_SUFFIXES:
        reason = f"{where}: " + _not_image_reason(file)
    return Sample(str(file), label, row.get("patient_id") or patient_id(file.name), side), reason


def read_csv(path: str | Path, *, skip_bad: bool = False) -> DataSource:
    """Samples listed in a CSV with header ``path,label[,patient_id][,side]``.

    Relative paths are resolved against the CSV's folder. ``label`` is NORMAL/PNEUMONIA (any case)
    or 0/1; an empty or absent ``patient_id`` is parsed from the file name.
    """
    csv_path = Path(path).expanduser()
    if not csv_path.is_file():
        raise DataError(f"CSV file {csv_path} does not exist; check the path")
    samples: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    first_line: dict[str, int] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise DataError(f"CSV file {csv_path} is empty; it needs a header path,label[,patient_id] and rows")
        lacking = [c for c in ("path", "label") if c not in {n.strip().lower() for n in reader.fieldnames}]
        if lacking:
            raise DataError(
                f"CSV file {csv_path} lacks column(s) {', '.join(lacking)} (found: {', '.join(reader.fieldnames)}); "
                f"required: path,label; optional: patient_id, side"
            )
        for raw in reader:
            row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if isinstance(k, str)}
            sample, reason = _csv_sample(row, reader.line_num, csv_path)
            if sample.path in first_line:
                raise DataError(
                    f"{csv_path} line {reader.line_num}: {sample.path} is already listed on line "
                    f"{first_line[sample.path]}; list each image once"
                )
            first_line[sample.path] = reader.line_num
            if reason is None:
                samples.append(sample)
            elif skip_bad:
                skipped.append((sample.path, reason))
            else:
                raise bad_file(reason)
    if not samples and not skipped:
        raise DataError(f"CSV file {csv_path} has a header but no rows; add one row per image")
    return DataSource(os.path.abspath(csv_path), "csv", samples, skipped)


def read_source(source: str | Path, *, skip_bad: bool = False) -> DataSource:
    """A data folder or a ``.csv`` file, read with :func:`read_folder` or :func:`read_csv`."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data source {path} does not exist; give a data folder or a .csv file")
    if path.is_dir():
        return read_folder(path, skip_bad=skip_bad)
    if path.suffix.lower() == ".csv":
        return read_csv(path, skip_bad=skip_bad)
    raise DataError(f"{path} is a file but not a .csv; give a data folder or a CSV with columns path,label")


def _scale_to_uint8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map the fixed range ``lo..hi`` (not the image's own extremes) linearly onto 0..255, clipping outside it."""
    arr = np.asarray(arr, dtype=np.float64)
    if hi <= lo:
        raise ValueError(f"the value range {lo}..{hi} is empty")
    return np.round(np.clip((arr - lo) * (255.0 / (hi - lo)), 0, 255)).astype(np.uint8)


def _wide_range(arr: np.ndarray) -> tuple[float, float]:
    """Range of a 32-bit integer or float image: the smallest standard one that holds its values (negatives are
    clipped to 0): 0..1 for floats at most 1, then 0..255, 0..65535 and 0..2**32-1."""
    top = float(np.max(arr)) if arr.size else 0.0
    if arr.dtype.kind == "f" and top <= 1.0:
        return 0.0, 1.0
    for hi in (255, 65535):
        if top <= hi:
            return 0.0, float(hi)
    return 0.0, float(2**32 - 1)


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


def _stored_range(ds) -> tuple[float, float]:
    """The range of values the modality LUT can output, from the stored bit depth (PS3.3 C.11.1, C.11.2.1.2)."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(getattr(ds, "BitsStored", 0) or getattr(ds, "BitsAllocated", 8))
    lo, hi = (0, 2**bits - 1) if int(getattr(ds, "PixelRepresentation", 0) or 0) == 0 else \
        (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        ends = sorted((lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)))
        return ends[0], ends[1]
    return float(lo), float(hi)


def _voi_range(ds) -> tuple[float, float] | None:
    """The output range of the data set's VOI LUT or window (what ``apply_voi_lut`` maps onto), or None."""
    voi = ds.get("VOILUTSequence")
    if voi and voi[0].get("LUTDescriptor") is not None and voi[0].get("LUTData") is not None:
        descriptor = voi[0].LUTDescriptor
        return 0.0, float(2 ** int(descriptor[2]) - 1)
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return _stored_range(ds)
    return None


def _dicom_gray(ds, arr: np.ndarray) -> np.ndarray:
    """A monochrome DICOM frame -> uint8: its own VOI LUT or window when present, else its stored bit depth."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = apply_modality_lut(arr, ds)  # rescale slope/intercept or modality LUT, if present
    voi = _voi_range(ds)
    if voi is not None:
        return _scale_to_uint8(apply_voi_lut(arr, ds), *voi)
    return _scale_to_uint8(arr, *_stored_range(ds))


def _decode_dicom(path: Path) -> Image.Image:
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True)
        arr = ds.pixel_array
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        color = int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1
        if frames > 1:
            arr = arr[0]
        if color:  # pixel_array gives RGB for colour data; ITU-R 601 luma, as PIL's convert("L")
            arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    except Exception as err:  # pydicom raises many types for bad or unsupported files
        raise bad_file(f"cannot decode DICOM {path}: {err}") from err
    if arr.ndim != 2:
        raise bad_file(f"DICOM {path} has pixel data of shape {arr.shape}, not one 2-D image")
    try:
        out = _scale_to_uint8(arr, 0.0, float(2 ** int(getattr(ds, "BitsStored", 8) or 8) - 1)) if color \
            else _dicom_gray(ds, arr)
    except Exception as err:  # a window or LUT pydicom cannot apply (e.g. width 0)
        raise bad_file(f"cannot decode DICOM {path}: {err}") from err
    if not color and str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out  # MONOCHROME1: low values are bright
    return Image.fromarray(out, mode="L")


def _deep_to_gray(img: Image.Image) -> Image.Image:
    """A PIL image deeper than 8 bits -> mode ``L`` by its bit depth (module docstring), never by its extremes."""
    arr = np.array(img)
    if img.mode.startswith("I;16"):
        return Image.fromarray(_scale_to_uint8(arr, 0.0, 65535.0), mode="L")  # v / 257: 257 * k -> k exactly
    return Image.fromarray(_scale_to_uint8(np.maximum(arr, 0), *_wide_range(arr)), mode="L")


def decode_image(path: str | Path) -> Image.Image:
    """One image file (PNG, JPEG, BMP, TIFF or DICOM) -> 8-bit grayscale PIL image (mode ``L``).

    Deeper data is mapped by its bit depth, not stretched per image (see the module docstring), so the same
    picture saved at 8 or 16 bits decodes to the same grey levels; MONOCHROME1 is inverted.
    """
    path = Path(path)
    if not path.is_file():
        raise bad_file(f"image {path} does not exist (fix the path)")
    if path.stat().st_size == 0:
        raise bad_file(f"image {path} is empty (0 bytes)")
    if _is_dicom(path):
        return _decode_dicom(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "L":
                return img.copy()
            if img.mode.startswith("I") or img.mode == "F":
                return _deep_to_gray(img)
            return img.convert("L")  # RGB(A), palette, 1-bit: PIL's luma; alpha is dropped
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise bad_file(f"cannot decode {path}: corrupt or not an image ({err})") from err


def _decode_one(path: str, preprocess: Preprocess, skip_bad: bool) -> np.ndarray | str:
    try:
        return preprocess.image_to_uint8(decode_image(path))
    except DataError as err:
        if not skip_bad:
            raise
        return err.reason


def load_images(
    samples: Sequence[Sample],
    preprocess: Preprocess,
    *,
    skip_bad: bool = False,
    progress: bool = True,
    workers: int = 3,
) -> tuple[np.ndarray, list[Sample], list[tuple[str, str]]]:
    """Decode ``samples`` (anything with a ``.path``) into one uint8 ``N x size x size x channels`` array.

    Returns (array, kept samples, skipped ``(path, reason)``), in the order given. Decoding runs in
    a few threads, as PIL releases the GIL while decoding. Without ``skip_bad`` the first bad
    image (in order) raises its :class:`DataError`.
    """
    from rich.progress import track

    n, size, channels = len(samples), preprocess.size, preprocess.channels
    out = np.empty((n, size, size, channels), np.uint8)
    kept: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, n)))
    try:
        results = pool.map(lambda s: _decode_one(s.path, preprocess, skip_bad), samples)
        for sample, result in zip(
            samples, track(results, total=n, description=f"decoding {n} images", disable=not progress)
        ):
            if isinstance(result, str):
                skipped.append((sample.path, result))
            else:
                out[len(kept)] = result
                kept.append(sample)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out[: len(kept)], kept, skipped


def validate_images(samples: Sequence[Sample], *, progress: bool = True,
                    workers: int = 3) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Decode every sample once to find the unreadable ones: (readable samples, ``(path, reason)`` of the rest).

    What skipping bad files at split time needs, so that a bad file is left out of every side from the start
    and recorded in the split, instead of being met (or not) by whichever stage decodes its side.
    """
    from rich.progress import track

    def check(sample: Sample) -> str | None:
        try:
            decode_image(sample.path)
        except DataError as err:
            return err.reason
        return None

    good: list[Sample] = []
    bad: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(samples)))) as pool:
        results = track(pool.map(check, samples), total=len(samples), description=f"checking {len(samples)} images",
                        disable=not progress)
        for sample, reason in zip(samples, results):
            if reason is None:
                good.append(sample)
            else:
                bad.append((sample.path, reason))
    return good, bad
