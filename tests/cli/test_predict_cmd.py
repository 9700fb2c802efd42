"""`cxr-edge recommend --json --formats` as the demo uses it: its pick goes straight to predict and package."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.main import app
from tests.export.conftest import trained_run  # noqa: F401  (fixture)
from tests.export.deploy import deploy_artifacts, deploy_results, image_paths

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_recommend_json_pick_feeds_package_and_predict(tmp_path_factory, trained_run, tmp_path):  # noqa: F811
    artifacts = deploy_artifacts(tmp_path_factory, trained_run)
    results = deploy_results(tmp_path_factory, artifacts)
    r = invoke("recommend", results, "--budget-ms", 1e6, "--formats", "onnx,openvino", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    b = doc["best"]
    assert doc["pick"] == f"{b['backbone']}/{b['format']}/{b['precision']}" and b["format"] in ("onnx", "openvino")
    assert any(k.startswith("not onnx/openvino") for k in doc["excluded"])  # the PyTorch row was left out
    assert doc["lines"][0].startswith("Recommended on cpu")

    bundle = tmp_path / "bundle"
    assert invoke("package", artifacts, "--pick", doc["pick"], "--out", bundle, "--results", results).exit_code == 0
    p = invoke("predict", bundle, *image_paths(trained_run)[:2])
    assert p.exit_code == 0 and f"{doc['pick']}@" in p.output

    none = invoke("recommend", results, "--budget-ms", 1e-6, "--json")
    assert none.exit_code == 1 and json.loads(none.output)["pick"] is None
    bad = invoke("recommend", results, "--budget-ms", 10, "--formats", "tflite")
    assert bad.exit_code == 2 and "no tflite rows" in bad.output
