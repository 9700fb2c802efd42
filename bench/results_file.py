"""``<out>/results.json``, the benchmark's results document: refuse to replace it by accident, read it back
checked, write it atomically (the CLI rewrites it after every backbone, so an interrupted benchmark keeps
what it measured)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core import io

RESULTS = "results.json"
RESULTS_FORMAT = "cxr-edge-bench/1"


def check_out(out_dir: str | Path, force: bool) -> None:
    """Refuse to replace earlier results without ``force`` (before any work is done)."""
    path = Path(out_dir) / RESULTS
    if path.exists() and not force:
        raise ValueError(f"{path} already exists (earlier results); pass --force to replace them, or choose "
                              f"another --out (e.g. results/<name>-2)")


def read_results(path: str | Path) -> dict[str, Any]:
    """results.json of a results folder (or the file itself), checked."""
    path = Path(path)
    folder = path.parent if path.suffix == ".json" else path
    if path.is_dir():
        path = path / RESULTS
    if not path.is_file():
        raise FileNotFoundError(f"{folder / RESULTS} does not exist: no benchmark was written there; make one with "
                                f"`cxr-edge bench ARTIFACTS --out {folder}` (ARTIFACTS: the folder `cxr-edge export` "
                                f"wrote), or give the folder of an earlier benchmark")
    return io.read_format_json(path, RESULTS_FORMAT, f"write it again with `cxr-edge bench ARTIFACTS --out {folder} "
                                                     "--force`")


def write_results(out_dir: str | Path, doc: dict[str, Any]) -> Path:
    return io.write_json(Path(out_dir) / RESULTS, io.json_safe(doc))
