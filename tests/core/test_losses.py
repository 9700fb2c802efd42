"""Tests for core.losses: focal loss values by hand, limits, stability and argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.losses import FocalLoss, alpha_from_frequency


def test_hand_value_logit_zero_positive():
    # x = 0 -> p = 0.5; y = 1 -> p_t = 0.5, alpha_t = 0.25, (1 - p_t)^2 = 0.25, -log p_t = ln 2
    # FL = 0.25 * 0.25 * ln 2 = 0.0625 * 0.693147... = 0.0433217...
    loss = FocalLoss(gamma=2.0, alpha=0.25)(torch.tensor([0.0]), torch.tensor([1.0]))
    assert loss.item() == pytest.approx(0.25 * 0.25 * math.log(2), rel=1e-6)
    assert loss.item() == pytest.approx(0.0433217, rel=1e-5)


def test_hand_values_logit_ln3_both_targets():
    # x = ln 3 -> p = 3 / (3 + 1) = 0.75.
    # y = 0: p_t = 0.25, alpha_t = 1 - 0.25 = 0.75, (1 - p_t)^2 = 0.5625, -log p_t = ln 4
    #        FL = 0.75 * 0.5625 * ln 4 = 0.421875 * 1.386294 = 0.584843
    # y = 1: p_t = 0.75, alpha_t = 0.25, (1 - p_t)^2 = 0.0625, -log p_t = ln(4/3) = 0.287682
    #        FL = 0.25 * 0.0625 * 0.287682 = 0.0044950
    x = torch.full((2,), math.log(3.0), dtype=torch.float64)
    y = torch.tensor([0.0, 1.0], dtype=torch.float64)
    per = FocalLoss(gamma=2.0, alpha=0.25, reduction="none")(x, y)
    assert per[0].item() == pytest.approx(0.75 * 0.5625 * math.log(4), rel=1e-12)
    assert per[0].item() == pytest.approx(0.584843, rel=1e-5)
    assert per[1].item() == pytest.approx(0.25 * 0.0625 * math.log(4 / 3), rel=1e-12)
    assert per[1].item() == pytest.approx(0.0044950, rel=1e-4)
    # reductions agree with the per-example values
    assert FocalLoss(2.0, 0.25, "sum")(x, y).item() == pytest.approx(per.sum().item())
    assert FocalLoss(2.0, 0.25, "mean")(x, y).item() == pytest.approx(per.mean().item())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gamma_zero_without_alpha_is_bce(reduction):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, generator=g) * 3
    y = (torch.rand(64, generator=g) > 0.3).float()
    got = FocalLoss(gamma=0.0, alpha=None, reduction=reduction)(x, y)
    want = F.binary_cross_entropy_with_logits(x, y, reduction=reduction)
    torch.testing.assert_close(got, want)


def test_alpha_weights_positive_and_negative_classes():
    x = torch.zeros(2)
    y = torch.tensor([1.0, 0.0])
    per = FocalLoss(gamma=2.0, alpha=0.3, reduction="none")(x, y)
    unweighted = FocalLoss(gamma=2.0, alpha=None, reduction="none")(x, y)
    torch.testing.assert_close(per, unweighted * torch.tensor([0.3, 0.7]))
    # alpha = 0.5 halves everything
    torch.testing.assert_close(FocalLoss(2.0, 0.5, "none")(x, y), unweighted * 0.5)


def test_easy_examples_are_down_weighted():
    x = torch.tensor([4.0, -1.0])  # with y = 1: the first is easy (p ~ 0.98), the second hard
    y = torch.ones(2)
    fl = FocalLoss(gamma=2.0, reduction="none")(x, y)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    ratio = fl / ce  # = (1 - p_t)^2
    torch.testing.assert_close(ratio, (1 - torch.sigmoid(x)) ** 2)
    assert ratio[0] < 1e-3 < 0.5 < ratio[1]
    assert bool((fl <= ce).all())
    # larger gamma shrinks the easy example further
    assert FocalLoss(gamma=5.0, reduction="none")(x, y)[0] < fl[0]


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_stable_at_extreme_logits(gamma):
    x = torch.tensor([100.0, 100.0, -100.0, -100.0], requires_grad=True)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    per = FocalLoss(gamma=gamma, reduction="none")(x, y)
    assert torch.isfinite(per).all()
    # right answers: ~0 when confidently right, ~100 (= -log sigmoid(-100)) when confidently wrong
    torch.testing.assert_close(per.detach(), torch.tensor([0.0, 100.0, 100.0, 0.0]), atol=1e-6, rtol=1e-6)
    per.sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 1.0, -1.0, 0.0]), atol=1e-6, rtol=1e-6)


def test_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(8, generator=g, dtype=torch.float64) * 2).requires_grad_()
    y = (torch.rand(8, generator=g, dtype=torch.float64) > 0.5).double()
    loss = FocalLoss(gamma=2.0, alpha=0.25)
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (x,))


def test_column_shape_and_int_targets_accepted():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, generator=g)
    y = (torch.rand(10, generator=g) > 0.5).long()
    loss = FocalLoss(gamma=2.0, alpha=0.25)
    want = loss(x, y.float())
    torch.testing.assert_close(loss(x[:, None], y), want)
    torch.testing.assert_close(loss(x[:, None], y[:, None].float()), want)
    assert FocalLoss(reduction="none")(x[:, None], y).shape == (10,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gamma": -1.0}, "gamma=-1.0"),
        ({"gamma": float("nan")}, "gamma=nan"),
        ({"alpha": 1.5}, "alpha=1.5"),
        ({"alpha": -0.1}, r"alpha=-0\.1"),
        ({"reduction": "avg"}, "reduction='avg'.*mean, sum, none"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FocalLoss(**kwargs)


def test_bad_shapes_and_targets_raise():
    loss = FocalLoss()
    with pytest.raises(ValueError, match=r"targets have shape \(3,\) but logits have shape \(4,\)"):
        loss(torch.zeros(4), torch.zeros(3))
    with pytest.raises(ValueError, match=r"logits have shape \(4, 2\)"):
        loss(torch.zeros(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        loss(torch.zeros(2), torch.tensor([0.0, 2.0]))
    with pytest.raises(TypeError, match="floating-point"):
        loss(torch.zeros(2, dtype=torch.long), torch.zeros(2))


def test_alpha_from_frequency_known_list():
    # 3 negatives out of 8 -> alpha = 3 / 8 for the positive class
    assert alpha_from_frequency([0, 1, 1, 0, 1, 1, 0, 1]) == pytest.approx(3 / 8)
    # Kermany-like: 27 % NORMAL -> alpha 0.27 for PNEUMONIA
    labels = np.array([0] * 27 + [1] * 73)
    assert alpha_from_frequency(labels) == pytest.approx(0.27)
    assert alpha_from_frequency(torch.tensor(labels)) == pytest.approx(0.27)


def test_alpha_from_frequency_rejects_bad_labels():
    with pytest.raises(ValueError, match="empty"):
        alpha_from_frequency([])
    with pytest.raises(ValueError, match="only class 1"):
        alpha_from_frequency([1, 1, 1])
    with pytest.raises(ValueError, match="must be 0 or 1; got other values 2"):
        alpha_from_frequency([0, 1, 2])


def test_class_weighted_bce_is_sklearn_log_loss_with_class_sample_weights():
    from sklearn.metrics import log_loss

    from core.losses import ClassWeightedBCE

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, generator=gen, dtype=torch.float64) * 3
    y = (torch.rand(40, generator=gen) < 0.7).double()
    w = (1.8, 0.6)
    got = ClassWeightedBCE(w, reduction="sum")(x, y).item()
    sample_w = [w[int(v)] for v in y]
    ref = log_loss(y.numpy(), torch.sigmoid(x).numpy(), sample_weight=sample_w, normalize=False, labels=[0, 1])
    assert got == pytest.approx(ref, rel=1e-9)
    plain = ClassWeightedBCE()(x, y).item()
    assert plain == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(x, y).item(), rel=1e-12)


def test_weighted_bce_weights_follow_the_training_side_class_frequencies():
    from core.losses import class_weights_from_frequency, make_loss

    labels = [0] * 25 + [1] * 75
    assert class_weights_from_frequency(labels) == pytest.approx((100 / 50, 100 / 150))
    loss, record = make_loss("weighted-bce", labels)
    assert loss.weights == pytest.approx((2.0, 2 / 3))
    assert record["class_weights"] == pytest.approx({"NORMAL": 2.0, "PNEUMONIA": 2 / 3})
    assert record["train_counts"] == {"NORMAL": 25, "PNEUMONIA": 75}
    _, other = make_loss("weighted-bce", [0] * 60 + [1] * 40)
    assert other["class_weights"]["NORMAL"] < other["class_weights"]["PNEUMONIA"]
    assert make_loss("bce", labels)[1]["class_weights"] is None
    assert make_loss("focal", labels)[1]["alpha"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="labels hold only class 1"):
        class_weights_from_frequency([1, 1, 1])
    with pytest.raises(ValueError, match="loss 'hinge' is not known; choose one of focal, bce, weighted-bce"):
        make_loss("hinge", labels)
