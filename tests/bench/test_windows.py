"""Timing with bounded memory (bench/windows.py): the windows never hold more than the limit, every round visits
every window, rows stay ok and are timed in turns, and a row too large for the limit says so."""

from __future__ import annotations

import numpy as np
import pytest

from bench import runner, windows
from bench.backends import Target
from bench.latency import LatencyConfig
from bench.windows import Waiting
from tests.bench.conftest import fast_config


def test_plan_windows_keeps_the_smallest_loaded_and_packs_the_rest_within_the_limit():
    assert windows.plan_windows([1, 2, 3], 1e9) == [[0, 1, 2]]  # all fit: one window, nothing reloaded
    assert windows.plan_windows([100, 100, 100, 100, 100], 250, resident_share=0) == [[0, 1], [2, 3], [4]]
    # the smallest up to half the limit (0 and 50) are in every window; the others take turns in the rest
    assert windows.plan_windows([100, 300, 50, None, 90], 250) == [[0, 2, 3], [1], [2, 3, 4]]
    assert windows.plan_windows([100, 600, 50], 250) == [[0, 2], [1]]  # too large: alone, the others reloaded
    for sizes, limit in (([100, 300, 50, None, 90], 250), ([5, 7, 300, 40, 40, 40, 1], 100)):
        plan = windows.plan_windows(sizes, limit)
        assert sorted({i for w in plan for i in w}) == list(range(len(sizes)))
        assert all(sum(sizes[i] or 0 for i in w) <= limit for w in plan if len(w) > 1)


def test_the_default_limit_is_a_share_of_memory_capped():
    assert windows.default_max_memory_gb(4.0) == 1.0
    assert windows.default_max_memory_gb(64.0) == windows.DEFAULT_CAP_GB
    assert windows.default_max_memory_gb(0) == windows.DEFAULT_CAP_GB


def test_a_limit_of_0_is_refused():
    with pytest.raises(ValueError, match="max_memory_gb=0 must be > 0"):
        runner.BenchConfig(max_memory_gb=0)


class Loaded:
    """A fake predictor that counts how many of its kind are loaded at once and logs every call."""

    alive = 0
    most = 0
    calls: list[tuple[str, int]] = []

    def __init__(self, name: str) -> None:
        self.name = name
        Loaded.alive += 1
        Loaded.most = max(Loaded.most, Loaded.alive)

    def __del__(self) -> None:
        Loaded.alive -= 1

    def predict(self, x):
        Loaded.calls.append((self.name, len(x)))
        return np.zeros(len(x), np.float32)


def _waiting(n: int, mib: float) -> list[Waiting]:
    x = np.zeros((2, 1, 4, 4), np.float32)
    return [Waiting(Target(backbone="b", format=f"a{i}", precision="fp32", device="cpu", runtime="x",
                           load=lambda i=i: Loaded(f"a{i}")), {"status": "ok", "peak_mem_mib": mib}, x)
            for i in range(n)]


@pytest.fixture
def counted(monkeypatch):
    monkeypatch.setattr(Loaded, "alive", 0)
    monkeypatch.setattr(Loaded, "most", 0)
    monkeypatch.setattr(Loaded, "calls", [])
    monkeypatch.setattr(runner.time, "sleep", lambda s: None)
    return Loaded


def test_windows_hold_at_most_the_limit_and_every_round_visits_every_window(counted, monkeypatch):
    """Five rows of 100 MiB under a 0.25 GB limit: the first stays loaded throughout (half the limit), the others
    take turns beside it, never more than two loaded at once; every round visits every window, in snake order (the
    window that ends a round starts the next without a reload), so round r of every row falls in the r-th part of
    the timing; within a window the rows and the probe take turns by block."""
    lat = LatencyConfig(batches=(1,), warmup=1, min_iters=3, max_iters=3, budget_s=0.03, rounds=3, block_s=0.003)
    assert lat.blocks == 3
    visits: list[tuple[int, list[str]]] = []
    real = windows.latency.time_round

    def logged(predictors, lat, r, times, errors, on_turn=None, blocks=None):
        visits.append((r, [getattr(p, "name", "probe") for p, _, _ in predictors]))
        counted.calls.clear()
        real(predictors, lat, r, times, errors, on_turn, blocks)
        turns.append(list(counted.calls))

    turns: list[list[tuple[str, int]]] = []
    monkeypatch.setattr(windows.latency, "time_round", logged)
    waiting = _waiting(5, 100.0)
    rows = [w.row for w in waiting]
    probe = runner._time_interleaved(waiting, fast_config(latency=lat, max_memory_gb=0.25), None, "all")
    assert counted.most == 2 and counted.alive == 0
    w = [["a0", f"a{i}", "probe"] for i in range(1, 5)]
    assert visits == [(0, w[0]), (0, w[1]), (0, w[2]), (0, w[3]), (1, w[3]), (1, w[2]), (1, w[1]), (1, w[0]),
                      (2, w[0]), (2, w[1]), (2, w[2]), (2, w[3])]
    assert probe["schedule"] == {"windows": 4, "largest_window": 2, "loaded_throughout": 1, "passes_per_round": 1,
                                 "loads_for_timing": 5 + 3 + 3, "limit_mib": 256}
    assert all(r["status"] == "ok" and r["b1_iters"] == 9 and r["b1_rel"] > 0 for r in rows)
    assert [n for n, _ in turns[0]] == ["a0", "a1"] * 3  # one call each per block, in turns


def test_passes_spread_each_round_of_a_row_over_the_whole_round(counted, monkeypatch):
    """With passes, a round visits every window once per pass, each time for its share of the round's blocks, so a
    row's calls of one round are spread over the round instead of bunched into one visit."""
    lat = LatencyConfig(batches=(1,), warmup=1, min_iters=3, max_iters=3, budget_s=0.03, rounds=2, block_s=0.005)
    assert lat.blocks == 3
    visits: list[tuple[int, str, list[int]]] = []
    real = windows.latency.time_round

    def logged(predictors, lat, r, times, errors, on_turn=None, blocks=None):
        visits.append((r, predictors[0][0].name, list(blocks)))
        real(predictors, lat, r, times, errors, on_turn, blocks)

    monkeypatch.setattr(windows.latency, "time_round", logged)
    waiting = _waiting(2, 100.0)
    rows = [w.row for w in waiting]
    probe = runner._time_interleaved(waiting, fast_config(latency=lat, max_memory_gb=0.15, window_passes=5), None,
                                     "all")
    assert visits == [(0, "a0", [0]), (0, "a1", [0]), (0, "a1", [1]), (0, "a0", [1]), (0, "a0", [2]), (0, "a1", [2]),
                      (1, "a1", [0]), (1, "a0", [0]), (1, "a0", [1]), (1, "a1", [1]), (1, "a1", [2]), (1, "a0", [2])]
    assert probe["schedule"]["passes_per_round"] == 3 and probe["schedule"]["loads_for_timing"] == 12 - 5
    assert all(r["status"] == "ok" and r["b1_iters"] == 6 for r in rows) and counted.most == 1


def test_one_window_when_everything_fits_loads_each_row_once(counted):
    lat = LatencyConfig(batches=(1, 2), warmup=1, min_iters=2, max_iters=2, budget_s=0.04, rounds=2, block_s=0.01)
    waiting = _waiting(4, 100.0)
    probe = runner._time_interleaved(waiting, fast_config(latency=lat, max_memory_gb=1.0), None, "all")
    assert probe["schedule"]["windows"] == 1 and probe["schedule"]["loads_for_timing"] == 4 and counted.most == 4


def test_a_row_larger_than_the_limit_is_timed_alone_with_a_clear_message(counted):
    lat = LatencyConfig(batches=(1,), warmup=1, min_iters=2, max_iters=2, budget_s=0.02, rounds=2, block_s=0.01)
    waiting = _waiting(3, 50.0)
    waiting[1].row.update(peak_mem_mib=1500.0, backbone="vit_base_patch16_224", format="openvino", precision="fp32")
    rows = [w.row for w in waiting]
    probe = runner._time_interleaved(waiting, fast_config(latency=lat, max_memory_gb=1.0), None, "all")
    assert probe["schedule"]["windows"] == 2 and counted.most == 2  # the two small ones, then the large one alone
    assert all(r["status"] == "ok" for r in rows) and "memory_warning" not in rows[0]
    assert rows[1]["memory_warning"] == (
        "vit_base_patch16_224 openvino fp32 alone took 1.46 GB when loaded, more than --max-memory-gb 1: it was timed "
        "in a window of its own; pass --max-memory-gb 1.5 or more to time it in turns with others")


def test_a_row_that_fails_to_load_again_is_a_failed_row_and_the_rest_go_on(counted):
    lat = LatencyConfig(batches=(1,), warmup=1, min_iters=2, max_iters=2, budget_s=0.02, rounds=2, block_s=0.01)
    waiting = _waiting(3, 100.0)

    def gone():
        raise FileNotFoundError("model.onnx vanished")

    waiting[1].target.load = gone
    rows = [w.row for w in waiting]
    runner._time_interleaved(waiting, fast_config(latency=lat, max_memory_gb=0.15), None, "all")
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert rows[1]["error"].startswith("load for timing: FileNotFoundError: model.onnx vanished")


def test_real_artifacts_in_windows_of_one_stay_ok_with_memory_recorded(clean_artifacts, monkeypatch):
    """The tiny run's PyTorch and three ONNX rows timed with a limit below any of them: each alone in its window,
    every row ok with its latency, and the results carry the peak RSS and each row's RSS after load."""
    monkeypatch.setattr(runner, "ROW_METRICS", [])
    doc = runner.bench_artifacts(clean_artifacts, fast_config(max_memory_gb=1e-4), progress=False)
    rows = doc["rows"]
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert all(r["b1_p50_ms"] > 0 and r["b1_spread"] is not None and r["rss_mib_after_load"] > 0 for r in rows)
    mem = doc["memory"]
    assert mem["max_memory_gb"] == 1e-4 and mem["peak_rss_mib"] >= max(r["rss_mib_after_load"] for r in rows)
    assert doc["environment"]["settings"]["max_memory_gb"] == 1e-4
    timing = mem["timing"][0]
    assert timing["windows"] >= 2 and timing["loads_for_timing"] > len(rows) and timing["limit_mib"] == 0
