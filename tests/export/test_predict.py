"""`cxr-edge predict` and its library: every format present gives the bench predictor's probabilities, bad files
become rows, a changed artifact is refused, and TTA and heatmaps work."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from export.base import FORMATS
from tests.export.deploy import FORMATS as EXPORTED
from tests.export.deploy import bench_probabilities, deploy_artifacts, image_paths

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, trained_run) -> Path:
    return deploy_artifacts(tmp_path_factory, trained_run)


def _records(artifacts: Path) -> dict[str, dict]:
    from export.manifest import read_manifest

    return {f"{r['format']}/{r['precision']}": r for r in read_manifest(artifacts)}


def _predict(ref, paths, **config):
    from export.predict import PredictConfig, predict_paths

    rows, summary = predict_paths(ref.load(threads=2), ref, paths, PredictConfig(**config))
    return np.array([r["probability"] for r in rows], np.float64), rows, summary


def _csv_rows(text: str) -> list[dict]:
    start = text.index("path,probability,decision")
    lines = [line for line in text[start:].splitlines() if line.count(",") >= 5]
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


@pytest.mark.parametrize("name", ["onnx/fp32", "onnx/int8", "openvino/fp32", "openvino/int8"])
def test_predict_matches_the_bench_predictor(name, artifacts, trained_run):
    fmt, precision = name.split("/")
    if fmt not in EXPORTED:
        pytest.skip(f"{fmt}: {FORMATS[fmt].missing()}")
    from export.model_ref import resolve

    paths = image_paths(trained_run)
    ref = resolve(artifacts, f"resnet18/{name}")
    probs, rows, summary = _predict(ref, paths, batch=4)
    expected = bench_probabilities(_records(artifacts)[name], artifacts, trained_run, paths)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert ref.threshold == trained_run.threshold and ref.preprocess == trained_run.preprocess
    assert [r["decision"] for r in rows] == ["PNEUMONIA" if p >= ref.threshold else "NORMAL" for p in probs]
    assert {r["model"] for r in rows} == {f"resnet18/{fmt}/{precision}@{_records(artifacts)[name]['sha256'][:12]}"}
    assert summary.n == len(paths) and summary.failed == 0 and summary.images_per_s > 0


@pytest.mark.parametrize("fmt", ["executorch", "litert", "tensorrt"])
def test_predict_mobile_and_tensorrt_formats(fmt, trained_run, tmp_path):
    reason = FORMATS[fmt].missing()
    if reason:
        pytest.skip(reason)
    from export.model_ref import resolve
    from export.pipeline import export_runs

    (rec,) = export_runs([trained_run], tmp_path, [fmt], ["fp32"], {}, progress=False)
    assert rec["status"] == "ok", rec.get("error")
    paths = image_paths(trained_run)
    probs, _, _ = _predict(resolve(tmp_path / rec["path"]), paths)
    np.testing.assert_allclose(probs, bench_probabilities(rec, tmp_path, trained_run, paths), atol=1e-6)


def test_a_run_an_artifact_file_and_bare_onnx_metadata_agree(artifacts, trained_run, tmp_path):
    """The same model reached three ways: its file (found in the manifest), the file alone (ONNX metadata), and
    the run folder (PyTorch FP32, within FP32 export tolerance)."""
    from export.model_ref import resolve

    paths = image_paths(trained_run)
    rec = _records(artifacts)["onnx/fp32"]
    by_file = resolve(artifacts / rec["path"])
    assert "manifest" in by_file.described_by
    alone = tmp_path / "model.onnx"
    shutil.copyfile(artifacts / rec["path"], alone)
    bare = resolve(alone)
    assert "ONNX metadata" in bare.described_by and bare.threshold == trained_run.threshold
    assert bare.preprocess == trained_run.preprocess and bare.sha256 == rec["sha256"]
    run = resolve(trained_run.path)
    assert run.format == "pytorch" and run.threshold == trained_run.threshold
    p_file, p_bare, p_run = (_predict(r, paths)[0] for r in (by_file, bare, run))
    np.testing.assert_array_equal(p_file, p_bare)
    np.testing.assert_allclose(p_file, p_run, atol=1e-4)


@pytest.mark.parametrize("batch,workers,prefetch", [(1, 1, 1), (1, 2, 4), (3, 2, 2)])
def test_every_image_gets_one_row_in_order(batch, workers, prefetch, artifacts, trained_run):
    """More batches than are decoded ahead: none is lost or reordered on the way through the decode pool."""
    from export.model_ref import resolve

    paths = image_paths(trained_run) * 2
    ref = resolve(artifacts, "resnet18/onnx/fp32")
    probs, rows, _ = _predict(ref, paths, batch=batch, workers=workers, prefetch=prefetch)
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    np.testing.assert_array_equal(probs[:len(paths) // 2], probs[len(paths) // 2:])


def test_tta_averages_the_core_views(artifacts, trained_run):
    from core.data import Sample, load_images
    from core.tta import tta_probabilities
    from export.model_ref import resolve

    paths = image_paths(trained_run)[:6]
    ref = resolve(artifacts, "resnet18/onnx/fp32")
    probs, _, _ = _predict(ref, paths, tta=True, batch=3)
    images, _, _ = load_images([Sample(str(p), 0, "") for p in paths], ref.preprocess, progress=False)
    expected = tta_probabilities(ref.load().predict, ref.preprocess.normalize(images))
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert not np.allclose(probs, _predict(ref, paths)[0], atol=1e-9)  # the views do change something


def test_bad_files_are_rows_with_their_error_and_exit_1(artifacts, trained_run, tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    good = image_paths(trained_run)[:5]
    for i, p in enumerate(good):
        shutil.copyfile(p, (folder if i % 2 else folder / "sub") / p.name)
    (folder / "corrupt.png").write_bytes(b"\x89PNG not really")
    (folder / "empty.jpeg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image, and not listed")
    out = tmp_path / "pred.json"
    r = invoke("predict", artifacts, folder, tmp_path / "missing.png", "--pick", "resnet18/onnx/int8", "--out", out,
               "--batch", "3", "--no-progress")
    assert r.exit_code == 1, r.output
    doc = json.loads(out.read_text())
    rows = {Path(row["path"]).name: row for row in doc["rows"]}
    assert len(rows) == 8 and "notes.txt" not in rows
    for name in ("corrupt.png", "empty.jpeg", "missing.png"):
        assert rows[name]["probability"] is None and rows[name]["decision"] is None and name in rows[name]["error"]
    assert "0 bytes" in rows["empty.jpeg"]["error"] and "does not exist" in rows["missing.png"]["error"]
    assert all(0 <= rows[p.name]["probability"] <= 1 and rows[p.name]["error"] is None for p in good)
    assert doc["summary"]["failed"] == 3 and doc["summary"]["images"] == 8
    assert doc["model"]["threshold"] == trained_run.threshold and doc["model"]["precision"] == "int8"
    assert "8 images:" in r.output and "3 failed" in r.output and "Traceback" not in r.output

    again = invoke("predict", artifacts, folder, "--pick", "resnet18/onnx/int8", "--out", out)
    assert again.exit_code == 2 and "already exists" in again.output


def test_csv_on_stdout_and_plain_progress_lines(artifacts, trained_run):
    paths = image_paths(trained_run)
    r = invoke("predict", artifacts, *paths, "--pick", "resnet18/onnx/fp32", "--batch", "2")
    assert r.exit_code == 0, r.output
    rows = _csv_rows(r.output)
    assert [row["path"] for row in rows] == [str(p) for p in paths]
    assert all(row["decision"] in ("NORMAL", "PNEUMONIA") and row["error"] == "" for row in rows)
    assert f"predicted {len(paths)}/{len(paths)} images" in r.output  # not a terminal: plain lines


def test_a_changed_artifact_is_refused(artifacts, tmp_path):
    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts, copy)
    rec = _records(copy)["onnx/int8"]
    with open(copy / rec["path"], "ab") as f:
        f.write(b"\0")
    r = invoke("predict", copy, copy, "--pick", "resnet18/onnx/int8")
    assert r.exit_code == 2 and "does not match its manifest record" in r.output and "Traceback" not in r.output
    r = invoke("predict", copy / rec["path"], copy)
    assert r.exit_code == 2 and "does not match its manifest record" in r.output


def test_model_arguments_that_cannot_work_say_what_to_pass(artifacts, tmp_path, trained_run):
    img = image_paths(trained_run)[0]
    r = invoke("predict", artifacts, img)
    assert r.exit_code == 2 and "--pick" in r.output and "resnet18/onnx/int8" in r.output
    r = invoke("predict", artifacts, img, "--pick", "resnet18/onnx/fp16")
    assert r.exit_code == 2 and "lists no resnet18/onnx/fp16" in r.output
    r = invoke("predict", artifacts, img, "--pick", "resnet18-onnx")
    assert r.exit_code == 2 and "BACKBONE/FORMAT/PRECISION" in r.output
    r = invoke("predict", tmp_path, img)
    assert r.exit_code == 2 and "neither a run folder" in r.output
    (tmp_path / "x.onnx").write_bytes(b"junk")
    r = invoke("predict", tmp_path / "x.onnx", img)
    assert r.exit_code == 2 and "x.onnx" in r.output and "Traceback" not in r.output


def test_heatmaps_of_the_fp32_model_labelled_for_a_quantized_artifact(artifacts, trained_run, tmp_path):
    paths = image_paths(trained_run)[:3]
    cams = tmp_path / "cams"
    out = tmp_path / "pred.csv"
    r = invoke("predict", artifacts, *paths, "--pick", "resnet18/onnx/int8", "--heatmaps", cams, "--out", out,
               "--no-progress")
    assert r.exit_code == 0, r.output
    record = json.loads((cams / "heatmaps.json").read_text())
    assert record["layer"] == trained_run.backbone.cam_layer and "FP32" in record["explained_model"]
    assert "not the onnx int8 artifact's" in record["note"]
    for p in paths:
        cam = np.load(cams / f"{p.stem}.npy")
        assert cam.shape == (trained_run.preprocess.size,) * 2 and 0 <= cam.min() and cam.max() <= 1
        assert (cams / f"{p.stem}.png").is_file()
    rows = list(csv.DictReader(out.open()))
    assert [Path(row["heatmap"]).name for row in rows] == [f"{p.stem}.png" for p in paths]
    r = invoke("predict", artifacts, *paths, "--pick", "resnet18/onnx/int8", "--heatmaps", cams)
    assert r.exit_code == 2 and "not empty" in r.output

    # a layer the run records as chosen (as `cxr-edge fidelity --layer auto` names it) replaces the registry's
    moved = tmp_path / "run"
    shutil.copytree(trained_run.path, moved)
    record = json.loads((moved / "run.json").read_text())
    record["layer_selection"] = {"layer": "layer3", "method": "hirescam"}
    (moved / "run.json").write_text(json.dumps(record))
    r = invoke("predict", artifacts, paths[0], "--pick", "resnet18/onnx/int8", "--heatmaps", tmp_path / "cams2",
               "--run", moved, "--no-progress")
    assert r.exit_code == 0, r.output
    chosen = json.loads((tmp_path / "cams2" / "heatmaps.json").read_text())
    assert (chosen["layer"], chosen["method"]) == ("layer3", "hirescam") and "has changed since" in chosen["warning"]
