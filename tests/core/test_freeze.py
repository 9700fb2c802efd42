"""Freeze-then-fine-tune, the seed's losses and optimizer in the training loop: what trains when, at which rate,
and what run.json records."""

import json

import numpy as np
import pytest
import torch

from core import runs
from core.datasets import load_sides
from core.freeze import FreezeError
from core.train import TrainConfig, fit, lr_at


def _config(**kw):
    base = dict(backbone="resnet18", size=32, epochs=2, batch_size=8, lr=2e-3, seed=7, threads=2)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def sides(tiny_split):
    from core.preprocess import Preprocess

    return load_sides(tiny_split, Preprocess.for_model(32), sides=("train", "val"), progress=False)[0]


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
    """A local timm ResNet-18 state dict (1000 classes), standing in for ImageNet weights."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=1000, zero_init_last=False)
    path = tmp_path_factory.mktemp("weights") / "resnet18_imagenet.safetensors"
    save_file(model.state_dict(), str(path))
    return path


def _record_epochs(monkeypatch):
    """Wrap train_one_epoch: the model's state and the optimizer's learning rates after every epoch."""
    import core.train as train_mod

    real, seen = train_mod.train_one_epoch, []

    def wrapped(model, opt, *args, epoch, **kw):
        out = real(model, opt, *args, epoch=epoch, **kw)
        seen.append({"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                     "lr": {g["name"]: g["lr"] for g in opt.param_groups}})
        return out

    monkeypatch.setattr(train_mod, "train_one_epoch", wrapped)
    return seen


def test_head_only_epochs_leave_the_backbone_unchanged_then_only_the_unfrozen_block_trains(
        tiny_split, sides, imagenet_file, tmp_path, monkeypatch):
    from timm.models import load_state_dict

    start = load_state_dict(str(imagenet_file))
    seen = _record_epochs(monkeypatch)
    config = _config(weights=str(imagenet_file), freeze_epochs=1, unfreeze="layer4", backbone_lr_scale=0.1,
                     schedule="constant", patience=1)
    result = fit(config, tiny_split, sides, tmp_path / "run")
    head_epoch, tuned_epoch = seen[0]["state"], seen[1]["state"]
    backbone = [k for k in start if not k.startswith("fc.")]
    # every backbone tensor, BatchNorm running statistics included, is the file's after the head-only epoch
    assert all(torch.equal(head_epoch[k], start[k]) for k in backbone)
    assert not torch.equal(head_epoch["fc.weight"], tuned_epoch["fc.weight"])
    # after it, layer4 trains (at a tenth of the head's rate) and the rest stays as it was
    assert not torch.equal(tuned_epoch["layer4.1.conv2.weight"], start["layer4.1.conv2.weight"])
    assert not torch.equal(tuned_epoch["layer4.0.bn1.running_mean"], start["layer4.0.bn1.running_mean"])
    assert all(torch.equal(tuned_epoch[k], start[k]) for k in backbone if not k.startswith("layer4."))
    assert seen[1]["lr"] == pytest.approx({"head": 2e-3, "backbone": 2e-4})
    rec = result.record
    assert rec["epochs_run"] == 2  # patience 1 never stops a run before its unfreezing
    assert [h["phase"] for h in rec["history"]] == ["head", "fine-tune"]
    fz = rec["freeze"]
    assert fz["head_epochs"] == 1 and fz["head"] == "fc" and fz["unfreeze"] == "layer4"
    assert fz["trainable_params"]["head_epochs"] == 513 and "note" not in fz
    assert fz["trainable_params"]["after"] == 513 + sum(v.numel() for k, v in start.items()
                                                        if k.startswith("layer4.") and "running" not in k
                                                        and "num_batches" not in k)
    assert rec["optimizer"]["backbone_lr_scale"] == 0.1 and rec["optimizer"]["schedule"] == "constant (no warm-up)"
    # the saved model is an ordinary one: loads and predicts
    model = runs.load_run(tmp_path / "run").build_model()
    assert all(p.requires_grad for p in model.parameters())


def test_without_freezing_the_backbone_trains_from_the_first_epoch(tiny_split, sides, imagenet_file, tmp_path,
                                                                   monkeypatch):
    from timm.models import load_state_dict

    start = load_state_dict(str(imagenet_file))
    seen = _record_epochs(monkeypatch)
    result = fit(_config(weights=str(imagenet_file), epochs=1), tiny_split, sides, tmp_path / "run")
    assert not torch.equal(seen[0]["state"]["conv1.weight"], start["conv1.weight"])
    assert result.record["freeze"] is None and "phase" not in result.record["history"][0]


def test_adam_constant_rate_and_weighted_bce_are_used_and_recorded(tiny_split, sides, tmp_path, monkeypatch):
    seen = _record_epochs(monkeypatch)
    config = _config(backbone="cnn3", optimizer="adam", schedule="constant", lr=1e-3, weight_decay=0.0,
                     loss="weighted-bce")
    rec = fit(config, tiny_split, sides, tmp_path / "run").record
    labels = sides["train"].labels
    n, n0, n1 = len(labels), int(np.sum(labels == 0)), int(np.sum(labels == 1))
    assert rec["loss"]["class_weights"] == pytest.approx({"NORMAL": n / (2 * n0), "PNEUMONIA": n / (2 * n1)})
    assert rec["loss"]["train_counts"] == {"NORMAL": n0, "PNEUMONIA": n1}
    assert rec["optimizer"]["name"] == "Adam" and rec["optimizer"]["weight_decay_kind"] == "L2 term in the gradient"
    assert [s["lr"] for s in seen] == [{"all": 1e-3}, {"all": 1e-3}]
    assert [h["lr_end"] for h in rec["history"]] == [1e-3, 1e-3]
    assert rec["architecture"] == {"source": "cxr-edge:cnn3", "title": "3-layer CNN", "group": "baseline",
                                   "input_size_fixed": True}
    assert rec["config"]["loss"] == "weighted-bce" and rec["timm_id"] is None
    assert lr_at(0, 100, config) == lr_at(99, 100, config) == 1e-3


def test_an_optimizer_of_each_kind_is_built(tiny_split, sides, tmp_path, monkeypatch):
    import core.train as train_mod

    made = []
    real = train_mod.make_optimizer
    monkeypatch.setattr(train_mod, "make_optimizer", lambda c, g: made.append(real(c, g)) or made[-1])
    fit(_config(backbone="gapcnn", epochs=1, optimizer="adam"), tiny_split, sides, tmp_path / "a")
    fit(_config(backbone="gapcnn", epochs=1), tiny_split, sides, tmp_path / "b")
    assert [type(o).__name__ for o in made] == ["Adam", "AdamW"]


@pytest.mark.parametrize("bad, match", [
    (dict(freeze_epochs=2), "freeze_epochs=2 is out of range"),
    (dict(backbone_lr_scale=0.0), "backbone_lr_scale=0.0 is out of range"),
    (dict(loss="hinge"), "loss='hinge' is out of range"),
    (dict(optimizer="sgd"), "optimizer='sgd' is out of range"),
    (dict(schedule="step"), "schedule='step' is out of range"),
    (dict(loss="bce", alpha=0.3), "--loss bce takes neither"),
    (dict(loss="weighted-bce", gamma=0.0), "--loss weighted-bce takes neither"),
])
def test_config_rejects_bad_seed_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        _config(**bad)


def test_unfreeze_all_is_the_default_and_unknown_modules_are_named(tiny_split, sides, tmp_path):
    assert _config(unfreeze="").unfreeze == _config(unfreeze=None).unfreeze == _config().unfreeze == "all"
    with pytest.raises(FreezeError, match="--unfreeze layer5: no such module in ResNet; .*layer4"):
        fit(_config(freeze_epochs=1, unfreeze="layer3,layer5"), tiny_split, sides, tmp_path / "run")


def test_from_scratch_head_epochs_are_said_plainly(tiny_split, sides, tmp_path):
    rec = fit(_config(backbone="gapcnn", freeze_epochs=1), tiny_split, sides, tmp_path / "run").record
    assert "random initial weights" in rec["freeze"]["note"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["freeze"]["head"] == "fc"


def test_a_run_interrupted_after_its_head_only_epoch_resumes_to_the_same_model(tiny_split, sides, tmp_path,
                                                                             monkeypatch):
    import core.train as train_mod

    config = _config(backbone="gapcnn", freeze_epochs=1, backbone_lr_scale=0.5, optimizer="adam")
    full = fit(config, tiny_split, sides, tmp_path / "full")
    real = train_mod.train_one_epoch

    def interrupt_second_epoch(*args, epoch, **kw):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(*args, epoch=epoch, **kw)

    monkeypatch.setattr(train_mod, "train_one_epoch", interrupt_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(config, tiny_split, sides, tmp_path / "cut")
    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    resumed = fit(config, tiny_split, sides, tmp_path / "cut", resume=True)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history])
    a = runs.load_run(tmp_path / "full").build_model().state_dict()
    b = runs.load_run(tmp_path / "cut").build_model().state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_param_groups_split_head_and_backbone_only_when_their_rates_differ():
    from core import freeze, registry

    model = registry.get("gapcnn").build(32)
    one = freeze.param_groups(model, 1e-3, 1.0)
    # one group in the model's own order: the optimizer state of runs interrupted before these options still loads
    assert len(one) == 1 and [id(p) for p in one[0]["params"]] == [id(p) for p in model.parameters()]
    two = freeze.param_groups(model, 1e-3, 0.1)
    assert [(g["name"], g["lr"]) for g in two] == [("head", 1e-3), ("backbone", pytest.approx(1e-4))]
    assert {id(p) for p in two[0]["params"]} == {id(model.fc.weight), id(model.fc.bias)}
