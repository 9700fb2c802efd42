"""The benchmark loop end to end on a tiny run: every row kind, the FP32 agreement, latency columns,
the hook that adds columns, and a backbone whose run is gone."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench import report, results_file, runner
from tests.bench.conftest import copy_artifacts, fast_config


@pytest.fixture(scope="module")
def results(messy_artifacts, monkeypatch_module):
    def fidelity(ctx):
        assert ctx.inputs.shape[0] == len(ctx.labels) == len(ctx.probs)
        return {"deletion_auc": float(np.mean(ctx.probs)), "sanity_ok": True}

    def broken_hook(ctx):
        raise RuntimeError("hook failed")

    monkeypatch_module.setattr(runner, "ROW_METRICS", [fidelity, broken_hook])
    return runner.bench_artifacts(messy_artifacts, fast_config(), progress=False)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def by(results, fmt, precision):
    return next(r for r in results["rows"] if r["format"] == fmt and r["precision"] == precision)


def test_every_record_is_a_row_with_a_status(results):
    rows = results["rows"]
    assert results["complete"] and len(rows) == 1 + 3 + 4
    assert rows[0]["format"] == "pytorch" and rows[0]["runtime"] == "torch eager" and rows[0]["status"] == "ok"
    assert [by(results, "onnx", p)["status"] for p in ("fp32", "fp16", "int8")] == ["ok"] * 3


def test_onnx_fp32_agrees_with_pytorch(results):
    r = by(results, "onnx", "fp32")
    assert r["agreement"] == 1.0 and r["max_abs_prob"] < 1e-4 and abs(r["auc_change"]) < 1e-9
    assert r["roc_auc"] == pytest.approx(by(results, "pytorch", "fp32")["roc_auc"])
    assert r["roc_auc_lo"] <= r["roc_auc"] <= r["roc_auc_hi"] and r["ppv"] is not None


def test_accuracy_is_on_the_test_side_at_the_validation_threshold(results, bench_run):
    r = by(results, "pytorch", "fp32")
    test = bench_run.split().side("test")
    assert r["n_test"] == len(test) and r["threshold"] == bench_run.threshold
    assert r["tp_count"] + r["fn_count"] == r["n_test_pos"]
    # the synthetic set names 1-3 images per patient: its intervals resample patients
    assert r["ci_method"] == "patient bootstrap, stratified, 50 replicates"
    assert r["n_test_patients"] == len({e.patient for e in test}) < len(test)
    # the validation side is scored too: rows are chosen on it (the Pareto set, recommend)
    assert r["n_val"] == len(bench_run.split().side("val")) and 0 <= r["val_roc_auc"] <= 1
    onnx = by(results, "onnx", "fp32")
    assert onnx["val_roc_auc"] == pytest.approx(r["val_roc_auc"], abs=1e-3)
    assert results["backbones"]["resnet18"]["choice"] == "chosen on validation ROC-AUC; figures on test"
    info = results["backbones"]["resnet18"]
    assert info["split_hash"] == bench_run.split().hash and info["threshold_chosen_on"] == "val"
    assert info["params_m"] == pytest.approx(11.18, abs=0.05) and info["gflops"] > 0
    assert info["preprocess_one_image"]["ms_p50"] > 0


def test_latency_columns_for_each_batch_with_spread(results):
    for r in (x for x in results["rows"] if x["status"] == "ok"):
        for b in (1, 4):
            assert r[f"b{b}_p50_ms"] > 0 and r[f"b{b}_p99_ms"] >= r[f"b{b}_p50_ms"]
            assert r[f"b{b}_iters"] >= 2 * 3 and r[f"b{b}_spread"] is not None
            assert r[f"b{b}_ips"] == pytest.approx(b * 1000 / r[f"b{b}_p50_ms"])
        assert r["threads"] == 2 and r["peak_mem_mib"] is not None and r["load_s"] > 0
        assert r["bytes"] > 0


def test_skipped_and_failed_rows_carry_their_reasons(results):
    assert by(results, "openvino", "int8")["status"] == "skipped"
    assert "export failed: ParityError" in by(results, "openvino", "int8")["reason"]
    broken = by(results, "onnx", "int8-broken")
    assert broken["status"] == "failed" and broken["error"].startswith("load:")
    trt = by(results, "tensorrt", "fp16")
    assert trt["status"] == "skipped" and "NVIDIA GPU" in trt["reason"]
    coreml = by(results, "coreml", "fp16")
    assert coreml["status"] == "skipped" and "Core ML cannot predict on Linux" in coreml["reason"]
    assert coreml["note"] == "built with coremltools 9.0"


def test_hook_columns_join_ok_rows_and_hook_errors_do_not_fail_them(results):
    r = by(results, "onnx", "int8")
    assert r["status"] == "ok" and 0 <= r["deletion_auc"] <= 1 and r["sanity_ok"] is True
    assert r["broken_hook_error"] == "RuntimeError: hook failed"
    assert "deletion_auc" in report.extra_columns(results["rows"])


def test_pareto_is_marked_and_reports_are_written(results, tmp_path):
    assert any(r["pareto_latency"] for r in results["rows"])
    results_file.write_results(tmp_path, results)
    paths = report.write_reports(results, tmp_path)
    assert {p.name for p in paths} == {"table.md", "table.csv", "pareto.png"}
    doc = results_file.read_results(tmp_path)
    assert doc["rows"][0]["backbone"] == "resnet18"
    assert "del AUC" in (tmp_path / "table.md").read_text()
    with pytest.raises(ValueError, match="--force"):
        results_file.check_out(tmp_path, force=False)
    results_file.check_out(tmp_path, force=True)
    json.dumps(doc, allow_nan=False)  # strict JSON: no NaN


def test_environment_is_recorded(results):
    env = results["environment"]
    assert env["cpu"]["model"] and isinstance(env["cpu"]["flags"], list)
    assert env["versions"]["torch"] and env["settings"]["latency"]["batches"] == [1, 4]
    assert env["settings"]["threads_used"] == 2 and "perf_counter_ns" in results["method"]
    probe = env["speed_probe"]  # the machine's speed before and after the timing, for `cxr-edge compare`
    assert probe["before_ms"] > 0 and probe["after_ms"] > 0 and "conv2d" in probe["workload"]
    # and in turns with the rows, which are stated relative to it
    [turns] = probe["in_turns"]
    assert turns["timed"].startswith("all") and len(turns["round_ms"]) == env["settings"]["latency"]["rounds"]
    ok = [r for r in results["rows"] if r["status"] == "ok"]
    assert ok and all(r["b1_rel"] == pytest.approx(r["b1_p50_ms"] / turns["ms"]) for r in ok)
    assert "speed probe" in results["method"] and "95% interval" in results["method"]


def test_a_missing_run_fails_its_rows_and_the_loop_goes_on(clean_artifacts, bench_run, tmp_path):
    from core import io

    manifest = json.loads((clean_artifacts / "manifest.json").read_text())
    ghost = [{**r, "backbone": "mobilenetv2_100", "source_run": str(tmp_path / "gone")} for r in manifest["artifacts"]]
    art = tmp_path / "art"
    import shutil

    shutil.copytree(clean_artifacts, art)  # a copy away from the runs: its records name the run absolutely, as older
    found = [{**r, "source_run": str(bench_run.path)} for r in manifest["artifacts"]]  # manifests did
    io.write_json(art / "manifest.json", {**manifest, "artifacts": found + ghost})
    doc = runner.bench_artifacts(art, fast_config(n_boot=20, latency=fast_config().latency.__class__(
        batches=(1,), warmup=0, min_iters=2, budget_s=0.05, rounds=1)), progress=False)
    ghosts = [r for r in doc["rows"] if r["backbone"] == "mobilenetv2_100"]
    assert len(ghosts) == 4 and all(r["status"] == "failed" and "could not prepare the run" in r["error"]
                                    for r in ghosts)
    assert all(r["status"] == "ok" for r in doc["rows"] if r["backbone"] == "resnet18")
    assert math.isfinite(doc["seconds"])


def _tamper(art):
    """An ONNX FP32 file with bytes appended that onnxruntime still loads (a second serialised ModelProto merges
    into the first), and an FP16 file with a block of its largest weight zeroed in place (same size)."""
    import onnx
    import onnxruntime as ort

    fp32 = art / "resnet18" / "onnx-fp32.onnx"
    with open(fp32, "ab") as f:
        f.write(onnx.ModelProto(doc_string="appended after export").SerializeToString())
    ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])  # still a model that runs
    fp16 = art / "resnet18" / "onnx-fp16.onnx"
    data = bytearray(fp16.read_bytes())
    weight = max(onnx.load(str(fp16)).graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    at = data.find(weight) + len(weight) // 2
    data[at:at + 4096] = bytes(4096)
    fp16.write_bytes(bytes(data))
    return fp32, fp16


def test_an_artifact_changed_after_export_is_a_failed_row_naming_both_hashes(clean_artifacts, bench_run, tmp_path):
    from export.base import file_sha256

    art = copy_artifacts(clean_artifacts, tmp_path / "art", bench_run)
    recorded = {r["precision"]: r for r in json.loads((art / "manifest.json").read_text())["artifacts"]}
    fp32, fp16 = _tamper(art)
    lat = fast_config().latency.__class__(batches=(1,), warmup=0, min_iters=2, budget_s=0.05, rounds=1)
    doc = runner.bench_artifacts(art, fast_config(n_boot=20, latency=lat), progress=False)
    for precision, path in (("fp32", fp32), ("fp16", fp16)):
        row = by(doc, "onnx", precision)
        assert row["status"] == "failed" and row["error"].startswith("checksum:"), row
        assert str(path) in row["error"] and file_sha256(path) in row["error"]
        assert recorded[precision]["sha256"] in row["error"] and "roc_auc" not in row
        assert row["bytes"] == path.stat().st_size  # the file as it is now, not the manifest's figure
    assert row["bytes"] == recorded["fp16"]["bytes"] and by(doc, "onnx", "fp32")["bytes"] > recorded["fp32"]["bytes"]
    assert by(doc, "onnx", "int8")["status"] == "ok" and by(doc, "pytorch", "fp32")["status"] == "ok"


@pytest.mark.parametrize("kwargs, message", [({"device": "tpu"}, "device 'tpu' is not known"),
                                             ({"threads": 0}, "threads=0"), ({"n_boot": 0}, "n_boot=0"),
                                             ({"interleave": "never"}, "interleave='never'")])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        runner.BenchConfig(**kwargs)


def test_a_folder_without_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cxr-edge export"):
        runner.bench_artifacts(tmp_path, fast_config(), progress=False)


def test_unknown_backbone_filter_is_a_clear_error(clean_artifacts):
    with pytest.raises(ValueError, match="vit_base_patch16_224 have no artifacts"):
        runner.bench_artifacts(clean_artifacts, fast_config(backbones=("vit_base_patch16_224",)), progress=False)


def test_timing_blocks_take_turns_across_targets_and_the_probe_round_after_round(monkeypatch):
    """Within a round, block j of every target (and of the speed probe) before block j + 1 of any: drift hits
    every row of a round alike; rounds follow each other; after an onnxruntime-like predictor's block the loop
    waits its settle_s. Each row is also stated relative to the probe."""
    from bench.backends import Target
    from bench.latency import LatencyConfig
    from bench.windows import Waiting

    calls: list[tuple[str, int]] = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def predict(self, x):
            calls.append((self.name, len(x)))
            return np.zeros(len(x), np.float32)

    lat = LatencyConfig(batches=(1, 2), warmup=0, min_iters=4, max_iters=4, budget_s=0.4, rounds=2, block_s=0.05)
    assert lat.blocks == 2 and lat.quota(0)[1:] == (2, 2)  # 0.1 s slots of two 0.05 s blocks, 2 calls each
    x = np.zeros((3, 1, 4, 4), np.float32)
    onnx, openvino = Recorder("onnx"), Recorder("openvino")
    onnx.settle_s = 0.5
    live = [Waiting(Target(backbone="b", format=p.name, precision="fp32", device="cpu", runtime="x",
                           load=lambda p=p: p), {"status": "ok", "peak_mem_mib": 10.0}, x) for p in (onnx, openvino)]
    rows = [w.row for w in live]
    sleeps: list[float] = []
    monkeypatch.setattr(runner.time, "sleep", sleeps.append)
    probe = runner._time_interleaved(live, runner.BenchConfig(latency=lat), None, "b")
    # loaded once each, then warmed up once per batch; per block: a target times batch 1 twice, then batch 2 twice;
    # the order of targets repeats per block
    assert calls[:4] == [("onnx", 1), ("onnx", 2), ("openvino", 1), ("openvino", 2)]
    one_block = [(f, b) for f in ("onnx", "openvino") for b in (1, 1, 2, 2)]
    assert calls[4:] == one_block * 4  # 2 blocks x 2 rounds
    assert sleeps == [0.5, 0.0, 0.0] * 4  # onnx, openvino, the probe
    assert probe["timed"] == "b" and len(probe["round_ms"]) == 2 and probe["ms"] > 0
    assert probe["schedule"]["windows"] == 1 and probe["schedule"]["loads_for_timing"] == 2
    row = rows[0]
    assert row["b1_iters"] == 8 and row["b2_iters"] == 8 and row["b1_spread"] is not None
    assert row["b1_rel"] == pytest.approx(row["b1_p50_ms"] / probe["ms"]) and row["b1_rel_spread"] is not None
    assert live == []  # the predictors are released once timed


@pytest.mark.parametrize("interleave, expected", [("all", [("all 2 backbones", 2)]),
                                                  ("backbone", [("b1", 1), ("b2", 1)])])
def test_timing_takes_turns_across_backbones_unless_asked_per_backbone(tmp_path, monkeypatch, interleave, expected):
    """By default every backbone's artifacts are loaded and scored first, then timed together, so that rows of
    different backbones share the machine's minutes; ``interleave="backbone"`` times each before the next."""
    import export.manifest
    from bench.backends import Target
    from bench.windows import Waiting

    (tmp_path / export.manifest.MANIFEST).write_text("{}")
    monkeypatch.setattr(export.manifest, "read_manifest", lambda d: [{"backbone": "b1"}, {"backbone": "b2"}])
    events: list = []

    def fake_backbone(name, records, artifacts_dir, config, threads, bar):
        events.append(("scored", name))
        row = {"backbone": name, "status": "ok", "device": "cpu"}
        t = Target(backbone=name, format="onnx", precision="fp32", device="cpu", runtime="x")
        return [row], {}, [Waiting(t, row, np.zeros((1, 1, 4, 4), np.float32))]

    monkeypatch.setattr(runner, "bench_backbone", fake_backbone)
    monkeypatch.setattr(runner, "_time_interleaved", lambda live, config, bar, label: events.append((label, len(live))))
    monkeypatch.setattr(runner.latency, "speed_probe", lambda: events.append(("probe",)) or 1.0)
    doc = runner.bench_artifacts(tmp_path, runner.BenchConfig(interleave=interleave), progress=False)
    assert events[0] == events[-1] == ("probe",)  # the speed probe brackets all scoring and timing
    events = events[1:-1]
    timed = [e for e in events if e[0] != "scored"]
    assert timed == expected and len(doc["rows"]) == 2
    if interleave == "all":
        assert events.index(("scored", "b2")) < events.index(timed[0])  # both scored before any timing
