"""The trainer under torchrun: two CPU processes (gloo), one run folder written by rank 0."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_torchrun_two_processes_train_one_run(tmp_path, tiny_synthetic):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cli.main", "train", "mobilenetv3_large_100", "--data", str(tiny_synthetic / "manifest.csv"),
           "--out", str(tmp_path / "runs"), "--size", "32", "--epochs", "1", "--batch-size", "4", "--threads", "1",
           "--no-progress"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    rec = json.loads((tmp_path / "runs" / "mobilenetv3_large_100" / "run.json").read_text())
    assert rec["world_size"] == 2
    n_train = rec["split"]["counts"]["train"]["images"]
    steps_per_rank = (n_train // 2) // 4  # each rank sees its half of the epoch, in batches of 4
    assert rec["history"][0]["steps"] == steps_per_rank
    assert rec["history"][0]["images"] == 2 * 4 * steps_per_rank
    assert not (tmp_path / "runs" / "mobilenetv3_large_100" / "checkpoint").exists()
