"""Research script: do other maps point at the synthetic lesion where Grad-CAM does not?

    .venv/bin/python tools/occlusion_probe.py RUN LAYER N

On N PNEUMONIA test images of RUN (9 px tolerance): the pointing game of the signed map M = sum over channels of
gradient x activation at LAYER, of -M ("what argues for NORMAL") and |M|; of zeroing one cell of LAYER's grid at
a time (the drop of the logit); and of occluding 1/8-image patches with the image mean (stride 1/16 image).
Figures in docs/findings/gradcam-localisation.md.
"""

import sys

import numpy as np
import torch

import core.registry  # noqa: F401  (before pytorch_grad_cam: see ENVIRONMENT.md)
from bench.localization import fidelity_images, pointing_game, pointing_points
from core.runs import load_run

torch.set_num_threads(2)
run = load_run(sys.argv[1])
layer = sys.argv[2]
n = int(sys.argv[3])
fs = fidelity_images(run, n=n)
size = run.preprocess.size
model = run.build_model().eval()
mod = model.get_submodule(layer)
store = {}
h1 = mod.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
x = torch.from_numpy(fs.inputs)
maps = []
for i in range(0, len(x), 16):
    xb = x[i : i + 16].requires_grad_(False)
    out = model(xb).reshape(-1)
    a = store["a"]
    (g,) = torch.autograd.grad(out.sum(), a)
    maps.append((g * a).sum(1).detach().numpy())
h1.remove()
M = np.concatenate(maps)


def pg(m):
    return pointing_game(pointing_points(m, size), fs.masks, tolerance=9)["pointing_game"]


print(f"{run.record['backbone']} {layer}: +M {pg(M):.2f}  -M {pg(-M):.2f}  |M| {pg(np.abs(M)):.2f}")
# feature-space occlusion: zero each cell of the layer output, drop in logit
with torch.no_grad():
    base = model(x).reshape(-1)
    h, w = M.shape[1:]
    occ = np.zeros((len(x), h, w), np.float32)
    for r in range(h):
        for c in range(w):

            def hook(m, i, o, r=r, c=c):
                o = o.clone()
                o[:, :, r, c] = 0
                return o

            hh = mod.register_forward_hook(hook)
            occ[:, r, c] = (base - model(x).reshape(-1)).numpy()
            hh.remove()
print(f"   feature-cell occlusion: drop {pg(occ):.2f}  rise {pg(-occ):.2f}")
# input-space occlusion: 16px patches stride 8 at 128 -> mean fill
k = size // 8
s = k // 2
img_mean = x.mean(dim=(2, 3), keepdim=True)
pos = list(range(0, size - k + 1, s))
io_ = np.zeros((len(x), len(pos), len(pos)), np.float32)
with torch.no_grad():
    for a_, r in enumerate(pos):
        for b_, c in enumerate(pos):
            xo = x.clone()
            xo[:, :, r : r + k, c : c + k] = img_mean.expand(-1, -1, k, k)
            io_[:, a_, b_] = (base - model(xo).reshape(-1)).numpy()
pts = np.array([[pos[i] + k // 2 for i in np.unravel_index(int(np.argmax(m)), m.shape)] for m in io_])
print(f"   input occlusion {k}px/{s}: drop {pointing_game(pts, fs.masks, tolerance=9)['pointing_game']:.2f}")
