"""Research script: the synthetic set with textured consolidation, to test whether Grad-CAM misses the v4
lesions because they are smooth (a model can find them by the absence of normal lung texture, which Grad-CAM's
positive evidence cannot show) rather than because of the explainer.

    CXR_EDGE_CACHE=/tmp/tex-cache .venv/bin/python tools/textured_lesions.py 2000
    CXR_EDGE_CACHE=/tmp/tex-cache .venv/bin/cxr-edge train-all -b mobilenetv3_large_100 --size 128 --epochs 4 \\
        --synthetic-images 2000 --out /tmp/tex-runs
    CXR_EDGE_CACHE=/tmp/tex-cache .venv/bin/cxr-edge fidelity /tmp/tex-runs --n 64 --no-road --method hirescam \\
        --layer mobilenetv3_large_100=blocks.4

Each opacity of generator v4 (``core.synthetic._lesions``, same placement, size and masks) is mottled by a fine
smooth noise field and crossed by 2-4 dark tubes from its densest point (air bronchograms), as consolidation
is on a radiograph. The set is written where ``--data synthetic --synthetic-images N`` looks for the v4 set in
``$CXR_EDGE_CACHE``, so use a cache of its own. Figures in README "Grad-CAM and explanation fidelity".
"""
import sys

import numpy as np

import core.synthetic as syn

_smooth = syn._lesions


def textured_lesions(rng: np.random.Generator, anat: dict, x: np.ndarray, y: np.ndarray):
    total, mask = _smooth(rng, anat, x, y)
    if not mask.any():
        return total, mask
    peak = total.max()
    mottle = 0.5 + 0.5 * np.tanh(syn._sample(syn._smooth_field(rng, 64, 1.0), x, y))  # 0..1, fine grain
    tex = total * (0.55 + 0.9 * mottle)
    iy, ix = np.unravel_index(np.argmax(total), total.shape)
    cx, cy = x[iy, ix], y[iy, ix]
    tubes = np.zeros_like(x)
    for _ in range(int(rng.integers(2, 5))):
        ang, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.08, 0.2)
        dx, dy = length * np.cos(ang), length * np.sin(ang)
        t = np.clip(((x - cx) * dx + (y - cy) * dy) / (dx * dx + dy * dy), 0, 1)
        tubes = np.maximum(tubes, np.exp(-0.5 * (np.hypot(x - cx - t * dx, y - cy - t * dy) / 0.012) ** 2))
    tex -= 0.6 * tubes * np.clip(total / peak, 0, 1) * peak
    return np.clip(tex, 0, None), mask


if __name__ == "__main__":
    spec = syn.SyntheticSpec(n_images=int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
    key = spec.key()  # the v4 key: the folder `--data synthetic` will look for
    syn._lesions = textured_lesions
    if (syn.default_cache_dir() / f"synthetic-{key}").exists():
        sys.exit(f"{syn.default_cache_dir() / f'synthetic-{key}'} exists; set CXR_EDGE_CACHE to an empty folder")
    out = syn.generate(spec, syn.default_cache_dir() / f"synthetic-{key}", progress=True)
    print(out)
