"""The built-in synthetic data set: determinism, layout, masks, caching and learnability."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from core import synthetic
from core.synthetic import (
    GENERATOR_VERSION,
    MANIFEST_COLUMNS,
    SyntheticSpec,
    default_cache_dir,
    ensure_synthetic,
    generate,
    load_mask,
    render_patient,
)

SMALL = SyntheticSpec(n_images=40, size=64, seed=3)


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(SMALL, tmp_path_factory.mktemp("synth") / "ds", progress=False)


def test_same_seed_same_bytes_other_seed_other_images(small: Path, tmp_path: Path) -> None:
    again = generate(SMALL, tmp_path / "again", progress=False)
    assert _hashes(again) == _hashes(small)
    other = generate(SyntheticSpec(n_images=40, size=64, seed=4), tmp_path / "other", progress=False)
    pngs = lambda h: {v for k, v in h.items() if k.endswith(".png") and not k.startswith("masks")}  # noqa: E731
    assert not pngs(_hashes(other)) & pngs(_hashes(small))


def test_bytes_do_not_depend_on_the_number_of_processes(tmp_path: Path) -> None:
    spec = SyntheticSpec(n_images=80, size=32, seed=3)  # about 45 patients: two chunks of 25
    one = generate(spec, tmp_path / "one", progress=False, workers=1)
    two = generate(spec, tmp_path / "two", progress=False, workers=2)
    assert _hashes(two) == _hashes(one)
    with pytest.raises(ValueError, match="workers=0"):
        generate(spec, tmp_path / "none", progress=False, workers=0)


def test_manifest_layout_and_images(small: Path) -> None:
    with open(small / "manifest.csv", newline="") as f:
        assert tuple(next(csv.reader(f))) == MANIFEST_COLUMNS
    rows = _rows(small)
    assert len(rows) == SMALL.n_images
    for r in rows:
        assert r["label"] in ("NORMAL", "PNEUMONIA")
        assert r["path"].startswith(r["label"] + "/") and r["path"].endswith(".png")
        assert Path(r["path"]).name.startswith(r["patient_id"] + "-")
        with Image.open(small / r["path"]) as im:
            assert im.mode == "L" and im.size == (SMALL.size, SMALL.size)
    meta = json.loads((small / "spec.json").read_text())
    assert meta["spec"] == {"n_images": 40, "size": 64, "seed": 3, "normal_fraction": 0.27}
    assert meta["generator_version"] == GENERATOR_VERSION and meta["key"] == SMALL.key()
    assert meta["counts"]["images"] == 40
    assert meta["counts"]["NORMAL"] == sum(r["label"] == "NORMAL" for r in rows)


@pytest.mark.parametrize("fraction", [0.27, 0.5])
def test_class_fraction(tmp_path: Path, fraction: float) -> None:
    spec = SyntheticSpec(n_images=60, size=32, seed=1, normal_fraction=fraction)
    rows = _rows(generate(spec, tmp_path, progress=False))
    normal = sum(r["label"] == "NORMAL" for r in rows) / len(rows)
    assert abs(normal - fraction) <= 0.05


def test_masks_for_pneumonia_only(small: Path) -> None:
    rows = _rows(small)
    pneumonia = [r for r in rows if r["label"] == "PNEUMONIA"]
    assert pneumonia and len(pneumonia) < len(rows)
    for r in rows:
        if r["label"] == "NORMAL":
            assert r["mask"] == ""
            continue
        assert r["mask"] == "masks/" + Path(r["path"]).name
        mask = load_mask(small, r["mask"])
        assert mask.dtype == bool and mask.shape == (SMALL.size, SMALL.size)
        assert 0 < mask.sum() < 0.25 * mask.size
    assert len(list((small / "masks").iterdir())) == len(pneumonia)


def test_lesions_lie_inside_the_lungs() -> None:
    rng = np.random.default_rng(0)
    for label in (0, 1):
        for img, mask, lungs in synthetic._render_patient_full(rng, label, 3, 64):
            assert img.dtype == np.uint8 and img.shape == mask.shape == lungs.shape == (64, 64)
            assert lungs.mean() > 0.1
            if label == 0:
                assert not mask.any()
            else:
                assert mask.any() and not (mask & ~lungs).any()


def test_render_patient_api() -> None:
    images = render_patient(np.random.default_rng(5), 1, 2, 48)
    assert len(images) == 2 and all(m.any() for _, m in images)
    assert not np.array_equal(images[0][0], images[1][0])  # new pose and noise per image
    with pytest.raises(ValueError, match="label"):
        render_patient(np.random.default_rng(5), 2, 1, 48)


def test_patients_hold_one_to_three_images_of_one_label(small: Path) -> None:
    labels: dict[str, set[str]] = defaultdict(set)
    counts: dict[str, int] = defaultdict(int)
    for r in _rows(small):
        labels[r["patient_id"]].add(r["label"])
        counts[r["patient_id"]] += 1
    assert all(len(v) == 1 for v in labels.values())
    assert set(counts.values()) <= {1, 2, 3} and max(counts.values()) > 1
    assert all(p.startswith("synth-p") and len(p) == len("synth-p00000") for p in counts)


def test_ensure_synthetic_reuses_the_cache(tmp_path: Path) -> None:
    first = ensure_synthetic(SMALL, cache_dir=tmp_path, progress=False)
    assert first == tmp_path / f"synthetic-{SMALL.key()}"
    stamp = (first / "manifest.csv").stat().st_mtime_ns
    assert ensure_synthetic(SMALL, cache_dir=tmp_path, progress=False) == first
    assert (first / "manifest.csv").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary folder left


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return render_patient(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_patient", failing)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(SMALL, cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_EDGE_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("CXR_EDGE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "cxr-edge"
    assert SMALL.key() == SyntheticSpec(n_images=40, size=64, seed=3).key()
    assert len({SMALL.key(), SyntheticSpec().key(), SyntheticSpec(seed=1).key()}) == 3


@pytest.mark.parametrize(
    "kwargs, word",
    [({"n_images": 0}, "n_images"), ({"size": 8}, "size"), ({"normal_fraction": 1.5}, "normal_fraction")],
)
def test_spec_rejects_bad_values(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        SyntheticSpec(**kwargs)


def test_learnable_but_not_trivial(tmp_path: Path) -> None:
    """Pixels carry the label (a linear model on 16x16 thumbnails learns it); brightness does not."""
    folder = generate(SyntheticSpec(n_images=240, size=64, seed=0), tmp_path, progress=False)
    rows = _rows(folder)
    x = np.stack(
        [np.asarray(Image.open(folder / r["path"]).resize((16, 16), Image.BILINEAR), np.float32) for r in rows]
    ).reshape(len(rows), -1)
    y = np.array([r["label"] == "PNEUMONIA" for r in rows])
    val = np.array([int(r["patient_id"][-5:]) % 3 == 0 for r in rows])  # patient-wise split
    z = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    clf = LogisticRegression(C=0.1, max_iter=2000).fit(z[~val], y[~val])
    assert roc_auc_score(y[val], clf.predict_proba(z[val])[:, 1]) > 0.7
    assert roc_auc_score(y, x.mean(1)) < 0.97
