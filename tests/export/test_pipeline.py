"""The export loop: records, manifest, atomic placement, skips, failures and calibration from training images."""

import hashlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from core.runs import load_run
from export import base, pipeline
from export.base import FORMATS, Format, TorchPredictor
from export.manifest import MANIFEST, read_manifest, write_manifest
from export.pipeline import export_one, export_runs, load_artifact

FAKE = Format("fake", ".fake", ("fp32", "fp16"), "fake_target", (), None, description="two files, exact")


@pytest.fixture
def fake_target(monkeypatch):
    """A format whose artifact is two files (like OpenVINO's .xml/.bin) and whose predictor is PyTorch itself."""
    module = types.ModuleType("fake_target")
    module.noise = 0.0
    module.fail = None

    def build(ctx, precision, dest):
        if module.fail:
            raise RuntimeError(module.fail)
        dest.write_text(str(ctx.run.path))
        dest.with_suffix(".bin").write_bytes(b"weights-" + precision.encode())
        return {"precision_built": precision}

    class Predictor:
        def __init__(self, path):
            self.torch = TorchPredictor(load_run(Path(path).read_text()).build_model())

        def predict(self, batch):
            return self.torch.predict(batch) + np.float32(module.noise)

    module.build, module.load = build, lambda path, **kw: Predictor(path)
    monkeypatch.setitem(sys.modules, "fake_target", module)
    return module


def _tmp_left(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".tmp" in p.name]


def test_records_manifest_and_files_agree(exported, trained_run):
    records, out = exported
    assert [r["precision"] for r in records] == ["fp32", "fp16", "int8"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == "cxr-edge-artifacts/1" and len(manifest["artifacts"]) == 3
    for rec in manifest["artifacts"]:
        path = out / rec["path"]
        assert rec["status"] == "ok" and rec["path"] == f"resnet18/onnx-{rec['precision']}.onnx"
        assert rec["bytes"] == path.stat().st_size
        assert rec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (out / rec["source_run"]).resolve() == trained_run.path.resolve()  # relative to the manifest
        assert rec["run_hash"] == base.run_hash(trained_run)
        assert rec["split_hash"] == trained_run.record["split"]["hash"] and rec["threshold"] == trained_run.threshold
        assert rec["preprocess"]["size"] == 32 and rec["versions"]["onnxruntime"] and rec["export_seconds"] > 0
        assert rec["parity"]["n"] == len(trained_run.split().side("val")) and rec["verified"] is True
        assert ("calibration" in rec) == (rec["precision"] == "int8")
    assert not _tmp_left(out)
    sizes = {r["precision"]: r["bytes"] for r in records}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]


def test_calibration_images_come_from_the_training_side_only(trained_run, monkeypatch, tmp_path):
    import core.data

    split = trained_run.split()
    seen: list[str] = []
    real = core.data.load_images

    def spy(samples, *args, **kw):
        seen.extend(s.path for s in samples)
        return real(samples, *args, **kw)

    monkeypatch.setattr(core.data, "load_images", spy)
    x = base.calibration_set(split, trained_run.preprocess, n=20, seed=0)
    train = {s.path for s in split.samples("train")}
    assert len(seen) == len(x) == 20 and set(seen) <= train
    calls = []
    monkeypatch.setattr(pipeline, "calibration_set", lambda *a, **kw: calls.append((a, kw)) or x)
    pipeline.make_context(trained_run, base.QuantConfig(n_calibration=20, seed=5), tmp_path)
    (split_arg, pre, n, seed), _ = calls[0]
    assert split_arg.hash == split.hash and (n, seed) == (20, 5)


def test_multi_file_artifact_is_placed_whole_and_manifest_merges(trained_run, tmp_path, fake_target):
    out = tmp_path / "art"
    first = export_runs([trained_run], out, [FAKE], ["fp32", "fp16", "int8"], progress=False)
    by = {r["precision"]: r for r in first}
    assert by["fp32"]["status"] == by["fp16"]["status"] == "ok"
    assert by["int8"]["status"] == "skipped" and "fake has no int8 path" in by["int8"]["reason"]
    assert (out / "resnet18/fake-fp16.bin").read_bytes() == b"weights-fp16"
    assert by["fp16"]["bytes"] == base.file_bytes(out / "resnet18/fake-fp16.fake")
    # Asked again, an artifact that would come out the same is kept (resumable), not rebuilt ...
    fake_target.fail = "must not be rebuilt"
    kept = export_runs([trained_run], out, [FAKE], ["fp16"], progress=False)
    assert kept[0]["status"] == "ok" and kept[0]["reused"] and kept[0]["created"] == by["fp16"]["created"]
    # ... unless its file changed on disk since, or --force.
    (out / "resnet18/fake-fp16.bin").write_bytes(b"tampered")
    fake_target.fail = None
    again = export_runs([trained_run], out, [FAKE], ["fp16"], progress=False)
    assert not again[0].get("reused") and (out / "resnet18/fake-fp16.bin").read_bytes() == b"weights-fp16"
    forced = export_runs([trained_run], out, [FAKE], ["fp16"], progress=False, force=True)
    assert not forced[0].get("reused")
    # A second export of one precision updates that record and keeps the others.
    manifest = read_manifest(out)
    assert len(manifest) == 3 and [r["created"] for r in manifest if r["precision"] == "fp16"] == [forced[0]["created"]]
    # A failed attempt does not replace a good artifact still on disk: the record notes the attempt.
    fake_target.fail = "simulated converter crash"
    failed = export_runs([trained_run], out, [FAKE], ["fp32"], progress=False, force=True)
    assert failed[0]["status"] == "failed" and failed[0]["error"] == "RuntimeError: simulated converter crash"
    kept = next(r for r in read_manifest(out) if r["precision"] == "fp32")
    assert kept["status"] == "ok" and "simulated converter crash" in kept["last_attempt"]["error"]
    assert (out / kept["path"]).exists() and not _tmp_left(out)


def test_parity_failure_leaves_nothing_in_place_and_says_why(onnx_ctx, tmp_path, monkeypatch):
    from export import onnx as onnx_target

    real = onnx_target.load

    class Noisy:
        def __init__(self, path, **kw):
            self.inner = real(path, **kw)

        def predict(self, batch):
            return self.inner.predict(batch) + np.float32(0.01)

    monkeypatch.setattr(onnx_target, "load", Noisy)
    out = tmp_path / "art"
    quant = base.QuantConfig.preset("onnx")
    rec = export_one(onnx_ctx, FORMATS["onnx"], "fp32", out, quant, verify=True)
    assert rec["status"] == "failed" and rec["error"].startswith("ParityError")
    assert "logit difference" in rec["error"] and "atol 0.0001" in rec["error"] and "--no-verify" in rec["error"]
    assert rec["path"] is None and not (out / "resnet18/onnx-fp32.onnx").exists() and not _tmp_left(out)
    assert rec["parity"]["within_tolerance"] is False
    write_manifest(out, [rec])
    assert read_manifest(out)[0]["error"] == rec["error"]
    # --no-verify keeps it, marked.
    rec = pipeline.commit(out, export_one(onnx_ctx, FORMATS["onnx"], "fp32", out, quant, verify=False))
    assert rec["status"] == "ok" and rec["verified"] is False and "beyond tolerance" in rec["warning"]
    assert rec["warning"].endswith("Kept because of --no-verify")
    kept = out / "resnet18/onnx-fp32.onnx"
    assert rec["path"] == "resnet18/onnx-fp32.onnx" and rec["sha256"] == base.file_sha256(kept)
    assert not _tmp_left(out)


def _listing(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_an_artifact_and_its_manifest_record_are_written_as_one_step(trained_run, tmp_path, fake_target, monkeypatch):
    """When the manifest cannot be written, the new artifact does not stay on disk and the good artifact it was
    replacing is back in place, byte for byte."""
    out = tmp_path / "art"
    export_runs([trained_run], out, [FAKE], ["fp16"], progress=False)
    before = _listing(out)
    assert "resnet18/fake-fp16.bin" in before

    def unwritable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(out / MANIFEST))

    monkeypatch.setattr(pipeline, "write_manifest", unwritable)
    with pytest.raises(base.ExportError, match="could not write .*manifest.json .*Permission denied.*not kept"):
        export_runs([trained_run], out, [FAKE], ["fp32"], progress=False)
    assert _listing(out) == before  # no fake-fp32 files: no orphan
    fake_target.noise = 1e-7  # a rebuild of fp16 (forced) that would replace the good one
    with pytest.raises(base.ExportError, match="back"):
        export_runs([trained_run], out, [FAKE], ["fp16"], progress=False, force=True)
    assert _listing(out) == before and not [p for p in out.rglob("*") if p.name.startswith((".tmp", ".old"))]


def test_a_missing_backend_is_a_skipped_row_with_its_reason(trained_run, tmp_path, monkeypatch):
    monkeypatch.setattr(Format, "missing", lambda self: f"{self.name} needs nothing-here: pip install it")
    monkeypatch.setattr(pipeline, "make_context", lambda *a, **kw: pytest.fail("nothing to build"))
    records = export_runs([trained_run], tmp_path, ["onnx", "tensorrt"], ["fp32", "int8"], progress=False)
    assert [(r["format"], r["status"]) for r in records] == [("onnx", "skipped")] * 2 + [("tensorrt", "skipped")] * 2
    assert all("pip install it" in r["reason"] for r in read_manifest(tmp_path))


def test_tensorrt_here_is_skipped_with_the_reason(trained_run, tmp_path):
    if FORMATS["tensorrt"].missing() is None:
        pytest.skip("TensorRT and a GPU are present here")
    (rec,) = export_runs([trained_run], tmp_path, ["tensorrt"], ["fp16"], progress=False)
    assert rec["status"] == "skipped" and "tensorrt" in rec["reason"] and rec["path"] is None


def test_a_run_that_cannot_be_prepared_fails_each_artifact_and_the_loop_goes_on(trained_run, tmp_path, monkeypatch,
                                                                                fake_target):
    def broken(*a, **kw):
        raise OSError("disk on fire")

    monkeypatch.setattr(pipeline, "make_context", broken)
    records = export_runs([trained_run], tmp_path, [FAKE], ["fp32", "fp16"], progress=False)
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert "OSError: disk on fire" in records[0]["error"] and not _tmp_left(tmp_path)


def test_bad_requests_are_refused_before_any_work(trained_run, tmp_path):
    with pytest.raises(ValueError, match="precision"):
        export_runs([trained_run], tmp_path, ["onnx"], ["fp64"], progress=False)
    with pytest.raises(ValueError, match="accuracy-aware exists only for OpenVINO"):
        export_runs([trained_run], tmp_path, ["onnx"], ["int8"], {"accuracy_aware": True}, progress=False)
    with pytest.raises(ValueError, match="calibration 'median' is not known"):
        export_runs([trained_run], tmp_path, ["onnx"], ["int8"], {"calibration": "median"}, progress=False)
    with pytest.raises(ValueError, match="2 runs are of backbone resnet18"):
        export_runs([trained_run, trained_run], tmp_path, ["onnx"], ["fp32"], progress=False)
    (tmp_path / MANIFEST).write_text("{half")
    with pytest.raises(base.ExportError, match="not valid JSON"):
        export_runs([trained_run], tmp_path, ["onnx"], ["fp32"], progress=False)


def test_presets_per_target_with_overrides():
    configs = pipeline.quant_configs([FORMATS["onnx"], FORMATS["tensorrt"], FORMATS["openvino"]],
                                     {"n_calibration": 50, "calibration": None, "accuracy_aware": True})
    assert configs["onnx"].calibration == "percentile" and configs["tensorrt"].calibration == "entropy"
    assert configs["tensorrt"].symmetric_activations and not configs["onnx"].symmetric_activations
    assert configs["openvino"].accuracy_aware and not configs["onnx"].accuracy_aware
    assert {c.n_calibration for c in configs.values()} == {50}


def test_load_artifact_dispatches_by_record_or_suffix(exported, onnx_ctx):
    records, out = exported
    rec = records[0]
    by_record = load_artifact(rec, out, threads=1)
    by_path = load_artifact(out / rec["path"])
    x = onnx_ctx.val_inputs[:4]
    assert np.array_equal(by_record.predict(x), by_path.predict(x))
    with pytest.raises(base.ExportError, match="has no artifact"):
        load_artifact({**rec, "status": "skipped", "path": None, "reason": "why"}, out)
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_artifact(out / "model.pt")


def test_keep_float_patterns_split_globs_and_op_types_in_either_spelling():
    keep = base.KeepFloat(("blocks.0.*", "type:Mul", "type:HSwish"))
    assert keep.globs == ("blocks.0.*",)
    assert keep.types("openvino") == ("Multiply", "HSwish") and keep.types("onnx") == ("Mul", "HardSwish")
    assert keep.hits("blocks.0.attn", "MatMul", "onnx") and keep.hits("x", "Mul", "onnx")
    assert keep.hits("x", "Multiply", "openvino") and not keep.hits("x", "Mul", "openvino")
    assert not keep.hits("blocks.1.attn", "Conv", "onnx")
    nodes = [("blocks.0.mlp", "MatMul"), ("se.gate", "Mul")]
    assert keep.unmatched(nodes, "onnx") == ["type:HSwish"]


def test_an_int8_artifact_is_reused_only_with_the_same_quantization_settings(exported, trained_run):
    records, out = exported
    int8 = next(r for r in records if r["precision"] == "int8")
    ONNX = FORMATS["onnx"]
    same = base.QuantConfig(**{k: v for k, v in int8["calibration"].items()
                               if k not in ("n_images", "side", "keep_float")})
    assert pipeline.reusable(int8, trained_run, ONNX, same, out) and int8["calibration"]["keep_float"] == []
    # a record made while the backbone's registry kept other layers in float is built again
    assert not pipeline.reusable({**int8, "calibration": {**int8["calibration"], "keep_float": ["type:Mul"]}},
                                 trained_run, ONNX, same, out)
    other = base.QuantConfig(**{**same.to_dict(), "ignored": ("type:Mul",), "n_calibration": 7})
    assert not pipeline.reusable(int8, trained_run, ONNX, other, out)
    assert not pipeline.reusable({**int8, "run_hash": "other"}, trained_run, ONNX, same, out)
    assert not pipeline.reusable({**int8, "versions": {**int8["versions"], "onnxruntime": "0.0"}}, trained_run, ONNX,
                                 same, out)
    assert not pipeline.reusable({**int8, "verified": False}, trained_run, ONNX, same, out)


@pytest.mark.skipif(len(__import__("core.parallel").parallel.usable_cores()) < 2, reason="needs two CPU cores")
def test_jobs_2_exports_two_runs_in_pinned_workers_with_the_same_results(trained_run, tiny_split, tmp_path_factory,
                                                                        exported):
    """Two runs (the shared ResNet-18 and a tiny MobileNet-V3) exported two at a time: the same records as one at
    a time, the manifest written by the parent, and a second request keeps everything."""
    from core.datasets import load_sides
    from core.registry import get
    from core.train import TrainConfig, fit

    second = tmp_path_factory.getbasetemp() / "export-runs-2" / "mobilenetv3_large_100"
    config = TrainConfig(backbone="mobilenetv3_large_100", size=32, epochs=1, batch_size=8, seed=7, threads=2)
    fit(config, tiny_split, load_sides(tiny_split, get(config.backbone).preprocess(32), sides=("train", "val"),
                                       progress=False)[0], second)
    runs = [trained_run, load_run(second)]
    out = tmp_path_factory.mktemp("artifacts-jobs")
    records = export_runs(runs, out, ["onnx"], ["fp32", "fp16"], {}, progress=False, jobs=2)
    assert [(r["backbone"], r["precision"], r["status"]) for r in records] == [
        ("resnet18", "fp32", "ok"), ("resnet18", "fp16", "ok"),
        ("mobilenetv3_large_100", "fp32", "ok"), ("mobilenetv3_large_100", "fp16", "ok")]
    assert {(r["backbone"], r["precision"]) for r in read_manifest(out)} == {(r["backbone"], r["precision"])
                                                                           for r in records}
    serial = {r["precision"]: r for r in exported[0]}
    for r in records[:2]:  # the same ResNet-18 as the serial export: the same graph, the same parity figures
        assert r["facts"]["op_types"] == serial[r["precision"]]["facts"]["op_types"]
        assert r["parity"]["max_abs_logit"] == pytest.approx(serial[r["precision"]]["parity"]["max_abs_logit"],
                                                             abs=1e-5)
    again = export_runs(runs, out, ["onnx"], ["fp32", "fp16"], {}, progress=False, jobs=2)
    assert all(r.get("reused") for r in again) and not _tmp_left(out)


def test_a_dead_export_worker_fails_its_remaining_artifacts_as_rows(trained_run, tmp_path, monkeypatch):
    """What the parent does with a worker's messages and a worker that stopped (no processes needed)."""
    from core import parallel

    def fake_run_jobs(fn, jobs_args, jobs, on_message=None, on_error=None):
        assert fn is pipeline._export_job and jobs == 2 and len(jobs_args) == 2
        run_path, fmt_names, precs = jobs_args[0][:3]
        name = load_run(run_path).record["backbone"]
        on_message(("start", name, "onnx fp32"))
        on_message(("record", name, {**pipeline._identity(load_run(run_path), FORMATS["onnx"], "fp32", out),
                                     "status": "skipped", "reason": "made by the fake worker"}))
        return [on_error(i, parallel.JobError("its worker process stopped (exit codes -9)")) for i in range(2)]

    monkeypatch.setattr(parallel, "run_jobs", fake_run_jobs)
    other = tmp_path / "copy"
    import shutil

    shutil.copytree(trained_run.path, other)
    record = json.loads((other / "run.json").read_text())
    record["backbone"] = "mobilenetv2_100"  # only the name matters here: nothing is built
    (other / "run.json").write_text(json.dumps(record))
    runs = [trained_run, load_run(other)]
    out = tmp_path / "art"
    records = export_runs(runs, out, ["onnx"], ["fp32", "fp16"], {}, progress=False, jobs=2)
    assert len(records) == 4 and len(read_manifest(out)) == 4
    by = {(r["backbone"], r["precision"]): r for r in records}
    first = pipeline._name(sorted(runs, key=pipeline._cost, reverse=True)[0])
    assert by[(first, "fp32")]["status"] == "skipped"
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 3 and all("the export worker stopped: JobError: its worker process stopped" in r["error"]
                                    for r in failed)
