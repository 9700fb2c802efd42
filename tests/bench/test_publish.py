"""docs/RESULTS.md is built from the pipeline's files: its figures must be the files' figures."""

from __future__ import annotations

import json

import pytest

from bench import publish, report, results_file, runner
from tests.bench.conftest import fast_config


@pytest.fixture(scope="module")
def results_dir(clean_artifacts, tmp_path_factory):
    doc = runner.bench_artifacts(clean_artifacts, fast_config(), progress=False)
    out = tmp_path_factory.mktemp("results") / "tiny"
    results_file.write_results(out, doc)
    report.write_reports(doc, out)
    return out


def test_results_doc_quotes_the_result_files(results_dir, tmp_path):
    sheet = tmp_path / "sheet.png"
    sheet.write_bytes((results_dir / "pareto.png").read_bytes())
    fid = tmp_path / "fidelity.json"
    fid.write_text(json.dumps({"rows": [{"backbone": "resnet18", "pointing_game": 0.875, "sanity_ok": True}]}))
    rep = tmp_path / "reproduction.json"
    rep.write_text(json.dumps({"a": "results/kermany-previous", "rows": [{}], "accuracy_identical": 1, "summary": [
        {"batch": 1, "n": 1, "bound": 0.1, "within_spread": 1, "within_bound": 1, "median_change": 0.012,
         "largest_change": 0.012, "largest_row": "resnet18 onnx fp32 cpu"}], "differences": []}))
    md = publish.write_results_doc(results_dir, tmp_path / "docs" / "RESULTS.md", recipe="just kermany",
                                   contact_sheet=sheet, fidelity=fid, caption="tiny test run",
                                   reproduction=rep).read_text()
    assert "(`results/kermany-previous`" in md and "p50 at batch 1: 1 of 1 rows moved by no more than" in md
    doc = json.loads((results_dir / "results.json").read_text())
    eager = next(r for r in doc["rows"] if r["format"] == "pytorch")
    assert f"{eager['roc_auc']:.3f} ({eager['roc_auc_lo']:.3f}-{eager['roc_auc_hi']:.3f})" in md
    assert "| resnet18 | 0.981 | 0.997 |" in md  # the paper's figure beside ours
    assert "0.875" in md and "tiny test run" in md and "`just kermany`" in md
    assert "## Reproduce" in md and "size=224" in md  # the GPU variant stands beside the CPU recipe
    assert "from scratch" in md and "on this CPU" not in md and "5,216" not in md
    assets = tmp_path / "docs" / "RESULTS"  # beside the page, named after it
    sources = {"results.json": results_dir / "results.json", "table.csv": results_dir / "table.csv",
               "pareto.png": results_dir / "pareto.png", "contact_sheet.png": sheet, "fidelity.json": fid,
               "reproduction.json": rep}
    for name, source in sources.items():  # the very files the page quotes, copied unchanged
        if name == "results.json":  # the copy names files relative to its own folder: same rows, other paths
            copy = json.loads((assets / name).read_text())
            assert [r["roc_auc"] for r in copy["rows"]] == [r["roc_auc"] for r in doc["rows"]]
        elif name != "table.csv":  # table.csv: rewritten from the relocated copy
            assert (assets / name).read_bytes() == source.read_bytes(), name
    assert "](RESULTS/pareto.png)" in md
    assert "trained on the CPU (" in md and "seed 42" not in md  # the tiny run's own seed, from its record:
    assert f"seed {json.loads(_run_json(doc, results_dir).read_text())['config']['seed']})" in md


def _run_json(doc, results_dir=None):
    """The run.json of the first backbone; results.json names the run relative to its own folder."""
    from pathlib import Path

    run = Path(next(iter(doc["backbones"].values()))["run"])
    return (run if run.is_absolute() or results_dir is None else Path(results_dir) / run) / "run.json"


def test_each_page_keeps_its_own_assets(results_dir, tmp_path):
    for page in ("RESULTS.md", "RESULTS-gpu.md"):
        publish.write_results_doc(results_dir, tmp_path / page, recipe="x")
    plot = (results_dir / "pareto.png").read_bytes()
    assert (tmp_path / "RESULTS" / "pareto.png").read_bytes() == (tmp_path / "RESULTS-gpu" / "pareto.png").read_bytes()
    assert (tmp_path / "RESULTS" / "pareto.png").read_bytes() == plot
    assert not (tmp_path / "results").exists()


def test_a_gpu_pretrained_record_is_described_as_such(results_dir, tmp_path):
    """Every statement on how the numbers were made comes from the records: here a GPU run from ImageNet weights."""
    import shutil

    doc = json.loads((results_dir / "results.json").read_text())
    run = tmp_path / "runs" / "resnet18"
    shutil.copytree(_run_json(doc, results_dir).parent, run)
    record = json.loads((run / "run.json").read_text())
    record["config"].update(pretrained=True, seed=7, size=224, epochs=10)
    record.update(device="cuda:0", init="ImageNet weights from timm's hub", epochs_run=10, wall_seconds=600)
    record["environment"]["cuda"] = "NVIDIA H100 80GB HBM3"
    record.setdefault("data", {})["source"] = "/data/chest_xray"
    record["split"]["counts"] = {"train": {"images": 4000, "patients": 2000}, "val": {"images": 900, "patients": 450},
                                 "test": {"images": 956, "patients": 470}}
    (run / "run.json").write_text(json.dumps(record))
    doc["backbones"]["resnet18"]["run"] = str(run)
    doc["environment"]["gpu"] = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_gib": 79.1,
                                 "count": 1, "cuda": "12.8", "cudnn": 91000}
    doc["environment"]["settings"]["device"] = "cuda"
    for row in doc["rows"]:
        row.update(device="cuda", runtime=row["runtime"].replace("CPU", "CUDA"))
    gpu = tmp_path / "gpu-results"
    gpu.mkdir()
    (gpu / "results.json").write_text(json.dumps(doc))
    md = publish.write_results_doc(gpu, tmp_path / "docs" / "RESULTS-gpu.md",
                                   recipe="just kermany device=cuda").read_text()
    head = md.split("## The full table")[0]  # the full table lists the host's CPU among the machine's facts
    text = " ".join(head.split())
    assert ("every backbone starts from ImageNet weights, as in the paper" in text
            and "224 px images, as in the paper" in text)
    assert "trained on a GPU (NVIDIA H100 80GB HBM3)" in text and "benchmarked on the GPU NVIDIA H100 80GB HBM3" in text
    assert "of chest_xray (5,856 images: train 4000, val 900, test 956)" in text and "(seed 7)" in text
    assert "Pareto-optimal on the GPU NVIDIA H100 80GB HBM3" in text
    for word in ("from scratch", "CPU"):
        assert word not in head, head[max(0, head.find(word) - 300):head.find(word) + 50]
    assert "5,216" not in md and "2 CPU cores" not in md


def test_int8_rows_say_whether_they_meet_the_budget():
    records = [
        {"backbone": "resnet18", "format": "onnx", "precision": "int8", "status": "ok",
         "parity": {"auc_change": -0.0021, "max_abs_prob": 0.01, "agreement": 0.99}},
        {"backbone": "mobilenetv2_100", "format": "openvino", "precision": "int8", "status": "ok",
         "parity": {"auc_change": -0.0125, "max_abs_prob": 0.2, "agreement": 0.9}},
        {"backbone": "resnet18", "format": "onnx", "precision": "fp32", "status": "ok", "parity": {}},
    ]
    lines = publish.int8_section(records)
    assert len(lines) == 4  # header, rule, two low-precision rows (FP32 is the reference)
    assert "| -0.0021 |" in lines[3] and lines[3].endswith("| yes |")
    assert "no, by 0.0075" in lines[2]


def test_missing_results_name_the_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json not found"):
        publish.write_results_doc(tmp_path, tmp_path / "RESULTS.md", recipe="x")


def test_missing_contact_sheet_is_a_clear_error(results_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="cxr-edge gradcam"):
        publish.write_results_doc(results_dir, tmp_path / "RESULTS.md", recipe="x", contact_sheet=tmp_path / "no.png")


def test_latency_repeatability_counts_rows_within_the_bound():
    from bench.publish import latency_repeatability

    rows = [{"status": "ok", "b1_spread": s} for s in (0.02, 0.05, 0.30)] + [{"status": "failed", "b1_spread": 0.9}]
    env = {"settings": {"latency": {"rounds": 4}}}
    text = " ".join(latency_repeatability({"rows": rows, "environment": env}).split())
    assert "medians of 4 rounds" in text and "2 of 3 bands" in text and "median ±5.0%" in text and "widest ±30%" in text
    assert "probe" not in text  # no row stated relative to the probe: nothing said about it
    assert "no row has a band" in latency_repeatability({"rows": [{"status": "ok", "b1_spread": None}]})
    for r, rel in zip(rows, (0.01, 0.02, 0.04)):
        r["b1_rel_spread"] = rel
    env["speed_probe"] = {"in_turns": [{"ms": 2.0}, {"ms": 3.0}]}
    text = " ".join(latency_repeatability({"rows": rows, "environment": env}).split())
    assert "2.50 ms in this run (column b1 / probe, median band ±2.0%)" in text
