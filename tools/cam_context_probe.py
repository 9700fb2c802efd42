"""Research script: does a synthetic run's model use the radiographer's marker or the image border, and do its
CAM peaks move onto the lesion when they are blanked?

    .venv/bin/python tools/cam_context_probe.py RUN N METHOD LAYER

METHOD as in tools/cam_sweep.py. On N PNEUMONIA test images: (1) every corner box where the generator draws
the marker and which holds one (brighter than the ring around it by 30 grey levels) is set to that ring's
median; (2) the outer 8 px frame is set to its median. For each, the mean p(PNEUMONIA) before and after and the
pointing game (9 px) before and after. Figures in docs/findings/gradcam-localisation.md.
"""

import sys

import numpy as np
import torch
from scipy import ndimage

import core.registry  # noqa: F401  (before pytorch_grad_cam: see ENVIRONMENT.md)
from bench.localization import fidelity_images, pointing_points
from core.runs import load_run

src = open("tools/cam_sweep.py").read().split("run = load_run")[0]
ns: dict = {}
exec(src, ns)
torch.set_num_threads(2)
run = load_run(sys.argv[1])
n = int(sys.argv[2])
method, layer = sys.argv[3], sys.argv[4]
size = run.preprocess.size
fs = fidelity_images(run, n=n)
model = run.build_model().eval()


def box(my, mx):  # the generator's marker box (|gx-mx| < 0.07, |gy-my| < 0.06, mx, my = +-0.82), 2 px margin
    cols = (np.array([mx - 0.07, mx + 0.07]) + 1) / 2 * size - 0.5
    rows = (np.array([my - 0.06, my + 0.06]) + 1) / 2 * size - 0.5
    return slice(int(rows[0]) - 2, int(np.ceil(rows[1])) + 3), slice(int(cols[0]) - 2, int(np.ceil(cols[1])) + 3)


def probs(x):
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(np.ascontiguousarray(x))).squeeze(-1)).numpy()


def pointing(x):
    pts = np.asarray(pointing_points(ns["cams"](model, method, [layer], x), size))
    d = np.array([ndimage.distance_transform_edt(~m)[r, c] for (r, c), m in zip(pts, fs.masks)])
    return d <= 9, (pts < 12).any(1) | (pts >= size - 12).any(1)


marker, has = fs.images.copy(), np.zeros(len(fs.images), bool)
for i, im in enumerate(fs.images):
    for my in (-0.82, 0.82):
        for mx in (-0.82, 0.82):
            r, c = box(my, mx)
            ring = im[max(r.start - 4, 0) : r.stop + 4, max(c.start - 4, 0) : c.stop + 4]
            if im[r, c].mean() > np.median(ring) + 30:
                has[i] = True
                marker[i][r, c] = np.median(ring)
frame = np.ones((size, size), bool)
frame[8:-8, 8:-8] = False
framed = fs.images.copy()
for i, im in enumerate(fs.images):
    framed[i][frame] = np.median(im[frame], axis=0)

p0 = probs(fs.inputs)
hit0, edge0 = pointing(fs.inputs)
print(f"{run.record['backbone']} {method}@{layer}, {len(p0)} PNEUMONIA test images, {has.sum()} with a marker")
print(
    f"original: p {p0.mean():.3f}; pointing {hit0.mean():.3f} (marker images {hit0[has].mean():.3f}); "
    f"peaks within 12 px of the border {edge0.mean():.3f}"
)
for name, imgs in (("marker blanked", marker), ("8 px frame blanked", framed)):
    x = run.preprocess.normalize(imgs)
    p = probs(x)
    hit, edge = pointing(x)
    print(
        f"{name}: p {p.mean():.3f} (max change {np.abs(p - p0).max():.3f}); pointing {hit.mean():.3f} "
        f"(marker images {hit[has].mean():.3f}); peaks within 12 px of the border {edge.mean():.3f}"
    )
