"""Mobile formats through the export loop: manifest records (the host-latency note, Core ML's unverified
record with bytes and sha256 over its folder), skips for precisions a format lacks, and predictors
loaded from records with a thread count, as the benchmark loads them."""

from __future__ import annotations

import numpy as np
import pytest

from export.base import FORMATS, BackendUnavailable, file_sha256
from export.manifest import read_manifest
from export.pipeline import export_runs, load_artifact
from tests.export.conftest import tiny_run

pytestmark = [pytest.mark.mobile, pytest.mark.slow]  # trains a tiny ResNet-18 and exports it: ~1 min of CPU
MISSING = FORMATS["executorch"].missing() or FORMATS["coreml"].missing()


@pytest.fixture(scope="module")
def mobile_export(tmp_path_factory, tiny_split):
    if MISSING:
        pytest.skip(MISSING)
    run = tiny_run(tmp_path_factory, tiny_split)
    out = tmp_path_factory.mktemp("mobile-artifacts")
    records = export_runs([run], out, ["executorch", "coreml"], ["fp32", "fp16"], {}, progress=False)
    return run, out, {(r["format"], r["precision"]): r for r in records}


def test_records_carry_the_host_note_and_skip_missing_precisions(mobile_export):
    _, out, records = mobile_export
    assert set(records) == {("executorch", "fp32"), ("executorch", "fp16"), ("coreml", "fp32"), ("coreml", "fp16")}
    assert records["executorch", "fp16"]["status"] == "skipped"
    assert "no fp16 path" in records["executorch", "fp16"]["reason"]
    for key in (("executorch", "fp32"), ("coreml", "fp16")):
        assert "stands in for a phone's" in records[key]["note"]
    assert {(r["format"], r["precision"]) for r in read_manifest(out)} == set(records)


def test_executorch_record_is_verified_and_its_predictor_takes_threads(mobile_export):
    run, out, records = mobile_export
    rec = records["executorch", "fp32"]
    assert rec["status"] == "ok", rec.get("error")
    assert rec["verified"] and rec["parity"]["within_tolerance"] and rec["parity"]["max_abs_logit"] <= 1e-4
    assert rec["path"] == "resnet18/executorch-fp32.pte" and rec["bytes"] == (out / rec["path"]).stat().st_size
    x = np.zeros((3, 3, run.preprocess.size, run.preprocess.size), np.float32)
    a = load_artifact(rec, out, threads=1).predict(x)
    b = load_artifact(rec, out, threads=2).predict(x)
    assert a.shape == (3,) and np.allclose(a, b, atol=1e-5)


@pytest.mark.skipif(__import__("platform").system() == "Darwin", reason="Core ML predicts on macOS")
def test_coreml_record_is_ok_but_unverified_with_its_reason(mobile_export):
    _, out, records = mobile_export
    rec = records["coreml", "fp16"]
    assert rec["status"] == "ok", rec.get("error")
    assert rec["verified"] is False and "macOS" in rec["unverified_reason"] and "parity" not in rec
    package = out / rec["path"]
    assert package.is_dir() and rec["path"].endswith(".mlpackage")
    assert rec["bytes"] == sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
    assert rec["sha256"] == file_sha256(package)
    assert rec["facts"]["fp16_weight_share"] >= 0.95
    with pytest.raises(BackendUnavailable, match="macOS"):
        load_artifact(rec, out)
