"""Research script: pointing game and sanity check of pytorch-grad-cam's explainers on one synthetic run.

    .venv/bin/python tools/cam_sweep.py RUN N METHOD[@STAGES]...

METHOD: gradcam, hirescam, xgrad, elem (Grad-CAM element-wise), shapley, fullgrad, gradcam++, layercam,
scorecam, ablation (AblationCAM; both gradient-free, one forward pass per channel: slow on CPU), or
refine-{gc,pp,hr,lc} (RefineCAM over Grad-CAM / Grad-CAM++ / HiResCAM / LayerCAM), any of them with "+aug"
(pytorch-grad-cam's aug_smooth: the maps of flipped and rescaled inputs averaged); STAGES: indices into the
backbone's three stage outputs below (0 = two before the last, 2 = the last), default 1. Every map is taken at
the input resolution; the pointing game uses N PNEUMONIA test images and a 9 px tolerance; "sanity rho" is the
mean Spearman correlation with the maps of the copy randomized from the last stage on (passes below 0.5).
Figures in docs/findings/gradcam-localisation.md (the 2000-image runs).
"""

import sys
import time

import numpy as np
import pytorch_grad_cam as pgc
import torch
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

import core.registry  # noqa: F401  (before pytorch_grad_cam: see ENVIRONMENT.md)
from bench.fidelity import cam_agreement
from bench.localization import fidelity_images, pointing_game, pointing_points
from bench.sanity import last_stage, randomized_copy
from core.runs import load_run

torch.set_num_threads(2)
STAGES = {  # stage outputs, coarse last
    "resnet18": ["layer2", "layer3", "layer4"],
    "resnet50": ["layer2", "layer3", "layer4"],
    "densenet121": ["features.denseblock2", "features.denseblock3", "features.denseblock4"],
    "efficientnet_b0": ["blocks.2", "blocks.4", "blocks.6"],
    "mobilenetv2_100": ["blocks.2", "blocks.4", "blocks.6"],
    "mobilenetv3_large_100": ["blocks.2", "blocks.4", "blocks.6"],
}


def make(method, model, layers):
    if method.startswith("refine-"):
        base = {"gc": pgc.GradCAM, "pp": pgc.GradCAMPlusPlus, "hr": pgc.HiResCAM, "lc": pgc.LayerCAM}[
            method.split("-")[1]
        ]
        return pgc.RefineCAM(model, layers, base_method=base)
    cls = {
        "gradcam": pgc.GradCAM,
        "hirescam": pgc.HiResCAM,
        "xgrad": pgc.XGradCAM,
        "elem": pgc.GradCAMElementWise,
        "shapley": pgc.ShapleyCAM,
        "fullgrad": pgc.FullGrad,
        "gradcam++": pgc.GradCAMPlusPlus,
        "layercam": pgc.LayerCAM,
        "scorecam": pgc.ScoreCAM,
        "ablation": pgc.AblationCAM,
    }[method]
    return cls(model=model, target_layers=layers)


def cams(model, method, layer_names, x, bs=16):
    layers = [model.get_submodule(n) for n in layer_names]
    aug = method.endswith("+aug")  # pytorch-grad-cam's aug_smooth (flips and scalings averaged)
    method = method.removesuffix("+aug")
    cam = make(method, model, layers)
    out = []
    for i in range(0, len(x), bs):
        xb = torch.from_numpy(np.ascontiguousarray(x[i : i + bs]))
        out.append(
            np.asarray(cam(input_tensor=xb, targets=[BinaryClassifierOutputTarget(1)] * len(xb), aug_smooth=aug))
        )
    if hasattr(cam, "activations_and_grads"):
        cam.activations_and_grads.release()
    else:
        for c in cam.base_cam_per_layer:
            c.activations_and_grads.release()
    return np.nan_to_num(np.concatenate(out), nan=0.0)


run = load_run(sys.argv[1])
n = int(sys.argv[2])
specs = sys.argv[3:]
bb = run.record["backbone"]
size = run.preprocess.size
fs = fidelity_images(run, n=n)
model = run.build_model().eval()
st = STAGES[bb]
for spec in specs:
    method, _, which = spec.partition("@")  # which: e.g. 1,2 (indices into STAGES) ; default 1
    names = [st[int(k)] for k in (which or "1").split(",")]
    t = time.time()
    try:
        c = cams(model, method, names, fs.inputs)
    except RuntimeError as err:  # e.g. ShapleyCAM needs a second derivative hardsigmoid does not have
        print(f"{bb} {spec}: failed ({str(err).splitlines()[0]})", flush=True)
        continue
    pg = pointing_game(pointing_points(c, size), fs.masks, tolerance=9)["pointing_game"]
    line = f"{bb} {spec} ({'+'.join(names)}): pointing {pg:.2f} [{time.time() - t:.0f}s]"
    rand = randomized_copy(model, last_stage(bb, model, size))
    cr = cams(rand, method, names, fs.inputs)
    line += f" sanity rho {cam_agreement(c, cr)['spearman']:+.2f}"
    print(line, flush=True)
