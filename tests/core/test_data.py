"""Readers, patient-id parser and decoder of core.data, on tiny seeded files made in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import (
    DataError,
    Sample,
    decode_image,
    load_images,
    patient_id,
    read_csv,
    read_folder,
    read_source,
)
from core.preprocess import Preprocess

KERMANY_TRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "kermany-cxr-224" / "train"
RNG = np.random.default_rng(0)


def gray(path: Path, mode: str = "L", size=(24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = RNG.integers(0, 256, (size[1], size[0]) + ((3,) if mode == "RGB" else ()), dtype=np.uint8)
    Image.fromarray(arr, mode=mode).save(path)
    return path


def class_folders(root: Path) -> Path:
    gray(root / "NORMAL" / "IM-0001-0001.jpeg")
    gray(root / "NORMAL" / "IM-0001-0002.png")
    gray(root / "NORMAL" / "scan.bmp", "RGB")
    gray(root / "PNEUMONIA" / "person1_bacteria_1.jpeg", "RGB")
    gray(root / "PNEUMONIA" / "person1_virus_2.png")
    (root / "NORMAL" / ".DS_Store").write_bytes(b"junk")
    (root / "PNEUMONIA" / "._person1_virus_2.png").write_bytes(b"junk")
    return root


def write_dicom(path: Path, arr: np.ndarray, photometric="MONOCHROME2", slope=None, intercept=None,
                bits_stored=None, window=None) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    frames = arr.shape[0] if arr.ndim == 3 else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# -- patient ids ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, patient",
    [
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person1000_virus_1681.jpeg", "person1000"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0115-0001-0002.jpeg", "IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("/some/dir/NORMAL2-IM-1427-0001-0001.jpeg", "NORMAL2-IM-1427"),
        ("scan_17.png", "scan_17"),
        ("person12.png", "person12"),
    ],
)
def test_patient_id(name, patient):
    assert patient_id(name) == patient


@pytest.mark.shared_data
@pytest.mark.skipif(not KERMANY_TRAIN.is_dir(), reason=f"real Kermany images not found at {KERMANY_TRAIN}")
def test_patient_id_on_real_kermany_names():
    files = [p for c in ("NORMAL", "PNEUMONIA") for p in (KERMANY_TRAIN / c).iterdir()]
    unparsed = [p.name for p in files if patient_id(p.name) == p.stem]
    assert unparsed == []
    assert len(files) == 5216
    assert len({patient_id(p.name) for p in files}) == 2846


# -- folders -------------------------------------------------------------------------------------

def test_read_class_folders(tmp_path):
    src = read_folder(class_folders(tmp_path / "data"))
    assert src.kind == "class-folders" and src.skipped == []
    assert [Path(s.path).name for s in src.samples] == [
        "IM-0001-0001.jpeg", "IM-0001-0002.png", "scan.bmp", "person1_bacteria_1.jpeg", "person1_virus_2.png"
    ]
    assert [s.label for s in src.samples] == [0, 0, 0, 1, 1]
    assert {s.patient for s in src.samples} == {"IM-0001", "scan", "person1"}
    assert all(Path(s.path).is_absolute() and s.side is None for s in src.samples)


def test_read_kermany_layout_case_insensitive(tmp_path):
    for side in ("train", "Val", "test"):
        gray(tmp_path / side / "normal" / f"IM-{side}-0001.png")
        gray(tmp_path / side / "PNEUMONIA" / f"person9_virus_{len(side)}.png")
    src = read_source(tmp_path)
    assert src.kind == "kermany-split"
    assert [s.side for s in src.samples] == ["train", "train", "val", "val", "test", "test"]
    assert [s.label for s in src.samples] == [0, 1, 0, 1, 0, 1]


def test_non_image_in_class_folder(tmp_path):
    root = class_folders(tmp_path)
    (root / "NORMAL" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt.*--skip-bad"):
        read_folder(root)
    src = read_folder(root, skip_bad=True)
    assert len(src.samples) == 5 and len(src.skipped) == 1 and src.skipped[0][0].endswith("notes.txt")


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda r: (r / "NORMAL").mkdir(), "NORMAL holds no images"),
        (lambda r: gray(r / "COVID" / "a.png"), "COVID.*NORMAL, PNEUMONIA"),
    ],
)
def test_bad_class_folders(tmp_path, make, match):
    root = tmp_path / "d"
    gray(root / "PNEUMONIA" / "a.png")
    make(root)
    with pytest.raises(DataError, match=match):
        read_folder(root, skip_bad=True)


def test_missing_class_folder(tmp_path):
    gray(tmp_path / "PNEUMONIA" / "a.png")
    with pytest.raises(DataError, match="no NORMAL images.*both classes"):
        read_folder(tmp_path)


def test_no_class_folders_lists_what_was_found(tmp_path):
    gray(tmp_path / "images" / "a.png")
    with pytest.raises(DataError, match=r"no NORMAL/PNEUMONIA folders.*found: images.*expected"):
        read_folder(tmp_path)


def test_missing_root_and_wrong_file(tmp_path):
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        read_source(tmp_path / "nowhere")
    (tmp_path / "list.txt").write_text("x")
    with pytest.raises(DataError, match="list.txt.*not a .csv"):
        read_source(tmp_path / "list.txt")


# -- CSV -----------------------------------------------------------------------------------------

def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_read_csv(tmp_path):
    gray(tmp_path / "img" / "a.png")
    gray(tmp_path / "img" / "person3_virus_1.png")
    absolute = gray(tmp_path / "other" / "c.jpeg")
    csv = write_csv(
        tmp_path / "list.csv",
        f"Path,LABEL,patient_id,side\nimg/a.png,normal,P7,train\nimg/person3_virus_1.png,1,,test\n{absolute},0,,\n",
    )
    src = read_source(csv)
    assert src.kind == "csv" and src.root == str(csv)
    assert src.samples == [
        Sample(str(tmp_path / "img" / "a.png"), 0, "P7", "train"),
        Sample(str(tmp_path / "img" / "person3_virus_1.png"), 1, "person3", "test"),
        Sample(str(absolute), 0, "c", None),
    ]


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty"),
        ("path,label\n", "no rows"),
        ("path,kind\na.png,NORMAL\n", "lacks column.*label.*required: path,label"),
        ("path,label\na.png,COVID\n", "line 2: label 'COVID'.*NORMAL, PNEUMONIA"),
        ("path,label,side\na.png,0,training\n", "line 2: side 'training'"),
        ("path,label\na.png,0\na.png,1\n", "line 3.*already listed on line 2"),
    ],
)
def test_csv_errors(tmp_path, text, match):
    gray(tmp_path / "a.png")
    with pytest.raises(DataError, match=match):
        read_csv(write_csv(tmp_path / "l.csv", text), skip_bad=True)


def test_csv_missing_and_non_image_files(tmp_path):
    gray(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    csv = write_csv(tmp_path / "l.csv", "path,label\na.png,0\ngone.png,1\nnotes.txt,1\n")
    with pytest.raises(DataError, match="line 3: image .*gone.png does not exist"):
        read_csv(csv)
    src = read_csv(csv, skip_bad=True)
    assert len(src.samples) == 1
    assert [Path(p).name for p, _ in src.skipped] == ["gone.png", "notes.txt"]


# -- decoding ------------------------------------------------------------------------------------

def test_decode_common_formats(tmp_path):
    for name, mode in [("a.png", "L"), ("b.jpeg", "RGB"), ("c.bmp", "RGB"), ("d.tif", "L")]:
        img = decode_image(gray(tmp_path / name, mode))
        assert img.mode == "L" and img.size == (24, 20)


GREYS = np.arange(60, 160, dtype=np.uint8).reshape(10, 10)  # a low-contrast picture: grey levels 60-159


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_decode_16bit_matches_8bit_not_stretched(tmp_path, suffix):
    Image.fromarray(GREYS).save(tmp_path / f"eight{suffix}")
    Image.fromarray(GREYS.astype(np.uint16) * 257).save(tmp_path / f"sixteen{suffix}")  # the same at 16 bits
    Image.fromarray((GREYS.astype(np.uint16) << 8) + 200).save(tmp_path / f"shifted{suffix}")  # low byte noise
    eight = np.asarray(decode_image(tmp_path / f"eight{suffix}")).astype(int)
    for name in ("sixteen", "shifted"):
        deep = np.asarray(decode_image(tmp_path / f"{name}{suffix}")).astype(int)
        assert np.abs(deep - eight).max() <= 1, name
    assert eight.min() == 60 and eight.max() == 159  # kept, not stretched to 0-255


def test_decode_32bit_int_and_float_by_range_not_extremes(tmp_path):
    Image.fromarray(GREYS.astype(np.int32) * 257, mode="I").save(tmp_path / "int32.tif")
    Image.fromarray(GREYS.astype(np.float32) / 255, mode="F").save(tmp_path / "float.tif")
    for name in ("int32.tif", "float.tif"):
        out = np.asarray(decode_image(tmp_path / name)).astype(int)
        assert np.abs(out - GREYS).max() <= 1, name


def test_decode_dicom_8_and_16_bit_and_monochrome1(tmp_path):
    ramp = np.arange(20 * 24).reshape(20, 24)
    d8 = write_dicom(tmp_path / "a.dcm", (ramp % 256).astype(np.uint8))
    d16 = write_dicom(tmp_path / "b.dicom", (ramp * 136).astype(np.uint16))
    mono1 = write_dicom(tmp_path / "c.dcm", (ramp * 136).astype(np.uint16), photometric="MONOCHROME1")
    signed = write_dicom(tmp_path / "noext", (ramp * 60).astype(np.int16), slope=2.0, intercept=-1024)
    for path in (d8, d16, mono1, signed):
        assert decode_image(path).mode == "L"
    np.testing.assert_array_equal(np.asarray(decode_image(d8)), ramp % 256)
    a16, a1 = np.asarray(decode_image(d16)), np.asarray(decode_image(mono1))
    np.testing.assert_array_equal(a16, np.round(ramp * 136 / 257))  # by the 16 stored bits
    np.testing.assert_array_equal(a1, 255 - a16)  # MONOCHROME1: the lowest value is white
    lo, hi = -32768 * 2 - 1024, 32767 * 2 - 1024  # the rescaled range of 16 signed stored bits
    expect = np.round(((ramp * 60 * 2 - 1024) - lo) * 255 / (hi - lo))
    np.testing.assert_array_equal(np.asarray(decode_image(signed)), expect)  # found by the DICM magic


def test_decode_dicom_12_bits_stored_without_window(tmp_path):
    values = GREYS.astype(np.uint16) * 16  # 8-bit grey levels at 12 bits
    out = np.asarray(decode_image(write_dicom(tmp_path / "d12.dcm", values, bits_stored=12))).astype(int)
    assert np.abs(out - GREYS).max() <= 1  # by BitsStored (0..4095), not the image's own 960..2544


def test_decode_dicom_applies_its_window(tmp_path):
    values = np.linspace(0, 4000, 100).reshape(10, 10).astype(np.uint16)
    path = write_dicom(tmp_path / "w.dcm", values, bits_stored=12, window=(2000, 1001))
    out = np.asarray(decode_image(path)).astype(int)
    v = values.astype(float)
    expect = np.clip(((v - 1999.5) / 1000 + 0.5) * 255, 0, 255)  # PS3.3 C.11.2.1.2 LINEAR, onto 0..255
    assert np.abs(out - expect).max() <= 1
    assert out[v <= 1500].max() == 0 and out[v > 2500].min() == 255  # outside the window: black or white


def test_decode_multiframe_dicom_takes_first_frame(tmp_path):
    frames = np.stack([np.tile(np.arange(24, dtype=np.uint16) * 2000, (20, 1)), np.zeros((20, 24), np.uint16)])
    out = np.asarray(decode_image(write_dicom(tmp_path / "m.dcm", frames)))
    assert out.shape == (20, 24) and out[0, 0] == 0 and out[0, -1] == round(23 * 2000 / 257)


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("empty.png", b"", "empty.png is empty \\(0 bytes\\)"),
        ("broken.jpeg", RNG.bytes(300), "cannot decode .*broken.jpeg: corrupt or not an image"),
        ("broken.dcm", RNG.bytes(300), "cannot decode DICOM .*broken.dcm"),
    ],
)
def test_decode_bad_files(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=match):
        decode_image(tmp_path / name)


def test_decode_truncated_jpeg(tmp_path):
    data = gray(tmp_path / "full.jpeg", size=(64, 64)).read_bytes()
    (tmp_path / "cut.jpeg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.jpeg"):
        decode_image(tmp_path / "cut.jpeg")


# -- load_images ---------------------------------------------------------------------------------

def test_load_images_keeps_order_and_skips_bad(tmp_path):
    root = class_folders(tmp_path)
    (root / "PNEUMONIA" / "bad.jpeg").write_bytes(RNG.bytes(100))
    (root / "PNEUMONIA" / "zero.png").write_bytes(b"")
    samples = read_folder(root).samples
    pre = Preprocess(size=16, channels=3)
    with pytest.raises(DataError, match="bad.jpeg"):
        load_images(samples, pre, progress=False)
    arr, kept, skipped = load_images(samples, pre, skip_bad=True, progress=False)
    assert arr.shape == (5, 16, 16, 3) and arr.dtype == np.uint8
    assert [Path(p).name for p, _ in skipped] == ["bad.jpeg", "zero.png"]
    assert kept == [s for s in samples if Path(s.path).name not in ("bad.jpeg", "zero.png")]
    for row, sample in zip(arr, kept):
        np.testing.assert_array_equal(row, pre.image_to_uint8(decode_image(sample.path)))


def test_load_images_empty():
    arr, kept, skipped = load_images([], Preprocess.for_model(16, channels=1), progress=False)
    assert arr.shape == (0, 16, 16, 1) and kept == [] and skipped == []
