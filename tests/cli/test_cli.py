"""The command-line program as a user meets it: help, real runs on tiny data, and bad input."""

import json

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()
TINY = ["--synthetic-images", "60", "--size", "32", "--epochs", "1", "--batch-size", "8", "--threads", "2",
        "--no-progress"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_the_stages():
    r = invoke("--help")
    assert r.exit_code == 0
    for stage in ("data", "train", "train-all", "evaluate"):
        assert stage in r.output


@pytest.mark.parametrize("cmd", [["train"], ["train-all"], ["evaluate"], ["data", "split"], ["data", "audit"],
                                 ["data", "synth"]])
def test_every_command_has_help_with_defaults(cmd):
    r = invoke(*cmd, "--help")
    assert r.exit_code == 0 and "Usage" in r.output
    if cmd[0].startswith("train"):
        helps = option_helps(r.output)
        assert "[default: 64]" in helps["--size"] and "[default: 4]" in helps["--epochs"]
        assert "[default: 16]" in helps["--batch-size"]


def option_helps(text: str) -> dict[str, str]:
    """Each option of a rich --help panel with the text of its rows (the box drawn around them removed)."""
    helps: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        cells = line.strip("│ ").split()
        if cells and cells[0].startswith("--"):
            name = cells[0].split("/")[0]
        if name and cells:
            helps[name] = helps.get(name, "") + " " + " ".join(cells)
    return helps


def test_unknown_backbone_is_one_clear_line(tmp_path):
    r = invoke("train", "resnet19", "--out", tmp_path)
    assert r.exit_code == 2
    assert "resnet19' is not known; choose one of resnet18" in r.output
    assert "Traceback" not in r.output


def test_missing_data_folder_is_one_clear_line(tmp_path):
    r = invoke("train", "resnet18", "--data", tmp_path / "nowhere", "--out", tmp_path / "runs")
    assert r.exit_code == 2 and "nowhere" in r.output and "Traceback" not in r.output


def test_corrupt_image_names_the_file_and_skip_bad_counts_it(tmp_path, tiny_synthetic):
    import shutil

    data = tmp_path / "data"
    for cls in ("NORMAL", "PNEUMONIA"):
        shutil.copytree(tiny_synthetic / cls, data / cls)
    (data / "PNEUMONIA" / "person9999_virus_1.jpeg").write_bytes(b"not really a jpeg")
    r = invoke("train", "mobilenetv3_large_100", "--data", data, "--out", tmp_path / "runs", *TINY)
    assert r.exit_code == 2 and "person9999_virus_1.jpeg" in r.output and "--skip-bad" in r.output
    r = invoke("train", "mobilenetv3_large_100", "--data", data, "--out", tmp_path / "runs2", "--skip-bad", *TINY)
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "runs2" / "mobilenetv3_large_100" / "run.json").read_text())
    assert rec["data"]["skipped_files"] == 1


def test_synthetic_size_draws_the_set_at_that_size(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("CXR_EDGE_CACHE", str(tmp_path / "cache"))
    r = invoke("train", "resnet18", "--out", tmp_path / "runs", *TINY, "--synthetic-size", "40")
    assert r.exit_code == 0, r.output
    source = json.loads((tmp_path / "runs" / "resnet18" / "run.json").read_text())["data"]["source"]
    assert source["kind"] == "synthetic" and source["spec"]["size"] == 40  # by its cache name, no machine path
    source = source["path"]
    spec = json.loads((tmp_path / "cache").joinpath(source).parent.joinpath("spec.json").read_text())["spec"]
    assert spec == {**spec, "n_images": 60, "size": 40}
    first = next((tmp_path / "cache").joinpath(source).parent.joinpath("PNEUMONIA").glob("*.png"))
    assert Image.open(first).size == (40, 40)
    r = invoke("data", "split", "--synthetic-images", "60", "--synthetic-size", "8", "--out", tmp_path / "s.json")
    assert r.exit_code == 2 and "--synthetic-size" in r.output and "Traceback" not in r.output  # typer: x>=16


def test_split_audit_train_evaluate_end_to_end(tmp_path):
    runs = tmp_path / "runs"
    r = invoke("data", "split", "--synthetic-images", "60", "--out", runs / "split.json")
    assert r.exit_code == 0, r.output
    r = invoke("data", "audit", runs / "split.json")
    assert r.exit_code == 0 and "ok" in r.output
    r = invoke("train-all", "--backbones", "mobilenetv3_large_100,resnet18", "--out", runs, *TINY)
    assert r.exit_code == 0, r.output
    assert "mobilenetv3_large_100" in r.output and "resnet18" in r.output
    # Same command again: finished runs are left alone, not retrained or overwritten.
    r = invoke("train-all", "--backbones", "mobilenetv3_large_100,resnet18", "--out", runs, *TINY)
    assert r.exit_code == 0 and r.output.count("skipped") >= 2
    # Other settings into the same folder: refused without --force.
    r = invoke("train", "resnet18", "--out", runs, *TINY[:-3], "--lr", "0.01", "--no-progress")
    assert r.exit_code == 2 and "--force" in r.output
    r = invoke("evaluate", runs, "--n-boot", "50", "--no-progress")
    assert r.exit_code == 0, r.output
    report = json.loads((runs / "evaluate-test.json").read_text())
    assert [x["backbone"] for x in report["runs"]] == ["mobilenetv3_large_100", "resnet18"]
    assert report["ensemble"]["threshold_chosen_on"] == "val"
    assert report["ensemble"]["method"] == "mean of probabilities"
    assert set(report["runs"][0]["metrics"]) >= {"accuracy", "sensitivity", "specificity", "roc_auc", "pr_auc"}


def test_audit_fails_loudly_on_a_patient_on_two_sides(tmp_path, tiny_split):
    from dataclasses import replace

    from core.split import Split

    entries = list(tiny_split.entries)
    train_patient = next(e for e in entries if e.side == "train")
    i = next(i for i, e in enumerate(entries) if e.side == "test")
    entries[i] = replace(entries[i], patient=train_patient.patient)
    bad = Split(**{**tiny_split.__dict__, "entries": entries})
    bad.save(tmp_path / "split.json")
    r = invoke("data", "audit", tmp_path / "split.json")
    assert r.exit_code == 1 and train_patient.patient in r.output


@pytest.mark.parametrize("command", ["train", "train_all"])
def test_cli_defaults_are_the_trainer_defaults(command):
    """The options repeat TrainConfig's defaults for --help; they must not drift apart."""
    import dataclasses
    import inspect

    from cli import train_cmd
    from core.train import TrainConfig

    params = inspect.signature(getattr(train_cmd, command)).parameters
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in params}
    assert fields, "no shared options found"
    for name, default in fields.items():
        assert params[name].default == default, (f"--{name.replace('_', '-')}: CLI {params[name].default!r} "
                                                 f"!= {default!r}")


def test_justfile_defaults_are_the_trainer_defaults():
    """`just train-all` (and so `just demo`) must train with the documented defaults."""
    import re
    from pathlib import Path

    from core.train import TrainConfig

    text = (Path(__file__).resolve().parents[2] / "Justfile").read_text()
    found = {m.group(1): m.group(2) for m in re.finditer(r'^(size|epochs) := "(\d+)"$', text, re.M)}
    assert found == {"size": str(TrainConfig.size), "epochs": str(TrainConfig.epochs)}
