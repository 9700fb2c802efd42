"""Latency statistics, the timing loop and the settings' checks."""

import numpy as np
import pytest

from bench import latency


def test_summarize_matches_numpy():
    ns = [1_000_000, 2_000_000, 3_000_000, 4_000_000, 10_000_000]
    s = latency.summarize(ns, batch=4)
    ms = np.asarray(ns) / 1e6
    assert s["p50_ms"] == pytest.approx(np.percentile(ms, 50))
    assert s["p99_ms"] == pytest.approx(np.percentile(ms, 99))
    assert s["mean_ms"] == pytest.approx(ms.mean()) and s["std_ms"] == pytest.approx(ms.std(ddof=1))
    assert s["ips"] == pytest.approx(4 * 1000 / 3.0) and s["iters"] == 5


def test_spread_is_the_95_percent_band_for_a_repeat():
    """Four rounds 10, 11, 10, 11 ms: mean 10.5, sd 0.5774, t(0.975, 3) = 3.1824: 3.1824 * 0.5774 * sqrt(2/4) / 10.5."""
    assert latency.spread([10.0, 11.0, 10.0, 11.0]) == pytest.approx(3.1824 * 0.57735 * 0.70711 / 10.5, rel=1e-3)
    # two rounds: t(0.975, 1) = 12.706, sd = |a - b| / sqrt(2), sqrt(2/2) = 1 -> about 9x their difference
    assert latency.spread([10.0, 10.1]) == pytest.approx(12.706 * 0.1 / 2 ** 0.5 / 10.05, rel=1e-3)
    assert latency.spread([10.0] * 4) == 0.0
    assert latency.spread([5.0]) is None


def test_a_stable_machine_repeat_lands_inside_the_band_about_19_times_in_20():
    """Simulated benchmarks of 4 rounds, each round median 10 ms with 3% noise: the p50 of a repeat (mean of
    its rounds) falls within the first benchmark's band in about 95% of pairs (the band's definition)."""
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        a, b = rng.normal(10.0, 0.3, 4), rng.normal(10.0, 0.3, 4)
        hits += abs(b.mean() - a.mean()) / a.mean() <= latency.spread(list(a))
    assert 0.93 < hits / 2000 < 0.97


def test_flat_names_columns_by_batch():
    row = latency.flat(8, latency.summarize([2_000_000] * 3, 8), [2.0, 2.2])
    assert row["b8_p50_ms"] == pytest.approx(2.0) and row["b8_spread"] == pytest.approx(latency.spread([2.0, 2.2]))
    assert set(row) >= {"b8_p90_ms", "b8_p99_ms", "b8_mean_ms", "b8_std_ms", "b8_ips", "b8_iters"}


def test_time_calls_gives_min_iters_even_with_no_budget_and_stops_at_max():
    calls = []
    times = latency.time_calls(lambda: calls.append(1), budget_s=1e-9, min_iters=7, max_iters=50)
    assert len(times) == 7 == len(calls) and all(t >= 0 for t in times)
    assert len(latency.time_calls(lambda: None, budget_s=10, min_iters=2, max_iters=30)) == 30


def test_time_calls_synchronises_around_each_call():
    events = []
    latency.time_calls(lambda: events.append("call"), 1e-9, 2, 2, sync=lambda: events.append("sync"))
    assert events == ["sync", "call", "sync"] * 2


def test_make_batch_repeats_real_images():
    x = np.arange(3 * 2 * 4 * 4, dtype=np.float32).reshape(3, 2, 4, 4)
    b = latency.make_batch(x, 5)
    assert b.shape == (5, 2, 4, 4) and b.flags.c_contiguous
    np.testing.assert_array_equal(b[3], x[0])


@pytest.mark.parametrize("text", ["", "0", "1,x", "-2"])
def test_parse_batches_rejects_bad_input(text):
    with pytest.raises(ValueError, match="--batches"):
        latency.parse_batches(text)


def test_parse_batches_drops_repeats():
    assert latency.parse_batches("1, 8,8,32") == (1, 8, 32)


@pytest.mark.parametrize("kwargs, message", [
    ({"batches": ()}, "batches"), ({"min_iters": 1}, "min_iters"), ({"budget_s": 0}, "budget_s"),
    ({"rounds": 0}, "rounds"), ({"warmup": -1}, "warmup"),
])
def test_latency_config_rejects_impossible_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        latency.LatencyConfig(**kwargs)


def test_slot_is_an_equal_share_of_the_budget():
    assert latency.LatencyConfig(batches=(1, 8), budget_s=4.0, rounds=2).slot_s == pytest.approx(1.0)


def test_preprocess_time_of_one_image(tiny_synthetic):
    import csv

    from core.preprocess import Preprocess

    with open(tiny_synthetic / "manifest.csv") as f:
        paths = [str(tiny_synthetic / r["path"]) for r in csv.DictReader(f)][:3]
    t = latency.preprocess_time(paths, Preprocess.for_model(32), repeats=5)
    assert t["n"] == 5 and t["ms_p50"] > 0 and t["size"] == 32


def test_blocks_pace_a_slot_by_cumulative_quotas():
    lat = latency.LatencyConfig(batches=(1, 8), budget_s=2.0, rounds=2, block_s=0.1, min_iters=10, max_iters=1000)
    assert lat.slot_s == pytest.approx(0.5) and lat.blocks == 5
    assert lat.quota(0) == (pytest.approx(0.1), 2, 200) and lat.quota(4) == (pytest.approx(0.5), 10, 1000)
    assert latency.LatencyConfig(budget_s=0.01).blocks == 1
    with pytest.raises(ValueError, match="block_s"):
        latency.LatencyConfig(block_s=0)


def test_a_model_slower_than_a_block_spreads_its_few_calls_over_the_round():
    """100 blocks, 4 calls: with no time to spend (a call longer than the slot) the calls fall in blocks
    0, 25, 50 and 75 rather than all in the first."""
    slow = latency.LatencyConfig(batches=(1,), budget_s=10.0, rounds=1, block_s=0.1, min_iters=4)
    assert slow.blocks == 100
    times: list[int] = []
    called_in = []
    for j in range(slow.blocks):
        _, fewest, most = slow.quota(j)
        n = len(times)
        latency.time_until(lambda: None, times, 0.0, fewest, most)
        called_in += [j] * (len(times) - n)
    assert called_in == [0, 25, 50, 75]


def test_time_until_tops_up_to_the_quota_and_never_past_the_most():
    times = [10**9]  # one call of 1 s already: the time quota of 0.5 s is met
    assert latency.time_until(lambda: None, times, 0.5, 1, 5) == [10**9]
    assert len(latency.time_until(lambda: None, times, 0.5, 3, 5)) == 3  # the fewest calls still count
    assert len(latency.time_until(lambda: None, times, 100.0, 3, 5)) == 5  # most wins over seconds


def test_a_predictor_that_raises_is_reported_and_not_timed_further():
    class Flaky:
        calls = 0

        def predict(self, x):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("device lost")
            return x

    class Steady:
        def predict(self, x):
            return x

    lat = latency.LatencyConfig(batches=(1,), warmup=0, min_iters=4, max_iters=4, budget_s=0.4, rounds=2, block_s=0.1)
    flaky, turns = Flaky(), []
    x = np.zeros((2, 1, 4, 4), np.float32)
    times, errors = latency.time_interleaved([(flaky, None, x), (Steady(), None, x)], lat,
                                             on_turn=lambda j, r, i: turns.append((j, r, i)))
    assert list(errors) == [0] and "device lost" in str(errors[0][0]) and errors[0][1] == "latency round 1, block 2"
    assert flaky.calls == 3 and [len(x) for x in times[1][1]] == [4, 4]  # the other one keeps its full rounds
    # rounds follow each other; within a round the predictors take turns block by block
    assert turns == [(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)]


def test_row_figures_state_the_p50_relative_to_the_probe_timed_in_the_same_rounds():
    """A row twice as slow as the probe in every round, while the machine slowed by half in the last two
    rounds: its p50 band is wide (the machine moved) but its ratio to the probe is exactly 2 with no band."""
    ms = [4.0, 4.0, 6.0, 6.0]
    per_batch = {1: [[int(m * 1e6)] * 5 for m in ms]}
    row = latency.row_figures(per_batch, probe_rounds=[m / 2 for m in ms])
    assert row["b1_p50_ms"] == pytest.approx(5.0) and row["b1_spread"] > 0.3
    assert row["b1_rel"] == pytest.approx(5.0 / 2.5) and row["b1_rel_spread"] == 0.0
    assert "b1_rel" not in latency.row_figures(per_batch, probe_rounds=None)


def test_the_probe_predictor_ignores_its_batch_and_takes_turns():
    probe = latency.ProbePredictor()
    lat = latency.LatencyConfig(batches=(1, 8), warmup=0, min_iters=2, max_iters=2, budget_s=0.01, rounds=2)
    times, errors = latency.time_interleaved([(probe, None, np.zeros((1, 1), np.float32))], lat)
    assert not errors and [len(r) for r in times[0][8]] == [2, 2]
    assert len(latency.round_medians(times[0][1])) == 2


def test_speed_probe_times_the_fixed_convolution():
    ms = latency.speed_probe(seconds=0.05, warmup=1)
    assert 0 < ms < 10_000 and "0.23 GFLOP" in latency.PROBE_WORKLOAD
