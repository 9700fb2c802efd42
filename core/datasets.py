"""From a data-set argument to decoded, split images in memory.

The one entry point every stage uses: ``resolve_source`` turns "synthetic" or a path into a
:class:`~core.data.DataSource`, ``split_for`` makes (or checks) the saved patient-wise split, and
``load_sides`` decodes each side once into uint8 arrays, so CPU epochs are not spent decoding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from core.data import DataError, DataSource, load_images, read_source, validate_images
from core.preprocess import Preprocess
from core.split import Split, make_split
from core.synthetic import SyntheticSpec, ensure_synthetic

SYNTHETIC = "synthetic"


def resolve_source(data: str | None, *, skip_bad: bool = False, synthetic: SyntheticSpec | None = None,
                   progress: bool = True) -> DataSource:
    """``None``/"synthetic" -> the built-in synthetic set (generated on first use); else a folder or CSV.

    With ``skip_bad`` every image is decoded once and the unreadable ones move from ``samples`` to
    ``skipped`` (with their reasons), so a split made from the source leaves them out of every side and
    records them.
    """
    if data is None or data == SYNTHETIC:
        spec = synthetic or SyntheticSpec()
        root = ensure_synthetic(spec, progress=progress)
        source = read_source(root / "manifest.csv", skip_bad=skip_bad)
        source.synthetic = asdict(spec)
    else:
        source = read_source(data, skip_bad=skip_bad)
    if not skip_bad:
        return source
    good, bad = validate_images(source.samples, progress=progress)
    return replace(source, samples=good, skipped=source.skipped + bad)


def split_for(source: DataSource, *, method: str = "patient", seed: int = 42,
              ratios: tuple[float, float, float] = (0.7, 0.15, 0.15), split_file: str | Path | None = None,
              save_to: str | Path | None = None) -> Split:
    """Load ``split_file`` if given, else make the split; never silently replace a different saved one."""
    if split_file is not None:
        return Split.load(split_file)
    split = make_split(source, ratios=ratios, seed=seed, method=method)
    if save_to is not None:
        save_to = Path(save_to)
        if save_to.exists():
            old = Split.load(save_to)
            if old.hash != split.hash:
                raise DataError(
                    f"{save_to} holds a different split (hash {old.hash}, new {split.hash}): its data, seed or "
                    f"ratios differ. Use another --out folder, pass --split-file {save_to} to reuse it, or delete it."
                )
        else:
            split.save(save_to)
    return split


@dataclass
class SideImages:
    """One side of the split, decoded: uint8 ``N x H x W x C`` images, 0/1 labels and each image's patient (for
    intervals that resample patients)."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    patients: list[str] = field(default_factory=list)


def load_sides(split: Split, preprocess: Preprocess, *, sides=("train", "val", "test"), skip_bad: bool | None = None,
               progress: bool = True) -> tuple[dict[str, SideImages], list[tuple[str, str]]]:
    """Decode ``sides`` of ``split`` (files its run recorded as unreadable left out, see :meth:`Split.samples`).

    Returns the sides and the ``(path, reason)`` of files found unreadable now, which are skipped when
    ``skip_bad`` (default: the split's own ``skip_bad``, set from the command's --skip-bad) and an error otherwise.
    """
    skip_bad = split.skip_bad if skip_bad is None else skip_bad
    out: dict[str, SideImages] = {}
    skipped: list[tuple[str, str]] = []
    for side in sides:
        images, kept, bad = load_images(split.samples(side), preprocess, skip_bad=skip_bad, progress=progress)
        skipped += bad
        out[side] = SideImages(side, images, np.asarray([s.label for s in kept], np.int64), [s.path for s in kept],
                               [s.patient for s in kept])
    return out, skipped

