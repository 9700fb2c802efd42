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
    """``out_dir/results.json``, its paths relative to ``out_dir`` (:func:`portable`)."""
    return io.write_json(Path(out_dir) / RESULTS, io.json_safe(portable(doc, out_dir)))


def _path_fields(doc: dict[str, Any]):
    """(container, key) of every path a results document holds: the artifacts folder, each backbone's run folder,
    and the PyTorch rows' weights files (artifact rows name their file relative to the artifacts folder)."""
    yield doc, "artifacts"
    for info in doc.get("backbones", {}).values():
        yield info, "run"
    for row in doc.get("rows", []):
        if row.get("format") == "pytorch":
            yield row, "path"


def portable(doc: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """A copy of ``doc`` whose absolute paths are made relative to ``out_dir``, the folder it is written to, so that
    results, artifacts and runs can move together; relative ones are taken to be relative to it already."""
    import copy

    doc = copy.deepcopy(doc)
    for holder, key in _path_fields(doc):
        value = holder.get(key)
        if value and Path(value).is_absolute():
            holder[key] = io.portable_path(value, out_dir)
    return doc


def relocate(doc: dict[str, Any], src_dir: str | Path, dst_dir: str | Path) -> dict[str, Any]:
    """A copy of a results document read from ``src_dir`` whose paths are relative to ``dst_dir`` instead."""
    return portable(resolved(doc, src_dir), dst_dir)


def resolved(doc: dict[str, Any], results_dir: str | Path) -> dict[str, Any]:
    """A copy of a results document read from ``results_dir`` with its paths made absolute (read-time use)."""
    import copy
    import os

    doc = copy.deepcopy(doc)
    for holder, key in _path_fields(doc):
        if holder.get(key):
            holder[key] = os.path.abspath(io.recorded_path(holder[key], results_dir))
    return doc
