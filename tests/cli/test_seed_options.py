"""The seed recipes' training options as a user meets them: recorded when right, one clear line when wrong."""

import json

from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()
TINY = ["--synthetic-images", "60", "--size", "32", "--epochs", "2", "--batch-size", "8", "--threads", "2",
        "--no-progress"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_seed_options_reach_the_run_record(tmp_path):
    r = invoke("train", "gapcnn", "--out", tmp_path / "runs", *TINY, "--loss", "weighted-bce", "--optimizer", "adam",
               "--schedule", "constant", "--lr", "0.001", "--weight-decay", "0", "--freeze-epochs", "1",
               "--unfreeze", "features.3", "--backbone-lr-scale", "0.1")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "runs" / "gapcnn" / "run.json").read_text())
    assert {k: rec["config"][k] for k in ("loss", "optimizer", "schedule", "freeze_epochs", "unfreeze",
                                           "backbone_lr_scale")} == {
        "loss": "weighted-bce", "optimizer": "adam", "schedule": "constant", "freeze_epochs": 1,
        "unfreeze": "features.3", "backbone_lr_scale": 0.1}
    assert rec["loss"]["class_weights"]["NORMAL"] > rec["loss"]["class_weights"]["PNEUMONIA"]
    assert rec["freeze"]["unfreeze"] == "features.3" and rec["optimizer"]["name"] == "Adam"


def test_bad_seed_options_are_one_clear_line(tmp_path):
    r = invoke("train", "resnet18", "--out", tmp_path / "a", *TINY, "--loss", "bce", "--alpha", "0.3")
    assert r.exit_code == 2 and "--loss bce takes neither" in r.output and "Traceback" not in r.output
    r = invoke("train", "resnet18", "--out", tmp_path / "b", *TINY, "--freeze-epochs", "1", "--unfreeze", "layer9")
    assert r.exit_code == 2 and "--unfreeze layer9: no such module in ResNet" in r.output
    assert "Traceback" not in r.output
    r = invoke("train", "cnn3", "--out", tmp_path / "c", *TINY, "--pretrained")
    assert r.exit_code == 2 and "cnn3 has no ImageNet weights" in r.output
