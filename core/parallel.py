"""Independent per-backbone jobs (training, export) in worker processes, each pinned to its own CPU cores.

Why pinned: onnxruntime and OpenVINO size their thread pools from the cores a process may use, and
onnxruntime's threads spin while they wait. Two unpinned workers on two cores therefore run four
spinning threads and are slower than one process (measured on the 2-core CI machine: exporting three
backbones took 90 s in one process, 96 s in two unpinned processes, 64 s in two processes pinned to
one core each). Each worker here gets a disjoint share of the cores the parent may use
(``os.sched_setaffinity``, Linux), and torch's thread count is set to the size of that share.

Progress crosses the process boundary as messages: :class:`QueueProgress` stands in for a rich
``Progress`` in the worker, and :func:`run_jobs` replays its calls on the real one in the parent.
Results come back in the order the jobs were given, whatever the order they finish in.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
from collections.abc import Callable, Sequence
from typing import Any


class ParallelError(ValueError):
    pass


def usable_cores() -> list[int]:
    """The CPU ids this process may run on (all of them where affinity is not available)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def can_pin() -> bool:
    return hasattr(os, "sched_setaffinity")


def core_groups(jobs: int, cores: Sequence[int] | None = None) -> list[list[int]]:
    """``jobs`` disjoint, near-equal groups of ``cores``; an error naming the fix when there are too few."""
    cores = list(cores if cores is not None else usable_cores())
    if jobs < 1:
        raise ParallelError(f"--jobs must be at least 1 (given {jobs})")
    if jobs > len(cores):
        raise ParallelError(f"--jobs {jobs} needs at least {jobs} CPU cores; this process may use {len(cores)} "
                            f"({', '.join(map(str, cores))}): pass --jobs {len(cores)} or fewer")
    size, extra = divmod(len(cores), jobs)
    groups, start = [], 0
    for i in range(jobs):
        n = size + (1 if i < extra else 0)
        groups.append(cores[start:start + n])
        start += n
    return groups


def pin(cores: Sequence[int]) -> int:
    """Confine this process to ``cores``, set torch's threads to match; the number of threads."""
    import torch

    if can_pin():
        os.sched_setaffinity(0, set(cores))
    n = len(cores)
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    return n


# ---------------------------------------------------------------------------------- worker side

_WORKER: dict[str, Any] = {}


def _worker_main(tasks, results, messages, fn, cores: list[int]) -> None:
    """A worker's loop: take (index, args) until None; put (index, ok, result or error text)."""
    import traceback

    _WORKER.update(threads=pin(cores), messages=messages)
    while True:
        item = tasks.get()
        if item is None:
            return
        index, args = item
        try:
            results.put((index, True, fn(*args)))
        except BaseException as err:  # reported to the parent, which decides what a failed job means
            results.put((index, False, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=8)}"))


def worker_threads() -> int:
    """Threads this worker was given (its share of the cores)."""
    return int(_WORKER.get("threads") or 1)


def send(*message: Any) -> None:
    """Send a message to the parent's ``on_message`` (a no-op outside a worker)."""
    if _WORKER.get("messages") is not None:
        _WORKER["messages"].put(message)


class QueueProgress:
    """The part of rich's ``Progress`` that training uses (add_task, update, advance), sent to the parent."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self._next = prefix, 0

    def add_task(self, description: str, **kwargs: Any) -> int:
        self._next += 1
        send("progress", "add_task", (self.prefix, self._next), description, kwargs)
        return self._next

    def update(self, task: int, **kwargs: Any) -> None:
        send("progress", "update", (self.prefix, task), None, kwargs)

    def advance(self, task: int, advance: float = 1) -> None:
        send("progress", "advance", (self.prefix, task), None, {"advance": advance})


def replay(progress, tasks: dict, message: tuple) -> None:
    """Apply a :class:`QueueProgress` message to the real ``progress`` (``tasks`` maps worker ids to ours)."""
    _, method, key, description, kwargs = message
    if method == "add_task":
        tasks[key] = progress.add_task(description, **kwargs)
    elif key in tasks:
        if method == "update":
            progress.update(tasks[key], **kwargs)
        else:
            progress.advance(tasks[key], kwargs.get("advance", 1))


# ---------------------------------------------------------------------------------- parent side


class JobError(RuntimeError):
    """A job that raised in its worker, or whose worker died; the worker's traceback in the message."""


def run_jobs(fn: Callable[..., Any], jobs_args: Sequence[tuple], jobs: int,
             on_message: Callable[[tuple], None] | None = None,
             on_error: Callable[[int, BaseException], Any] | None = None) -> list[Any]:
    """Call ``fn(*args)`` for each tuple of ``jobs_args`` in ``jobs`` pinned worker processes.

    Each worker is started while the parent is confined to the worker's cores, so the worker inherits
    them from its first instruction, as under ``taskset`` (pinning a worker after it started was measured
    slower: threads made before the call keep every core). ``fn`` must be importable (a module-level
    function) and its arguments and result picklable. Messages the workers :func:`send` reach
    ``on_message`` in the parent while the jobs run. A job that raises (or whose worker dies) gives
    ``on_error(index, JobError)``'s value as its result, or the JobError is raised when ``on_error`` is
    None. Results are in the order of ``jobs_args``.
    """
    groups = core_groups(jobs)
    ctx = mp.get_context("spawn")  # fork would copy torch's and onnxruntime's thread pools in an unknown state
    tasks, results, messages = ctx.Queue(), ctx.Queue(), ctx.Queue()
    for i, args in enumerate(jobs_args):
        tasks.put((i, args))
    workers = []
    own = set(usable_cores())
    try:
        for group in groups:
            if can_pin():
                os.sched_setaffinity(0, set(group))
            try:
                w = ctx.Process(target=_worker_main, args=(tasks, results, messages, fn, group), daemon=True)
                w.start()
            finally:
                if can_pin():
                    os.sched_setaffinity(0, own)
            workers.append(w)
            tasks.put(None)
        out: dict[int, tuple[bool, Any]] = {}
        while len(out) < len(jobs_args):
            _drain(messages, on_message, timeout=0.1)
            _collect(results, out)
            if len(out) < len(jobs_args) and not any(w.is_alive() for w in workers):
                _collect(results, out)
                _drain(messages, on_message, timeout=0)
                codes = ", ".join(str(w.exitcode) for w in workers)
                for i in range(len(jobs_args)):
                    out.setdefault(i, (False, f"its worker process stopped (exit codes {codes}), e.g. out of memory"))
        while any(w.is_alive() for w in workers):  # they exit after their None; what they sent is then all here
            _drain(messages, on_message, timeout=0.1)
        _drain(messages, on_message, timeout=0)
    finally:
        for w in workers:
            w.join(timeout=5)
            if w.is_alive():
                w.terminate()
    values = []
    for i in range(len(jobs_args)):
        ok, value = out[i]
        if ok:
            values.append(value)
        elif on_error is None:
            raise JobError(f"job {i} failed: {value}")
        else:
            values.append(on_error(i, JobError(value)))
    return values


def _collect(results, out: dict) -> None:
    while True:
        try:
            index, ok, value = results.get_nowait()
        except queue_mod.Empty:
            return
        out[index] = (ok, value)


def _drain(messages, on_message, timeout: float) -> None:
    try:
        message = messages.get(timeout=timeout) if timeout else messages.get_nowait()
    except queue_mod.Empty:
        return
    while True:
        if on_message is not None:
            on_message(message)
        try:
            message = messages.get_nowait()
        except queue_mod.Empty:
            return
