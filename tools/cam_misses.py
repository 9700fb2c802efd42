"""Research script: where a synthetic run's CAM peaks fall when they miss the lesion.

    .venv/bin/python tools/cam_misses.py RUN N METHOD LAYER

METHOD as in tools/cam_sweep.py (gradcam, hirescam, xgrad, ...). Re-renders each of N PNEUMONIA test images'
opacity with the generator (same seeds) and prints the pointing game, the hit rate if any pixel within 9 px
of the peak had the opacity at a given share of its peak, and for every miss its distance to the mask and
its peak (row, col). Figures in docs/findings/gradcam-localisation.md (the 4000-image runs).
"""

import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

import core.registry  # noqa
import core.synthetic as syn
from bench.localization import fidelity_images, pointing_points
from core.runs import load_run

src = open("tools/cam_sweep.py").read().split("run = load_run")[0]
ns = {}
exec(src, ns)
torch.set_num_threads(2)
run = load_run(sys.argv[1])
n = int(sys.argv[2])
method, layer = sys.argv[3], sys.argv[4]
size = run.preprocess.size
fs = fidelity_images(run, n=n)
model = run.build_model().eval()
c = ns["cams"](model, method, [layer], fs.inputs)
pts = pointing_points(c, size)
# re-render opacities
calls = []
orig_les, orig_one = syn._lesions, syn._render_one


def les(*a, **k):
    t, m = orig_les(*a, **k)
    calls.append(t)
    return t, m


ops = []


def one(rng, anat, label, sz):
    calls.clear()
    out = orig_one(rng, anat, label, sz)
    ops.append(calls[-1] if calls else None)
    return out


syn._lesions, syn._render_one = les, one
meta = json.loads((Path(run.split().source).parent / "spec.json").read_text())
spec = syn.SyntheticSpec(**meta["spec"])
plan = syn._plan(spec)
levels = []
for p, (r, cc), m in zip(fs.paths, pts, fs.masks):
    mt = re.search(r"synth-p(\d+)-(\d+)", str(p))
    i, j = int(mt[1]), int(mt[2])
    ops.clear()
    syn._render_patient_full(np.random.default_rng([spec.seed, 1, i]), 1, plan[i][1], spec.size)
    op = ops[j]
    lvl = op / op.max()
    d = ndimage.distance_transform_edt(~m)[r, cc]
    # level at the pointed pixel, max within 9 px
    yy, xx = np.ogrid[:size, :size]
    near = (yy - r) ** 2 + (xx - cc) ** 2 <= 81
    levels.append((d, lvl[r, cc], lvl[near].max(), (lvl > 0.2).mean(), (lvl > 0.1).mean(), m.mean(), r, cc))
L = np.array(levels)
hit = L[:, 0] <= 9
print(f"{run.record['backbone']} {method}@{layer} n={len(L)} pointing {hit.mean():.3f}")
for t in (0.35, 0.2, 0.1, 0.05):
    print(f"  hit if opacity level >= {t} within 9 px: {(L[:, 2] >= t).mean():.3f}")
print(f"  area share: mask35 {L[:, 5].mean():.3f} lvl>0.2 {L[:, 3].mean():.3f} lvl>0.1 {L[:, 4].mean():.3f}")
for row in L[~hit]:
    print(
        "  miss dist %.1f level@pt %.2f max-level-within-9px %.2f  pt=(%d,%d)"
        % (row[0], row[1], row[2], row[6], row[7])
    )
