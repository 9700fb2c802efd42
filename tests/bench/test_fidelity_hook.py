"""Explanation fidelity joins every ok benchmark row: deletion/insertion AUC for every artifact,
heatmap agreement with FP32 for INT8 (fake-quantized stand-in), the backbone's sanity check."""

from __future__ import annotations

import math

import pytest

from bench import fidelity_hook, runner
from tests.bench.conftest import fast_config


@pytest.fixture(scope="module")
def rows(clean_artifacts):
    mp = pytest.MonkeyPatch()
    mp.setattr(runner, "ROW_METRICS", [fidelity_hook.explanation_fidelity])
    mp.setattr(fidelity_hook, "SETTINGS", fidelity_hook.FidelitySettings(n=4, steps=4))
    fidelity_hook.reset()
    try:
        yield runner.bench_artifacts(clean_artifacts, fast_config(), progress=False)["rows"]
    finally:
        mp.undo()
        fidelity_hook.reset()


@pytest.mark.slow
def test_every_ok_row_carries_deletion_and_insertion(rows):
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["format"] for r in ok} >= {"pytorch", "onnx"}
    for r in ok:
        assert not any(k.endswith("_error") for k in r), {k: v for k, v in r.items() if k.endswith("_error")}
        assert 0.0 <= r["deletion_auc"] <= 1.0 and 0.0 <= r["insertion_auc"] <= 1.0
        assert isinstance(r["sanity_ok"], bool) and r["fidelity_ms_per_image"] > 0


@pytest.mark.slow
def test_int8_rows_compare_heatmaps_with_fp32(rows):
    int8 = next(r for r in rows if r["format"] == "onnx" and r["precision"] == "int8")
    assert -1.0 <= int8["cam_agreement"] <= 1.0 and 0.0 <= int8["cam_top10_overlap"] <= 1.0
    fp32 = next(r for r in rows if r["format"] == "onnx" and r["precision"] == "fp32")
    assert fp32["cam_agreement"] is None  # FP32 is the reference
    eager = next(r for r in rows if r["format"] == "pytorch")
    # the ONNX FP32 artifact predicts like PyTorch, so the same ranking gives the same curve
    assert math.isclose(fp32["deletion_auc"], eager["deletion_auc"], abs_tol=1e-3)


def test_off_when_n_is_zero(monkeypatch):
    monkeypatch.setattr(fidelity_hook, "SETTINGS", fidelity_hook.FidelitySettings(n=0))
    assert fidelity_hook.explanation_fidelity(object()) == {}


def test_int8_stand_in_is_calibrated_like_the_artifact(clean_artifacts, monkeypatch):
    """The fake-quantized stand-in must use the artifact's own calibration record, not the defaults."""
    import json

    from bench import fidelity

    seen = {}

    def spy(run_dir, predict_fn, images, cams, *, precision, calibration, **kw):
        seen[precision] = calibration
        return {"deletion_auc": 0.5, "insertion_auc": 0.5, "cam_agreement": None, "cam_top10_overlap": None,
                "fidelity_seconds": 0.1, "fidelity_n_images": len(images)}

    monkeypatch.setattr(fidelity, "artifact_fidelity", spy)
    monkeypatch.setattr(runner, "ROW_METRICS", [fidelity_hook.explanation_fidelity])
    monkeypatch.setattr(fidelity_hook, "SETTINGS", fidelity_hook.FidelitySettings(n=2, steps=2, sanity=False))
    fidelity_hook.reset()
    try:
        runner.bench_artifacts(clean_artifacts, fast_config(), progress=False)
    finally:
        fidelity_hook.reset()
    manifest = json.loads((clean_artifacts / "manifest.json").read_text())["artifacts"]
    int8 = next(r for r in manifest if r["precision"] == "int8")
    assert seen["int8"] == int8["calibration"] and seen["int8"]["calibration"] == "percentile"
