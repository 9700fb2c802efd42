"""Shared fixtures: a private cache for the synthetic set, tiny seeded data sets, small threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("CXR_EDGE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
KERMANY = SHARED_DATA / "kermany-cxr-224"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def _synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep the synthetic set of tests out of the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("cxr-cache")
    old = os.environ.get("CXR_EDGE_CACHE")
    os.environ["CXR_EDGE_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("CXR_EDGE_CACHE", None)
    else:
        os.environ["CXR_EDGE_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_synthetic(_synthetic_cache: Path) -> Path:
    """A 60-image synthetic set at 64 px (manifest.csv inside)."""
    from core.synthetic import SyntheticSpec, ensure_synthetic

    return ensure_synthetic(SyntheticSpec(n_images=60, size=64, seed=3), progress=False)


@pytest.fixture(scope="session")
def tiny_split(tiny_synthetic: Path):
    from core.data import read_source
    from core.split import make_split

    return make_split(read_source(tiny_synthetic / "manifest.csv"), seed=1)


def kermany_or_skip() -> Path:
    if not (KERMANY / "train").is_dir():
        pytest.skip(f"real Kermany images not found at {KERMANY} (set CXR_EDGE_SHARED_DATA to ../shared/data)")
    return KERMANY
