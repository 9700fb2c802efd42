"""Evaluate trained runs (and their ensemble) on one side of their saved split.

Thresholds always come from the validation side: each run's own (stored at training time), and for
an ensemble one chosen afresh on the ensemble's validation probabilities. Never on test.
"""

from __future__ import annotations

from typing import Any

import torch

from core import io
from core.data import known_patients
from core.datasets import load_sides
from core.metrics import choose_operating_point, ensemble_probabilities, summarize
from core.runs import Run, RunError
from core.train import predict_probs, resolve_device

SIDES = ("train", "val", "test")


def evaluate_runs(runs: list[Run], side: str = "test", *, n_boot: int = 1000, seed: int = 0, device: str = "auto",
                  progress: bool = True) -> dict[str, Any]:
    if side not in SIDES:
        raise ValueError(f"side {side!r} is not known; choose one of {', '.join(SIDES)}")
    if not runs:
        raise RunError("no runs given; pass run folders (e.g. runs/resnet18) or a folder of runs (runs/)")
    hashes = {r.record["split"]["hash"] for r in runs}
    if len(hashes) > 1 and len(runs) > 1:
        detail = ", ".join(f"{r.name}: {r.record['split']['hash']}" for r in runs)
        raise RunError(f"these runs were trained on different splits ({detail}); an ensemble needs one split. "
                       f"Evaluate them one at a time, or retrain with the same --split-file")
    dev = resolve_device(device)
    split = runs[0].split()
    split.excluded = {path: why for run in runs for path, why in run.recorded_bad().items()}  # one image set for all
    cache: dict = {}  # Preprocess -> decoded sides; runs of one size share it
    found: dict[str, str] = {}  # images found unreadable now and skipped (--skip-bad)
    results, probs = [], {"val": [], side: []}
    for run in runs:
        pre = run.preprocess
        if pre not in cache:
            cache[pre], bad = load_sides(split, pre, sides=tuple(dict.fromkeys(("val", side))), progress=progress)
            found.update(bad)
        sides = cache[pre]
        model = run.build_model().to(dev)
        with torch.inference_mode():
            p_side = predict_probs(model, sides[side], pre, dev)
            p_val = predict_probs(model, sides["val"], pre, dev) if len(runs) > 1 else None
        probs[side].append(p_side)
        if p_val is not None:
            probs["val"].append(p_val)
        results.append({
            "run": str(run.path), "backbone": run.record["backbone"], "init": run.record.get("init"),
            "size": pre.size, "epochs_run": run.record.get("epochs_run"),
            "threshold": run.threshold, "threshold_chosen_on": "val",
            **summarize(sides[side].labels, p_side, run.threshold, n_boot=n_boot, seed=seed,
                        patients=known_patients(sides[side].paths, sides[side].patients)),
        })
    first = next(iter(cache.values()))[side]
    labels, patients = first.labels, known_patients(first.paths, first.patients)
    report: dict[str, Any] = {
        "side": side, "split_hash": split.hash, "split_method": split.method, "n_images": int(len(labels)),
        "runs": results, "environment": io.environment(),
    }
    if found or split.left_out(side) or split.left_out("val"):
        report["images_left_out"] = {"recorded": {s: split.left_out(s) for s in dict.fromkeys(("val", side))},
                                     "found_unreadable": [[p, why] for p, why in found.items()]}
    if len(runs) > 1:
        val_labels = next(iter(cache.values()))["val"].labels
        op = choose_operating_point(val_labels, ensemble_probabilities(probs["val"]))
        report["ensemble"] = {
            "members": [r.record["backbone"] for r in runs], "method": "mean of probabilities",
            "threshold": op["threshold"], "threshold_chosen_on": "val",
            **summarize(labels, ensemble_probabilities(probs[side]), op["threshold"], n_boot=n_boot, seed=seed,
                        patients=patients),
        }
    return report

