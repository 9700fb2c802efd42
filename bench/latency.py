"""Latency of a predictor: warm-up, then timed calls with ``time.perf_counter_ns``, as percentiles.

Each timed call is one ``predictor.predict(batch)``, which takes a host (numpy) batch and returns host
logits, so on a GPU the figure includes the copies in and out and the device is synchronised by the
returned result (the CUDA device is also synchronised before each timed call). The benchmark loop
(:mod:`bench.runner`) measures several rounds, one after another, and states for each p50 a band
(``spread``): the 95% interval within which a repeat of the benchmark should find it, estimated from how far
the rounds' medians lay apart. Within a round the artifacts take turns in short blocks (``block_s``): the
speed of a shared machine drifts by tens of percent over seconds (measured here: the same ONNX ResNet-18
at 7.3 ms, then 12.4 ms a minute later), and turns make that drift hit every row of a round alike. The
rounds themselves follow each other in time, so the drift over the minutes of a benchmark shows in the band
instead of hiding in it. (An earlier scheme interleaved two rounds block by block and stated
the range of their medians: two near-simultaneous samples, whose range a stable machine's repeat falls
inside only a third of the time; 16 of 49 rows did on the Kermany runs.)

A fixed PyTorch convolution (:class:`ProbePredictor`, the speed probe) takes its turns with the artifacts;
each row's p50 is also stated relative to it (``b1_rel``: p50 / probe p50, round by round), meant for a
machine that runs slower as a whole for an hour (measured here: every row 7-49% slower for one hour, then
back). One convolution tracks the rows only roughly: between two steady runs the probe moved 5.3% while the
rows moved 2.5%.

The number of blocks is what makes two rounds agree, not their length: on the 2-core VM the median of
one 50 ms block of MobileNet-V2 calls varied by 14-22% (coefficient of variation) from block to block,
so a round of 10 blocks had medians up to 20% from its twin's, 30 blocks up to 9% and 60 blocks up to
6% (one thread, 14 rows, 120 blocks a round cut into windows). A round's calls are therefore paced: after
block ``j`` of ``B`` it has had at least ``(j + 1) / B`` of its slot's seconds and of its ``min_iters``
calls (:meth:`LatencyConfig.quota`), so a model slower than a block still spreads its few calls over
the whole round instead of taking them all at the start.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is measured. ``budget_s`` is the time one artifact may spend in timed calls over all
    batches and rounds; each (batch, round) gets an equal share, but never fewer than ``min_iters``
    calls (so a slow model takes longer than the budget rather than giving too few samples)."""

    batches: tuple[int, ...] = (1, 8, 32)
    warmup: int = 3  # untimed calls per batch size, before the first round
    min_iters: int = 10
    max_iters: int = 1000
    budget_s: float = 3.0
    rounds: int = 4  # one after another in time; their medians' scatter gives the band (``spread``)
    block_s: float = 0.025  # seconds of one block; within a round the blocks of all artifacts take turns

    def __post_init__(self) -> None:
        if not self.batches or any(not isinstance(b, int) or b < 1 for b in self.batches):
            raise ValueError(f"batches {self.batches!r} must be positive integers, e.g. 1,8,32")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup} must be >= 0 (e.g. 3)")
        if self.min_iters < 2 or self.max_iters < self.min_iters:
            raise ValueError(f"min_iters={self.min_iters} must be >= 2 and <= max_iters={self.max_iters}")
        if not self.budget_s > 0:
            raise ValueError(f"budget_s={self.budget_s} must be > 0 seconds (e.g. 3)")
        if self.rounds < 1:
            raise ValueError(f"rounds={self.rounds} must be >= 1 (4 give a usable band; 1 gives none)")
        if not self.block_s > 0:
            raise ValueError(f"block_s={self.block_s} must be > 0 seconds (e.g. 0.1)")

    @property
    def slot_s(self) -> float:
        """Seconds of timed calls for one batch size in one round."""
        return self.budget_s / (len(self.batches) * self.rounds)

    @property
    def blocks(self) -> int:
        """Blocks each (batch, round) slot is cut into: about ``slot_s / block_s``, at least 1."""
        return max(1, round(self.slot_s / self.block_s))

    def quota(self, block: int) -> tuple[float, int, int]:
        """What one (batch, round) slot has had by the end of block ``block`` (0-based), cumulatively: the
        seconds of timed calls, the fewest calls and the most calls (shares of ``slot_s``, ``min_iters`` and
        ``max_iters``); the last block's quota is the whole slot."""
        share = (block + 1) / self.blocks
        return self.slot_s * share, -(-self.min_iters * (block + 1) // self.blocks), \
            -(-self.max_iters * (block + 1) // self.blocks)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["batches"] = list(self.batches)
        d["blocks_per_round"] = self.blocks
        return d


def parse_batches(text: str) -> tuple[int, ...]:
    """"1,8,32" -> (1, 8, 32); a clear error for anything else."""
    try:
        batches = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise ValueError(f"--batches {text!r} must be comma-separated positive integers, e.g. 1,8,32") from None
    if not batches or min(batches) < 1:
        raise ValueError(f"--batches {text!r} must be comma-separated positive integers, e.g. 1,8,32")
    return tuple(dict.fromkeys(batches))


def make_batch(inputs: np.ndarray, batch: int) -> np.ndarray:
    """A contiguous float32 batch of ``batch`` real images (repeated when there are fewer)."""
    idx = np.arange(batch) % len(inputs)
    return np.ascontiguousarray(inputs[idx], dtype=np.float32)


def time_calls(fn: Callable[[], Any], budget_s: float, min_iters: int, max_iters: int,
               sync: Callable[[], None] | None = None) -> list[int]:
    """Nanoseconds of each call of ``fn``: at least ``min_iters`` calls, more until ``budget_s`` is spent."""
    return time_until(fn, [], budget_s, min_iters, max_iters, sync)


def time_until(fn: Callable[[], Any], times: list[int], seconds: float, min_calls: int, max_calls: int,
               sync: Callable[[], None] | None = None) -> list[int]:
    """Append the nanoseconds of calls of ``fn`` to ``times`` until it holds ``min_calls`` calls and
    ``seconds`` of timed calls (never more than ``max_calls``); nothing when it already does. Returns ``times``."""
    spent = sum(times)
    target = int(seconds * 1e9)
    while len(times) < max_calls and (len(times) < min_calls or spent < target):
        if sync:
            sync()
        t0 = time.perf_counter_ns()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter_ns() - t0)
        spent += times[-1]
    return times


PROBE_WORKLOAD = "PyTorch conv2d 3x3, 64 -> 64 channels, input 1 x 64 x 56 x 56 float32 (0.23 GFLOP), median of 1 s"


def speed_probe(seconds: float = 1.0, warmup: int = 3) -> float:
    """Milliseconds per call of a fixed PyTorch convolution (:data:`PROBE_WORKLOAD`) on the CPU with the current
    thread count: how fast this machine is at the moment, measured before and after a benchmark's timing.

    Two benchmarks of the same artifacts whose probes differ by 20% ran on a machine that changed speed
    between them (a shared VM's host load); `cxr-edge compare` sets the probes beside the rows' changes.
    """
    probe = ProbePredictor()
    for _ in range(warmup):
        probe.predict(None)
    times = time_calls(lambda: probe.predict(None), seconds, 10, 100_000)
    return float(np.median(times) / 1e6)


def time_interleaved(predictors: list[tuple[Any, Callable[[], None] | None, np.ndarray]], lat: LatencyConfig,
                     on_turn: Callable[[int, int, int], None] | None = None,
                     ) -> tuple[list[dict[int, list[list[int]]]], dict[int, tuple[BaseException, str]]]:
    """Time each ``(predictor, sync, inputs)`` (batches are made from its own ``inputs``) in ``lat.rounds`` rounds
    that follow each other (:func:`time_round`). ``on_turn(block, round, index)`` follows every turn.

    Returns, per predictor, ``{batch: [nanoseconds of each call, per round]}``, and ``{index: (error,
    where)}`` for predictors that raised (they are not timed further)."""
    times = [empty_times(lat) for _ in predictors]
    errors: dict[int, tuple[BaseException, str]] = {}
    for r in range(lat.rounds):
        time_round(predictors, lat, r, times, errors, on_turn)
    return times, errors


def empty_times(lat: LatencyConfig) -> dict[int, list[list[int]]]:
    """``{batch: [[] per round]}``: where :func:`time_round` puts one predictor's call times."""
    return {b: [[] for _ in range(lat.rounds)] for b in lat.batches}


def time_round(predictors: list[tuple[Any, Callable[[], None] | None, np.ndarray]], lat: LatencyConfig, r: int,
               times: list[dict[int, list[list[int]]]], errors: dict[int, tuple[BaseException, str]],
               on_turn: Callable[[int, int, int], None] | None = None, blocks: range | None = None) -> None:
    """Round ``r`` of ``lat.blocks`` blocks (or only the ``blocks`` given): block ``j`` of every predictor before
    block ``j + 1`` of any, each block bringing its (batch, round) up to its :meth:`LatencyConfig.quota`; call
    times go to ``times[i][batch][r]``. After a predictor's block with calls, wait its ``settle_s`` (onnxruntime's
    spinning threads). A predictor that raises is entered in ``errors`` and not timed further; one already there is
    passed over."""
    batches = [{b: make_batch(inputs, b) for b in lat.batches} for _, _, inputs in predictors]
    for j in blocks if blocks is not None else range(lat.blocks):
        seconds, fewest, most = lat.quota(j)
        for i, (predictor, sync, _) in enumerate(predictors):
            if i in errors:
                continue
            before = sum(len(times[i][b][r]) for b in lat.batches)
            try:
                for b, x in batches[i].items():
                    time_until(lambda p=predictor, x=x: p.predict(x), times[i][b][r], seconds, fewest, most, sync)
            except Exception as err:
                errors[i] = (err, f"latency round {r + 1}, block {j + 1}")
            if sum(len(times[i][b][r]) for b in lat.batches) > before:
                time.sleep(getattr(predictor, "settle_s", 0.0))
            if on_turn:
                on_turn(j, r, i)


class ProbePredictor:
    """The speed probe (:data:`PROBE_WORKLOAD`) as a predictor that takes turns with the artifacts: ``predict``
    ignores its batch and runs the fixed convolution, so every batch size times the same work."""

    settle_s = 0.0

    def __init__(self) -> None:
        import torch

        gen = torch.Generator().manual_seed(0)
        self._x = torch.randn(1, 64, 56, 56, generator=gen)
        self._w = torch.randn(64, 64, 3, 3, generator=gen) * 0.05

    def predict(self, batch: np.ndarray | None) -> None:
        import torch

        with torch.inference_mode():
            torch.nn.functional.conv2d(self._x, self._w, padding=1)


def round_medians(rounds: list[list[int]]) -> list[float]:
    """Milliseconds at the median of each round's calls (a round without calls is left out)."""
    return [float(np.median(one)) / 1e6 for one in rounds if one]


def row_figures(per_batch: dict[int, list[list[int]]], probe_rounds: list[float] | None) -> dict[str, Any]:
    """Row columns of one timed predictor: per batch size the percentiles over all calls (:func:`summarize`),
    the band of the round medians (``spread``), and, given the probe's median per round, ``b{n}_rel`` (p50 /
    probe p50) with its own band from the round-by-round ratios."""
    out: dict[str, Any] = {}
    for b, rounds in per_batch.items():
        p50s = [float(np.median(one)) / 1e6 if one else math.nan for one in rounds]
        out.update(flat(b, summarize([ns for one in rounds for ns in one], b), [x for x in p50s if x == x]))
        if probe_rounds and len(probe_rounds) == len(p50s):
            ratios = [x / p for x, p in zip(p50s, probe_rounds) if x == x and p > 0]
            out[f"b{b}_rel"] = out[f"b{b}_p50_ms"] / float(np.median(probe_rounds))
            out[f"b{b}_rel_spread"] = spread(ratios)
    return out


def summarize(times_ns: list[int], batch: int) -> dict[str, float]:
    """p50/p90/p99/mean/std in milliseconds and throughput (images/s at the median) of one batch size."""
    ms = np.asarray(times_ns, np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(ms.mean()),
            "std_ms": float(ms.std(ddof=1)) if ms.size > 1 else 0.0, "ips": float(batch * 1000.0 / p50),
            "iters": int(ms.size)}


def spread(round_p50s: list[float]) -> float | None:
    """The band of a p50 from the medians of its rounds, relative: half the width of the 95% interval for the
    difference between this benchmark's mean round median and a repeat's, ``t(0.975, k - 1) * sd * sqrt(2 / k)
    / mean`` over ``k`` rounds (Student's t). A repeat on the machine as it ran during these rounds should
    land within it 19 times in 20; the fewer the rounds, the wider it is (2 rounds: 9x their difference).
    None with fewer than two rounds."""
    k = len(round_p50s)
    if k < 2 or min(round_p50s) <= 0:
        return None
    from scipy.stats import t

    mean = statistics.fmean(round_p50s)
    return float(t.ppf(0.975, k - 1) * statistics.stdev(round_p50s) * math.sqrt(2 / k) / mean)


def flat(batch: int, stats: dict[str, float], round_p50s: list[float]) -> dict[str, Any]:
    """Row columns of one batch size: ``b1_p50_ms``, ``b1_ips``, ``b1_spread`` …"""
    row = {f"b{batch}_{k}": v for k, v in stats.items()}
    row[f"b{batch}_spread"] = spread(round_p50s)
    return row


def preprocess_time(paths: list[str], preprocess, repeats: int = 20) -> dict[str, Any]:
    """Median time to turn one image file into a normalised model input (decode, grayscale, resize,
    normalise), measured apart from the model: it is the same for every artifact of a size."""
    from core.data import decode_image

    if not paths:
        return {"ms_p50": None, "n": 0}
    times = []
    for i in range(max(repeats, 1)):
        path = paths[i % len(paths)]
        t0 = time.perf_counter_ns()
        preprocess.normalize(preprocess.image_to_uint8(decode_image(path)))
        times.append(time.perf_counter_ns() - t0)
    ms = np.asarray(times, np.float64) / 1e6
    return {"ms_p50": float(np.median(ms)), "ms_p90": float(np.percentile(ms, 90)), "n": len(times),
            "images": len(set(paths[:repeats])), "size": preprocess.size,
            "method": "decode_image + Preprocess.image_to_uint8 + normalize, one image per call, perf_counter_ns"}
