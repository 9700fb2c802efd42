"""Research script: the README's localisation tables, from `cxr-edge fidelity --method auto` JSON files.

    .venv/bin/python tools/fidelity_table.py FIDELITY.json...

One markdown row per FP32 run in the files (several files: several training seeds of one recipe), sorted by
backbone, recipe (plain, then `--cutmix`) and seed, with the training seed read from each run's run.json, and whether the row meets issue 5's
bar (test pointing game >= 0.8 and a passing sanity check, for a run with validation ROC-AUC >= 0.95).
Then a per-backbone summary: runs, runs meeting the bar, and the range of test pointing.
"""
import json
import sys
from collections import defaultdict
from pathlib import Path

from core.registry import BACKBONES, NAMES

TITLES = {name: b.title for name, b in BACKBONES.items()}


def seed_of(run_dir: str) -> str:
    """The run's training seed, with ", CutMix P" for a run trained with `--cutmix P`."""
    try:
        config = json.loads((Path(run_dir) / "run.json").read_text())["config"]
    except (OSError, KeyError, ValueError):
        return "?"
    return f"{config['seed']}, CutMix {config['cutmix']:g}" if config.get("cutmix") else str(config["seed"])


def meets_bar(r: dict) -> str:
    if r["val_roc_auc"] < 0.95:
        return "n/a (val AUC < 0.95)"
    return "yes" if r["pointing_game"] >= 0.8 and r["sanity"]["passed"] else "**no**"


runs = []
for f in sys.argv[1:]:
    d = json.loads(Path(f).read_text())
    for r in d["runs"]:
        runs.append((r["backbone"], seed_of(r["run"]), r, r.get("split_hash")))
runs.sort(key=lambda t: (NAMES.index(t[0]) if t[0] in NAMES else len(NAMES), "CutMix" in t[1],
                         int(t[1].split(",")[0]) if t[1].split(",")[0].isdigit() else 1 << 30))
print("| backbone | seed | val ROC-AUC | chosen on val: method, layer | val pointing | **test pointing** "
      "| sanity (Spearman, last stage) | lesion occlusion p | meets the bar |")
print("|---|---|---|---|---|---|---|---|---|")
summary = defaultdict(list)
for b, seed, r, _ in runs:
    sel = r["layer_selection"]
    best = next(c for c in sel["candidates"] if c["method"] == sel["method"] and c["layer"] == sel["layer"])
    s, o = r["sanity"], r["lesion_occlusion"]
    print(f"| {TITLES.get(b, b)} | {seed} | {r['val_roc_auc']:.3f} | {r['method']}, `{r['layer']}` "
          f"({r['grid'][0]} x {r['grid'][1]}) | {best['pointing_game']:.2f} | **{r['pointing_game']:.2f}** "
          f"| {'pass' if s['passed'] else 'FAIL'} ({s['spearman_last_stage']:.3f}) "
          f"| {o['p_original']:.2f} -> {o['p_lesion_removed']:.2f} ({o['p_elsewhere_removed']:.2f}) "
          f"| {meets_bar(r)} |")
    summary[b + (" with CutMix" if "CutMix" in seed else "")].append(r)
print()
for b, rs in summary.items():
    pg = [r["pointing_game"] for r in rs]
    ok = sum(meets_bar(r) == "yes" for r in rs)
    name, _, recipe = b.partition(" ")
    print(f"- {TITLES.get(name, name)}{' ' + recipe if recipe else ''}: {ok} of {len(rs)} runs meet the bar; test pointing {min(pg):.2f}-{max(pg):.2f}")
print(f"\nsplits: {sorted({h for *_, h in runs})}; n test images: {sorted({r['n_images'] for _, _, r, _ in runs})}; "
      f"tolerance px: {sorted({r['pointing_tolerance_px'] for _, _, r, _ in runs})}")
