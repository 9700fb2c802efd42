"""Tests for core.metrics: every metric against scikit-learn, bootstrap CIs, operating points."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from core.metrics import (
    METRICS,
    _weighted_metrics,
    bootstrap_ci,
    choose_operating_point,
    ensemble_probabilities,
    point_metrics,
    sensitivity_at_specificity,
    summarize,
    youden_threshold,
)


def _data(n: int, seed: int, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Seeded labels (~73 % positive, as in Kermany) and informative but imperfect scores."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.73).astype(int)
    s = 1 / (1 + np.exp(-(1.5 * (2 * y - 1) + rng.normal(0, 1.5, n))))
    if ties:
        s = np.round(s, 1)
    return y, s


def _sklearn_metrics(y, s, threshold, sample_weight=None):
    pred = (s >= threshold).astype(int)
    kw = {"sample_weight": sample_weight}
    return {
        "accuracy": accuracy_score(y, pred, **kw),
        "precision": precision_score(y, pred, zero_division=0, **kw),
        "sensitivity": recall_score(y, pred, **kw),
        "specificity": recall_score(y, pred, pos_label=0, **kw),
        "f1": f1_score(y, pred, **kw),
        "roc_auc": roc_auc_score(y, s, **kw),
        "pr_auc": average_precision_score(y, s, **kw),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_point_metrics_match_sklearn(seed, threshold):
    y, s = _data(200, seed, ties=seed == 2)
    got = point_metrics(y, s, threshold)
    assert tuple(got) == METRICS
    want = _sklearn_metrics(y, s, threshold)
    for name in METRICS:
        assert got[name] == pytest.approx(want[name], abs=1e-12), name


@pytest.mark.parametrize("ties", [False, True])
def test_vectorised_replicates_match_sklearn_on_repeated_cases(ties):
    # The bootstrap's vectorised metrics must equal scikit-learn on the resampled data itself.
    y, s = _data(60, 3, ties=ties)
    rng = np.random.default_rng(4)
    counts = rng.multinomial(60, np.full(60, 1 / 60), size=5).astype(float)
    counts[:, np.flatnonzero(y == 0)[0]] += 1  # make sure both classes appear in every row
    counts[:, np.flatnonzero(y == 1)[0]] += 1
    for threshold in (0.25, 0.5, 0.7):
        got = _weighted_metrics(counts, y, s, threshold)
        for b in range(counts.shape[0]):
            idx = np.repeat(np.arange(60), counts[b].astype(int))
            want = _sklearn_metrics(y[idx], s[idx], threshold)
            for name in METRICS:
                assert got[name][b] == pytest.approx(want[name], abs=1e-12), (name, b, threshold)


def test_ci_contains_point_estimate_and_narrows_with_more_data():
    widths = {}
    for n in (150, 2000):
        y, s = _data(n, 5)
        values = point_metrics(y, s, 0.5)
        cis = bootstrap_ci(y, s, 0.5, n_boot=500, seed=0)
        assert tuple(cis) == METRICS
        for name in METRICS:
            lo, hi = cis[name]
            assert lo <= values[name] <= hi, (n, name, lo, values[name], hi)
        widths[n] = {name: cis[name][1] - cis[name][0] for name in METRICS}
    for name in METRICS:
        assert widths[2000][name] < widths[150][name], name


def test_ci_is_deterministic_for_a_seed():
    y, s = _data(300, 6)
    a = bootstrap_ci(y, s, 0.5, n_boot=200, seed=7)
    b = bootstrap_ci(y, s, 0.5, n_boot=200, seed=7)
    c = bootstrap_ci(y, s, 0.5, n_boot=200, seed=8)
    assert a == b
    assert a != c


def test_ci_level_and_chunking(monkeypatch):
    y, s = _data(300, 9)
    wide = bootstrap_ci(y, s, 0.5, n_boot=300, seed=0, alpha=0.01)
    narrow = bootstrap_ci(y, s, 0.5, n_boot=300, seed=0, alpha=0.5)
    for name in METRICS:
        assert wide[name][0] <= narrow[name][0] <= narrow[name][1] <= wide[name][1]
    # chunked computation gives intervals with the same statistics (different random streams)
    import core.metrics as m

    monkeypatch.setattr(m, "_CHUNK_CELLS", 300 * 7)
    chunked = bootstrap_ci(y, s, 0.5, n_boot=300, seed=0)
    again = bootstrap_ci(y, s, 0.5, n_boot=300, seed=0)
    assert chunked == again
    assert all(lo <= hi for lo, hi in chunked.values())


def test_summarize_layout():
    y, s = _data(120, 11)
    out = summarize(y, s, 0.5, n_boot=100, seed=3)
    assert out["n"] == 120 and out["n_pos"] == int(y.sum()) and out["threshold"] == 0.5
    c = out["confusion"]
    pred = s >= 0.5
    assert c == {
        "tp": int((pred & (y == 1)).sum()),
        "fp": int((pred & (y == 0)).sum()),
        "tn": int((~pred & (y == 0)).sum()),
        "fn": int((~pred & (y == 1)).sum()),
    }
    assert set(out["metrics"]) == set(METRICS)
    assert out["metrics"]["accuracy"]["value"] == pytest.approx((c["tp"] + c["tn"]) / 120)
    assert out["metrics"]["roc_auc"]["ci95"] == list(bootstrap_ci(y, s, 0.5, 100, 3)["roc_auc"])
    assert out["bootstrap"] == {"n": 100, "seed": 3, "method": "stratified percentile", "unit": "image"}
    assert out["ci_method"] == "image bootstrap, stratified, 100 replicates" and out["n_patients"] is None


def _clustered(n_patients: int = 40, per_patient: int = 12, seed: int = 0):
    """Many images per patient whose scores share the patient's own offset (strongly correlated)."""
    rng = np.random.default_rng(seed)
    label = np.repeat(np.arange(n_patients) % 2, per_patient)
    offset = np.repeat(rng.normal(0, 1.5, n_patients), per_patient)
    logits = 1.0 * (2 * label - 1) + offset + rng.normal(0, 0.2, label.size)
    patients = np.repeat([f"p{i}" for i in range(n_patients)], per_patient)
    return label, 1 / (1 + np.exp(-logits)), patients


def test_patient_bootstrap_is_wider_on_clustered_data():
    y, s, patients = _clustered()
    by_image = summarize(y, s, 0.5, n_boot=400, seed=0)
    by_patient = summarize(y, s, 0.5, n_boot=400, seed=0, patients=patients)
    for name in ("roc_auc", "sensitivity", "specificity"):
        wi = np.diff(by_image["metrics"][name]["ci95"])[0]
        wp = np.diff(by_patient["metrics"][name]["ci95"])[0]
        assert wp > 1.5 * wi, (name, wi, wp)
    assert by_patient["ci_method"] == "patient bootstrap, stratified, 400 replicates"
    assert by_patient["n_patients"] == 40 and by_patient["bootstrap"]["unit"] == "patient"
    assert by_patient["metrics"]["roc_auc"]["value"] == by_image["metrics"]["roc_auc"]["value"]


def test_patient_bootstrap_checks_ids():
    y, s, patients = _clustered(6, 3)
    with pytest.raises(ValueError, match="one patient id per case"):
        bootstrap_ci(y, s, 0.5, n_boot=10, patients=patients[:-1])
    with pytest.raises(ValueError, match="NORMAL-only and PNEUMONIA patients"):
        bootstrap_ci(y, s, 0.5, n_boot=10, patients=["same"] * y.size)


def test_youden_hand_case():
    # Descending thresholds: 0.9 (tp 1, fp 0) J=1/3; 0.8 (2, 0) J=2/3; 0.5 (2, 1) J=2/3-1/4=5/12;
    # 0.4 (3, 1) J=1-1/4=3/4 <- max; 0.3 (3, 2) J=1/2; 0.2 J=1/4; 0.1 J=0.
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.5, 0.4, 0.8, 0.9])
    assert youden_threshold(y, s) == pytest.approx(0.4)
    op = choose_operating_point(y, s)
    assert op["method"] == "youden"
    assert op["threshold"] == pytest.approx(0.4)
    assert op["sensitivity"] == pytest.approx(1.0)
    assert op["specificity"] == pytest.approx(0.75)
    assert op["at_spec90"] == sensitivity_at_specificity(y, s, 0.90)


def test_youden_is_finite_when_useless_and_separable():
    # Perfectly separable: any threshold in (0.3, 0.7] works; the highest, 0.7, is returned.
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.3, 0.7, 0.9]) == pytest.approx(0.7)
    # Inverted scores: J <= 0 everywhere; still a finite probability, not roc_curve's inf.
    t = youden_threshold([1, 1, 0, 0], [0.1, 0.3, 0.7, 1.0])
    assert np.isfinite(t) and 0.0 <= t <= 1.0


def test_sensitivity_at_specificity_hand_case():
    # 10 negatives 0.00..0.45 plus one negative at 0.85; 5 positives 0.5, 0.6, 0.7, 0.8, 0.9.
    # Specificity >= 0.9 allows at most 1 false positive of 11 (10/11 = 0.909):
    #   threshold 0.5 -> fp 1 (0.85), tp 5 -> sensitivity 1.0, specificity 10/11.
    y = np.array([0] * 10 + [0] + [1] * 5)
    s = np.r_[np.arange(10) * 0.05, 0.85, [0.5, 0.6, 0.7, 0.8, 0.9]]
    got = sensitivity_at_specificity(y, s, 0.90)
    assert got == pytest.approx({"threshold": 0.5, "sensitivity": 1.0, "specificity": 10 / 11})
    # Specificity 1.0 forbids the 0.85 negative: only threshold 0.9 -> sensitivity 1/5.
    strict = sensitivity_at_specificity(y, s, 1.0)
    assert strict == pytest.approx({"threshold": 0.9, "sensitivity": 0.2, "specificity": 1.0})
    # Exact boundary: spec 0.8 on 5 negatives (1 - 1/5 in floating point) is accepted.
    got = sensitivity_at_specificity([0, 0, 0, 0, 0, 1], [0.1, 0.2, 0.3, 0.4, 0.6, 0.5], 0.8)
    assert got == pytest.approx({"threshold": 0.5, "sensitivity": 1.0, "specificity": 0.8})


def test_sensitivity_at_specificity_unreachable_raises():
    with pytest.raises(ValueError, match="no threshold in \\[0, 1\\] reaches specificity >= 1.0"):
        sensitivity_at_specificity([0, 1, 1], [1.0, 0.5, 0.7], 1.0)
    with pytest.raises(ValueError, match="min_specificity=1.5"):
        sensitivity_at_specificity([0, 1], [0.1, 0.9], 1.5)


def test_ensemble_averages_probabilities():
    a = np.array([0.1, 0.9, 0.5])
    b = np.array([0.3, 0.7, 1.0])
    np.testing.assert_allclose(ensemble_probabilities([a, b]), [0.2, 0.8, 0.75])
    np.testing.assert_allclose(ensemble_probabilities([a]), a)
    with pytest.raises(ValueError, match="lengths \\[3, 2\\]"):
        ensemble_probabilities([a, b[:2]])
    with pytest.raises(ValueError, match="non-empty list"):
        ensemble_probabilities([])
    with pytest.raises(ValueError, match="prob_list\\[1\\].*sigmoid"):
        ensemble_probabilities([a, np.array([0.1, 2.5, 0.3])])


@pytest.mark.parametrize(
    ("y", "s", "threshold", "match"),
    [
        ([0, 1, 1], [0.1, 0.2], 0.5, "3 labels but scores has 2"),
        ([0, 2, 1], [0.1, 0.2, 0.3], 0.5, "must be 0 \\(NORMAL\\) or 1 \\(PNEUMONIA\\); got other values 2"),
        ([1, 1, 1], [0.1, 0.2, 0.3], 0.5, "ROC-AUC needs both classes in y_true; got only 1 \\(n=3\\)"),
        ([0, 1], [0.1, 1.2], 0.5, "finite probabilities in \\[0, 1\\]"),
        ([0, 1], [0.1, np.nan], 0.5, "1 non-finite"),
        ([0, 1], [0.1, 0.9], 1.5, "threshold=1.5"),
        ([], [], 0.5, "empty"),
    ],
)
def test_bad_input_raises(y, s, threshold, match):
    with pytest.raises(ValueError, match=match):
        point_metrics(y, s, threshold)
    with pytest.raises(ValueError):
        summarize(y, s, threshold, n_boot=10)


def test_bad_bootstrap_and_curve_input_raises():
    y, s = _data(50, 12)
    with pytest.raises(ValueError, match="n_boot=0"):
        bootstrap_ci(y, s, 0.5, n_boot=0)
    with pytest.raises(ValueError, match="alpha=1.0"):
        bootstrap_ci(y, s, 0.5, alpha=1.0)
    with pytest.raises(ValueError, match="needs both classes in y_true; got only 0 \\(n=2\\)"):
        youden_threshold([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="needs both classes"):
        choose_operating_point([1, 1], [0.1, 0.2])


def test_constant_scores_still_have_a_specific_operating_point():
    # An untrained model scoring every case 0.73: only the cut just above 0.73 reaches specificity 0.9.
    y = np.array([0, 0, 1, 1, 1])
    s = np.full(5, 0.73)
    op = sensitivity_at_specificity(y, s, 0.9)
    assert op["specificity"] == 1.0 and op["sensitivity"] == 0.0 and 0.73 < op["threshold"] <= 1.0
    assert 0.0 <= youden_threshold(y, s) <= 1.0
