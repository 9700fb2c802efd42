"""INT8 calibration images and unreadable files: named without --skip-bad, left out with it or when recorded."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from core.data import DataError
from core.preprocess import Preprocess
from core.split import Split
from export.base import calibration_set


@pytest.fixture
def split_with_a_bad_train_image(tiny_split, tmp_path) -> tuple[Split, str]:
    bad = tmp_path / "person9999_virus_1.jpeg"
    bad.write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    entries = list(tiny_split.entries)
    i = next(i for i, e in enumerate(entries) if e.side == "train")
    entries[i] = replace(entries[i], path=str(bad))
    return Split(**{**tiny_split.__dict__, "entries": entries}), str(bad)


def test_calibration_names_a_bad_image_and_leaves_out_skipped_or_recorded_ones(split_with_a_bad_train_image):
    split, bad = split_with_a_bad_train_image
    pre = Preprocess(size=32)
    n_train = len(split.samples("train"))
    with pytest.raises(DataError, match="person9999_virus_1.jpeg.*--skip-bad"):
        calibration_set(split, pre, n=n_train)
    split.skip_bad = True
    assert len(calibration_set(split, pre, n=n_train)) == n_train - 1
    split.skip_bad, split.excluded = False, {bad: "cannot decode"}  # recorded by the run: never drawn
    assert len(calibration_set(split, pre, n=n_train)) == n_train - 1 and split.left_out("train") == 1
