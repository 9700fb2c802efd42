"""Timing in turns with bounded memory: the artifacts are timed in windows of a few loaded at once.

`cxr-edge bench` used to load every artifact of every backbone and keep all of them loaded while it timed them in
turns, so that every row was timed in the same minutes of the machine. On the demo's 49 artifacts that took
15.6 GB of resident memory. Here the scored predictors are released, and the timing reloads them a window at a
time:

* the rows are packed into windows whose summed resident memory (each row's ``peak_mem_mib``, measured when it
  was loaded for scoring) stays within ``--max-memory-gb`` (:func:`plan_windows`): the smallest rows, up to half
  the limit, stay loaded in every window (most of the demo's rows), the larger ones take turns in the rest;
* every round visits every window, one after another (round 1: windows 1, 2 … k; round 2: k … 1, so the window
  that ends a round starts the next without a reload), and within a window the loaded artifacts and the speed
  probe take turns in blocks as before (:func:`bench.latency.time_round`); with ``passes`` > 1 a round visits
  every window that many times, each for its share of the round's blocks.

So round r of every row still falls in the r-th part of the timing (the machine's drift over the minutes shows in
each row's band as before), and each row's p50 relative to the probe (``b1_rel``) uses the probe timed in its
own window's turns. When everything fits into one window nothing is reloaded and the schedule is the old one.
A row that alone needs more than the limit is timed in a window of its own, with a ``memory_warning``.
"""

from __future__ import annotations

import gc
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench import latency

#: ``--max-memory-gb`` when not given: this share of the machine's memory …
DEFAULT_SHARE = 0.25
#: … but never more than this, so that `just demo` stays within 4 GB of resident memory on any machine.
DEFAULT_CAP_GB = 2.0
#: When the rows need several windows, the smallest that fit into this share of the limit stay loaded throughout.
RESIDENT_SHARE = 0.5


def total_memory_gb() -> float | None:
    """The machine's physical memory in GB (GiB), or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def default_max_memory_gb(total_gb: float | None = None) -> float:
    """The default limit on the artifacts loaded at once: :data:`DEFAULT_SHARE` of the machine's memory, at most
    :data:`DEFAULT_CAP_GB` (the cap where the machine's memory is unknown)."""
    total_gb = total_memory_gb() if total_gb is None else total_gb
    if not total_gb:
        return DEFAULT_CAP_GB
    return round(min(DEFAULT_CAP_GB, DEFAULT_SHARE * total_gb), 2)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (``getrusage(RUSAGE_SELF).ru_maxrss``; KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plan_windows(sizes_mib: list[float | None], limit_mib: float, resident_share: float = RESIDENT_SHARE
                 ) -> list[list[int]]:
    """Windows of indices into ``sizes_mib`` whose sizes add up to at most ``limit_mib`` (an unknown size counts as
    0). When all fit, one window. Otherwise the smallest items that fit into ``resident_share`` of the limit stay
    loaded throughout (they are in every window: never reloaded, timed as if all were loaded), and the others are
    packed in order into the rest of the limit, one chunk per window; an item larger than that gets a chunk of its
    own."""
    sizes = [max(0.0, s or 0.0) for s in sizes_mib]
    if sum(sizes) <= limit_mib:
        return [list(range(len(sizes)))] if sizes else []
    resident: list[int] = []
    used = 0.0
    for i in sorted(range(len(sizes)), key=lambda i: (sizes[i], i)):
        if used + sizes[i] > resident_share * limit_mib:
            break
        resident.append(i)
        used += sizes[i]
    chunks: list[list[int]] = []
    room, filled = limit_mib - used, 0.0
    for i in (i for i in range(len(sizes)) if i not in set(resident)):
        if not chunks or filled + sizes[i] > room:
            chunks.append([])
            filled = 0.0
        chunks[-1].append(i)
        filled += sizes[i]
    # an item too large for the room left beside the resident ones is timed alone (they are reloaded after it)
    windows = [chunk if len(chunk) == 1 and sizes[chunk[0]] > room else sorted(resident + chunk) for chunk in chunks]
    if resident and not any(resident[0] in w for w in windows):
        windows.insert(0, sorted(resident))
    return windows


def oversize_warning(row: dict[str, Any], limit_gb: float) -> str:
    """The one-line message for a row that alone needs more memory than ``--max-memory-gb``."""
    need = (row.get("peak_mem_mib") or 0) / 1024
    return (f"{row.get('backbone')} {row.get('format')} {row.get('precision')} alone took {need:.2f} GB when loaded, "
            f"more than --max-memory-gb {limit_gb:g}: it was timed in a window of its own; pass --max-memory-gb "
            f"{np.ceil(need * 10) / 10:g} or more to time it in turns with others")


@dataclass
class Waiting:
    """A scored row waiting to be timed: its target (whose ``load`` gives a fresh predictor), its row and the
    test images its batches are made from."""

    target: Any
    row: dict[str, Any]
    inputs: np.ndarray

    @property
    def mib(self) -> float:
        return float(self.row.get("peak_mem_mib") or 0.0)


@dataclass
class Schedule:
    """What the timing did: the windows (indices into the waiting rows), how many loads it took, and the
    probe's call times per (window, round)."""

    windows: list[list[int]]
    loads: int = 0
    passes: int = 1
    probe: dict[tuple[int, int], list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        shared = [set(w) for w in self.windows if len(w) > 1]  # a lone large row's window is left aside
        always = set.intersection(*shared) if len(self.windows) > 1 and len(shared) > 1 else set()
        return {"windows": len(self.windows), "largest_window": max((len(w) for w in self.windows), default=0),
                "loaded_throughout": len(always),
                "passes_per_round": self.passes, "loads_for_timing": self.loads}


def time_in_windows(waiting: list[Waiting], lat: latency.LatencyConfig, limit_mib: float, probe: bool,
                    passes: int = 1, on_turn: Callable[[int, int, int], None] | None = None,
                    on_load: Callable[[int], None] | None = None,
                    ) -> tuple[list[dict[int, list[list[int]]]], dict[int, tuple[BaseException, str]], Schedule]:
    """Time every waiting row in ``lat.rounds`` rounds, a window of loaded predictors at a time (module docstring),
    with the speed probe (:class:`bench.latency.ProbePredictor`) in every window's turns when ``probe``. With
    several windows each round is cut into ``passes`` (at most its blocks), each visiting every window for its share
    of the blocks: more reloads, but each row's calls of a round spread over the whole round.

    Returns each row's ``{batch: [call nanoseconds per round]}``, ``{row index: (error, where)}`` for rows that
    failed to load or to run, and the :class:`Schedule`. ``on_load(index)`` is called before each load."""
    schedule = Schedule(plan_windows([w.mib for w in waiting], limit_mib))
    times = [latency.empty_times(lat) for _ in waiting]
    errors: dict[int, tuple[BaseException, str]] = {}
    loaded: dict[int, Any] = {}
    prober = latency.ProbePredictor() if probe else None
    passes = 1 if len(schedule.windows) == 1 else max(1, min(passes, lat.blocks))
    schedule.passes = passes
    visit = 0
    for r in range(lat.rounds):
        for p in range(passes):
            blocks = range(p * lat.blocks // passes, (p + 1) * lat.blocks // passes)
            order = range(len(schedule.windows)) if visit % 2 == 0 else reversed(range(len(schedule.windows)))
            visit += 1
            for k in order:
                _time_window(k, r, blocks, waiting, schedule, loaded, times, errors, lat, prober, on_turn, on_load)
    loaded.clear()
    gc.collect()
    return times, errors, schedule


def _time_window(k: int, r: int, blocks: range, waiting: list[Waiting], schedule: Schedule, loaded: dict[int, Any],
                 times: list[dict[int, list[list[int]]]], errors: dict[int, tuple[BaseException, str]],
                 lat: latency.LatencyConfig, prober: Any, on_turn: Callable[[int, int, int], None] | None,
                 on_load: Callable[[int], None] | None) -> None:
    """Load window ``k`` (releasing the others) and time ``blocks`` of round ``r`` across it and the probe."""
    members = _load_window(waiting, schedule.windows[k], loaded, errors, lat, schedule, on_load)
    timed = [(loaded[i], waiting[i].target.sync, waiting[i].inputs) for i in members]
    round_times = [times[i] for i in members]
    if prober is not None:
        timed.append((prober, None, np.zeros((1, 1), np.float32)))
        round_times.append(latency.empty_times(lat))
    round_errors: dict[int, tuple[BaseException, str]] = {}
    latency.time_round(timed, lat, r, round_times, round_errors, on_turn, blocks)
    del timed  # no reference may outlive the window: the next window's loads come first
    for pos, err in round_errors.items():
        if pos < len(members):
            errors[members[pos]] = err
            loaded.pop(members[pos], None)
    if prober is not None and len(members) not in round_errors:
        schedule.probe.setdefault((k, r), []).extend(ns for b in lat.batches for ns in round_times[-1][b][r])


def _load_window(waiting: list[Waiting], window: list[int], loaded: dict[int, Any],
                 errors: dict[int, tuple[BaseException, str]], lat: latency.LatencyConfig, schedule: Schedule,
                 on_load: Callable[[int], None] | None) -> list[int]:
    """Release the predictors outside ``window``, load (and warm up) those of it not loaded yet; return the
    members that are ready (a failed load goes into ``errors``)."""
    for i in [i for i in loaded if i not in window]:
        del loaded[i]
    gc.collect()
    for i in window:
        if i in errors or i in loaded:
            continue
        if on_load:
            on_load(i)
        try:
            predictor = waiting[i].target.load()
            schedule.loads += 1
            for b in lat.batches:  # one call at least: lazy compilation (an OpenVINO IR compiles per batch size)
                x = latency.make_batch(waiting[i].inputs, b)
                for _ in range(max(1, lat.warmup)):
                    predictor.predict(x)
            loaded[i] = predictor
        except Exception as err:
            errors[i] = (err, "load for timing")
    return [i for i in window if i in loaded]


def probe_rounds(schedule: Schedule, window: int, rounds: int) -> list[float] | None:
    """The probe's median per round in one window's turns (ms), or None when a round lacks it."""
    out = []
    for r in range(rounds):
        calls = schedule.probe.get((window, r))
        if not calls:
            return None
        out.append(float(np.median(calls)) / 1e6)
    return out


def probe_rounds_all(schedule: Schedule, rounds: int) -> list[float] | None:
    """The probe's median per round over all windows (ms), or None when a round lacks it."""
    out = []
    for r in range(rounds):
        calls = [ns for (k, rr), one in schedule.probe.items() if rr == r for ns in one]
        if not calls:
            return None
        out.append(float(np.median(calls)) / 1e6)
    return out
