"""Records name files relative to their own folder: a whole tree (runs, artifacts, results) moved elsewhere still
works with every command that reads those records."""

import json
import shutil

from typer.testing import CliRunner

from cli.main import app
from tests.export.conftest import tiny_run

runner = CliRunner()
FAST = ["--batches", "1", "--budget-s", "0.05", "--min-iters", "2", "--warmup", "0", "--rounds", "2", "--n-boot",
        "20", "--threads", "2", "--no-progress", "--fidelity-n", "0"]
RECORDS = ("artifacts/manifest.json", "results/a/results.json", "results/a/table.csv", "results/a/table.md",
           "compare.json")


def invoke(*args):
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def test_a_moved_tree_of_runs_artifacts_and_results_still_works(tmp_path_factory, tiny_split, tmp_path):
    source = tiny_run(tmp_path_factory, tiny_split).path
    root = tmp_path / "first"
    shutil.copytree(source, root / "runs" / "resnet18")
    invoke("export", root / "runs", "--out", root / "artifacts", "--formats", "onnx", "--precisions", "fp32,int8",
           "--no-progress")
    invoke("bench", root / "artifacts", "--out", root / "results" / "a", *FAST)
    invoke("compare", root / "results" / "a", root / "results" / "a", "--json", root / "compare.json")
    for name in RECORDS:  # no path of this machine in any record
        assert str(tmp_path) not in (root / name).read_text(), name
    manifest = json.loads((root / "artifacts/manifest.json").read_text())
    assert {r["source_run"] for r in manifest["artifacts"]} == {"../runs/resnet18"}

    moved = tmp_path / "elsewhere" / "second"
    moved.parent.mkdir()
    shutil.move(root, moved)
    kept = invoke("export", moved / "runs", "--out", moved / "artifacts", "--formats", "onnx", "--precisions",
                  "fp32,int8", "--no-progress")
    assert "2 artifact(s) kept from an earlier export" in kept.output  # reused, not rebuilt
    again = json.loads((moved / "artifacts/manifest.json").read_text())["artifacts"]
    assert [{k: v for k, v in r.items() if k != "reused"} for r in again] == manifest["artifacts"]
    bench = invoke("bench", moved / "artifacts", "--out", moved / "results" / "b", *FAST)
    assert "3 ok, 0 skipped, 0 failed" in bench.output
    doc = json.loads((moved / "results/b/results.json").read_text())
    assert doc["artifacts"] == "../../artifacts" and doc["backbones"]["resnet18"]["run"] == "../../runs/resnet18"
    assert "ROC-AUC" in invoke("table", moved / "results" / "a").output
    assert "Recommended" in invoke("recommend", moved / "results" / "a", "--budget-ms", 1e6).output
    invoke("compare", moved / "results" / "a", moved / "results" / "b", "--json", moved / "compare2.json")
    assert json.loads((moved / "compare2.json").read_text())["b"] == "results/b"
