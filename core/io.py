"""Atomic file writing, safetensors helpers and the environment record every output carries."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

_VERSIONED = ("torch", "torchvision", "timm", "numpy", "scikit-learn", "onnx", "onnxruntime", "openvino", "nncf")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    Nothing already at ``path`` is lost if the writer fails half-way.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if Path(tmp).is_file():  # mkstemp makes 0600 files; give the usual umask-based mode
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_atomic(path, lambda p: p.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n"))


def read_format_json(path: str | Path, fmt: str, fix: str, error: type[Exception] = ValueError) -> dict[str, Any]:
    """The JSON object in ``path``, checked to carry ``"format": fmt``; otherwise ``error`` naming the file and
    ``fix`` (what the user should do). The caller checks that the file exists (each has its own answer)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path} is not valid JSON ({err}); {fix}") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise error(f"{path} is not a {fmt} file; {fix}")
    return doc


def portable_path(path: str | Path, folder: str | Path) -> str:
    """``path`` as a record kept in ``folder`` names it: relative to ``folder`` (POSIX separators), so that the
    folder and the files it names can be moved or copied together. Read it back with :func:`recorded_path`."""
    try:
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(folder))).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return Path(os.path.abspath(path)).as_posix()


def recorded_path(path: str | Path, folder: str | Path) -> Path:
    """A path read from a record kept in ``folder``: relative to ``folder`` (absolute ones, as older records
    wrote them, as they are)."""
    p = Path(path)
    return p if p.is_absolute() else Path(os.path.normpath(Path(folder) / p))


def append_jsonl(path: str | Path, obj: Any) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj, default=_jsonable) + "\n")
        f.flush()


def json_safe(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> null (strict JSON readers reject them), numpy scalars -> Python,
    tuples -> lists, paths -> strings."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def save_tensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return write_atomic(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def load_tensors(path: str | Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Python's and the installed versions of the core packages, then of ``extra`` ones (absent ones left out)."""
    out = {"python": platform.python_version()}
    for name in (*_VERSIONED, *extra):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def environment() -> dict[str, Any]:
    """Machine and library record attached to every run, artifact and result."""
    import torch

    env: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": versions(),
    }
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
