"""`cxr-edge export` as a user meets it: the table, skipped backends, exit statuses and bad input."""

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from export.base import Format, file_sha256
from tests.export.conftest import tiny_run

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_split):
    return tiny_run(tmp_path_factory, tiny_split).path


@pytest.fixture
def no_openvino(monkeypatch):
    """Keep these tests to ONNX (OpenVINO and the mobile formats have their own tests); TensorRT keeps its real
    availability check."""
    real = Format.missing
    left_out = {"openvino", "executorch", "litert", "coreml"}
    monkeypatch.setattr(Format, "missing", lambda self: "left out of this test" if self.name in left_out
                        else real(self))


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_names_the_options():
    r = invoke("export", "--help")
    assert r.exit_code == 0
    for option in ("--formats", "--precisions", "--calibration", "--n-calibration", "--no-verify", "--out"):
        assert option in r.output


@pytest.mark.parametrize("args, message", [
    (["--formats", "onnx,tflite"],
     "format 'tflite' is not known; choose from onnx, openvino, tensorrt, executorch, litert, coreml"),
    (["--precisions", "fp32,int4"], "precision 'int4' is not known; choose from fp32, fp16, int8"),
    (["--calibration", "median"], "calibration 'median' is not known; choose from minmax, entropy, percentile"),
    (["--n-calibration", "0"], "Invalid value for '--n-calibration'"),  # typer: x>=1
    (["--formats", "onnx", "--accuracy-aware"], "accuracy-aware exists only for OpenVINO"),
])
def test_bad_requests_are_one_clear_line_and_exit_2(tmp_path, args, message):
    r = invoke("export", tmp_path / "runs", "--out", tmp_path / "art", *args)  # checked before any run is read
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split()) and "Traceback" not in r.output


def test_a_missing_run_is_one_clear_line(tmp_path):
    r = invoke("export", tmp_path / "nowhere", "--out", tmp_path / "art")
    assert r.exit_code == 2 and "does not exist" in r.output and "cxr-edge train" in r.output


def test_formats_all_exports_onnx_and_lists_tensorrt_as_skipped(run_dir, tmp_path, no_openvino):
    if Format("tensorrt", ".engine", (), "", ("tensorrt",), None, needs_gpu=True).missing() is None:
        pytest.skip("TensorRT and a GPU are present here")
    out = tmp_path / "art"
    r = invoke("export", run_dir, "--out", out, "--formats", "all", "--precisions", "fp32", "--no-progress")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "onnx fp32 ok" in text and "tensorrt fp32 skipped" in text and "tensorrt needs tensorrt" in text
    records = json.loads((out / "manifest.json").read_text())["artifacts"]
    assert {(r["format"], r["status"]) for r in records} == {("onnx", "ok"), ("openvino", "skipped"),
                                                             ("tensorrt", "skipped"), ("executorch", "skipped"),
                                                             ("litert", "skipped"), ("coreml", "skipped")}
    onnx_rec = next(r for r in records if r["format"] == "onnx")
    assert file_sha256(out / "resnet18" / "onnx-fp32.onnx") == onnx_rec["sha256"]  # the file the record describes


def test_a_failed_artifact_exits_1_and_says_so(tmp_path, monkeypatch):
    import export.pipeline

    def one_failure(runs, out, formats, precisions, overrides, **kw):
        base = {"backbone": "resnet18", "format": "onnx", "bytes": None, "path": None}
        return [{**base, "precision": "fp32", "status": "ok", "bytes": 2_000_000, "export_seconds": 1.0,
                 "parity": {"n": 10, "max_abs_logit": 1e-7}},
                {**base, "precision": "int8", "status": "failed", "error": "ParityError: decision agreement 0.5 < 0.9",
                 "parity": {"n": 10, "max_abs_prob": 0.3, "agreement": 0.5, "auc_change": -0.2}}]

    monkeypatch.setattr(export.pipeline, "export_runs", one_failure)
    monkeypatch.setattr("core.runs.find_runs", lambda paths, skip_bad=False: [])
    r = invoke("export", tmp_path / "runs", "--out", tmp_path, "--formats", "onnx", "--no-progress")
    assert r.exit_code == 1, r.output
    text = " ".join(r.output.split())
    assert "onnx int8 failed [1]" in text and "Δp 0.3000, agree 0.500, ΔAUC -0.2000" in text
    assert "[1] failed, onnx int8 of resnet18: ParityError: decision agreement 0.5 < 0.9" in text
    assert "1 of 2 artifact(s) failed" in text and "2.00" in text
    # --keep-going (what `just demo` uses): the same report, exit status 0.
    r = invoke("export", tmp_path / "runs", "--out", tmp_path, "--formats", "onnx", "--no-progress", "--keep-going")
    assert r.exit_code == 0, r.output
    assert "1 of 2 artifact(s) failed" in " ".join(r.output.split())
