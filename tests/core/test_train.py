import json

import numpy as np
import pytest
import torch

from core import runs
from core.datasets import load_sides
from core.train import TrainConfig, augment, cutmix, fit, init_head, lr_at, predict_probs

BACKBONE = "mobilenetv3_large_100"  # the fastest of the seven on a CPU


def _config(**kw):
    base = dict(backbone=BACKBONE, size=32, epochs=2, batch_size=8, lr=2e-3, seed=7, threads=2)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def sides(tiny_split):
    from core.preprocess import Preprocess

    return load_sides(tiny_split, Preprocess.for_model(32), sides=("train", "val"), progress=False)[0]


def test_lr_schedule_warms_up_then_decays_to_zero():
    c = _config(lr=1.0, warmup=0.1)
    lrs = [lr_at(s, 100, c) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and max(lrs) == pytest.approx(1.0)
    assert np.argmax(lrs) == 9 and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] < 0.01


def test_augment_is_seeded_and_keeps_shape():
    x = torch.randn(4, 3, 32, 32)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, x)


def test_cutmix_pastes_a_box_and_mixes_the_label_by_its_area():
    """A black NORMAL image and a white PNEUMONIA one: after CutMix, each image's PNEUMONIA target is the
    share of its pixels that came from the white image, and the boxes sit where the pixels changed."""
    x = torch.stack([torch.zeros(3, 32, 32), torch.ones(3, 32, 32)])
    y = torch.tensor([0, 1])
    np.random.seed(3)
    mixed, soft = cutmix(1.0)(x.clone(), y)
    white = mixed[0, 0].mean().item()
    assert 0 < white < 1 and soft[0, 1].item() == pytest.approx(white)
    assert soft[1, 1].item() == pytest.approx(1 - white) and torch.allclose(soft.sum(1), torch.ones(2))
    rows, cols = torch.nonzero(mixed[0, 0]).T
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert box.item() == int(mixed[0, 0].sum().item())  # one solid rectangle
    assert torch.equal(mixed[1, 0], 1 - mixed[0, 0])  # the mirror image got the same box, the other way
    np.random.seed(3)
    again, _ = cutmix(1.0)(x.clone(), y)
    assert torch.equal(again, mixed)


def test_cutmix_off_leaves_batches_alone():
    x = torch.randn(4, 3, 16, 16)
    out, soft = cutmix(1e-9)(x.clone(), torch.tensor([0, 1, 1, 0]))
    assert torch.equal(out, x) and soft[:, 1].tolist() == [0, 1, 1, 0]


def test_saved_configs_from_before_cutmix_compare_as_without_it():
    saved = _config().to_dict()
    del saved["cutmix"]
    assert TrainConfig.complete(saved) == _config().to_dict()
    assert TrainConfig.complete(saved) != _config(cutmix=0.5).to_dict()


def test_init_head_starts_at_the_prior():
    from core.registry import get

    model = get("resnet18").build(32).eval()
    init_head(model, prior=0.75)
    with torch.no_grad():
        p = torch.sigmoid(model(torch.randn(8, 3, 32, 32))).flatten()
    assert torch.allclose(p, torch.full_like(p, 0.75), atol=0.1)


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(lr=-1.0), dict(alpha=1.5), dict(device="tpu"),
                                 dict(backbone="nope"), dict(cutmix=1.5), dict(cutmix=0.5, batch_size=7)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        _config(**bad)


def test_fit_writes_a_complete_run_without_pickle(tiny_split, sides, tmp_path):
    result = fit(_config(), tiny_split, sides, tmp_path / "run")
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert files == {"model.safetensors", "run.json", "split.json", "log.jsonl"}
    rec = json.loads((tmp_path / "run" / "run.json").read_text())
    assert rec["threshold"]["chosen_on"] == "val" and 0 <= rec["threshold"]["threshold"] <= 1
    assert rec["split"]["hash"] == tiny_split.hash and rec["init"].startswith("trained from scratch")
    assert rec["preprocess"]["size"] == 32 and rec["epochs_run"] == 2 and len(rec["history"]) == 2
    assert "roc_auc" in rec["val"]["metrics"] and rec["environment"]["versions"]["torch"]
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 2
    # The run loads back into the same model: same validation probabilities.
    run = runs.load_run(tmp_path / "run")
    model = run.build_model()
    p = predict_probs(model, sides["val"], run.preprocess, torch.device("cpu"))
    assert rec["best_epoch"] in (1, 2)
    assert result.record["val"]["n"] == len(p)
    assert result.record["val"]["ci_method"].startswith("patient bootstrap, stratified")  # synthetic ids are known


def _interrupted_run(split, sides, run_dir, monkeypatch, **config):
    """Train with the second epoch interrupted (as by Ctrl-C), leaving a checkpoint behind."""
    import core.train as train_mod

    real = train_mod.train_one_epoch

    def interrupt_second_epoch(*args, epoch, **kw):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(*args, epoch=epoch, **kw)

    monkeypatch.setattr(train_mod, "train_one_epoch", interrupt_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(_config(**config), split, sides, run_dir)
    monkeypatch.setattr(train_mod, "train_one_epoch", real)


def test_resume_after_interruption_gives_the_same_model(tiny_split, sides, tmp_path, monkeypatch):
    full = fit(_config(), tiny_split, sides, tmp_path / "full")
    _interrupted_run(tiny_split, sides, tmp_path / "cut", monkeypatch)
    assert (tmp_path / "cut" / "checkpoint" / "state.json").is_file()
    assert not (tmp_path / "cut" / "run.json").exists()
    with pytest.raises(runs.RunError, match="--resume"):
        runs.load_run(tmp_path / "cut")
    resumed = fit(_config(), tiny_split, sides, tmp_path / "cut", resume=True)
    assert [h["val_auc"] for h in resumed.history] == pytest.approx([h["val_auc"] for h in full.history])
    a = runs.load_run(tmp_path / "full").build_model().state_dict()
    b = runs.load_run(tmp_path / "cut").build_model().state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_resume_refuses_changed_settings(tiny_split, sides, tmp_path, monkeypatch):
    _interrupted_run(tiny_split, sides, tmp_path / "cut", monkeypatch)
    with pytest.raises(runs.RunError, match="lr: 0.002 -> 0.01"):
        fit(_config(lr=1e-2), tiny_split, sides, tmp_path / "cut", resume=True)


def test_cutmix_run_is_recorded_and_resumes_to_the_same_model(tiny_split, sides, tmp_path, monkeypatch):
    full = fit(_config(cutmix=1.0), tiny_split, sides, tmp_path / "full")
    assert full.record["config"]["cutmix"] == 1.0
    plain = fit(_config(), tiny_split, sides, tmp_path / "plain")
    assert [h["loss"] for h in plain.history] != pytest.approx([h["loss"] for h in full.history])
    _interrupted_run(tiny_split, sides, tmp_path / "cut", monkeypatch, cutmix=1.0)
    np.random.seed(12345)  # a fresh process: numpy's global state is not the one the first epoch left
    resumed = fit(_config(cutmix=1.0), tiny_split, sides, tmp_path / "cut", resume=True)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history])


def test_nan_loss_is_a_clear_error(tiny_split, sides, tmp_path):
    with pytest.raises(runs.RunError, match="lower --lr"):
        fit(_config(lr=1e30, grad_clip=1e30, epochs=1), tiny_split, sides, tmp_path / "nan")


def test_best_checkpoint_survives_later_epochs(tmp_path):
    """``mark_last_best`` links the last save as best; the next ``save`` must not change it."""
    import torch
    from torch import nn

    from core.checkpoint import Checkpoint

    model = nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters())
    ckpt = Checkpoint(tmp_path / "checkpoint")
    nn.init.constant_(model.weight, 1.0)
    ckpt.save(model, opt, {"epoch": 1}, {})
    ckpt.mark_last_best()
    nn.init.constant_(model.weight, 2.0)
    ckpt.save(model, opt, {"epoch": 2}, {})
    ckpt.restore_best(model)
    assert torch.all(model.weight == 1.0)


def test_a_finished_run_saved_before_cutmix_is_skipped_not_refused(tmp_path):
    """``train`` leaves a finished run alone when its settings match, fields added since counting as defaults."""
    from core.pipeline import _plan

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    old = _config().to_dict()
    del old["cutmix"]
    (run_dir / "run.json").write_text(json.dumps({"config": old, "split": {"hash": "abc"}}))
    (run_dir / "model.safetensors").write_bytes(b"")
    assert _plan(run_dir, _config(), "abc", resume=False, force=False) == "skipped"
    with pytest.raises(runs.RunError, match="cutmix: 0.0 -> 0.5"):
        _plan(run_dir, _config(cutmix=0.5), "abc", resume=False, force=False)


def test_config_differences_name_each_field_and_fill_later_fields_with_defaults():
    now = TrainConfig(backbone="resnet18", lr=0.004, epochs=4).to_dict()
    old = {k: v for k, v in now.items() if k != "cutmix"}  # written before --cutmix existed
    assert TrainConfig.differences(old, now) == ""
    assert TrainConfig.differences({**old, "lr": 0.01, "epochs": 8}, now) == "epochs: 8 -> 4, lr: 0.01 -> 0.004"
    assert TrainConfig.differences({**old, "epochs": 8}, now, ignore={"epochs"}) == ""


def test_weights_are_checked_by_hash_and_by_architecture(tmp_path, tiny_split, sides):
    """Another run's weights copied in are an error naming both hashes; another backbone's weights are a
    one-line error naming the backbone they look like."""
    import shutil

    from core.runs import RunError, load_run
    from export.base import run_hash

    def train(name, **kw):
        fit(_config(epochs=1, **kw), tiny_split, sides, tmp_path / name, progress=False)
        return load_run(tmp_path / name)

    a, b = train("a", seed=0), train("b", seed=1)
    assert a.record["weights"]["sha256"] == a.check_weights()
    a.build_model()
    shutil.copy(b.weights_path, a.weights_path)
    with pytest.raises(runs.RunError, match=r"not the file this run trained: sha256 .* on disk, .* in .*run.json"):
        load_run(a.path).build_model()
    with pytest.raises(RunError, match="not the file this run trained"):
        run_hash(load_run(a.path))  # export reuse and the bench name runs by this hash
    c = train("c", backbone="mobilenetv2_100")
    shutil.copy(c.weights_path, b.weights_path)
    record = json.loads((b.path / "run.json").read_text())
    record["weights"]["sha256"] = c.check_weights()  # the hash matches; the architecture does not
    (b.path / "run.json").write_text(json.dumps(record))
    with pytest.raises(RunError, match="they look like mobilenetv2_100 weights"):
        load_run(b.path).build_model()


def test_one_line_per_epoch_when_no_bar_is_shown(tmp_path, tiny_split, sides, capsys):
    fit(_config(epochs=2), tiny_split, sides, tmp_path / "run", progress=None)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(f"{BACKBONE}: epoch")]
    assert [ln.split()[2] for ln in lines] == ["1/2", "2/2"] and "val ROC-AUC" in lines[0]
