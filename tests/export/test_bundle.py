"""`cxr-edge package`: the bundle's files, its model.json and card written from the records, and its standalone
predict.py, which runs in an isolated interpreter without torch or cxr-edge and agrees with `cxr-edge predict`."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from export.model_card import SECTIONS, fmt, with_ci
from tests.export.deploy import FORMATS as EXPORTED
from tests.export.deploy import deploy_artifacts, deploy_results, image_paths

runner = CliRunner()
PROJECT = ("torch", "core", "export", "bench", "mobile", "cli", "timm", "tests")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, trained_run) -> Path:
    return deploy_artifacts(tmp_path_factory, trained_run)


@pytest.fixture(scope="module")
def results(tmp_path_factory, artifacts) -> Path:
    return deploy_results(tmp_path_factory, artifacts)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, artifacts, results) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "resnet18-onnx-int8"
    r = invoke("package", artifacts, "--pick", "resnet18/onnx/int8", "--out", out, "--results", results)
    assert r.exit_code == 0, r.output
    return out


def _standalone(bundle: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    """predict.py in an isolated interpreter (-I: no PYTHONPATH, no user site, not the cwd), logging imports."""
    return subprocess.run([sys.executable, "-I", "-X", "importtime", str(bundle / "predict.py"), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def _imported(stderr: str) -> set[str]:
    """Top-level package names in a `-X importtime` log."""
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)\s*$", stderr, flags=re.MULTILINE)
    return {n.split(".")[0] for n in names}


def _row(doc: dict) -> dict:
    (row,) = [r for r in doc["rows"] if (r["backbone"], r["format"], r["precision"], r["status"]) ==
              ("resnet18", "onnx", "int8", "ok")]
    return row


def test_bundle_files_and_model_json_from_the_records(bundle, artifacts, results, trained_run):
    from export.manifest import read_manifest

    assert sorted(p.name for p in bundle.iterdir()) == ["MODEL_CARD.md", "model.json", "onnx-int8.onnx",
                                                         "predict.py", "requirements.txt"]
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    doc = json.loads((bundle / "model.json").read_text())
    rec = next(r for r in read_manifest(artifacts) if (r["format"], r["precision"]) == ("onnx", "int8"))
    row = _row(json.loads((results / "results.json").read_text()))
    assert doc["artifact"]["sha256"] == rec["sha256"] and doc["preprocess"] == rec["preprocess"]
    assert doc["threshold"]["value"] == trained_run.threshold and doc["threshold"]["chosen_on"] == "val"
    assert doc["labels"] == ["NORMAL", "PNEUMONIA"]
    assert doc["source_run"]["init"] == trained_run.record["init"]
    assert doc["source_run"]["split_hash"] == trained_run.record["split"]["hash"]
    assert doc["source_run"]["split"]["counts"] == trained_run.record["split"]["counts"]
    assert doc["figures"]["validation"] == json.loads(json.dumps(trained_run.record["val"]))
    test = doc["figures"]["test"]["metrics"]
    assert test["roc_auc"] == {"value": row["roc_auc"], "ci95": [row["roc_auc_lo"], row["roc_auc_hi"]]}
    assert test["sensitivity"]["value"] == row["sensitivity"] and doc["figures"]["test"]["n"] == row["n_test"]
    lat = doc["figures"]["latency"]
    assert lat["batches"]["8"]["p50_ms"] == row["b8_p50_ms"] and lat["batches"]["1"]["p99_ms"] == row["b1_p99_ms"]
    assert lat["threads"] == row["threads"] == 2 and lat["machine"]["cpu"]
    q = doc["figures"]["quantization"]
    assert q["validation"]["max_abs_prob"] == rec["parity"]["max_abs_prob"]
    assert q["test"]["agreement"] == row["agreement"]
    assert doc["figures"]["explanation_fidelity"]["deletion_auc"] == row["deletion_auc"]
    assert doc["versions"]["onnxruntime"] in (bundle / "requirements.txt").read_text()
    assert "/" not in doc["source_run"]["name"] and str(Path.home()) not in json.dumps(doc["source_run"])


def test_model_card_sections_and_figures_equal_the_records(bundle, trained_run):
    card = (bundle / "MODEL_CARD.md").read_text()
    doc = json.loads((bundle / "model.json").read_text())
    headings = re.findall(r"^## (.+)$", card, flags=re.MULTILINE)
    assert headings == list(SECTIONS)
    assert "research tool, not a medical device" in card
    assert trained_run.record["init"] in card and doc["source_run"]["split_hash"] in card
    test, val = doc["figures"]["test"]["metrics"], doc["figures"]["validation"]["metrics"]
    for m in (test["roc_auc"], test["sensitivity"], test["specificity"], val["roc_auc"]):
        assert with_ci(m) in card
    counts = trained_run.record["split"]["counts"]["test"]
    assert f"{counts['images']} images of {counts['patients']} patients" in card
    b8 = doc["figures"]["latency"]["batches"]["8"]
    assert f"| 8 | {fmt(b8['p50_ms'], 2)} | {fmt(b8['p99_ms'], 2)} |" in card
    assert f"Threshold {fmt(doc['threshold']['value'], 4)}" in card and "chosen on the validation side" in card
    assert fmt(doc["figures"]["quantization"]["validation"]["max_abs_prob"], 4) in card


@pytest.mark.parametrize("pick", ["onnx/int8", "openvino/fp32"])
def test_standalone_predict_needs_no_torch_and_agrees_with_cxr_edge_predict(pick, artifacts, trained_run, tmp_path):
    fmt_name = pick.split("/")[0]
    if fmt_name not in EXPORTED:
        pytest.skip("openvino: the openvino extra is not installed")
    bundle = tmp_path / "bundle"
    r = invoke("package", artifacts, "--pick", f"resnet18/{pick}", "--out", bundle)
    assert r.exit_code == 0, r.output
    paths = image_paths(trained_run)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    mine, theirs = tmp_path / "cxr.json", tmp_path / "standalone.json"
    assert invoke("predict", bundle, *paths, bad, "--out", mine, "--batch", "4").exit_code == 1
    p = _standalone(bundle, *paths, bad, "--out", theirs, "--batch", "4", cwd=tmp_path)
    assert p.returncode == 1, p.stderr[-2000:]
    assert not _imported(p.stderr) & set(PROJECT), _imported(p.stderr) & set(PROJECT)
    assert {"numpy", "PIL", "onnxruntime" if fmt_name == "onnx" else "openvino"} <= _imported(p.stderr)
    a, b = json.loads(mine.read_text())["rows"], json.loads(theirs.read_text())["rows"]
    assert [r["path"] for r in a] == [r["path"] for r in b] and len(a) == len(paths) + 1
    assert [r["model"] for r in a] == [r["model"] for r in b]
    assert [r["decision"] for r in a[:-1]] == [r["decision"] for r in b[:-1]]
    np.testing.assert_allclose([r["probability"] for r in a[:-1]], [r["probability"] for r in b[:-1]], atol=1e-5)
    assert a[-1]["error"] and b[-1]["error"] and "bad.png" in b[-1]["error"]

    # CSV on stdout: the same columns as `cxr-edge predict`
    p = _standalone(bundle, *paths[:2], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = list(csv.DictReader(p.stdout.splitlines()))
    assert list(rows[0]) == ["path", "probability", "decision", "threshold", "model", "error"]


def test_standalone_refuses_a_damaged_model(bundle, trained_run, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    with open(copy / "onnx-int8.onnx", "ab") as f:
        f.write(b"\0")
    p = _standalone(copy, image_paths(trained_run)[0], cwd=tmp_path)
    assert p.returncode != 0 and "does not match model.json" in p.stderr and "Traceback" not in p.stderr
    r = invoke("predict", copy, image_paths(trained_run)[0])
    assert r.exit_code == 2 and "does not match" in r.output


def test_local_threshold_and_external_evaluation(artifacts, trained_run, tmp_path):
    ev = tmp_path / "external.json"
    evaluation = {"data": "site-A chest films", "n_images": 57, "metrics": {"roc_auc": {"value": 0.81,
                  "ci95": [0.7, 0.9]}, "sensitivity": 0.9}, "shift": "intensity histogram differs from training",
                  "local_operating_point": {"threshold": 0.3125, "n_images": 57, "target_sensitivity": 0.95},
                  "anything_else": [1, 2, 3]}
    ev.write_text(json.dumps(evaluation))
    bundle = tmp_path / "b"
    r = invoke("package", artifacts, "--pick", "resnet18/onnx/fp32", "--out", bundle, "--evaluation", ev,
               "--threshold-from", ev)
    assert r.exit_code == 0, r.output
    doc = json.loads((bundle / "model.json").read_text())
    assert doc["threshold"]["value"] == 0.3125 and doc["threshold"]["chosen_on"] == "site sample"
    assert doc["threshold"]["validation_threshold"] == trained_run.threshold
    assert doc["external_evaluation"]["document"] == evaluation
    assert doc["external_evaluation"]["summary"]["metrics"]["sensitivity"] == {"value": 0.9, "ci95": None}
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "chosen on the site's own sample of 57 images for a sensitivity of at least 0.950" in card
    assert "0.810 (95% CI 0.700-0.900)" in card and "intensity histogram differs" in card
    p = _standalone(bundle, image_paths(trained_run)[0], "--out", tmp_path / "x.json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    (row,) = json.loads((tmp_path / "x.json").read_text())["rows"]
    assert row["threshold"] == 0.3125 and row["decision"] == ("PNEUMONIA" if row["probability"] >= 0.3125 else "NORMAL")

    ev.write_text(json.dumps({"metrics": {}}))
    r = invoke("package", artifacts, "--pick", "resnet18/onnx/fp32", "--out", tmp_path / "c", "--threshold-from", ev)
    assert r.exit_code == 2 and "local_operating_point" in r.output and not (tmp_path / "c").exists()


def test_an_existing_bundle_is_replaced_only_with_force(artifacts, tmp_path):
    bundle = tmp_path / "b"
    assert invoke("package", artifacts, "--pick", "resnet18/onnx/fp32", "--out", bundle).exit_code == 0
    r = invoke("package", artifacts, "--pick", "resnet18/onnx/int8", "--out", bundle)
    assert r.exit_code == 2 and "already exists" in r.output and (bundle / "onnx-fp32.onnx").is_file()
    r = invoke("package", artifacts, "--pick", "resnet18/onnx/int8", "--out", bundle, "--force")
    assert r.exit_code == 0, r.output
    assert (bundle / "onnx-int8.onnx").is_file() and not (bundle / "onnx-fp32.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    r = invoke("package", bundle, "--out", tmp_path / "again")
    assert r.exit_code == 2 and "package an exported artifact" in r.output


@pytest.mark.parametrize("equalize", ["none", "histogram"])
def test_standalone_preparation_equals_the_project_preprocessing(equalize):
    """predict.py re-implements the preprocessing without the project: same bytes, equalisation included."""
    from PIL import Image

    from core.preprocess import Preprocess
    from export import bundle_predict

    pre = Preprocess(size=48, equalize=equalize)
    img = Image.fromarray(np.random.default_rng(1).integers(40, 140, (90, 70), dtype=np.uint8), mode="L")
    np.testing.assert_array_equal(bundle_predict.prepare(img, pre.to_dict()), pre.image_to_uint8(img))


def test_standalone_decoding_follows_the_bit_depth_rules(tmp_path):
    """A 16-bit PNG and a DICOM without a window decode in predict.py exactly as in the project."""
    from PIL import Image

    from core.data import decode_image
    from export import bundle_predict

    arr = (np.random.default_rng(2).integers(60, 160, (20, 30)) * 257).astype(np.uint16)
    png = tmp_path / "deep.png"
    Image.fromarray(arr).save(png)
    np.testing.assert_array_equal(np.asarray(bundle_predict.decode(png)), np.asarray(decode_image(png)))
    assert np.asarray(decode_image(png)).min() >= 60  # by bit depth, not stretched to 0..255
