"""The seed studies' baselines (cnn3, gapcnn) through every stage, as a user runs them: train, evaluate, export to
every format and precision present, bench (table, Pareto plot, parameters and GFLOPs), Grad-CAM and fidelity."""

import json

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()
TINY = ["--synthetic-images", "60", "--size", "32", "--epochs", "2", "--batch-size", "8", "--threads", "2",
        "--no-progress"]


def invoke(*args):
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """runs/, artifacts/ and results/ of the two baselines, made through the CLI once."""
    root = tmp_path_factory.mktemp("baselines")
    runs, artifacts, results = root / "runs", root / "artifacts", root / "results"
    invoke("train-all", "--backbones", "baselines", "--out", runs, *TINY)
    invoke("export", runs, "--out", artifacts, "--formats", "onnx,openvino", "--precisions", "all",
           "--n-calibration", "32", "--no-progress")
    invoke("bench", artifacts, "--out", results, "--batches", "1,2", "--budget-s", "0.2", "--min-iters", "3",
           "--warmup", "1", "--rounds", "2", "--n-boot", "50", "--fidelity-n", "2", "--fidelity-steps", "4",
           "--threads", "2", "--no-progress")
    return root, runs, artifacts, results


def test_train_and_evaluate_both_baselines(pipeline):
    root, runs, _, _ = pipeline
    for name in ("cnn3", "gapcnn"):
        rec = json.loads((runs / name / "run.json").read_text())
        assert rec["architecture"]["source"] == f"cxr-edge:{name}" and rec["init"].startswith("trained from scratch")
    invoke("evaluate", runs, "--n-boot", "50", "--no-progress")
    report = json.loads((runs / "evaluate-test.json").read_text())
    assert [r["backbone"] for r in report["runs"]] == ["cnn3", "gapcnn"] and "ensemble" in report
    assert all(0 <= r["metrics"]["accuracy"]["value"] <= 1 for r in report["runs"])


def test_every_format_and_precision_is_exported_and_checked(pipeline):
    from export.manifest import read_manifest

    _, _, artifacts, _ = pipeline
    records = read_manifest(artifacts)
    got = {(r["backbone"], r["format"], r["precision"]): r["status"] for r in records}
    want = {(b, f, p) for b in ("cnn3", "gapcnn") for f in ("onnx", "openvino") for p in ("fp32", "fp16", "int8")}
    assert set(got) == want and set(got.values()) == {"ok"}, got


def test_bench_rows_table_and_pareto_plot_include_cost(pipeline):
    _, _, _, results = pipeline
    doc = json.loads((results / "results.json").read_text())
    rows = [r for r in doc["rows"] if r["backbone"] in ("cnn3", "gapcnn")]
    assert {(r["backbone"], r["format"]) for r in rows} >= {("cnn3", "pytorch"), ("gapcnn", "openvino")}
    assert all(r["status"] == "ok" for r in rows), [(r["backbone"], r.get("error")) for r in rows]
    cnn3 = next(r for r in rows if r["backbone"] == "cnn3" and r["format"] == "pytorch")
    # conv 3->32, 32->64, 64->128 (3x3), dense 128*4*4 -> 256, classifier 256 -> 1
    params = (3 * 9 * 32 + 32) + (32 * 9 * 64 + 64) + (64 * 9 * 128 + 128) + (2048 * 256 + 256) + 257
    assert cnn3["params_m"] == pytest.approx(params / 1e6) and cnn3["gflops"] > 0
    assert (results / "pareto.png").stat().st_size > 0 and "cnn3" in (results / "table.md").read_text()
    invoke("table", results)


def test_gradcam_and_fidelity_of_runs_and_artifacts(pipeline):
    root, runs, artifacts, _ = pipeline
    invoke("gradcam", runs, "--out", root / "cams", "--n", "2", "--no-progress")
    cams = json.loads((root / "cams" / "gradcam.json").read_text())
    assert (root / "cams" / "contact_sheet.png").is_file() and "cnn3" in json.dumps(cams)
    assert any((root / "cams" / "gapcnn").glob("*.npy"))
    invoke("fidelity", runs, artifacts, "--out", root / "fidelity.json", "--n", "2", "--steps", "4", "--no-road",
           "--no-progress")
    fid = json.loads((root / "fidelity.json").read_text())
    assert {r["backbone"] for r in fid["runs"]} == {"cnn3", "gapcnn"}
    assert len(fid["artifacts"]) == 12 and not [a for a in fid["artifacts"] if a.get("error")]
    invoke("fidelity", runs, "--layer", "auto", "--out", root / "auto.json", "--n", "2", "--steps", "4",
           "--no-road", "--no-progress")
    auto = json.loads((root / "auto.json").read_text())
    chosen = {r["backbone"]: r["layer_selection"]["candidates"] for r in auto["runs"]}
    assert [c["layer"] for c in chosen["gapcnn"]][-1] == "features.3"


def test_cnn3_run_loaded_at_another_size_is_a_clear_error(pipeline, tmp_path):
    import shutil

    _, runs, _, _ = pipeline
    shutil.copytree(runs / "cnn3", tmp_path / "cnn3")
    record = json.loads((tmp_path / "cnn3" / "run.json").read_text())
    record["preprocess"]["size"] = 64
    (tmp_path / "cnn3" / "run.json").write_text(json.dumps(record))
    r = runner.invoke(app, ["evaluate", str(tmp_path / "cnn3"), "--n-boot", "10", "--no-progress"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "cnn3 weights trained at 32 px" in r.output and "dense layer fixes the input size" in r.output
