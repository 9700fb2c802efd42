"""pytest-benchmark microbenchmarks of each backend's predictor on the tiny run (batch 1 and 8).

Run by `just bench-micro` (CXR_EDGE_MICRO=1), not by the test suite: their figures are timings, and
the suite runs on busy shared machines. Each benchmark also checks the predictor's output, so a
backend that breaks fails here rather than timing garbage.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(os.environ.get("CXR_EDGE_MICRO") != "1",
                                reason="microbenchmarks run only with CXR_EDGE_MICRO=1 (`just bench-micro`)")

BACKENDS = ["pytorch", "onnx-fp32", "onnx-int8", "openvino-fp32"]


@pytest.fixture(scope="module")
def inputs(bench_run):
    from core.datasets import load_sides

    test = load_sides(bench_run.split(), bench_run.preprocess, sides=("test",), progress=False)[0]["test"]
    return bench_run.preprocess.normalize(test.images)


@pytest.fixture(scope="module")
def predictors(bench_run, clean_artifacts, tmp_path_factory):
    import json

    from bench.backends import TorchRunner
    from export.pipeline import load_artifact

    records = {f"{r['format']}-{r['precision']}": r
               for r in json.loads((clean_artifacts / "manifest.json").read_text())["artifacts"]}
    out = {"pytorch": TorchRunner(bench_run.build_model()),
           "onnx-fp32": load_artifact(records["onnx-fp32"], clean_artifacts, threads=2),
           "onnx-int8": load_artifact(records["onnx-int8"], clean_artifacts, threads=2)}
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):
        from export.openvino import load as ov_load
        from export.pipeline import export_runs

        ov_dir = tmp_path_factory.mktemp("micro-ov")
        (rec,) = export_runs([bench_run], ov_dir, ["openvino"], ["fp32"], {}, progress=False)
        out["openvino-fp32"] = ov_load(ov_dir / rec["path"], threads=2)
    return out


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("backend", BACKENDS)
def test_predict(benchmark, predictors, inputs, backend, batch):
    if backend not in predictors:
        pytest.skip(f"{backend}: the openvino extra is not installed")
    from bench.latency import make_batch

    x = make_batch(inputs, batch)
    benchmark.group = f"batch {batch}"
    benchmark.extra_info.update(backend=backend, batch=batch, threads=2)
    logits = benchmark(predictors[backend].predict, x)
    assert logits.shape == (batch,) and np.all(np.isfinite(logits))
