"""Parameters, FLOPs and memory: checked against hand counts and a known allocation."""

import numpy as np
import pytest
import torch
from torch import nn

from bench import cost


def test_model_cost_counts_a_convolution_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 8 * 8, 1))
    c = cost.model_cost(model, size=8)
    assert c["params_m"] * 1e6 == pytest.approx(3 * 4 * 9 + 4 * 64 + 1)
    conv = 2 * 4 * 8 * 8 * 3 * 9  # multiply-adds x 2 per output element
    linear = 2 * 4 * 64
    assert c["gflops"] * 1e9 == pytest.approx(conv + linear)
    assert "FlopCounterMode" in c["flops_method"]


def test_model_cost_of_a_registry_backbone_is_plausible():
    from core.registry import get

    c = cost.model_cost(get("resnet18").build(32).eval(), size=32)
    assert c["params_m"] == pytest.approx(11.18, abs=0.05)
    assert 0.06 < c["gflops"] < 0.09  # 1.82 G multiply-adds = 3.64 GFLOPs at 224, x (32/224)^2 ~ 0.074


@pytest.mark.skipif(cost.rss_mib() is None, reason="no /proc/self/status on this system")
def test_peak_memory_sees_a_native_allocation_freed_before_the_end():
    with cost.PeakMemory() as mem:
        a = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        del a
    assert mem.peak_mib is not None
    if mem.method.startswith("peak RSS"):
        assert 50 < mem.peak_mib < 200
    else:  # the peak counter cannot be reset here: only the RSS after the block is known
        assert mem.peak_mib < 200


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_peak_is_none_without_cuda():
    with cost.GpuPeak() as gpu:
        pass
    assert gpu.mib is None


def test_gpu_peak_counts_only_what_the_block_added(monkeypatch):
    """Other artifacts stay loaded while the benchmark interleaves them (on an H200 each CUDA-graph row's
    device-wide peak included every earlier row's pool): the block's figure starts from what was allocated."""
    state = {"allocated": 300 * 2**20, "peak": 900 * 2**20}
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "reset_peak_memory_stats", lambda d=None: state.update(peak=state["allocated"]))
    monkeypatch.setattr(cuda, "memory_allocated", lambda d=None: state["allocated"])
    monkeypatch.setattr(cuda, "max_memory_allocated", lambda d=None: state["peak"])
    with cost.GpuPeak() as gpu:
        state.update(peak=state["allocated"] + 120 * 2**20, allocated=state["allocated"] + 40 * 2**20)
    assert gpu.mib == 120
