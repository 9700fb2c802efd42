"""The seed study's comparison table, and `just seeds` end to end at a tiny setting."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core import seeds
from core.metrics import summarize

ROOT = Path(__file__).resolve().parents[2]


def _report(backbones):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    runs = []
    for b in backbones:
        probs = np.clip(labels * 0.6 + rng.random(40) * 0.5, 0, 1)
        runs.append({"backbone": b, "init": "trained from scratch (random init)", "size": 64, "epochs_run": 3,
                     "threshold": 0.5, **summarize(labels, probs, 0.5, n_boot=20)})
    return {"side": "test", "split_hash": "abc", "split_method": "patient", "n_images": 40, "runs": runs}


def test_table_sets_our_four_figures_beside_the_study_accuracy():
    report = _report(["resnet18", "cnn3", "gapcnn"])
    rows = seeds.comparison(report)
    assert [r["backbone"] for r in rows] == ["cnn3", "resnet18"]
    assert rows[0]["published"] == {"accuracy": 0.816} and rows[1]["published"] == {"accuracy": 0.933}
    cnn3 = report["runs"][1]["metrics"]
    assert rows[0]["ours"]["recall"] == cnn3["sensitivity"] and rows[0]["ours"]["F1"] == cnn3["f1"]
    md = seeds.markdown(rows, report)
    assert "| `cnn3` |" in md and "0.816 |" in md and "0.933 |" in md
    assert "64 px, 3 epochs, trained from scratch" in md
    assert f"{cnn3['precision']['value']:.3f} [" in md and "split abc (40 images, patient)" in md


def test_a_report_without_the_seed_runs_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="none of the seed configurations"):
        seeds.comparison(_report(["gapcnn"]))
    path = tmp_path / "evaluate-test.json"
    path.write_text(json.dumps(_report(["mobilenetv2_100"])))
    assert seeds.main([str(path)]) == 2
    assert "none of the seed configurations" in capsys.readouterr().err
    path.write_text(json.dumps(_report(["cnn3"])))
    assert seeds.main([str(path)]) == 0 and "| `cnn3` |" in capsys.readouterr().out


@pytest.mark.slow
def test_just_seeds_runs_end_to_end_at_a_tiny_setting(tmp_path, tiny_synthetic):
    """Both configurations trained, evaluated and tabled; the from-scratch ResNet-18 said so plainly."""
    bin_dir = Path(sys.executable).parent
    just = shutil.which("just", path=str(bin_dir)) or shutil.which("just")
    if just is None or not (bin_dir / "cxr-edge").is_file():
        pytest.skip(f"`just` or cxr-edge not found beside {sys.executable} (install the dev extra)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "runs"
    r = subprocess.run([just, f"bin={bin_dir}", "seeds", f"data={tiny_synthetic / 'manifest.csv'}", "size=32",
                        "epochs_cnn=1", "epochs_head=1", "epochs_tune=1", "batch=8", f"out={out}", "threads=2"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "| `cnn3` |" in r.stdout and "| `resnet18` |" in r.stdout and "0.933 |" in r.stdout
    assert "FROM SCRATCH" in r.stdout
    rec = json.loads((out / "resnet18" / "run.json").read_text())
    assert rec["freeze"]["unfreeze"] == "layer4" and rec["freeze"]["head_epochs"] == 1
    assert rec["optimizer"]["name"] == "Adam" and rec["optimizer"]["backbone_lr_scale"] == 0.1
    assert rec["loss"]["name"] == "class-weighted binary cross-entropy" and "random initial" in rec["freeze"]["note"]
    cnn3 = json.loads((out / "cnn3" / "run.json").read_text())
    assert cnn3["config"]["epochs"] == 1 and cnn3["optimizer"]["schedule"] == "constant (no warm-up)"
