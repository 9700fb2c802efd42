"""The seed study's two configurations and its published figures, beside what cxr-edge measures for them.

``just seeds`` trains both (docs/seeds.md), evaluates them on the internal test side with ``cxr-edge evaluate``, and
prints this module's table: ``python -m core.seeds RUNS/evaluate-test.json``. The study's figures come from its own
held-out test set, ours from the test side of a patient-wise split of the images given: they are set side by side,
not claimed to be the same measurement.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SeedConfig:
    backbone: str
    summary: str
    published: tuple[tuple[str, float], ...]  # the figures the study reports on its own test set


SEEDS: tuple[SeedConfig, ...] = (
    SeedConfig("cnn3", "3-layer CNN from scratch, class-weighted BCE, Adam 1e-3, 10 epochs", (("accuracy", 0.816),)),
    SeedConfig("resnet18", "ResNet-18: new head alone for 5 epochs, then layer4 too at a 10x lower rate for 5",
               (("accuracy", 0.933),)),
)
# (column, key in a `cxr-edge evaluate` report): the study's four figures; recall is sensitivity
METRICS: tuple[tuple[str, str], ...] = (("accuracy", "accuracy"), ("precision", "precision"),
                                        ("recall", "sensitivity"), ("F1", "f1"))


def comparison(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per seed configuration found in ``report`` (a ``cxr-edge evaluate`` report): our figures with
    their 95% CIs and the study's published ones."""
    by_backbone = {r["backbone"]: r for r in report["runs"]}
    missing = [s.backbone for s in SEEDS if s.backbone not in by_backbone]
    if len(missing) == len(SEEDS):
        raise ValueError(f"the report holds none of the seed configurations ({', '.join(s.backbone for s in SEEDS)}); "
                         "evaluate the runs of `just seeds`")
    rows = []
    for seed in SEEDS:
        run = by_backbone.get(seed.backbone)
        if run is None:
            continue
        ours = {col: run["metrics"][key] for col, key in METRICS}
        rows.append({"backbone": seed.backbone, "summary": seed.summary, "init": run.get("init"),
                     "size": run.get("size"), "epochs_run": run.get("epochs_run"), "threshold": run.get("threshold"),
                     "ours": ours, "published": dict(seed.published)})
    return rows


def markdown(rows: list[dict[str, Any]], report: dict[str, Any]) -> str:
    """The comparison as a Markdown table with a caption naming the test side, sizes and initialisation."""
    head = ["model", "the study's configuration", "ours: px, epochs run, init",
            *(f"{c} (ours, 95% CI)" for c, _ in METRICS), "study's accuracy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]" for m in r["ours"].values()]
        pub = r["published"].get("accuracy")
        ours = f"{r['size']} px, {r['epochs_run']} epochs, {r['init']}"
        lines.append("| " + " | ".join([f"`{r['backbone']}`", r["summary"], ours, *cells,
                                         "-" if pub is None else f"{pub:.3f}"]) + " |")
    caption = (f"Ours: the {report['side']} side of split {report['split_hash']} ({report['n_images']} images, "
               f"{report['split_method']}), each run at its threshold chosen on validation. The study's: its own "
               "held-out test set (its accuracy only).")
    return "\n".join([*lines, "", caption])


def main(argv: list[str] | None = None) -> int:
    """``python -m core.seeds EVALUATE_JSON``: print the comparison table."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m core.seeds RUNS/evaluate-test.json (written by `cxr-edge evaluate RUNS`)",
              file=sys.stderr)
        return 2
    path = Path(args[0])
    try:
        report = json.loads(path.read_text())
        rows = comparison(report)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {path}: {err}; run `cxr-edge evaluate RUNS --split test` first", file=sys.stderr)
        return 2
    print(markdown(rows, report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
