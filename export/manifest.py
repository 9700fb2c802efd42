"""``<out>/manifest.json``: one record per artifact, merged and rewritten atomically after every artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core import io
from export.base import FORMATS, PRECISIONS, ExportError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "cxr-edge-artifacts/1"


def read_manifest(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return []
    data = io.read_format_json(path, MANIFEST_FORMAT, f"move it away and export again (`cxr-edge export RUNS --out "
                               f"{Path(out_dir)}`)", ExportError)
    return list(data.get("artifacts", []))


def merge_records(old: list[dict[str, Any]], new: list[dict[str, Any]], out_dir: Path) -> list[dict[str, Any]]:
    """Replace records of the same (backbone, format, precision); keep the others.

    A failed or skipped attempt does not replace a good artifact that is still on disk (e.g. a TensorRT
    engine built on a GPU machine, re-exported on a CPU one): that record stays and notes the attempt.
    """
    merged = {_key(r): r for r in old}
    for rec in new:
        prev = merged.get(_key(rec))
        if (rec["status"] != "ok" and prev and prev.get("status") == "ok" and prev.get("path")
                and (Path(out_dir) / prev["path"]).exists()):
            note = {k: rec.get(k) for k in ("status", "error", "reason", "created", "run_hash") if rec.get(k)}
            merged[_key(rec)] = {**prev, "last_attempt": note}
        else:
            merged[_key(rec)] = rec
    order = {name: i for i, name in enumerate(FORMATS)}
    return sorted(merged.values(), key=lambda r: (r["backbone"], order.get(r["format"], 99),
                                                  PRECISIONS.index(r["precision"]) if r["precision"] in PRECISIONS
                                                  else 99))


def write_manifest(out_dir: str | Path, new: list[dict[str, Any]]) -> Path:
    out_dir = Path(out_dir)
    records = merge_records(read_manifest(out_dir), new, out_dir)
    return io.write_json(out_dir / MANIFEST, {"format": MANIFEST_FORMAT, "updated": io.now(), "artifacts": records})


def _key(rec: dict[str, Any]) -> tuple[str, str, str]:
    return rec["backbone"], rec["format"], rec["precision"]


def verify_sha256(path: str | Path, expected: str | None) -> str:
    """The sha256 of the artifact at ``path`` (its side files included), checked against its manifest record.

    Raises :class:`ExportError` naming the file and both hashes when they differ: the file was changed, replaced
    or damaged after export, and a figure measured on it would not describe the exported model.
    """
    from export.base import file_sha256

    actual = file_sha256(Path(path))
    if expected and actual != expected:
        raise ExportError(
            f"{path} does not match its manifest record: sha256 {actual} on disk, {expected} recorded at "
            f"export; the file was changed after export. Export it again (`cxr-edge export`)"
        )
    return actual
