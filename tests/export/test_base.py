"""The parity check's FP32 bound: relative to the logits' size, as numpy.allclose."""

import numpy as np

from export.base import TOLERANCES, logit_ratio, parity


def _case(scale: float, diff: float, n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    ref = (rng.normal(size=n) * scale).astype(np.float32)
    labels = (ref > 0).astype(int)
    labels[:2] = [0, 1]
    return ref, ref + np.float32(diff) * np.sign(ref), labels


def test_fp32_parity_bounds_the_difference_relative_to_large_logits():
    """Logits around 20 that differ by 1.7e-4 (float32 rounding, as MobileNet-V3-Large's did) pass."""
    ref, out, labels = _case(20.0, 1.7e-4)
    figures = parity(ref, out, labels, 0.5, "fp32")
    assert figures["within_tolerance"], figures["failures"]
    assert figures["max_abs_logit"] > 1.6e-4
    assert figures["tolerance"] == {"atol": TOLERANCES["fp32"]["atol"], "rtol": TOLERANCES["fp32"]["rtol"]}
    assert 0 < figures["logit_ratio"] <= 1
    assert np.allclose(out, ref, **TOLERANCES["fp32"])


def test_fp32_parity_still_fails_a_real_difference_and_names_the_ratio():
    ref, out, labels = _case(1.0, 1e-3)
    figures = parity(ref, out, labels, 0.5, "fp32")
    assert not figures["within_tolerance"] and figures["logit_ratio"] > 1
    assert "atol 0.0001, rtol 0.0001" in figures["failures"][0]


def test_logit_ratio_is_one_exactly_on_the_bound():
    ref = np.array([0.0, 10.0, -10.0])
    out = ref + np.array([1e-4, 1e-4 + 1e-3, -(1e-4 + 1e-3)])
    assert abs(logit_ratio(ref, out, 1e-4, 1e-4) - 1) < 1e-6
