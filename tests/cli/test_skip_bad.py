"""--skip-bad end to end: a corrupt JPEG on the test side, through split, train, export, bench and evaluate.

A bad file is either recorded once (``data split --skip-bad``, ``train --skip-bad``) and then left out by every
later stage without being asked, or met by a later stage, which names it and the option that gets past it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app

TINY = ["--size", "32", "--epochs", "1", "--batch-size", "8", "--threads", "2", "--no-progress"]
BENCH = ["--batches", "1", "--budget-s", "0.2", "--min-iters", "3", "--warmup", "1", "--rounds", "2", "--n-boot", "50",
         "--fidelity-n", "0", "--threads", "2", "--no-progress"]
BAD_NAME = "person9999_virus_1.jpeg"


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_split) -> tuple[Path, Path]:
    """A CSV (path,label,patient_id,side) of the tiny synthetic split plus a file of random bytes named .jpeg on the
    test side; returns (csv, the bad file)."""
    root = tmp_path_factory.mktemp("skip-bad-data")
    bad = root / BAD_NAME
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    table = root / "data.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patient_id", "side"])
        for e in tiny_split.entries:
            w.writerow([tiny_split.abspath(e.path), e.label, e.patient, e.side])
        w.writerow([bad.name, "PNEUMONIA", "person9999", "test"])
    return table, bad


@pytest.fixture(scope="module")
def plain_split(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("skip-bad-split") / "split.json"
    r = invoke("data", "split", "--data", data[0], "--split", "official", "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output
    return out


def test_split_skip_bad_checks_every_image_and_records_the_bad_ones(data, tmp_path):
    table, bad = data
    out = tmp_path / "split.json"
    r = invoke("data", "split", "--data", table, "--split", "official", "--skip-bad", "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "1 unreadable file(s) left out of the split" in flat(r.output)
    doc = json.loads(out.read_text())
    assert [p for p, _ in doc["skipped"]] == [bad.name]  # relative to the data root
    assert "cannot decode" in doc["skipped"][0][1] and "--skip-bad" not in doc["skipped"][0][1]
    assert bad.name not in {e["path"] for e in doc["entries"]}


def test_a_bad_test_image_met_later_is_named_and_skip_bad_gets_past_it(data, plain_split, tmp_path):
    table, bad = data
    assert f"\"{bad.name}\"" in plain_split.read_text()  # made without --skip-bad: the corrupt file is on the test side
    runs = tmp_path / "runs"
    r = invoke("train", "resnet18", "--data", table, "--split-file", plain_split, "--out", runs, *TINY)
    assert r.exit_code == 0, r.output  # training decodes train and val only
    r = invoke("evaluate", runs, "--n-boot", "50", "--no-progress")
    assert r.exit_code == 2 and BAD_NAME in r.output and "--skip-bad" in r.output
    r = invoke("evaluate", runs, "--n-boot", "50", "--no-progress", "--skip-bad")
    assert r.exit_code == 0, r.output
    assert "1 image(s) left out: 0 recorded as unreadable by the run(s), 1 found unreadable now" in flat(r.output)
    report = json.loads((runs / "evaluate-test.json").read_text())
    assert [p for p, _ in report["images_left_out"]["found_unreadable"]] == [str(bad)]
    r = invoke("gradcam", runs, "--split", "test", "--n", "40", "--out", tmp_path / "cams", "--no-progress")
    assert r.exit_code == 2 and BAD_NAME in r.output and "--skip-bad" in r.output
    r = invoke("gradcam", runs, "--split", "test", "--n", "40", "--out", tmp_path / "cams", "--skip-bad",
               "--no-progress")
    assert r.exit_code == 0, r.output
    assert "1 image(s) found unreadable and skipped" in flat(r.output)


def test_recorded_bad_files_are_left_out_by_every_later_stage(data, plain_split, tmp_path):
    table, bad = data
    runs, artifacts = tmp_path / "runs", tmp_path / "artifacts"
    r = invoke("train", "resnet18", "--data", table, "--split-file", plain_split, "--out", runs, "--skip-bad", *TINY)
    assert r.exit_code == 0, r.output
    record = json.loads((runs / "resnet18" / "run.json").read_text())
    assert record["data"]["skipped_files"] == 1 and record["data"]["skipped"][0][0] == bad.name
    assert "--skip-bad" not in record["data"]["skipped"][0][1]  # no advice to pass what was passed
    r = invoke("export", runs, "--out", artifacts, "--formats", "onnx", "--precisions", "fp32,int8",
               "--n-calibration", "16", "--no-progress")
    assert r.exit_code == 0, r.output
    r = invoke("bench", artifacts, "--out", tmp_path / "results", *BENCH)
    assert r.exit_code == 0, r.output
    assert "resnet18: 1 test image(s) left out (1 recorded as unreadable in its run, 0 found" in flat(r.output)
    doc = json.loads((tmp_path / "results" / "results.json").read_text())
    assert all(row["status"] == "ok" for row in doc["rows"]), [row.get("error") for row in doc["rows"]]
    n_test = sum(e["side"] == "test" for e in json.loads(plain_split.read_text())["entries"])
    assert doc["backbones"]["resnet18"]["n_test"] == n_test - 1
    r = invoke("evaluate", runs, "--n-boot", "50", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "1 image(s) left out: 1 recorded as unreadable by the run(s)" in flat(r.output)


def test_bench_says_which_image_stopped_a_backbone_and_exits_1(data, plain_split, tmp_path):
    """A run trained without --skip-bad, benchmarked from another run's artifacts (--runs)."""
    table, _ = data
    recorded, plain, artifacts = tmp_path / "recorded", tmp_path / "plain", tmp_path / "artifacts"
    for out, extra in ((recorded, ["--skip-bad"]), (plain, [])):
        r = invoke("train", "resnet18", "--data", table, "--split-file", plain_split, "--out", out, *extra, *TINY)
        assert r.exit_code == 0, r.output
    r = invoke("export", recorded, "--out", artifacts, "--formats", "onnx", "--precisions", "fp32", "--no-progress")
    assert r.exit_code == 0, r.output
    r = invoke("bench", artifacts, "--out", tmp_path / "r1", "--runs", plain, *BENCH)
    assert r.exit_code == 1 and BAD_NAME in r.output and "--skip-bad" in r.output
    r = invoke("bench", artifacts, "--out", tmp_path / "r2", "--runs", plain, "--skip-bad", *BENCH)
    assert r.exit_code == 0, r.output
    assert "0 recorded as unreadable in its run, 1 found unreadable now and skipped" in flat(r.output)

