"""Fidelity of Grad-CAM explanations, measured on PyTorch models and on every deployed artifact.

An explanation is faithful to a deployed model when deleting what it marks as important changes
that model's output most (../shared/DESIGN.md). The measures, all pure functions of arrays:

- :func:`deletion_insertion`: deletion and insertion AUC (Petsiuk et al. 2018, RISE) for any
  predictor callable (normalised float32 NCHW batch -> N logits), pixels ranked by a heatmap
  (the FP32 model's), so ONNX, OpenVINO or TensorRT artifacts are scored the same way;
- :func:`road`: ROAD (Rong et al. 2022) through pytorch-grad-cam, for PyTorch models;
- :func:`cam_agreement`: Spearman rank correlation and top-10% overlap of two sets of heatmaps
  (FP32 against FP16/BF16 autocast or a fake-quantized INT8 copy);
- the model-randomization sanity check (Adebayo et al. 2018) lives in :mod:`bench.sanity`;
- localisation against lesion masks or boxes lives in :mod:`bench.localization` (pointing game,
  energy in mask, the box reader); :func:`bench.fidelity_run.run_fidelity` reports it beside the rest.

:func:`artifact_fidelity` is the one call the benchmark makes per artifact row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PredictFn = Callable[[np.ndarray], np.ndarray]  # normalised float32 N x C x H x W -> N logits
BASELINES = ("black", "blur", "mean")


# ----------------------------------------------------------------------------- deletion / insertion


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def baseline_image(x: np.ndarray, kind: str, *, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, blur_sigma: float | None = None) -> np.ndarray:
    """What a removed pixel becomes, for a normalised ``C x H x W`` (or ``N x C x H x W``) input.

    ``black``: the normalised value of intensity 0 (needs ``mean``/``std``; Petsiuk's deletion);
    ``blur``: a Gaussian blur of the input (Petsiuk's insertion start; sigma defaults to 5 px at
    224 px, scaled with the size); ``mean``: 0 after normalisation, the data set's mean colour.
    """
    from scipy import ndimage

    x = np.asarray(x, np.float32)
    if kind == "black":
        if mean is None or std is None:
            raise ValueError("the 'black' baseline needs the preprocessing mean and std")
        c = x.shape[-3]
        value = (0.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        shape = (1,) * (x.ndim - 3) + (c, 1, 1)
        return np.broadcast_to(value.reshape(shape), x.shape).astype(np.float32)
    if kind == "mean":
        return np.zeros_like(x)
    if kind == "blur":
        sigma = blur_sigma if blur_sigma is not None else max(1.0, 5.0 * x.shape[-1] / 224.0)
        spatial = (0,) * (x.ndim - 2) + (sigma, sigma)
        return ndimage.gaussian_filter(x, sigma=spatial, mode="nearest").astype(np.float32)
    raise ValueError(f"baseline {kind!r} is not known; choose one of {', '.join(BASELINES)}")


def _rank_pixels(saliency: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixel indices, most salient first; ties broken at random (seeded), not by position."""
    s = np.asarray(saliency, np.float64).ravel()
    jitter = rng.permutation(s.size)
    return np.lexsort((jitter, -s))


def _batched(predict_fn: PredictFn, x: np.ndarray, batch_size: int) -> np.ndarray:
    out = [np.asarray(predict_fn(np.ascontiguousarray(x[i:i + batch_size], np.float32)), np.float64).reshape(-1)
           for i in range(0, len(x), batch_size)]
    logits = np.concatenate(out) if out else np.zeros(0)
    if logits.shape != (len(x),):
        raise ValueError(f"the predictor returned {logits.shape} logits for {len(x)} inputs; it must return one "
                         f"logit per image")
    return logits


def deletion_insertion(predict_fn: PredictFn, inputs: np.ndarray, saliency: np.ndarray,
                       targets: Sequence[int] | np.ndarray | None = None, *, steps: int = 32,
                       deletion_baseline: str = "black", insertion_baseline: str = "blur",
                       mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                       batch_size: int = 32, seed: int = 0, modes: Sequence[str] = ("deletion", "insertion"),
                       ) -> dict[str, Any]:
    """Deletion and insertion AUC (Petsiuk et al. 2018) of ``predict_fn`` for heatmaps ``saliency``.

    ``inputs``: normalised float32 ``N x C x H x W``; ``saliency``: ``N x H x W`` (the FP32 model's
    heatmaps, whatever model is scored). Pixels are ranked by saliency (ties at random, seeded) and,
    in ``steps`` equal steps, deleted (set to ``deletion_baseline``) from the original image, or
    inserted into ``insertion_baseline``; after each step the predictor's probability of the
    explained class (``targets``, 1 = PNEUMONIA, default all 1; class 0 reads ``1 - p``) is read.
    An AUC is the mean of the curve over [0, 1] by the trapezoid rule. Deletion: lower is better
    (the heatmap finds what the model uses); insertion: higher is better.

    Returns ``deletion_auc``, ``insertion_auc`` (means over images), per-image values and the mean
    curves. The predictor sees ``N x (steps + 1)`` images per mode, in batches of ``batch_size``.
    """
    x = np.asarray(inputs, np.float32)
    sal = np.asarray(saliency, np.float32)
    if x.ndim != 4 or sal.shape != (x.shape[0], x.shape[2], x.shape[3]):
        raise ValueError(f"inputs {x.shape} and heatmaps {sal.shape} do not match: need N x C x H x W and N x H x W")
    if steps < 2:
        raise ValueError(f"steps={steps} must be >= 2 (e.g. 32)")
    n, c, h, w = x.shape
    tgt = np.ones(n, np.int64) if targets is None else np.asarray(targets, np.int64).reshape(-1)
    rng = np.random.default_rng(seed)
    bounds = np.round(np.linspace(0, h * w, steps + 1)).astype(int)
    result: dict[str, Any] = {"steps": steps, "n_images": n, "deletion_baseline": deletion_baseline,
                              "insertion_baseline": insertion_baseline}
    orders = [_rank_pixels(sal[i], rng) for i in range(n)]
    for mode in modes:
        if mode not in ("deletion", "insertion"):
            raise ValueError(f"mode {mode!r} is not known; use deletion and/or insertion")
        kind = deletion_baseline if mode == "deletion" else insertion_baseline
        base = baseline_image(x, kind, mean=mean, std=std)
        curves = np.empty((n, steps + 1))
        for i in range(n):
            start, fill = (x[i], base[i]) if mode == "deletion" else (base[i], x[i])
            seq = np.empty((steps + 1, c, h * w), np.float32)
            cur = start.reshape(c, h * w).copy()
            src = fill.reshape(c, h * w)
            seq[0] = cur
            for k in range(1, steps + 1):
                idx = orders[i][bounds[k - 1]:bounds[k]]
                cur[:, idx] = src[:, idx]
                seq[k] = cur
            p = _sigmoid(_batched(predict_fn, seq.reshape(steps + 1, c, h, w), batch_size))
            curves[i] = p if tgt[i] == 1 else 1.0 - p
        auc = np.trapezoid(curves, dx=1.0 / steps, axis=1)
        result[f"{mode}_auc"] = float(auc.mean())
        result[f"{mode}_auc_per_image"] = auc.tolist()
        result[f"{mode}_curve"] = curves.mean(axis=0).tolist()
    return result


# ----------------------------------------------------------------------------- ROAD (PyTorch only)


def road(model, inputs: np.ndarray, cams: np.ndarray, targets: Sequence[int] | np.ndarray | None = None, *,
         percentiles: Sequence[int] = (10, 20, 30, 40, 50, 60, 70, 80, 90), device: str = "cpu") -> dict[str, Any]:
    """ROAD (Rong et al. 2022, "remove and debias") through pytorch-grad-cam's ``ROADCombined``.

    For each percentile the most (MoRF) and least (LeRF) relevant pixels are replaced by noisy
    linear imputation from their neighbours; the score is the mean over percentiles of
    ``(LeRF - MoRF) / 2`` change of the probability of the explained class. Higher is better.
    """
    import torch

    from core._compat import ensure_torchvision

    ensure_torchvision()
    from pytorch_grad_cam.metrics.road import ROADCombined

    x = torch.from_numpy(np.ascontiguousarray(inputs, np.float32)).to(device)
    n = len(x)
    tgt = np.ones(n, np.int64) if targets is None else np.asarray(targets, np.int64).reshape(-1)
    # Probability of the explained class, so ROAD's score lies in [-1, 1] and reads like the others.
    prob_targets = [(lambda out, t=int(t): torch.sigmoid(out.reshape(-1)[0]) if t == 1
                     else 1 - torch.sigmoid(out.reshape(-1)[0])) for t in tgt]
    torch.manual_seed(0)  # the imputer adds noise
    model = model.to(device).eval()
    scores = ROADCombined(percentiles=list(percentiles))(x, np.asarray(cams, np.float32), prob_targets, model)
    scores = np.asarray(scores, np.float64).reshape(-1)
    return {"road": float(scores.mean()), "road_per_image": scores.tolist(), "percentiles": list(percentiles)}


# ----------------------------------------------------------------------------- heatmap agreement


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation; a constant map carries no ranking, and counts as 0."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def top_overlap(a: np.ndarray, b: np.ndarray, fraction: float = 0.1, seed: int = 0) -> float:
    """Share of the top ``fraction`` pixels of ``a`` that are also among the top ``fraction`` of ``b``."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    k = max(1, int(round(fraction * a.size)))
    rng = np.random.default_rng(seed)
    top_a = set(_rank_pixels(a, rng)[:k].tolist())
    top_b = set(_rank_pixels(b, rng)[:k].tolist())
    return len(top_a & top_b) / k


def cam_agreement(reference: np.ndarray, other: np.ndarray, *, top_fraction: float = 0.1) -> dict[str, Any]:
    """Agreement of two sets of heatmaps of the same images (``N x H x W``): mean Spearman rank
    correlation and mean overlap of the top ``top_fraction`` pixels (1.0 = the same pixels)."""
    ref, oth = np.asarray(reference), np.asarray(other)
    if ref.shape != oth.shape:
        raise ValueError(f"heatmaps of shapes {ref.shape} and {oth.shape} cannot be compared")
    rho = [_spearman(r, o) for r, o in zip(ref, oth)]
    top = [top_overlap(r, o, top_fraction) for r, o in zip(ref, oth)]
    return {"spearman": float(np.mean(rho)) if rho else None, "top_overlap": float(np.mean(top)) if top else None,
            "top_fraction": top_fraction, "n_images": len(rho), "spearman_per_image": rho}


# ----------------------------------------------------------------------------- per artifact


def artifact_fidelity(run_dir: str | Path, predict_fn: PredictFn, images: np.ndarray, fp32_cams: np.ndarray, *,
                      precision: str = "fp32", targets: Sequence[int] | np.ndarray | None = None,
                      calibration: dict[str, Any] | None = None, steps: int = 32, batch_size: int = 32,
                      device: str = "cpu", cache: dict | None = None) -> dict[str, Any]:
    """Explanation fidelity of one deployed artifact; the benchmark calls this once per artifact row.

    Contract:

    - ``run_dir``: the artifact's source run (its preprocessing, backbone and split are read from it);
    - ``predict_fn``: the artifact's predictor, normalised float32 ``N x C x H x W`` -> ``N`` logits
      (e.g. ``load_artifact(record).predict``);
    - ``images``: the same normalised ``N x C x H x W`` batch for every artifact of the run
      (e.g. :func:`fidelity_images`: PNEUMONIA test images);
    - ``fp32_cams``: the FP32 PyTorch model's Grad-CAM heatmaps of ``images`` (``N x H x W``, from
      :func:`fp32_heatmaps`), by which pixels are ranked for every artifact of the run;
    - ``precision``: the artifact's precision (fp32 / fp16 / int8), deciding which gradient-carrying
      stand-in gives heatmaps to compare: fp16 -> PyTorch FP16 autocast (CUDA only); int8 -> the
      PyTorch model fake-quantized with NNCF on the same calibration images (``calibration`` is the
      manifest record's ``calibration`` entry); fp32 -> none (it is the reference);
    - ``cache``: a dict kept by the caller across artifacts of one run (fake-quantized models are built once).

    Returns a flat dict: ``deletion_auc`` (lower is better), ``insertion_auc`` (higher is better),
    ``cam_agreement`` (Spearman rank correlation with the FP32 heatmaps, or None where undefined),
    ``cam_top10_overlap``, ``cam_agreement_source`` (what the heatmaps were computed on, or why there
    are none), ``fidelity_n_images``, ``fidelity_steps`` and ``fidelity_seconds``. Errors propagate;
    the benchmark turns them into the row's error.
    """
    from core.runs import load_run

    t0 = time.perf_counter()
    run = load_run(run_dir)
    pre = run.preprocess
    x = np.asarray(images, np.float32)
    di = deletion_insertion(predict_fn, x, fp32_cams, targets, steps=steps, mean=pre.mean, std=pre.std,
                            batch_size=batch_size)
    row: dict[str, Any] = {"deletion_auc": di["deletion_auc"], "insertion_auc": di["insertion_auc"],
                           "cam_agreement": None, "cam_top10_overlap": None}
    try:
        other, source = lower_precision_heatmaps(run, x, targets, precision, calibration=calibration,
                                                 device=device, cache=cache)
    except LowerPrecisionUnavailable as why:
        other, source = None, str(why)
    if other is not None:
        agree = cam_agreement(fp32_cams, other)
        row.update(cam_agreement=agree["spearman"], cam_top10_overlap=agree["top_overlap"])
    row.update(cam_agreement_source=source, fidelity_n_images=int(len(x)), fidelity_steps=steps,
               fidelity_seconds=round(time.perf_counter() - t0, 3))
    return row


class LowerPrecisionUnavailable(RuntimeError):
    """No gradient-carrying stand-in exists for this precision here (the message says why)."""


def lower_precision_heatmaps(run, inputs: np.ndarray, targets, precision: str, *, calibration: dict | None = None,
                             device: str = "cpu", cache: dict | None = None, method: str = "gradcam",
                             layer: str | None = None) -> tuple[np.ndarray, str]:
    """Heatmaps of the gradient-carrying stand-in of a ``precision`` artifact, and a description of it."""
    import torch

    from core.gradcam import Explainer, autocast_model

    dev = torch.device(device)
    size = run.preprocess.size
    if precision == "fp32":
        raise LowerPrecisionUnavailable("fp32 is the reference")
    if precision in ("fp16", "bf16"):
        if dev.type != "cuda":
            raise LowerPrecisionUnavailable(f"{precision} heatmaps need PyTorch autocast on CUDA; device is {dev}")
        model = run.build_model()
        with Explainer(autocast_model(model, precision, dev), run.backbone, size, device=dev, layer_model=model,
                       method=method, layer=layer) as ex:
            return ex(inputs, targets).cams, f"pytorch {precision} autocast on {dev}"
    if precision == "int8":
        model = fake_quantized(run, calibration, cache=cache)
        with Explainer(model, run.backbone, size, device="cpu", method=method, layer=layer) as ex:
            return ex(inputs, targets).cams, "pytorch fake-quantized int8 (QDQ scheme, same calibration images)"
    raise LowerPrecisionUnavailable(f"precision {precision!r} has no stand-in")


def fake_quantized(run, calibration: dict | None = None, *, cache: dict | None = None):
    """The run's PyTorch model fake-quantized to INT8 (:mod:`bench.fakequant`), calibrated on the same
    training-side images as the INT8 artifacts (``calibration``: the manifest record's settings; the
    export defaults when None). Built once per run and settings when ``cache`` is kept by the caller."""
    from bench.fakequant import FakeQuantUnavailable, from_config
    from export.base import QuantConfig, calibration_set

    fields = {k: v for k, v in (calibration or {}).items() if k in QuantConfig.__dataclass_fields__ and k != "ignored"}
    cfg = QuantConfig(**fields)
    key = ("fake_quantized", str(run.path), cfg.n_calibration, cfg.seed, cfg.calibration, cfg.per_channel,
           cfg.symmetric_activations, cfg.percentile)
    if cache is not None and key in cache:
        return cache[key]
    calib = calibration_set(run.split(), run.preprocess, cfg.n_calibration, cfg.seed)
    try:
        quantized = from_config(run.build_model(), calib, cfg.to_dict())
    except FakeQuantUnavailable as err:
        raise LowerPrecisionUnavailable(str(err)) from err
    if cache is not None:
        cache[key] = quantized
    return quantized


# ----------------------------------------------------------------------------- per run


def fp32_heatmaps(run, inputs: np.ndarray, targets=None, *, method: str = "gradcam", device: str = "cpu",
                  model=None, batch_size: int = 16, layer: str | None = None):
    """The FP32 PyTorch model's heatmaps (a :class:`core.gradcam.CamBatch`) of normalised ``inputs``
    (at ``layer``, default the registry's target layer)."""
    from core.gradcam import Explainer

    model = model if model is not None else run.build_model()
    with Explainer(model, run.backbone, run.preprocess.size, method=method, device=device, layer=layer) as ex:
        return ex(inputs, targets, batch_size=batch_size)
