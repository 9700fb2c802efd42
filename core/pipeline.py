"""Train one or several backbones on one data set and one saved split (``train`` / ``train-all``).

Each backbone's training stays a plain call of :func:`core.train.fit` with its own config; this
module only prepares what they share (the split, the decoded images) and decides, per run folder,
whether to train, resume or leave a finished run alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from core import registry, runs
from core.datasets import load_sides, resolve_source, split_for
from core.distributed import Dist
from core.split import image_wise_warning
from core.synthetic import SyntheticSpec
from core.train import TrainConfig, fit


@dataclass(frozen=True)
class DataConfig:
    data: str | None = None  # None / "synthetic" -> built-in synthetic set
    split_file: str | None = None
    split_method: str = "patient"
    split_seed: int = 42
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    skip_bad: bool = False
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)


@dataclass
class Outcome:
    backbone: str
    status: str  # "trained", "resumed", "skipped" (already complete)
    run_dir: Path
    record: dict[str, Any]


def train_backbones(names: list[str], base: TrainConfig, data: DataConfig, out: str | Path, *,
                    resume: bool = False, force: bool = False, console: Console | None = None,
                    show_progress: bool = True, jobs: int = 1) -> list[Outcome]:
    """Train ``names`` one after another, or ``jobs`` at a time in worker processes pinned to their own
    share of the CPU cores (:mod:`core.parallel`; CPU only). Each parallel job trains with as many torch
    threads as it has cores, recorded as the config's ``threads``: results depend on the thread count."""
    dist = Dist.init()  # under torchrun: rank 0 prepares data and writes; the others wait, then read
    jobs = min(jobs, len(names))
    if jobs > 1:
        import torch

        from core.parallel import core_groups

        if dist.world > 1 or base.device.startswith("cuda") or (base.device == "auto" and torch.cuda.is_available()):
            raise ValueError(f"--jobs {jobs} trains several backbones at once on the CPU; with --device "
                             f"{base.device} (or under torchrun) train with --jobs 1")
        base = replace(base, threads=base.threads or min(len(g) for g in core_groups(jobs)))
    console = console or Console(stderr=True, quiet=not dist.main)
    show_progress = show_progress and dist.main
    out = Path(out)
    if not dist.main:
        dist.barrier()
    source = resolve_source(data.data, skip_bad=data.skip_bad, synthetic=data.synthetic, progress=show_progress)
    split = split_for(source, method=data.split_method, seed=data.split_seed, ratios=data.ratios,
                      split_file=data.split_file,
                      save_to=None if data.split_file or not dist.main else out / "split.json")
    if dist.main:
        dist.barrier()
    console.print(f"data: {source.root} ({source.kind}); split {split.hash} ({split.method}, seed {split.seed}): "
                  + ", ".join(f"{s} {c['images']} img / {c['patients']} patients" for s, c in split.counts().items()))
    warning = image_wise_warning(split)
    if warning:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    configs = [replace(base, backbone=n) for n in names]
    plans = {c.backbone: _plan(out / c.backbone, c, split.hash, resume, force) for c in configs}
    outcomes = []
    for c in configs:
        if plans[c.backbone] == "skipped":
            console.print(f"[dim]{c.backbone}: already trained with these settings and split in "
                          f"{out / c.backbone}; skipping (--force retrains)[/dim]")
            outcomes.append(Outcome(c.backbone, "skipped", out / c.backbone, runs.load_run(out / c.backbone).record))
    todo = [c for c in configs if plans[c.backbone] != "skipped"]
    by_size: dict[int, Any] = {}  # decoded images, shared by the backbones of one input size
    if jobs > 1 and todo:
        return outcomes + _train_parallel(todo, plans, split, source, data, by_size, out, jobs, console,
                                          show_progress)
    with _bar(console, show_progress) as progress:
        for c in todo:
            sides, extra = _fit_inputs(c, split, source, data, by_size, show_progress)
            run_dir = out / c.backbone
            if plans[c.backbone] == "fresh" and dist.main:
                runs.remove_run(run_dir)
            dist.barrier()
            result = fit(c, split, sides, run_dir, resume=plans[c.backbone] == "resume", progress=progress,
                         extra=extra)
            outcomes.append(_outcome(c, plans, out, result.record))
    return outcomes


def _fit_inputs(c: TrainConfig, split, source, data: DataConfig, by_pre: dict[Any, Any],
                show_progress: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The decoded train/val images for ``c`` (once per preprocessing) and the data record of its run."""
    from core.train import preprocess_for

    preprocess = preprocess_for(c)
    if preprocess not in by_pre:
        by_pre[preprocess] = load_sides(split, preprocess, sides=("train", "val"), skip_bad=data.skip_bad,
                                        progress=show_progress)
    sides, skipped = by_pre[preprocess]
    # every unreadable file, once, relative to the data root: later stages leave these out of the split
    bad = {split.relpath(p): reason for p, reason in source.skipped + skipped}
    return sides, {"data": {"source": split.source_record(), "kind": source.kind, "skipped_files": len(bad),
                            "skipped": [[path, reason] for path, reason in bad.items()]}}


def _outcome(c: TrainConfig, plans: dict[str, str], out: Path, record: dict[str, Any]) -> Outcome:
    return Outcome(c.backbone, "resumed" if plans[c.backbone] == "resume" else "trained", out / c.backbone, record)


def _bar(console: Console, show_progress: bool) -> Progress:
    return Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[info]}"), console=console, disable=not show_progress)


def _train_parallel(todo: list[TrainConfig], plans: dict[str, str], split, source, data: DataConfig,
                    by_size: dict[int, Any], out: Path, jobs: int, console: Console,
                    show_progress: bool) -> list[Outcome]:
    from core.parallel import replay, run_jobs

    args = []
    for c in sorted(todo, key=lambda c: registry.get(c.backbone).train_cost, reverse=True):
        sides, extra = _fit_inputs(c, split, source, data, by_size, show_progress)
        if plans[c.backbone] == "fresh":
            runs.remove_run(out / c.backbone)
        args.append((c, split, sides, str(out / c.backbone), plans[c.backbone] == "resume", extra))
    console.print(f"training {len(args)} backbone(s), {jobs} at a time ({args[0][0].threads} thread(s) each, "
                  f"pinned to their own cores)")
    tasks: dict = {}
    with _bar(console, show_progress) as progress:
        records = run_jobs(_fit_job, args, jobs, on_message=lambda m: replay(progress, tasks, m))
    done = {a[0].backbone: r for a, r in zip(args, records)}
    return [_outcome(c, plans, out, done[c.backbone]) for c in todo]


def _fit_job(config: TrainConfig, split, sides, run_dir: str, resume: bool, extra: dict[str, Any]) -> dict[str, Any]:
    from core.parallel import QueueProgress

    return fit(config, split, sides, run_dir, resume=resume, progress=QueueProgress(config.backbone),
               extra=extra).record


def _plan(run_dir: Path, config: TrainConfig, split_hash: str, resume: bool, force: bool) -> str:
    """'fresh', 'resume' or 'skipped' for one run folder; refuses to overwrite without --force."""
    if force or not run_dir.exists():
        return "fresh"
    if runs.is_complete(run_dir):
        record = json.loads((run_dir / "run.json").read_text())
        diff = TrainConfig.differences(record.get("config", {}), config.to_dict())
        if not diff and record.get("split", {}).get("hash") == split_hash:
            return "skipped"
        if not diff:
            raise runs.RunError(f"{run_dir} was trained on another split ({record.get('split', {}).get('hash')}, "
                                f"now {split_hash}); choose another --out, or pass --force to replace it")
        raise runs.RunError(f"{run_dir} already holds a run trained with other settings ({diff}); "
                            f"choose another --out, or pass --force to replace it")
    if (run_dir / "checkpoint" / "state.json").is_file():
        if resume:
            return "resume"
        raise runs.RunError(f"{run_dir} holds an interrupted run; pass --resume to continue it or --force to restart")
    if any(run_dir.iterdir()):
        raise runs.RunError(f"{run_dir} exists and is not a run folder; choose another --out or remove it")
    return "fresh"
