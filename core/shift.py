"""A warning, without labels, that new images do not look like the ones a model was trained and validated on.

A :class:`ShiftReference` is made once per run and stored beside it (``shift_reference.npz``, keyed by the sha256
of ``run.json``, rebuilt when missing or stale): the validation side's predicted probabilities and positive rate
at the run's threshold, and the run's pooled penultimate features (timm ``forward_features`` then
``forward_head(pre_logits=True)``) of the training side, as a mean and a shrunk covariance (scikit-learn's
Ledoit-Wolf), together with the Mahalanobis distance of each validation image from them: the distances that
images the model never trained on, but which come from the same source, have.

:func:`check_shift` compares a batch of new images with the reference:

- its probabilities against validation's (two-sample Kolmogorov-Smirnov test);
- its share called PNEUMONIA at the threshold against validation's (binomial test);
- with features: its Mahalanobis distances against validation's (one-sided Mann-Whitney U test, robust for
  small sets), stated as the share of new images beyond the validation 99th percentile.

A check fires at p < ``alpha`` (0.01); the feature check also needs at least 5% of the images beyond that
percentile (1% is expected). Only runs give features; an exported artifact gives probabilities only, so for it
just the two probability checks apply, and the report says so. The positive rate also moves when only the
prevalence of disease differs, which is no fault of the images: the report names which check fired.
"""

from __future__ import annotations

import io as _io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core import io

REFERENCE_FILE = "shift_reference.npz"
REFERENCE_FORMAT = "cxr-edge-shift-reference/1"
ALPHA = 0.01
MIN_BEYOND = 0.05  # share of new images beyond the validation 99th percentile needed for the feature check
MAX_TRAIN_IMAGES = 1000  # training images whose features make the mean and covariance (a seeded sample)


@dataclass
class ShiftReference:
    """What new images are compared with; ``mean``/``precision``/``val_distances`` are None without features."""

    val_probs: np.ndarray
    threshold: float
    run_hash: str = ""
    mean: np.ndarray | None = None
    precision: np.ndarray | None = None
    val_distances: np.ndarray | None = None
    n_train: int = 0

    @property
    def val_positive_rate(self) -> float:
        return float(np.mean(self.val_probs >= self.threshold))

    @property
    def has_features(self) -> bool:
        return self.mean is not None

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` from the training side's mean."""
        d = np.asarray(features, np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))

    def with_probs(self, val_probs: np.ndarray) -> "ShiftReference":
        """The same reference with other validation probabilities (e.g. scored with TTA, or by an artifact)."""
        return ShiftReference(np.asarray(val_probs, np.float64), self.threshold, self.run_hash, self.mean,
                              self.precision, self.val_distances, self.n_train)

    def without_features(self) -> "ShiftReference":
        return ShiftReference(self.val_probs, self.threshold, self.run_hash)

    def save(self, path: str | Path) -> Path:
        arrays = {"format": np.array(REFERENCE_FORMAT), "run_hash": np.array(self.run_hash),
                  "val_probs": self.val_probs, "threshold": np.array(self.threshold), "n_train": np.array(self.n_train)}
        if self.has_features:
            arrays.update(mean=self.mean, precision=self.precision, val_distances=self.val_distances)
        buf = _io.BytesIO()
        np.savez(buf, **arrays)
        return io.write_atomic(path, lambda p: p.write_bytes(buf.getvalue()))

    @classmethod
    def load(cls, path: str | Path) -> "ShiftReference":
        with np.load(path, allow_pickle=False) as z:
            if str(z["format"]) != REFERENCE_FORMAT:
                raise ValueError(f"{path} is not a {REFERENCE_FORMAT} file; delete it and it is rebuilt")
            feats = {k: z[k] for k in ("mean", "precision", "val_distances") if k in z}
            return cls(z["val_probs"], float(z["threshold"]), str(z["run_hash"]), n_train=int(z["n_train"]), **feats)


@dataclass
class ShiftReport:
    """The outcome of :func:`check_shift`: ``shifted`` when any check fired, ``reasons`` in plain sentences."""

    shifted: bool
    reasons: list[str]
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_images: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return io.json_safe({"shifted": self.shifted, "reasons": self.reasons, "n_images": self.n_images,
                             "checks": self.checks, "notes": self.notes, "alpha": ALPHA})


def _probability_checks(ref: ShiftReference, probs: np.ndarray) -> dict[str, dict[str, Any]]:
    from scipy.stats import binomtest, ks_2samp

    ks = ks_2samp(probs, ref.val_probs)
    k, n = int(np.sum(probs >= ref.threshold)), len(probs)
    rate = ref.val_positive_rate
    binom = binomtest(k, n, min(max(rate, 1e-9), 1 - 1e-9))
    return {
        "probabilities": {"test": "two-sample Kolmogorov-Smirnov against validation", "statistic": float(ks.statistic),
                          "p_value": float(ks.pvalue), "fired": bool(ks.pvalue < ALPHA),
                          "median": float(np.median(probs)), "val_median": float(np.median(ref.val_probs))},
        "positive_rate": {"test": "binomial against the validation rate", "rate": k / n, "val_rate": rate,
                          "p_value": float(binom.pvalue), "fired": bool(binom.pvalue < ALPHA)},
    }


def _feature_check(ref: ShiftReference, features: np.ndarray) -> dict[str, Any]:
    from scipy.stats import mannwhitneyu

    d = ref.distances(features)
    p99 = float(np.percentile(ref.val_distances, 99))
    beyond = float(np.mean(d > p99))
    test = mannwhitneyu(d, ref.val_distances, alternative="greater")
    return {"test": "one-sided Mann-Whitney U of Mahalanobis distances against validation's",
            "median_distance": float(np.median(d)), "val_median_distance": float(np.median(ref.val_distances)),
            "val_p99_distance": p99, "share_beyond_val_p99": beyond, "p_value": float(test.pvalue),
            "fired": bool(test.pvalue < ALPHA and beyond >= MIN_BEYOND), "n_train": ref.n_train}


def _reasons(checks: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    p, r, f = checks["probabilities"], checks["positive_rate"], checks.get("features")
    if f and f["fired"]:
        out.append(f"{100 * f['share_beyond_val_p99']:.0f}% of these images lie farther from the training images "
                   f"than 99% of the validation images do (median distance {f['median_distance']:.1f} against "
                   f"{f['val_median_distance']:.1f}; p={f['p_value']:.2g})")
    if p["fired"]:
        out.append(f"the predicted probabilities are distributed differently from validation's (median "
                   f"{p['median']:.2f} against {p['val_median']:.2f}; KS D={p['statistic']:.2f}, p={p['p_value']:.2g})")
    if r["fired"]:
        out.append(f"{100 * r['rate']:.0f}% of these images are called PNEUMONIA at the threshold, against "
                   f"{100 * r['val_rate']:.0f}% of validation images (p={r['p_value']:.2g}); a different prevalence "
                   f"alone also does this")
    return out


def check_shift(reference: ShiftReference, probs: Any, features: Any = None) -> ShiftReport:
    """Compare a batch of new images (their probabilities, and features where the model gives them) with the
    reference; see the module docstring for the checks."""
    probs = np.asarray(probs, np.float64).reshape(-1)
    if probs.size == 0:
        raise ValueError("check_shift needs the probabilities of at least one image")
    checks = _probability_checks(reference, probs)
    notes = []
    if features is not None and reference.has_features:
        features = np.asarray(features, np.float64)
        if features.shape != (probs.size, reference.mean.size):
            raise ValueError(f"features have shape {features.shape}; expected ({probs.size}, {reference.mean.size})")
        checks["features"] = _feature_check(reference, features)
    else:
        notes.append("probability checks only: no features for this model (an exported artifact gives "
                     "probabilities only); the feature-distance check needs the run")
    reasons = _reasons(checks)
    return ShiftReport(bool(reasons), reasons, checks, int(probs.size), notes)


# ------------------------------------------------------------------------------------- from a run


def pooled_features(model, batch: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Pooled penultimate features of a normalised float32 NCHW batch (timm: ``forward_head(pre_logits=True)``)."""
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(device)
        return model.forward_head(model.forward_features(x), pre_logits=True).float().cpu().numpy()


def features_of(model, images: np.ndarray, preprocess, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Pooled features of uint8 ``NxHxWxC`` images, in batches."""
    parts = [pooled_features(model, preprocess.normalize(images[i:i + batch_size]), device)
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def run_hash(run) -> str:
    """sha256 of the run's run.json (:func:`export.base.run_hash`): names the weights a reference was made from."""
    from export.base import run_hash as _hash

    return _hash(run)


def build_reference(run, *, device: str = "cpu", seed: int = 0, progress: bool = False) -> ShiftReference:
    """The reference of a run (module docstring), from its saved split's training and validation sides."""
    from sklearn.covariance import LedoitWolf

    from core.data import load_images
    from core.train import predict_probs

    split, pre = run.split(), run.preprocess
    train = split.samples("train")
    if len(train) > MAX_TRAIN_IMAGES:
        pick = np.sort(np.random.default_rng(seed).choice(len(train), MAX_TRAIN_IMAGES, replace=False))
        train = [train[i] for i in pick]
    model = run.build_model().to(device)
    train_images = load_images(train, pre, progress=progress)[0]
    from core.datasets import load_sides

    val = load_sides(split, pre, sides=("val",), progress=progress)[0]["val"]
    import torch

    fit = LedoitWolf().fit(features_of(model, train_images, pre, device=device))
    ref = ShiftReference(predict_probs(model, val, pre, torch.device(device)), run.threshold, run_hash(run),
                         fit.location_, fit.precision_, None, len(train))
    ref.val_distances = np.sort(ref.distances(features_of(model, val.images, pre, device=device)))
    return ref


def reference_for_run(run, *, device: str = "cpu", progress: bool = False) -> ShiftReference:
    """The run's stored reference, built (and stored atomically) when missing or made for other weights."""
    path = Path(run.path) / REFERENCE_FILE
    if path.is_file():
        try:
            ref = ShiftReference.load(path)
            if ref.run_hash == run_hash(run):
                return ref
        except (ValueError, KeyError, OSError):
            pass  # unreadable or of another format: rebuilt below, replacing it
    ref = build_reference(run, device=device, progress=progress)
    ref.save(path)
    return ref
