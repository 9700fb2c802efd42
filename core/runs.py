"""A run folder: what training leaves behind, and the one way every later stage reads it back.

``runs/<backbone>/`` holds ``model.safetensors`` (weights), ``run.json`` (everything needed to
rebuild the model and its preprocessing: backbone, size, threshold chosen on validation, split hash,
versions, timings), ``split.json`` (a copy of the split it was trained on) and ``log.jsonl``.

run.json records the sha256 of model.safetensors, and every load checks it: the run's hash (sha256 of
run.json, which export and bench records name) therefore covers the weights, and weights copied in from
another run are an error naming both hashes, never a silently different model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from core import io, registry
from core.preprocess import Preprocess
from core.split import Split

RUN_FORMAT = "cxr-edge-run/1"
WEIGHTS = "model.safetensors"


class RunError(RuntimeError):
    """A run folder that is missing, incomplete or inconsistent; the message says what to do."""


def write_run(run_dir: Path, model: nn.Module, record: dict[str, Any], split: Split) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    split.save(run_dir / "split.json")
    meta = {"backbone": record["backbone"], "format": RUN_FORMAT, "split_hash": split.hash,
            "size": str(record["preprocess"]["size"])}
    io.save_tensors(run_dir / WEIGHTS, model.state_dict(), metadata=meta)
    record = {**record, "weights": {"file": WEIGHTS, "sha256": weights_sha256(run_dir / WEIGHTS)}}
    io.write_json(run_dir / "run.json", record)  # last: its presence marks a complete run


def weights_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _shapes_of(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes and the metadata of a safetensors file, read from its header alone."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, dict(f.metadata() or {})


def looks_like(path: str | Path, size: int) -> str | None:
    """The registry backbone whose parameter names and shapes a weights file matches, if any (built on the
    meta device: no memory, no time)."""
    import torch

    try:
        shapes, meta = _shapes_of(Path(path))
    except Exception:  # not a safetensors file at all: nothing to tell
        return None
    for name in registry.KNOWN:
        try:
            with torch.device("meta"):
                model = registry.get(name).build(size)
        except Exception:  # e.g. a ViT at a size its patches do not divide
            continue
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if expected.keys() == shapes.keys() and all(expected[k] == shapes[k] for k in expected):
            return name
    return meta.get("backbone")


def is_complete(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "run.json").is_file() and (Path(run_dir) / "model.safetensors").is_file()


@dataclass
class Run:
    path: Path
    record: dict[str, Any]
    skip_bad: bool = False  # the command's --skip-bad: skip images found unreadable now (recorded ones always are)

    @property
    def backbone(self) -> registry.Backbone:
        return registry.get(self.record["backbone"])

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.record["preprocess"])

    @property
    def threshold(self) -> float:
        return float(self.record["threshold"]["threshold"])

    @property
    def name(self) -> str:
        return self.path.name

    def split(self) -> Split:
        """The run's saved split, seen through the run: the files training recorded as unreadable are left out
        of :meth:`Split.samples`, and images found unreadable now are skipped when ``skip_bad``."""
        split = Split.load(self.path / "split.json")
        split.excluded = self.recorded_bad()
        split.skip_bad = self.skip_bad
        return split

    def recorded_bad(self) -> dict[str, str]:
        """path -> reason of every file this run recorded as unreadable (``run.json`` ``data.skipped``)."""
        listed = (self.record.get("data") or {}).get("skipped") or []
        return {str(item[0]): str(item[1]) for item in listed if isinstance(item, (list, tuple)) and len(item) == 2}

    def left_out_note(self, sides: tuple[str, ...]) -> str | None:
        """One line saying how many images of ``sides`` the run's records leave out, or None when none."""
        split = self.split()
        counts = {side: split.left_out(side) for side in sides}
        if not any(counts.values()):
            return None
        where = ", ".join(f"{n} of the {side} side" for side, n in counts.items() if n)
        return (f"{self.name}: {sum(counts.values())} image(s) left out ({where}): recorded as unreadable in "
                f"{self.path / 'run.json'}")

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS

    def check_weights(self) -> str | None:
        """The sha256 of model.safetensors, checked against the one run.json recorded at training."""
        expected = (self.record.get("weights") or {}).get("sha256")
        if expected is None:
            return None  # a run from before weights were recorded: nothing to compare
        actual = weights_sha256(self.weights_path)
        if actual != expected:
            raise RunError(
                f"{self.weights_path} is not the file this run trained: sha256 {actual[:16]}… on disk, "
                f"{expected[:16]}… in {self.path / 'run.json'}. Put the run's own weights back, or retrain the run"
            )
        return actual

    def _check_size(self) -> None:
        """The weights' recorded input size against the run's: a size-bound model (cnn3's flatten + dense) fits only
        the size it was trained at."""
        trained = _shapes_of(self.weights_path)[1].get("size")
        size = self.preprocess.size
        if trained is not None and int(trained) != size:
            bound = " (its dense layer fixes the input size)" if self.backbone.size_bound else ""
            raise RunError(f"{self.weights_path} holds {self.record['backbone']} weights trained at {trained} px, but "
                           f"{self.path / 'run.json'} says {size} px{bound}; put the run's own files back, or retrain "
                           f"the run at the size you need")

    def build_model(self) -> nn.Module:
        """The trained model in eval mode on the CPU, its weights checked by hash and against the architecture."""
        self.check_weights()
        self._check_size()
        model = self.backbone.build(self.preprocess.size)
        state = io.load_tensors(self.weights_path)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError:  # shapes differ
            missing, unexpected = ["(shapes differ)"], []
        if missing or unexpected:
            other = looks_like(self.weights_path, self.preprocess.size)
            what = (f"they look like {other} weights" if other and other != self.record["backbone"]
                    else f"missing {missing[:3]}, unexpected {unexpected[:3]}")
            raise RunError(
                f"{self.weights_path} does not fit {self.record['backbone']} at size {self.preprocess.size}: "
                f"{what}; put the run's own weights back, or retrain the run"
            )
        return model.eval()


def load_run(path: str | Path, skip_bad: bool = False) -> Run:
    """The run in folder ``path``; ``skip_bad``: images found unreadable later are skipped, not an error."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"run folder {str(path)!r} does not exist; train one with `cxr-edge train` first")
    if not is_complete(path):
        hint = (" (an interrupted run: resume it with `cxr-edge train ... --resume`)"
                if (path / "checkpoint").is_dir() else "")
        raise RunError(f"{path} is not a complete run: run.json or model.safetensors is missing{hint}")
    try:
        record = json.loads((path / "run.json").read_text())
    except json.JSONDecodeError as err:
        raise RunError(f"{path / 'run.json'} is not valid JSON ({err}); retrain the run") from err
    if record.get("format") != RUN_FORMAT:
        raise RunError(f"{path / 'run.json'} has format {record.get('format')!r}, expected {RUN_FORMAT!r}")
    return Run(path, record, skip_bad)


def find_runs(paths: list[str | Path], skip_bad: bool = False) -> list[Run]:
    """Each path is a run folder, or a folder of run folders (e.g. runs/); ``skip_bad`` as in :func:`load_run`."""
    runs: list[Run] = []
    for p in map(Path, paths):
        if p.is_dir() and not is_complete(p) and not (p / "checkpoint").is_dir():
            children = sorted(c for c in p.iterdir() if c.is_dir() and is_complete(c))
            if children:
                runs += [load_run(c, skip_bad) for c in children]
                continue
        runs.append(load_run(p, skip_bad))
    return runs


def remove_run(run_dir: Path) -> None:
    """Delete a run folder's files (used only on an explicit --force)."""
    if run_dir.exists():
        shutil.rmtree(run_dir)

