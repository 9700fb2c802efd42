"""The seed studies' own CNNs in the registry: their architecture, the timm surface the project relies on, the
groups `all` and `baselines`, and cnn3's input size bound to its dense layer."""

import pytest
import torch

from core import registry
from core.baselines import InputSizeError
from core.registry import RegistryError


@pytest.mark.parametrize("name", registry.BASELINES)
def test_baselines_have_the_timm_surface(name):
    b = registry.get(name)
    model = b.build(32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 1)
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.num_features)
        assert torch.allclose(model.get_classifier()(pre), model(x))
    assert isinstance(model.get_classifier(), torch.nn.Linear)
    assert model.get_submodule(model.pretrained_cfg["classifier"]) is model.get_classifier()
    assert b.cam_target(model) is model.get_submodule(b.cam_layer) and b.reshape_transform(32) is None
    assert [f["module"] for f in model.feature_info][-1] == b.cam_layer
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.get_classifier().out_features == 5
    assert b.timm_id is None and b.source == f"cxr-edge:{name}" and b.default_size == 224


def test_cnn3_is_the_seed_architecture():
    """conv 32/64/128 3x3 + ReLU + 2x2 max-pool each, flatten, dense 256, dropout 0.5, one logit."""
    model = registry.get("cnn3").build(64)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(32, (3, 3)), (64, (3, 3)), (128, (3, 3))]
    assert sum(isinstance(m, torch.nn.MaxPool2d) and m.kernel_size == 2 for m in model.modules()) == 3
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model.dense.in_features == 128 * 8 * 8 and model.dense.out_features == 256
    assert model.drop.p == 0.5 and model.fc.out_features == 1
    assert registry.get("cnn3").build(64, drop_rate=0.3).drop.p == 0.3


def test_gapcnn_pools_its_last_conv_globally():
    model = registry.get("gapcnn").build(64).eval()
    grid = {}
    model.get_submodule(registry.get("gapcnn").cam_layer).register_forward_hook(lambda m, i, o: grid.update(o=o))
    with torch.no_grad():
        logit = model(torch.randn(1, 3, 64, 64))
    cam = grid["o"]
    assert cam.shape == (1, 256, 8, 8)
    # CAM (Zhou et al. 2016): the logit is the classifier applied to the mean of the last conv's map
    assert torch.allclose(model.fc(cam.mean(dim=(2, 3))), logit, atol=1e-5)
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 1)  # any size


def test_cnn3_refuses_another_input_size_clearly():
    model = registry.get("cnn3").build(64)
    with pytest.raises(InputSizeError, match=r"cnn3 was built for 64x64 inputs .* got \(32, 32\)"):
        model(torch.randn(1, 3, 32, 32))


def test_groups_all_and_baselines():
    assert "cnn3" not in registry.parse_names("all") and registry.parse_names("all") == list(registry.NAMES)
    assert registry.parse_names("baselines") == ["cnn3", "gapcnn"]
    assert registry.parse_names("all,baselines") == [*registry.NAMES, "cnn3", "gapcnn"]
    assert registry.parse_names(["cnn3", "resnet18,cnn3"]) == ["cnn3", "resnet18"]
    with pytest.raises(RegistryError, match="choose one of .*cnn3, gapcnn \\(or the groups all, baselines\\)"):
        registry.get("cnn4")


def test_baselines_have_no_hub_weights_and_load_their_own(tmp_path):
    from safetensors.torch import save_file

    b = registry.get("gapcnn")
    with pytest.raises(RegistryError, match="no ImageNet weights"):
        b.build(32, pretrained=True)
    source = b.build(32, num_classes=3)
    path = tmp_path / "gapcnn.safetensors"
    save_file(source.state_dict(), str(path))
    model = b.build(32, weights=path)
    assert model.fc.out_features == 1  # a fresh head
    assert torch.equal(model.features[3][0].weight, source.features[3][0].weight)
    save_file(registry.get("cnn3").build(64).state_dict(), str(tmp_path / "cnn3.safetensors"))
    with pytest.raises(RegistryError, match="state dict of cnn3 at 32 px .*dense layer fixes the input size"):
        registry.get("cnn3").build(32, weights=tmp_path / "cnn3.safetensors")
    with pytest.raises(RegistryError, match="does not exist"):
        b.build(32, weights=tmp_path / "nope.safetensors")
