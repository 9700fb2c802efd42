"""Harness overhead: our predict() against the runtimes' own loops on the same INT8 file at batch 1, same threads
(bench/overhead.py; the table for the demo's artifacts is in docs/harness-overhead.md). The goal: ours adds at most
5% or 0.05 ms, whichever is larger. ONNX is compared with a bare ``session.run`` loop, OpenVINO with
``benchmark_app`` and with a bare ``request.infer()`` loop, alternated in short blocks.

Run by `just bench-micro` (CXR_EDGE_MICRO=1), not by the test suite: the figures are timings.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("CXR_EDGE_MICRO") != "1",
                                reason="microbenchmarks run only with CXR_EDGE_MICRO=1 (`just bench-micro`)")

THREADS = 2
HAS_OPENVINO = bool(importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"))


@pytest.fixture(scope="module")
def int8(bench_run, tmp_path_factory) -> dict[str, tuple[Path, int]]:
    """The tiny run's ONNX and OpenVINO INT8 artifacts and their image size."""
    from export.pipeline import export_runs

    out = tmp_path_factory.mktemp("overhead-artifacts")
    formats = ["onnx"] + (["openvino"] if HAS_OPENVINO else [])
    records = export_runs([bench_run], out, formats, ["int8"], {}, progress=False)
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    return {r["format"]: (out / r["path"], int(r["preprocess"]["size"])) for r in records}


def _report(name: str, fig: dict) -> None:
    print(f"\n{name}: ours {fig['ours_ms']:.3f} ms, {fig['tool']} {fig['theirs_ms']:.3f} ms, ratio "
          f"{fig['ratio']:.3f} ({fig['ratio_min']:.2f}-{fig['ratio_max']:.2f}) over {fig['blocks']} blocks")


def test_onnx_predict_adds_at_most_5_percent_to_a_bare_session_loop(benchmark, int8):
    from bench import overhead

    path, size = int8["onnx"]
    fig = benchmark.pedantic(overhead.onnx_overhead, args=(path, THREADS, size), kwargs={"blocks": 40},
                             rounds=1, iterations=1)
    benchmark.extra_info.update({k: v for k, v in fig.items() if k != "tool"})
    _report("onnx int8", fig)
    assert fig["within_goal"], fig


@pytest.mark.skipif(not HAS_OPENVINO, reason="the openvino extra is not installed")
def test_openvino_predict_adds_at_most_5_percent_to_benchmark_app(benchmark, int8):
    from bench import overhead

    if overhead.benchmark_app_path() is None:
        pytest.skip("benchmark_app is not installed beside this Python (it comes with the openvino wheel)")
    path, size = int8["openvino"]
    fig = benchmark.pedantic(overhead.openvino_overhead, args=(path, THREADS, size), kwargs={"blocks": 8},
                             rounds=1, iterations=1)
    benchmark.extra_info.update({k: v for k, v in fig.items() if k not in ("tool", "in_process")})
    _report("openvino int8", fig)
    _report("openvino int8, in process", fig["in_process"])
    assert fig["in_process"]["within_goal"], fig["in_process"]
    assert fig["within_goal"], fig
