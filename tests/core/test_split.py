"""Patient-wise split, manifest round trip and audit of core.split, on synthetic sample lists."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from core.data import DataError, DataSource, Sample
from core.split import SIDES, Split, audit, make_split


def synthetic(n_patients=200, seed=0, sides=False) -> DataSource:
    """Patients with 1-8 images each; about a third NORMAL. Paths need not exist for splitting."""
    rng = np.random.default_rng(seed)
    samples = []
    for p in range(n_patients):
        label = int(rng.random() > 0.35)
        side = SIDES[p % 3] if sides else None
        for i in range(int(rng.integers(1, 9))):
            samples.append(Sample(f"/data/{LABEL_DIR[label]}/person{p}_x_{i}.jpeg", label, f"person{p}", side))
    return DataSource("/data", "class-folders", samples, [("/data/NORMAL/bad.jpeg", "corrupt")])


LABEL_DIR = ("NORMAL", "PNEUMONIA")


def sides_of_patients(split: Split) -> dict[str, set[str]]:
    out = defaultdict(set)
    for e in split.entries:
        out[e.patient].add(e.side)
    return out


def test_patient_split_never_splits_a_patient_and_respects_ratios():
    src = synthetic()
    split = make_split(src, ratios=(0.6, 0.2, 0.2), seed=1)
    assert all(len(s) == 1 for s in sides_of_patients(split).values())
    assert audit(split) == []
    assert len(split.entries) == len(src.samples)
    assert [split.abspath(e.path) for e in split.entries] == [s.path for s in src.samples]
    assert split.entries[0].path.startswith(LABEL_DIR[src.samples[0].label] + "/")  # relative to the root
    counts = split.counts()
    n = len(src.samples)
    for side, ratio in zip(SIDES, (0.6, 0.2, 0.2)):
        assert abs(counts[side]["images"] / n - ratio) < 0.03
        per_label = [sum(s.label == i for s in src.samples) for i in (0, 1)]
        for i, name in enumerate(LABEL_DIR):  # stratified: each class near its ratio too
            assert abs(counts[side][name] / per_label[i] - ratio) < 0.05
    assert split.skipped == [("NORMAL/bad.jpeg", "corrupt")] and split.method == "patient"


def test_patient_label_is_max_of_its_images():
    samples = [Sample(f"/d/{p}_{i}.png", int(p < 3 and i == 1), f"p{p}", None) for p in range(6) for i in range(2)]
    split = make_split(DataSource("/d", "csv", samples))
    assert all(len(s) == 1 for s in sides_of_patients(split).values())
    assert {e.side for e in split.entries if e.patient in ("p0", "p1", "p2")} == set(SIDES)


def test_split_is_deterministic_and_seed_matters():
    src = synthetic()
    a, b = make_split(src, seed=5), make_split(src, seed=5)
    assert a.entries == b.entries and a.hash == b.hash
    c = make_split(src, seed=6)
    assert c.hash != a.hash
    assert [e.side for e in c.entries] != [e.side for e in a.entries]


@pytest.mark.parametrize("ratios", [(0.7, 0.3), (0.7, 0.2, 0.2), (1.0, 0.0, 0.0), (0.8, -0.1, 0.3), ("a", 1, 2)])
def test_bad_ratios(ratios):
    with pytest.raises(DataError, match="three positive numbers.*sum to 1"):
        make_split(synthetic(20), ratios=ratios)


def test_too_few_patients():
    samples = [Sample(f"/d/n{i}.png", 0, f"n{i}", None) for i in range(5)]
    samples += [Sample(f"/d/p{i}_{j}.png", 1, f"p{i}", None) for i in range(2) for j in range(4)]
    with pytest.raises(DataError, match="2 PNEUMONIA patient.*at least 3"):
        make_split(DataSource("/d", "csv", samples))


def test_unknown_method():
    with pytest.raises(DataError, match="'random'.*patient, official"):
        make_split(synthetic(20), method="random")


def test_save_load_round_trip(tmp_path):
    split = make_split(synthetic(60), seed=3)
    path = split.save(tmp_path / "runs" / "split.json")
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temporary file left
    d = json.loads(path.read_text())
    assert d["format"] == "cxr-edge-split/2" and d["hash"] == split.hash
    assert set(d) >= {"method", "seed", "ratios", "source", "created", "counts", "skipped", "entries"}
    assert d["counts"] == split.counts()
    loaded = Split.load(path)
    assert loaded.hash == split.hash and loaded.entries == split.entries
    assert (loaded.method, loaded.seed, loaded.ratios, loaded.source) == ("patient", 3, (0.7, 0.15, 0.15), "/data")
    assert loaded.skipped == split.skipped and loaded.created == split.created
    assert loaded.side("val")[0].side == "val"


def test_hash_ignores_entry_order():
    split = make_split(synthetic(30))
    reordered = Split(split.entries[::-1], split.method, split.seed, split.ratios, split.source)
    assert reordered.hash == split.hash


def test_edited_file_is_detected(tmp_path):
    split = make_split(synthetic(30))
    path = split.save(tmp_path / "split.json")
    d = json.loads(path.read_text())
    d["entries"][0]["side"] = "test" if d["entries"][0]["side"] != "test" else "train"
    path.write_text(json.dumps(d))
    with pytest.raises(DataError, match="split.json was edited"):
        Split.load(path)


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "does not exist"),
        ("{not json", "not valid JSON"),
        ('{"format": "other"}', "not a cxr-edge-split/2 manifest"),
        ('{"format": "cxr-edge-split/2", "entries": []}', "not a cxr-edge-split/2 manifest"),
    ],
)
def test_load_bad_files(tmp_path, content, match):
    path = tmp_path / "split.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=match):
        Split.load(path)


def test_audit_finds_planted_problems():
    split = make_split(synthetic(40))
    entries = list(split.entries)
    victim = next(e for e in entries if e.side == "train")
    other = "test"
    entries.append(type(victim)(victim.path.replace("_x_", "_y_"), victim.label, victim.patient, other))
    entries.append(entries[0])  # duplicate path
    problems = audit(Split(entries, "patient", 0, (0.7, 0.15, 0.15), "/data"))
    assert any(f"patient {victim.patient} is on 2 sides" in p and victim.path in p for p in problems)
    assert any(f"{entries[0].path} is listed 2 times" in p for p in problems)


def test_audit_empty_and_single_class_sides():
    samples = [Sample(f"/d/{i}.png", int(i >= 4), f"q{i}", "train" if i % 2 else "val") for i in range(8)]
    samples = [s for s in samples if not (s.side == "val" and s.label == 0)]
    split = make_split(DataSource("/d", "kermany-split", samples), method="official")
    problems = audit(split)
    assert "side test is empty" in problems
    assert "side val has PNEUMONIA images only" in problems


def test_official_split_keeps_folder_sides_and_reports_overlap():
    src = synthetic(30, sides=True)
    moved = src.samples[0]
    src.samples.append(Sample(moved.path.replace("_x_", "_z_"), moved.label, moved.patient, "val"))
    split = make_split(src, method="official")
    assert [e.side for e in split.entries] == [s.side for s in src.samples]
    assert abs(sum(split.ratios) - 1) < 1e-4
    assert [p for p in audit(split) if p.startswith(f"patient {moved.patient} ")]


def test_official_split_needs_sides():
    with pytest.raises(DataError, match="no train/val/test folders.*--split patient"):
        make_split(synthetic(20), method="official")


def _folder(root, n_patients=12):
    from PIL import Image

    for p in range(n_patients):
        for label in range(2):
            if (p + label) % 3 == 0:
                continue
            d = root / LABEL_DIR[label]
            d.mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.new("L", (8, 8), 40 * i).save(d / f"person{p}_{'virus' if label else 'bacteria'}_{i}.jpeg")
    return root


def test_one_folder_at_two_paths_gives_one_hash_and_assignment(tmp_path):
    import shutil

    from core.data import read_folder

    a = _folder(tmp_path / "here" / "kermany")
    b = tmp_path / "elsewhere" / "deeper" / "copy"
    shutil.copytree(a, b)
    sa, sb = make_split(read_folder(a), seed=5), make_split(read_folder(b), seed=5)
    assert sa.hash == sb.hash
    assert [(e.path, e.side) for e in sa.entries] == [(e.path, e.side) for e in sb.entries]
    saved = json.loads(sa.save(tmp_path / "runs" / "split.json").read_text())
    assert str(tmp_path) not in json.dumps(saved)  # no machine path in the record
    assert saved["source"] == {"kind": "folder", "path": "../here/kermany"}


def test_moved_split_finds_its_data_and_data_root_override(tmp_path, monkeypatch):
    import shutil

    from core.data import read_folder

    data = _folder(tmp_path / "data")
    split = make_split(read_folder(data), seed=1)
    split.save(tmp_path / "runs" / "split.json")
    shutil.move(str(tmp_path / "runs"), str(tmp_path / "moved-runs"))  # same depth: still finds the data
    moved = Split.load(tmp_path / "moved-runs" / "split.json")
    assert moved.hash == split.hash and moved.samples("test")[0].path.startswith(str(data))
    shutil.move(str(data), str(tmp_path / "new-place"))
    gone = Split.load(tmp_path / "moved-runs" / "split.json")
    with pytest.raises(DataError, match="CXR_EDGE_DATA_ROOT"):
        gone.samples("test")
    monkeypatch.setenv("CXR_EDGE_DATA_ROOT", str(tmp_path / "new-place"))
    found = Split.load(tmp_path / "moved-runs" / "split.json")
    assert Path(found.samples("train")[0].path).is_file() and found.hash == split.hash


def test_old_absolute_manifest_is_read_and_made_relative(tmp_path):
    split = make_split(synthetic(30))
    old = {**split.to_dict(), "format": "cxr-edge-split/1", "source": "/data",
           "entries": [{**e, "path": "/data/" + e["path"]} for e in split.to_dict()["entries"]]}
    rows = sorted((e["path"], e["label"], e["patient"], e["side"]) for e in old["entries"])
    import hashlib
    old["hash"] = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
    (tmp_path / "split.json").write_text(json.dumps(old))
    loaded = Split.load(tmp_path / "split.json")
    assert loaded.entries == split.entries and loaded.hash == split.hash
