"""Fixtures the CLI tests share with the bench tests (a trained run and its exported artifacts)."""

from tests.bench.conftest import bench_run, clean_artifacts  # noqa: F401  (fixtures, registered by import)
