#!/usr/bin/env python3
"""Predict PNEUMONIA vs NORMAL on chest X-ray images with the model of this bundle (research use only: not a
medical device, not for clinical decisions; see MODEL_CARD.md).

    python predict.py IMAGE_OR_FOLDER... [--out predictions.csv|.json] [--batch 8] [--tta] [--threads N]

Needs only numpy, Pillow and the model's runtime (onnxruntime or openvino; see requirements.txt); pydicom for
DICOM files. Preprocessing and threshold are read from model.json beside this file; the model file is checked
against its sha256 there first. One row per image: path, probability of PNEUMONIA, decision at the threshold,
the threshold, the model's id, and the error of a file that could not be read (the others go on; exit status 1
when any failed). The same rows as `cxr-edge predict` on the same artifact.

Images are prepared as the model was trained: 8-bit grayscale (images deeper than 8 bits by their bit depth,
16-bit as v / 257; DICOM through its own VOI LUT or window, else its BitsStored; MONOCHROME1 inverted),
resized to the model's size (bilinear, aspect ratio not kept), histogram-equalised when model.json's
preprocessing says so, repeated to its channels, scaled to [0, 1] and normalised with its mean and std.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

HERE = Path(__file__).resolve().parent
LABELS = ("NORMAL", "PNEUMONIA")
COLUMNS = ("path", "probability", "decision", "threshold", "model", "error")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}
DICOM_SUFFIXES = {".dcm", ".dicom"}


class BadImage(ValueError):
    """A file that cannot be read as an image; becomes the row's error."""


# ----------------------------------------------------------------------------------------- images


# The bit-depth rules of cxr-edge's core/data.py, copied so that this file needs no cxr-edge: deeper data is
# mapped by its bit depth, never stretched per image.
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


def _deep_to_gray(img: Image.Image) -> Image.Image:
    """A PIL image deeper than 8 bits -> mode ``L`` by its bit depth (module docstring), never by its extremes."""
    arr = np.array(img)
    if img.mode.startswith("I;16"):
        return Image.fromarray(_scale_to_uint8(arr, 0.0, 65535.0), mode="L")  # v / 257: 257 * k -> k exactly
    return Image.fromarray(_scale_to_uint8(np.maximum(arr, 0), *_wide_range(arr)), mode="L")


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as f:
        return f.read(132)[128:132] == b"DICM"


def _decode_dicom(path: Path) -> Image.Image:
    try:
        import pydicom
    except ImportError:
        raise BadImage(f"{path} is DICOM: pip install pydicom to read it") from None
    try:
        ds = pydicom.dcmread(path, force=True)
        arr = ds.pixel_array
        color = int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            arr = arr[0]
        if color:
            arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    except Exception as err:
        raise BadImage(f"cannot decode DICOM {path}: {err}") from err
    if arr.ndim != 2:
        raise BadImage(f"DICOM {path} has pixel data of shape {arr.shape}, not one 2-D image")
    try:
        out = _scale_to_uint8(arr, 0.0, float(2 ** int(getattr(ds, "BitsStored", 8) or 8) - 1)) if color \
            else _dicom_gray(ds, arr)
    except Exception as err:  # a window or LUT pydicom cannot apply (e.g. width 0)
        raise BadImage(f"cannot decode DICOM {path}: {err}") from err
    if not color and str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out
    return Image.fromarray(out, mode="L")


def decode(path: Path) -> Image.Image:
    """One image file -> 8-bit grayscale PIL image."""
    if not path.is_file():
        raise BadImage(f"image {path} does not exist")
    if path.stat().st_size == 0:
        raise BadImage(f"image {path} is empty (0 bytes)")
    if _is_dicom(path):
        return _decode_dicom(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "L":
                return img.copy()
            if img.mode.startswith("I") or img.mode == "F":
                return _deep_to_gray(img)
            return img.convert("L")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImage(f"cannot decode {path}: corrupt or not an image ({err})") from err


def prepare(image: Image.Image, pre: dict) -> np.ndarray:
    """Grayscale image -> uint8 ``size x size x channels`` (bilinear squash resize, channels repeated)."""
    size, channels = int(pre["size"]), int(pre["channels"])
    if pre.get("resize", "squash") != "squash":
        raise SystemExit(f"model.json asks for resize rule {pre['resize']!r}; this predict.py knows 'squash'")
    if pre.get("equalize", "none") not in ("none", "histogram"):
        raise SystemExit(f"model.json asks for equalize rule {pre['equalize']!r}; this predict.py knows 'histogram'")
    gray = image.convert("L") if image.mode != "L" else image
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.BILINEAR)
    if pre.get("equalize", "none") == "histogram":  # the recipe's histogram equalisation, as core/preprocess.py
        from PIL import ImageOps

        gray = ImageOps.equalize(gray)
    return np.repeat(np.asarray(gray, dtype=np.uint8)[:, :, None], channels, axis=2)


def normalize(batch: np.ndarray, pre: dict) -> np.ndarray:
    """uint8 ``N x H x W x C`` -> float32 ``N x C x H x W`` with the model's mean and std."""
    x = batch.astype(np.float32) / 255.0
    x = (x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def list_images(inputs: list[str]) -> list[Path]:
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(item).parts))
            if not found:
                raise SystemExit(f"error: folder {item} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out += found
        else:
            out.append(item)
    return out


# ------------------------------------------------------------------------------------------ model


def sha256(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class OnnxModel:
    def __init__(self, path: Path, threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input: x})[0], np.float32).reshape(-1)


class OpenVinoModel:
    """Compiled once per batch size with a static shape (as `cxr-edge` runs OpenVINO IR), in FP32 precision."""

    def __init__(self, path: Path, threads: int | None) -> None:
        import openvino as ov

        self.ov, self.core = ov, ov.Core()
        self.model = self.core.read_model(str(path))
        self.config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        self.requests: dict[int, object] = {}

    def predict(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if n not in self.requests:
            static = self.model.clone()
            static.reshape({static.inputs[0]: self.ov.PartialShape([n, *list(static.inputs[0].partial_shape)[1:]])})
            self.requests[n] = self.core.compile_model(static, "CPU", self.config).create_infer_request()
        request = self.requests[n]
        request.get_input_tensor(0).data[...] = x  # its own tensor: a new one per call is prepared again each time
        request.infer()
        return np.array(request.get_output_tensor(0).data, dtype=np.float32).reshape(-1)


def load_model(meta: dict, threads: int | None):
    files = [HERE / f for f in meta["artifact"]["files"]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"error: the bundle lacks {', '.join(missing)}; copy the whole bundle folder")
    actual = sha256(files)
    if actual != meta["artifact"]["sha256"]:
        raise SystemExit(f"error: {files[0]} does not match model.json: sha256 {actual[:16]}... on disk, "
                         f"{meta['artifact']['sha256'][:16]}... recorded; the model file was changed or damaged: "
                         "copy the bundle again")
    fmt = meta["model"]["format"]
    if fmt == "onnx":
        return OnnxModel(files[0], threads)
    if fmt == "openvino":
        return OpenVinoModel(files[0], threads)
    raise SystemExit(f"error: this predict.py runs ONNX and OpenVINO models, not {fmt!r}")


def sigmoid(logits: np.ndarray) -> np.ndarray:
    z = np.clip(np.asarray(logits, np.float64).reshape(-1), -60.0, 60.0)
    return 1.0 / (1.0 + np.exp(-z))


def tta_views(x: np.ndarray) -> list[np.ndarray]:
    """The image and four translations by 4% of its side (edges repeated), as cxr-edge's --tta; no flips."""
    s = max(1, round(0.04 * x.shape[-1]))
    h, w = x.shape[-2:]
    views = [x]
    for dy, dx in ((0, s), (0, -s), (s, 0), (-s, 0)):
        pad = ((0, 0), (0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)))
        top, left = max(-dy, 0), max(-dx, 0)
        views.append(np.ascontiguousarray(np.pad(x, pad, mode="edge")[:, :, top:top + h, left:left + w]))
    return views


def probabilities(model, x: np.ndarray, tta: bool) -> np.ndarray:
    if not tta:
        return sigmoid(model.predict(x))
    return np.mean([sigmoid(model.predict(v)) for v in tta_views(x)], axis=0)


# ------------------------------------------------------------------------------------------- rows


def predict(paths: list[Path], meta: dict, model, batch: int, tta: bool) -> list[dict]:
    pre, threshold = meta["preprocess"], float(meta["threshold"]["value"])
    model_id = meta["model"]["id"]
    rows = []
    for i in range(0, len(paths), batch):
        chunk, good, errors = paths[i:i + batch], [], []
        for p in chunk:
            try:
                good.append(prepare(decode(p), pre))
                errors.append(None)
            except BadImage as err:
                errors.append(str(err))
        probs = iter(probabilities(model, normalize(np.stack(good), pre), tta) if good else [])
        for p, err in zip(chunk, errors):
            prob = None if err else float(next(probs))
            rows.append({"path": str(p), "probability": prob,
                         "decision": None if prob is None else LABELS[int(prob >= threshold)],
                         "threshold": threshold, "model": model_id, "error": err})
    return rows


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: "" if row[k] is None else repr(row[k]) if isinstance(row[k], float) else row[k]
                    for k in COLUMNS})
    return buf.getvalue()


def write(path: Path, rows: list[dict], meta: dict, summary: dict) -> None:
    """.csv or .json, written to a temporary file and renamed, so nothing half-written is left."""
    if path.suffix.lower() == ".csv":
        text = csv_text(rows)
    else:
        m = meta["model"]
        text = json.dumps({"format": "cxr-edge-predictions/1", "model": {**m, "sha256": meta["artifact"]["sha256"],
                           "threshold": meta["threshold"]["value"], "preprocess": meta["preprocess"]},
                           "summary": summary, "columns": list(COLUMNS), "rows": rows}, indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", help="image files (JPEG, PNG, TIFF, BMP, DICOM) or folders (recursed)")
    ap.add_argument("--out", type=Path, help="write the rows to this .csv or .json file (default: CSV on stdout)")
    ap.add_argument("--batch", type=int, default=8, help="images per batch (default 8)")
    ap.add_argument("--tta", action="store_true", help="average over the image and four small shifts")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads of the runtime (default: all)")
    ap.add_argument("--force", action="store_true", help="replace an existing --out file")
    args = ap.parse_args(argv)
    if args.batch < 1:
        ap.error(f"--batch {args.batch} must be at least 1")
    if args.out is not None and args.out.suffix.lower() not in (".csv", ".json"):
        ap.error(f"--out {args.out}: name a .csv or a .json file")
    if args.out is not None and args.out.exists() and not args.force:
        ap.error(f"--out {args.out} already exists; pass --force to replace it")
    meta = json.loads((HERE / "model.json").read_text())
    model = load_model(meta, args.threads)
    paths = list_images(args.inputs)
    t0 = time.perf_counter()
    rows = predict(paths, meta, model, args.batch, args.tta)
    seconds = time.perf_counter() - t0
    counts = {label: sum(r["decision"] == label for r in rows) for label in LABELS}
    failed = sum(1 for r in rows if r["error"])
    summary = {"images": len(rows), **counts, "failed": failed, "seconds": round(seconds, 3),
               "images_per_s": round(len(rows) / seconds, 1) if seconds > 0 else None}
    if args.out is None:
        sys.stdout.write(csv_text(rows))
    else:
        write(args.out, rows, meta, summary)
    for r in rows:
        if r["error"]:
            print(f"failed: {r['error']}", file=sys.stderr)
    print(f"{len(rows)} images: {counts['NORMAL']} NORMAL, {counts['PNEUMONIA']} PNEUMONIA, {failed} failed; "
          f"{summary['images_per_s']} images/s; model {meta['model']['id']}, threshold "
          f"{meta['threshold']['value']:.4f}" + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
