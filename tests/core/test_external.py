"""External evaluation (core.external, `cxr-edge evaluate --data`), calibration figures and the shift warning, on
the tiny trained run, its ONNX export and a second synthetic cohort laid out as Kermany folders and as a CSV."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.calibration import brier_score, expected_calibration_error, reliability_bins, threshold_for_sensitivity
from tests.export.conftest import tiny_run

# -------------------------------------------------------------------------------- pure figures


def test_ece_matches_a_hand_computation():
    p = np.array([0.02, 0.06, 0.30, 0.32, 0.50, 0.90, 0.95, 1.00])
    y = np.array([0, 1, 1, 0, 1, 1, 1, 0])
    # 15 bins of width 1/15: 0.02 and 0.06 share bin 0; 0.30 and 0.32 bin 4; 0.50 bin 7; 0.90 bin 13;
    # 0.95 and 1.00 bin 14 (1.0 joins the last bin).
    hand = (2 * abs(0.5 - 0.04) + 2 * abs(0.5 - 0.31) + abs(1 - 0.5) + abs(1 - 0.9) + 2 * abs(0.5 - 0.975)) / 8
    assert expected_calibration_error(y, p) == pytest.approx(hand)
    bins = reliability_bins(y, p)
    assert bins["count"][0] == 2 and bins["count"][14] == 2 and sum(bins["count"]) == 8
    assert bins["observed_rate"][1] is None  # empty bins stay empty
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0


def test_brier_score_by_hand():
    assert brier_score([0, 1, 1, 0], [0.1, 0.8, 0.4, 0.5]) == pytest.approx((0.01 + 0.04 + 0.36 + 0.25) / 4)


def test_local_threshold_restores_the_target_sensitivity():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.3, 0.5, 0.7, 0.9])
    got = threshold_for_sensitivity(y, p, 0.75)  # 3 of 4 positives: cut at 0.5 (the highest that reaches it)
    assert got == {"threshold": 0.5, "sensitivity": 0.75, "specificity": pytest.approx(2 / 3)}
    assert threshold_for_sensitivity(y, p, 1.0)["threshold"] == 0.3
    with pytest.raises(ValueError, match="target sensitivity"):
        threshold_for_sensitivity(y, p, 1.5)


# -------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def ext_run(tmp_path_factory, tiny_split):
    return tiny_run(tmp_path_factory, tiny_split)


@pytest.fixture(scope="session")
def ext_onnx(tmp_path_factory, ext_run) -> Path:
    from export.pipeline import export_runs

    out = tmp_path_factory.mktemp("ext-artifacts")
    records = export_runs([ext_run], out, ["onnx"], ["fp32"], {}, progress=False)
    assert records[0]["status"] == "ok", records[0].get("error")
    return out


@pytest.fixture(scope="session")
def cohort(tmp_path_factory, _synthetic_cache) -> list[dict]:
    """A second synthetic cohort (another seed), with Kermany-style names: patient ids come from the names."""
    from core.data import read_source
    from core.synthetic import SyntheticSpec, ensure_synthetic

    src = read_source(ensure_synthetic(SyntheticSpec(n_images=40, size=64, seed=11), progress=False) / "manifest.csv")
    rows, ids = [], {}
    for s in src.samples:
        n = ids.setdefault(s.patient, len(ids) + 1)
        k = sum(r["patient"] == s.patient for r in rows) + 1
        name = f"person{n}_bacteria_{k}.png" if s.label else f"IM-{n:04d}-{k:04d}.png"
        rows.append({"src": s.path, "name": name, "label": s.label, "patient": s.patient})
    return rows


def _kermany(root: Path, cohort: list[dict], transform=None) -> Path:
    for r in cohort:
        dest = root / "test" / ("PNEUMONIA" if r["label"] else "NORMAL") / r["name"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        if transform is None:
            shutil.copyfile(r["src"], dest)
        else:
            Image.fromarray(transform(np.asarray(Image.open(r["src"]).convert("L")))).save(dest)
    return root


@pytest.fixture(scope="session")
def kermany_cohort(tmp_path_factory, cohort) -> Path:
    return _kermany(tmp_path_factory.mktemp("outside-kermany"), cohort)


@pytest.fixture(scope="session")
def csv_cohort(tmp_path_factory, cohort) -> Path:
    root = tmp_path_factory.mktemp("outside-csv")
    with open(root / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patient_id"])
        for i, r in enumerate(cohort):
            shutil.copyfile(r["src"], root / f"img{i}.png")
            w.writerow([f"img{i}.png", r["label"], r["patient"]])
    (root / "broken.png").write_bytes(b"not a png")
    with open(root / "data.csv", "a", newline="") as f:
        csv.writer(f).writerow(["broken.png", 1, "pX"])
    return root / "data.csv"


@pytest.fixture(scope="session")
def run_report(ext_run, kermany_cohort):
    from core.external import evaluate_external

    return evaluate_external([ext_run.path], kermany_cohort, n_boot=100, device="cpu")


# -------------------------------------------------------------------------------- evaluate --data


def test_a_run_on_a_kermany_folder(run_report, ext_run, cohort):
    from core.metrics import summarize

    rec = run_report["models"][0]
    assert rec["threshold"] == ext_run.threshold and rec["threshold_chosen_on"] == "val"
    assert run_report["data"]["n_images"] == len(cohort) and run_report["data"]["patients_known"]
    assert rec["outside"]["n_patients"] == len({r["patient"] for r in cohort})
    assert rec["outside"]["ci_method"] == "patient bootstrap, stratified, 100 replicates"
    # internal figures: the run's own test side at its own threshold
    labels, probs = run_report["_curves"]["internal test"][rec["name"]]
    assert len(labels) == len(ext_run.split().side("test"))
    again = summarize(labels, probs, ext_run.threshold, n_boot=100, patients=[
        e.patient for e in ext_run.split().side("test")])
    assert rec["internal_test"]["metrics"]["roc_auc"] == again["metrics"]["roc_auc"]
    for m in ("roc_auc", "sensitivity", "brier", "ece"):
        ext = rec["outside"][m] if m in ("brier", "ece") else rec["outside"]["metrics"][m]["value"]
        test = rec["internal_test"][m] if m in ("brier", "ece") else rec["internal_test"]["metrics"][m]["value"]
        assert rec["change"][m] == pytest.approx(ext - test)
    lop = rec["local_operating_point"]
    assert set(lop) >= {"threshold", "n_images", "target_sensitivity", "sensitivity", "specificity"}
    assert lop["sensitivity"] >= lop["target_sensitivity"] - 1e-9 and lop["n_images"] == len(cohort)
    assert "features" in rec["shift"]["checks"]  # a run gives features


def test_internal_figures_are_cached_by_run_hash(run_report, ext_run, kermany_cohort, monkeypatch):
    import core.datasets
    from core.external import CACHE_FILE, evaluate_external

    cache = json.loads((ext_run.path / CACHE_FILE).read_text())
    assert cache["run_hash"] == run_report["models"][0]["run_hash"] and "pytorch fp32 | tta off" in cache["entries"]
    assert (ext_run.path / "shift_reference.npz").is_file()

    def no_decoding(*a, **k):
        raise AssertionError("the internal sides were decoded again")

    monkeypatch.setattr(core.datasets, "load_sides", no_decoding)
    import core.shift

    monkeypatch.setattr(core.shift, "build_reference", no_decoding)
    again = evaluate_external([ext_run.path], kermany_cohort, n_boot=100, device="cpu")
    assert again["models"][0]["internal_test"] == run_report["models"][0]["internal_test"]


def test_run_and_onnx_artifact_on_a_csv_with_skip_bad_and_the_ensemble(ext_run, ext_onnx, csv_cohort, tmp_path):
    from core.data import DataError
    from core.external import evaluate_external, write_report

    with pytest.raises(DataError, match="broken.png"):
        evaluate_external([ext_run.path, ext_onnx], csv_cohort, n_boot=50, device="cpu")
    report = evaluate_external([ext_run.path, ext_onnx], csv_cohort, n_boot=50, device="cpu", skip_bad=True)
    assert report["data"]["n_skipped"] == 1 and report["data"]["skipped"][0][0].endswith("broken.png")
    run_rec, onnx_rec = report["models"]
    assert onnx_rec["kind"] == "artifact" and onnx_rec["artifact"]["format"] == "onnx"
    assert onnx_rec["threshold"] == ext_run.threshold and onnx_rec["run"] == run_rec["run"]
    # FP32 ONNX scores like the run it came from
    assert onnx_rec["outside"]["metrics"]["roc_auc"]["value"] == pytest.approx(
        run_rec["outside"]["metrics"]["roc_auc"]["value"], abs=1e-3)
    assert "features" not in onnx_rec["shift"]["checks"] and "probability checks only" in onnx_rec["shift"]["notes"][0]
    ens = report["ensemble"]
    run_p = report["_curves"]["outside data"][run_rec["name"]][1]
    onnx_p = report["_curves"]["outside data"][onnx_rec["name"]][1]
    np.testing.assert_allclose(report["_curves"]["outside data"][ens["name"]][1], (run_p + onnx_p) / 2)
    assert ens["members"] == [run_rec["name"], onnx_rec["name"]]
    json_path, png = write_report(report, tmp_path / "report.json")
    saved = json.loads(json_path.read_text())
    assert "_curves" not in saved and saved["reliability_png"] == png.name and png.stat().st_size > 1000
    assert saved["environment"]["versions"]["onnxruntime"]


def test_an_artifact_file_and_tta(ext_onnx, kermany_cohort):
    from core.external import evaluate_external

    plain = evaluate_external([ext_onnx / "resnet18" / "onnx-fp32.onnx"], kermany_cohort, n_boot=20, device="cpu")
    tta = evaluate_external([ext_onnx / "resnet18" / "onnx-fp32.onnx"], kermany_cohort, n_boot=20, device="cpu",
                            tta=True)
    assert plain["method"]["tta"]["on"] is False and tta["method"]["tta"]["views"][0] == "identity"
    a, b = (r["_curves"]["outside data"]["resnet18 onnx fp32"][1] for r in (plain, tta))
    assert not np.allclose(a, b)


def test_an_artifact_outside_any_manifest_is_a_clear_error(ext_onnx, kermany_cohort, tmp_path):
    from core.external import evaluate_external
    from core.runs import RunError

    lone = tmp_path / "lone.onnx"
    shutil.copyfile(ext_onnx / "resnet18" / "onnx-fp32.onnx", lone)
    with pytest.raises(RunError, match="not listed in a manifest.json"):
        evaluate_external([lone], kermany_cohort, n_boot=20, device="cpu")
    changed = tmp_path / "changed"
    shutil.copytree(ext_onnx, changed)
    with open(changed / "resnet18" / "onnx-fp32.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(RunError, match="does not match its manifest record"):
        evaluate_external([changed / "resnet18" / "onnx-fp32.onnx"], kermany_cohort, n_boot=20, device="cpu")


# -------------------------------------------------------------------------------- shift warning


def test_shift_fires_on_inverted_images_and_stays_quiet_on_the_own_test_side(ext_run, tmp_path):
    from core.data import load_images
    from core.shift import check_shift, features_of, reference_for_run
    from core.train import predict_probs

    ref = reference_for_run(ext_run)
    model, pre = ext_run.build_model(), ext_run.preprocess
    test = load_images(ext_run.split().samples("test") + ext_run.split().samples("val"), pre, progress=False)[0]
    held_out = test[: len(ext_run.split().side("test"))]

    def report(images):
        import torch

        from core.datasets import SideImages

        side = SideImages("x", images, np.zeros(len(images), np.int64), [])
        probs = predict_probs(model, side, pre, torch.device("cpu"))
        return check_shift(ref, probs, features_of(model, images, pre))

    quiet = report(held_out)
    assert not quiet.shifted, quiet.reasons
    loud = report(255 - test)  # the same images, inverted
    assert loud.shifted and "lie farther from the training images than 99% of the validation images" in \
        loud.reasons[0]
    d = loud.to_dict()
    assert d["checks"]["features"]["share_beyond_val_p99"] > 0.5 and json.dumps(d)


def test_shift_reference_is_rebuilt_for_other_weights(ext_run, tmp_path):
    from core.runs import load_run
    from core.shift import REFERENCE_FILE, ShiftReference, reference_for_run

    copy = tmp_path / "run"
    shutil.copytree(ext_run.path, copy)
    run = load_run(copy)
    ref = reference_for_run(run)
    stale = ShiftReference(ref.val_probs, ref.threshold, "0" * 64)
    stale.save(copy / REFERENCE_FILE)
    again = reference_for_run(run)
    assert again.run_hash == ref.run_hash and again.has_features
    np.testing.assert_allclose(again.mean, ref.mean)


# -------------------------------------------------------------------------------- CLI


def test_cli_evaluate_data_prints_a_table_within_100_columns(ext_run, kermany_cohort, tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["evaluate", str(ext_run.path), "--data", str(kermany_cohort), "--out",
                                      str(out), "--n-boot", "20", "--no-progress", "--device", "cpu"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    table = result.output.split("images of")[0]
    assert max(len(line) for line in table.splitlines()) <= 100
    assert "int. test" in result.output and "ROC-AUC" in result.output and "ECE" in result.output
    assert json.loads(out.read_text())["format"] == "cxr-edge-external-eval/1"
    bad = CliRunner().invoke(app, ["evaluate", str(ext_run.path), "--data", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "does not exist" in bad.output and "Traceback" not in bad.output


def test_predict_warns_of_shift_on_inverted_images_and_not_on_the_own_test_side(ext_run, tmp_path):
    """`cxr-edge predict` runs the same label-free check: quiet on the run's held-out images, loud when inverted."""
    from PIL import Image, ImageOps
    from typer.testing import CliRunner

    from cli.main import app

    split = ext_run.split()
    own = [s.path for s in split.samples("test") + split.samples("val") + split.samples("train")]
    inverted = tmp_path / "inverted"
    inverted.mkdir()
    for i, p in enumerate(own):
        ImageOps.invert(Image.open(p).convert("L")).save(inverted / f"img{i}.png")
    quiet = CliRunner().invoke(app, ["predict", str(ext_run.path), *own[: len(ext_run.split().side("test"))],
                                     "--out", str(tmp_path / "own.json"), "--no-progress"])
    assert quiet.exit_code == 0, quiet.output
    doc = json.loads((tmp_path / "own.json").read_text())
    if len(doc["rows"]) < 20:  # the tiny set's test side: too few for the check, which says so
        assert "shift check: not run" in quiet.output and "skipped" in doc["summary"]["shift"]
    else:
        assert "no shift detected" in quiet.output and not doc["summary"]["shift"]["shifted"]
    loud = CliRunner().invoke(app, ["predict", str(ext_run.path), str(inverted), "--out", str(tmp_path / "inv.json"),
                                    "--no-progress"])
    assert loud.exit_code == 0, loud.output
    assert "SHIFT: these images look unlike the training data" in " ".join(loud.output.split())
    assert json.loads((tmp_path / "inv.json").read_text())["summary"]["shift"]["shifted"]
    off = CliRunner().invoke(app, ["predict", str(ext_run.path), str(inverted), "--no-shift", "--no-progress"])
    assert "shift check: not run (turned off (--no-shift))" in off.output
