"""Options as --help states them: ranges checked by typer before any work, and errors that say what to do."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from cli.main import app


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.mark.parametrize("command", [["train", "resnet18"], ["train-all"], ["bench", "artifacts"]])
def test_threads_0_is_refused_not_read_as_all_cores(command, tmp_path):
    r = invoke(*command, "--threads", "0", "--out", tmp_path / "out")
    assert r.exit_code == 2 and "--threads" in r.output and "greater than or equal to 1" in r.output
    assert not (tmp_path / "out").exists()


def test_train_config_refuses_threads_0():
    from core.train import TrainConfig

    with pytest.raises(ValueError, match="threads=0 must be >= 1"):
        TrainConfig(backbone="resnet18", threads=0)


@pytest.mark.parametrize("command, option, shown", [
    (["train"], "--size", "x>=16"), (["train-all"], "--epochs", "x>=1"), (["train"], "--batch-size", "x>=2"),
    (["train"], "--cutmix", "0<=x<=1"), (["train"], "--synthetic-size", "x>=16"),
    (["data", "split"], "--synthetic-images", "x>=1"),
    (["data", "synth"], "--size", "x>=16"), (["export"], "--n-calibration", "x>=1"), (["bench"], "--rounds", "x>=1"),
    (["bench"], "--fidelity-steps", "x>=2"), (["fidelity"], "--steps", "x>=2"),
    (["recommend"], "--min-sensitivity", "0<=x<=1"),
])
def test_ranges_are_stated_in_help_and_checked_by_typer(command, option, shown):
    help_text = invoke(*command, "--help").output
    line = next(ln for ln in help_text.splitlines() if f"{option} " in ln)
    assert shown in line, line
    r = invoke(*command, option, "-5")
    assert r.exit_code == 2 and option in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("command", [["table"], ["recommend"]])
def test_a_missing_results_folder_says_how_to_make_it(command, tmp_path):
    where = tmp_path / "results" / "nope"
    r = invoke(*command, where)
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and f"cxr-edge bench ARTIFACTS --out {where}`" in text and "--out .`" not in text


def test_split_warns_when_every_image_is_its_own_patient(tmp_path, tiny_synthetic):
    data = tmp_path / "data"
    for cls in ("NORMAL", "PNEUMONIA"):  # file names like synth-p00002-1.png give no patient id
        shutil.copytree(tiny_synthetic / cls, data / cls)
    r = invoke("data", "split", "--data", data, "--out", tmp_path / "split.json")
    text = " ".join(r.output.split())
    assert r.exit_code == 0, r.output
    assert "this split is image-wise" in text and "path,label,patient_id" in text
    r = invoke("data", "split", "--synthetic-images", "60", "--out", tmp_path / "synthetic.json")
    assert r.exit_code == 0 and "image-wise" not in r.output  # the synthetic manifest names its patients
