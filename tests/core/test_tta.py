import numpy as np
import pytest

from core.tta import TTA_VIEWS, sigmoid, tta_probabilities, tta_views


def test_views_are_shifts_with_edge_fill():
    x = np.arange(2 * 3 * 25 * 25, dtype=np.float32).reshape(2, 3, 25, 25)
    views = tta_views(x)
    assert len(views) == len(TTA_VIEWS)
    assert views[0] is x
    right = views[TTA_VIEWS.index("right")]
    assert right.shape == x.shape
    np.testing.assert_array_equal(right[..., 1:], x[..., :-1])  # moved one pixel (4% of 25) to the right
    np.testing.assert_array_equal(right[..., 0], x[..., 0])  # the uncovered column repeats the edge
    up = views[TTA_VIEWS.index("up")]
    np.testing.assert_array_equal(up[..., :-1, :], x[..., 1:, :])


def test_probabilities_average_over_views():
    x = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    calls = []

    def predict(batch):
        calls.append(batch)
        return batch[:, 0, :8, :8].mean(axis=(1, 2))  # a corner's mean: changes with every shift

    p = tta_probabilities(predict, x)
    assert len(calls) == len(TTA_VIEWS)
    expected = np.mean([sigmoid(v[:, 0, :8, :8].mean(axis=(1, 2))) for v in tta_views(x)], axis=0)
    np.testing.assert_allclose(p, expected, rtol=1e-6)
    assert not np.allclose(p, sigmoid(x[:, 0, :8, :8].mean(axis=(1, 2))))


def test_rejects_non_batch():
    with pytest.raises(ValueError, match="NCHW"):
        tta_views(np.zeros((3, 8, 8), np.float32))
