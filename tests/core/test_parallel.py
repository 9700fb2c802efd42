"""Worker processes pinned to their own cores (core.parallel), and training with --jobs."""

from __future__ import annotations

import os

import pytest

from core import parallel
from core.parallel import JobError, ParallelError, core_groups, run_jobs


def test_core_groups_are_disjoint_near_equal_and_cover_the_cores():
    assert core_groups(2, [0, 1]) == [[0], [1]]
    assert core_groups(2, [0, 1, 2]) == [[0, 1], [2]]
    assert core_groups(1, [3, 5]) == [[3, 5]]
    with pytest.raises(ParallelError, match="--jobs 3 needs at least 3 CPU cores.*--jobs 2 or fewer"):
        core_groups(3, [0, 1])
    with pytest.raises(ParallelError, match="at least 1"):
        core_groups(0, [0, 1])


# job functions must be importable by the spawned workers
def job_where(tag: str) -> tuple[str, list[int], int, int]:
    import torch

    parallel.send("hello", tag)
    return tag, sorted(os.sched_getaffinity(0)), torch.get_num_threads(), parallel.worker_threads()


def job_fails(tag: str) -> None:
    raise RuntimeError(f"job {tag} broke")


def job_progress(n: int) -> int:
    bar = parallel.QueueProgress("w")
    task = bar.add_task("work", total=n, info="")
    for _ in range(n):
        bar.advance(task)
    bar.update(task, info="done")
    return n


needs_two_cores = pytest.mark.skipif(len(parallel.usable_cores()) < 2 or not parallel.can_pin(),
                                     reason="needs two CPU cores and os.sched_setaffinity (Linux)")


@needs_two_cores
def test_jobs_run_in_workers_pinned_to_disjoint_cores_results_in_order_messages_delivered():
    messages = []
    out = run_jobs(job_where, [("a",), ("b",), ("c",), ("d",)], 2, on_message=messages.append)
    assert [o[0] for o in out] == ["a", "b", "c", "d"]
    groups = {tuple(o[1]) for o in out}
    assert all(len(g) == len(parallel.usable_cores()) // 2 for g in groups)
    assert all(o[2] == o[3] == len(o[1]) for o in out)  # torch threads = the worker's cores
    assert sorted(m[1] for m in messages) == ["a", "b", "c", "d"]
    assert os.sched_getaffinity(0) == set(parallel.usable_cores())  # the parent gets its cores back


@needs_two_cores
def test_a_failing_job_is_reported_with_its_error_and_the_others_finish():
    out = run_jobs(job_fails, [("x",)], 1, on_error=lambda i, err: f"failed {i}: {err}")
    assert out[0].startswith("failed 0: RuntimeError: job x broke")
    with pytest.raises(JobError, match="job y broke"):
        run_jobs(job_fails, [("y",)], 1)
    mixed = run_jobs(job_where, [("p",)], 2) + run_jobs(job_fails, [("q",), ("r",)], 2, on_error=lambda i, e: i)
    assert mixed[0][0] == "p" and mixed[1:] == [0, 1]


@needs_two_cores
def test_worker_progress_is_replayed_on_the_parents_progress():
    class Recorder:
        def __init__(self):
            self.calls, self.n = [], 0

        def add_task(self, description, **kw):
            self.n += 1
            self.calls.append(("add", description, kw))
            return self.n

        def update(self, task, **kw):
            self.calls.append(("update", task, kw))

        def advance(self, task, advance=1):
            self.calls.append(("advance", task, advance))

    rec, tasks = Recorder(), {}
    assert run_jobs(job_progress, [(3,)], 1, on_message=lambda m: parallel.replay(rec, tasks, m)) == [3]
    assert rec.calls == [("add", "work", {"total": 3, "info": ""}), ("advance", 1, 1), ("advance", 1, 1),
                         ("advance", 1, 1), ("update", 1, {"info": "done"})]


@needs_two_cores
def test_train_with_jobs_gives_the_same_weights_as_one_after_another_at_the_same_threads(tmp_path, tiny_synthetic):
    """Two backbones at once, one core each, against the same two trained in this process with one thread."""
    import torch

    from core.io import load_tensors
    from core.pipeline import DataConfig, train_backbones
    from core.train import TrainConfig

    names = ["resnet18", "mobilenetv3_large_100"]
    base = TrainConfig(backbone=names[0], size=32, epochs=1, batch_size=8, seed=3)
    data = DataConfig(data=str(tiny_synthetic / "manifest.csv"))
    threads = torch.get_num_threads()
    try:
        serial = train_backbones(names, TrainConfig(**{**base.to_dict(), "threads": 1}), data, tmp_path / "serial",
                                 show_progress=False)
    finally:
        torch.set_num_threads(threads)
    par = train_backbones(names, base, data, tmp_path / "par", show_progress=False, jobs=2)
    assert [o.backbone for o in par] == names and {o.status for o in par} == {"trained"}
    for s, p in zip(serial, par):
        assert p.record["config"]["threads"] == 1 and p.record["environment"]["torch_threads"] == 1
        a, b = load_tensors(s.run_dir / "model.safetensors"), load_tensors(p.run_dir / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), s.backbone
    again = train_backbones(names, base, data, tmp_path / "par", show_progress=False, jobs=2)
    assert {o.status for o in again} == {"skipped"}  # the recorded threads are the ones --jobs 2 picks again


def test_jobs_refuse_cuda_training(tmp_path, tiny_synthetic):
    from core.pipeline import DataConfig, train_backbones
    from core.train import TrainConfig

    with pytest.raises(ValueError, match="--jobs 2 trains several backbones at once on the CPU"):
        train_backbones(["resnet18", "mobilenetv2_100"], TrainConfig(backbone="resnet18", device="cuda"),
                        DataConfig(data=str(tiny_synthetic / "manifest.csv")), tmp_path, show_progress=False, jobs=2)
