"""Research script: the localisation tables of docs/findings/gradcam-localisation.md, from
`cxr-edge fidelity --method auto` JSON files.

    .venv/bin/python tools/fidelity_table.py FIDELITY.json...

One markdown row per FP32 run in the files (several files: several training seeds of one recipe), sorted by
backbone, recipe (plain first) and seed, with the training seed and recipe (size, epochs, CutMix where not the
plain 128 px, 4 epochs) read from each run's run.json, and whether the run localises: test pointing game
>= 0.8 with a passing sanity check (judged for runs with validation ROC-AUC >= 0.95).
Then a per-backbone summary: runs, runs that localise, and the range of test pointing.
"""
import json
import sys
from collections import defaultdict
from pathlib import Path

from core.registry import BACKBONES, NAMES

TITLES = {name: b.title for name, b in BACKBONES.items()}


def seed_of(run_dir: str) -> tuple[str, str]:
    """The run's training seed and its recipe where it differs from the plain one (128 px, 4 epochs, no CutMix):
    e.g. ("42", "224 px") for a run trained with `--size 224`."""
    try:
        config = json.loads((Path(run_dir) / "run.json").read_text())["config"]
    except (OSError, KeyError, ValueError):
        return "?", ""
    parts = [f"{config['size']} px"] if config.get("size", 128) != 128 else []
    parts += [f"{config['epochs']} epochs"] if config.get("epochs", 4) != 4 else []
    parts += [f"CutMix {config['cutmix']:g}"] if config.get("cutmix") else []
    return str(config["seed"]), ", ".join(parts)


def localises(r: dict) -> str:
    """yes when test pointing >= 0.8 and the sanity check passes; n/a below validation ROC-AUC 0.95."""
    if r["val_roc_auc"] < 0.95:
        return "n/a (val AUC < 0.95)"
    return "yes" if r["pointing_game"] >= 0.8 and r["sanity"]["passed"] else "**no**"


runs = []
for f in sys.argv[1:]:
    d = json.loads(Path(f).read_text())
    for r in d["runs"]:
        runs.append((r["backbone"], *seed_of(r["run"]), r, r.get("split_hash")))
runs.sort(key=lambda t: (NAMES.index(t[0]) if t[0] in NAMES else len(NAMES), t[2],
                         int(t[1]) if t[1].isdigit() else 1 << 30))
print("| backbone | seed | val ROC-AUC | chosen on val: method, layer | val pointing | **test pointing** "
      "| sanity (Spearman, last stage) | lesion occlusion p | pointing >= 0.8, sanity passed |")
print("|---|---|---|---|---|---|---|---|---|")
summary = defaultdict(list)
for b, seed, recipe, r, _ in runs:
    sel = r["layer_selection"]
    best = next(c for c in sel["candidates"] if c["method"] == sel["method"] and c["layer"] == sel["layer"])
    s, o = r["sanity"], r["lesion_occlusion"]
    print(f"| {TITLES.get(b, b)} | {seed}{', ' + recipe if recipe else ''} | {r['val_roc_auc']:.3f} | "
          f"{r['method']}, `{r['layer']}` "
          f"({r['grid'][0]} x {r['grid'][1]}) | {best['pointing_game']:.2f} | **{r['pointing_game']:.2f}** "
          f"| {'pass' if s['passed'] else 'FAIL'} ({s['spearman_last_stage']:.3f}) "
          f"| {o['p_original']:.2f} -> {o['p_lesion_removed']:.2f} ({o['p_elsewhere_removed']:.2f}) "
          f"| {localises(r)} |")
    summary[(b, recipe)].append(r)
print()
for (b, recipe), rs in summary.items():
    pg = [r["pointing_game"] for r in rs]
    ok = sum(localises(r) == "yes" for r in rs)
    name = f"{TITLES.get(b, b)}{' (' + recipe + ')' if recipe else ''}"
    print(f"- {name}: {ok} of {len(rs)} runs point >= 0.8 with the sanity check passed; "
          f"test pointing {min(pg):.2f}-{max(pg):.2f}")
print(f"\nsplits: {sorted({h for *_, h in runs})}; n test images: {sorted({r['n_images'] for *_, r, _ in runs})}; "
      f"tolerance px: {sorted({r['pointing_tolerance_px'] for *_, r, _ in runs})}")
