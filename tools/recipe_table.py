"""Print the Markdown table of the training recipes' internal figures (docs/RESULTS.md, section Recipes).

Usage: ``python tools/recipe_table.py runs-recipes`` where ``runs-recipes/<recipe>/`` is a folder of runs
trained with ``cxr-edge train-all --recipe <recipe>`` (``tools/train_recipes.sh``) and
``runs-recipes/<recipe>/test.json`` its ``cxr-edge evaluate runs-recipes/<recipe> --split test --out ...``
report. Every figure is read from those files: validation ROC-AUC from run.json, test figures at the run's
validation threshold with the interval method the report names, training time from run.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from core.recipes import NAMES


def _fmt(metric: dict) -> str:
    lo, hi = metric["ci95"]
    return f"{metric['value']:.3f} ({lo:.3f}-{hi:.3f})"


def rows(root: Path) -> tuple[list[str], set[str], set[str]]:
    out, methods, splits = [], set(), set()
    for recipe in [n for n in NAMES if (root / n / "test.json").is_file()]:
        report = json.loads((root / recipe / "test.json").read_text())
        splits.add(report["split_hash"])
        members = report["runs"] + ([{**report["ensemble"], "backbone": "ensemble (mean probability)"}]
                                    if "ensemble" in report else [])
        for r in members:
            run = root / recipe / r["backbone"] / "run.json"
            rec = json.loads(run.read_text()) if run.is_file() else {}
            m = r["metrics"]
            methods.add(r.get("ci_method", "?"))
            val = rec.get("val", {}).get("metrics", {}).get("roc_auc", {}).get("value")
            secs = rec.get("train_seconds")
            out.append(f"| {recipe} | {r['backbone']} | {'' if val is None else f'{val:.3f}'} | {_fmt(m['roc_auc'])} "
                       f"| {_fmt(m['accuracy'])} | {m['sensitivity']['value']:.3f} | {m['specificity']['value']:.3f} "
                       f"| {r['threshold']:.3f} | {'' if secs is None else f'{secs / 60:.1f} min'} |")
    return out, methods, splits


def main(root: str) -> None:
    body, methods, splits = rows(Path(root))
    if not body:
        sys.exit(f"no <recipe>/test.json under {root}; run `cxr-edge evaluate {root}/<recipe> --split test "
                 f"--out {root}/<recipe>/test.json` first")
    print(f"Split {', '.join(sorted(splits))}; test side, thresholds chosen on validation; intervals: "
          f"{'; '.join(sorted(methods))}.\n")
    print("| recipe | backbone | val ROC-AUC | test ROC-AUC (95% CI) | test accuracy (95% CI) | sensitivity "
          "| specificity | threshold (val) | train time |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(body))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs-recipes")
