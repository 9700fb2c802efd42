"""Grad-CAM for every backbone: shape, range, targets, the ViT grid at other sizes, pictures on disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core import registry
from core.gradcam import CamError, Explainer, contact_sheet, explain, parse_layers, save_heatmaps, upsample
from core.preprocess import Preprocess


def _model(name: str, size: int) -> torch.nn.Module:
    """Random init; ResNets without timm's zero-init of the last BatchNorm of each block (ENVIRONMENT.md)."""
    import timm

    b = registry.get(name)
    kwargs = dict(b.timm_kwargs)
    if name.startswith("resnet"):
        kwargs["zero_init_last"] = False
    if b.family == "vit":
        kwargs["img_size"] = size
    torch.manual_seed(0)
    return timm.create_model(b.timm_id, pretrained=False, num_classes=1, **kwargs).eval()


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", registry.NAMES)
def test_heatmap_shape_and_range_for_every_backbone(name):
    size = 32
    pre = Preprocess.for_model(size)
    cb = explain(_model(name, size), name, pre, _images(3, size), batch_size=2)
    assert cb.cams.shape == (3, size, size) and cb.cams.dtype == np.float32
    assert np.isfinite(cb.cams).all() and cb.cams.min() >= 0.0 and cb.cams.max() <= 1.0
    assert cb.grids.ndim == 3 and cb.grids.shape[0] == 3
    assert cb.logits.shape == (3,) and np.isfinite(cb.logits).all()
    assert cb.seconds_per_image > 0


def test_vit_grid_follows_the_input_size():
    """Not a fixed 14x14: 48 px with 16 px patches is a 3x3 grid."""
    name, size = "vit_base_patch16_224", 48
    cb = explain(_model(name, size), name, Preprocess.for_model(size), _images(2, size))
    assert cb.grids.shape[1:] == (3, 3)
    assert cb.cams.shape == (2, size, size)
    assert cb.cams.max() > 0  # the tokens were mapped to a real map, not zeros


def test_logits_match_a_plain_forward_and_targets_change_the_map():
    name, size = "resnet18", 64
    model = _model(name, size)
    pre = Preprocess.for_model(size)
    imgs = _images(2, size, seed=1)
    with Explainer(model, name, size) as ex:
        pos = ex(pre.normalize(imgs), [1, 1])
        neg = ex(pre.normalize(imgs), [0, 0])
    with torch.no_grad():
        ref = model(torch.from_numpy(pre.normalize(imgs))).reshape(-1).numpy()
    np.testing.assert_allclose(pos.logits, ref, rtol=1e-4, atol=1e-4)
    assert not np.allclose(pos.grids, neg.grids)


@pytest.mark.parametrize("method", ["gradcam++", "hirescam", "layercam"])
def test_other_methods(method):
    name, size = "mobilenetv3_large_100", 64
    cb = explain(_model(name, size), name, Preprocess.for_model(size), _images(2, size), method=method)
    assert cb.cams.shape == (2, size, size) and 0 <= cb.cams.min() and cb.cams.max() <= 1


def test_bad_requests_are_clear_errors():
    model = _model("resnet18", 32)
    with pytest.raises(CamError, match="not known"):
        Explainer(model, "resnet18", 32, method="scorecam-ish")
    with pytest.raises(CamError, match="no layer"):
        Explainer(model, "resnet18", 32, layer="layer9")
    with Explainer(model, "resnet18", 32) as ex:
        with pytest.raises(CamError, match="do not fit"):
            ex(np.zeros((1, 3, 64, 64), np.float32))
        with pytest.raises(CamError, match="0/1 class"):
            ex(np.zeros((2, 3, 32, 32), np.float32), [1, 2])


def test_a_finer_target_layer_gives_a_finer_grid():
    """--layer resnet18=layer3: stride 16 instead of 32, so 4x4 cells at 64 px instead of 2x2."""
    name, size = "resnet18", 64
    model, pre, imgs = _model(name, size), Preprocess.for_model(size), _images(2, size)
    assert explain(model, name, pre, imgs).grids.shape[1:] == (2, 2)
    assert explain(model, name, pre, imgs, layer="layer3").grids.shape[1:] == (4, 4)
    assert parse_layers(["resnet18=layer3", " densenet121 = features.denseblock3 "], ["resnet18", "densenet121"]) \
        == {"resnet18": "layer3", "densenet121": "features.denseblock3"}
    assert parse_layers(None, ["resnet18"]) == {}
    with pytest.raises(CamError, match="BACKBONE=LAYER"):
        parse_layers(["layer3"], ["resnet18"])
    with pytest.raises(CamError, match="no run of backbone 'resnet50'"):
        parse_layers(["resnet50=layer3"], ["resnet18"])


def test_upsample_keeps_cell_centres():
    grid = np.zeros((1, 2, 2), np.float32)
    grid[0, 1, 0] = 1.0
    up = upsample(grid, 64)
    assert up.shape == (1, 64, 64)
    assert up[0, 48, 16] == pytest.approx(1.0, abs=0.05) and up[0, 16, 48] == pytest.approx(0.0, abs=1e-6)


def test_heatmaps_overlays_and_contact_sheet_on_disk(tmp_path):
    from PIL import Image

    imgs = _images(2, 32)
    cams = np.random.default_rng(0).random((2, 32, 32)).astype(np.float32)
    written = save_heatmaps(tmp_path / "resnet18", ["a", "b"], imgs, cams, min_side=64)
    np.testing.assert_array_equal(np.load(written[0]["npy"]), cams[0])
    assert Image.open(written[1]["png"]).size == (64, 64)
    sheet = contact_sheet(tmp_path / "sheet.png", imgs, {"resnet18": cams, "vit": cams[:, :16, :16]},
                          ["a", "b"], cell=40)
    assert Image.open(sheet).size == (3 * 40, 16 + 2 * 40)
