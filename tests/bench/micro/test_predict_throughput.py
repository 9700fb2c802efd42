"""`cxr-edge predict` over a folder of 1,000 images against the images/s `cxr-edge bench` reports for the same
INT8 artifact at batch 8: decoding runs beside inference, so predict should reach at least 70% of it.

Run by `just bench-micro` (CXR_EDGE_MICRO=1), not by the test suite. The artifacts are ResNet-18 at 64 px (the
demo's size, one epoch on the tiny synthetic set) exported to ONNX and OpenVINO INT8. The images are the first
1,000 of ../shared/data/kermany-cxr-224 (224 px JPEGs: real decode and resize work) where present, else 1,000
copies of the synthetic PNGs. Each benchmark stores ``bench_ips`` (8 / median seconds of ``predict`` on one
preprocessed batch of 8, as the bench's ``b8_ips``), ``predict_ips`` and their ratio in its ``extra_info``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(os.environ.get("CXR_EDGE_MICRO") != "1",
                                reason="microbenchmarks run only with CXR_EDGE_MICRO=1 (`just bench-micro`)")

N_IMAGES = 1000
THREADS = 2
FORMATS = ["onnx"] + (["openvino"] if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf")
                      else [])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_split) -> Path:
    from core.datasets import load_sides
    from core.registry import get
    from core.runs import load_run
    from core.train import TrainConfig, fit
    from export.pipeline import export_runs

    run_dir = tmp_path_factory.mktemp("predict-run") / "resnet18"
    config = TrainConfig(backbone="resnet18", size=64, epochs=1, batch_size=8, seed=7, threads=THREADS)
    sides = load_sides(tiny_split, get("resnet18").preprocess(64), sides=("train", "val"), progress=False)[0]
    fit(config, tiny_split, sides, run_dir)
    out = tmp_path_factory.mktemp("predict-artifacts")
    records = export_runs([load_run(run_dir)], out, FORMATS, ["int8"], {}, progress=False)
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_synthetic) -> tuple[Path, str]:
    from tests.conftest import KERMANY

    kermany = sorted((KERMANY / "train").rglob("*.jpeg"))[:N_IMAGES] if (KERMANY / "train").is_dir() else []
    out = tmp_path_factory.mktemp("predict-images")
    if len(kermany) == N_IMAGES:
        for p in kermany:
            shutil.copyfile(p, out / p.name)
        return out, "kermany-cxr-224 JPEGs"
    pngs = sorted(tiny_synthetic.rglob("*.png"))
    for i in range(N_IMAGES):
        shutil.copyfile(pngs[i % len(pngs)], out / f"{i:04d}.png")
    return out, "synthetic PNG copies"


def _bench_ips(predictor, pre, paths: list[Path]) -> float:
    """Images/s of ``predict`` alone on one preprocessed batch of 8, as `cxr-edge bench` reports (b8_ips)."""
    from export.predict import decode_batch

    x = decode_batch(paths[:8], pre).x
    for _ in range(5):
        predictor.predict(x)
    times = []
    t_end = time.perf_counter() + 3.0
    while time.perf_counter() < t_end or len(times) < 50:
        t0 = time.perf_counter_ns()
        predictor.predict(x)
        times.append(time.perf_counter_ns() - t0)
    return 8 * 1e9 / float(np.median(times))


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_predict_folder_throughput(benchmark, artifacts, folder, fmt):
    if fmt not in FORMATS:
        pytest.skip(f"{fmt}: the openvino extra is not installed")
    from export.model_ref import resolve
    from export.predict import PredictConfig, default_workers, list_images, predict_paths

    ref = resolve(artifacts, f"resnet18/{fmt}/int8")
    predictor = ref.load(threads=THREADS)
    paths = list_images([folder[0]])
    config = PredictConfig(batch=8, workers=default_workers())
    bench_ips = _bench_ips(predictor, ref.preprocess, paths)
    summaries = []

    def run():
        rows, summary = predict_paths(predictor, ref, paths, config)
        summaries.append(summary)
        return rows

    rows = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert len(rows) == N_IMAGES and not any(r["error"] for r in rows)
    predict_ips = float(np.median([s.images_per_s for s in summaries[1:]]))
    benchmark.group = "predict over 1,000 images"
    benchmark.extra_info.update(format=fmt, precision="int8", size=ref.preprocess.size, images=folder[1],
                                threads=THREADS, workers=config.workers, bench_ips=round(bench_ips, 1),
                                predict_ips=round(predict_ips, 1), ratio=round(predict_ips / bench_ips, 3))
    print(f"\n{fmt} int8 {ref.preprocess.size} px, {folder[1]}: predict {predict_ips:.0f} images/s, bench batch 8 "
          f"{bench_ips:.0f} images/s, ratio {predict_ips / bench_ips:.2f}")
