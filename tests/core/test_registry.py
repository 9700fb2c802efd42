import pytest
import torch

from core import registry
from core.registry import NAMES, RegistryError


def test_seven_backbones_in_paper_order():
    assert NAMES == ("resnet18", "resnet50", "densenet121", "efficientnet_b0", "mobilenetv2_100",
                     "mobilenetv3_large_100", "vit_base_patch16_224")


@pytest.mark.parametrize("name", NAMES)
def test_builds_one_logit_and_resolves_cam_layer(name):
    b = registry.get(name)
    model = b.build(32).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1)
    layer = b.cam_target(model)
    acts = {}
    layer.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    feat = acts["a"]
    if b.family == "vit":
        grid = b.reshape_transform(32)(feat)
        assert grid.shape[-2:] == (2, 2)
    else:
        assert b.reshape_transform(32) is None and feat.ndim == 4


def test_vit_grid_follows_input_size():
    b = registry.get("vit_base_patch16_224")
    tokens = torch.randn(1, 1 + 5 * 5, 8)
    assert b.reshape_transform(80)(tokens).shape == (1, 8, 5, 5)
    with pytest.raises(RegistryError, match="divisible by its patch size 16"):
        b.build(50)


def test_unknown_backbone_names_the_choices():
    with pytest.raises(RegistryError, match="'resnet19' is not known; choose one of resnet18, resnet50"):
        registry.get("resnet19")
    assert registry.parse_names("all") == list(NAMES)
    assert registry.parse_names("resnet18, densenet121") == ["resnet18", "densenet121"]
    with pytest.raises(RegistryError):
        registry.parse_names("resnet18,nope")


def test_local_weights_file_loads_backbone_and_replaces_head(tmp_path):
    import timm
    from safetensors.torch import save_file

    imagenet = timm.create_model("resnet18", num_classes=1000)
    path = tmp_path / "resnet18_imagenet.safetensors"
    save_file(imagenet.state_dict(), str(path))
    model = registry.get("resnet18").build(64, weights=path)
    assert model.fc.out_features == 1
    for key in ("conv1.weight", "layer4.1.conv2.weight", "layer4.1.bn2.weight"):
        assert torch.equal(model.state_dict()[key], imagenet.state_dict()[key])


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(RegistryError, match="does not exist"):
        registry.get("resnet18").build(64, weights=tmp_path / "nope.safetensors")


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"unrelated": torch.zeros(3)}, str(path))
    with pytest.raises(RegistryError, match="could not load resnet18 weights"):
        registry.get("resnet18").build(64, weights=path)


def test_hub_failure_is_not_a_silent_fallback(monkeypatch):
    import timm

    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("no network")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RegistryError, match="--weights FILE"):
        registry.get("resnet18").build(64, pretrained=True)


def test_torchvision_is_patched_exactly_when_its_extension_fails():
    """The operator schemas are defined only where torchvision's compiled extension did not load (the CPU torch
    here); then models and pytorch-grad-cam import and run, and only the C++ ops stay unavailable."""
    import torchvision
    from torchvision import extension

    from core import _compat

    patched = _compat.ensure_torchvision()
    assert patched is _compat._PATCHED is (not extension._has_ops())
    import pytorch_grad_cam  # noqa: F401

    model = torchvision.models.resnet18(weights=None, num_classes=1).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1)


@pytest.mark.slow
def test_vit_imagenet_file_loads_whole_at_another_size(tmp_path):
    """ViT's average-pool head keeps timm's final norm, so every backbone tensor of an ImageNet
    file loads; the position embedding is resampled from 14x14 to the 4x4 grid of 64 px."""
    import timm
    from safetensors.torch import save_file

    imagenet = timm.create_model("vit_base_patch16_224", num_classes=1000)
    path = tmp_path / "vit.safetensors"
    save_file(imagenet.state_dict(), str(path))
    model = registry.get("vit_base_patch16_224").build(64, weights=path)
    assert model.pos_embed.shape[1] == 1 + 4 * 4
    for key in ("blocks.11.mlp.fc2.weight", "norm.weight", "patch_embed.proj.weight"):
        assert torch.equal(model.state_dict()[key], imagenet.state_dict()[key])
