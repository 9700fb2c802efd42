"""Resumable training state, stored without pickle: tensors in safetensors, the rest in JSON."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core import io
from core.runs import RunError

# Fields that may differ when resuming (they do not change what is trained).
_RESUMABLE_DIFFS = {"device", "threads", "epochs", "patience"}


class Checkpoint:
    """``run_dir/checkpoint/``: last model and optimizer state after every epoch, and the best model."""

    def __init__(self, folder: Path, write: bool = True) -> None:
        self.folder, self.write = Path(folder), write

    def exists(self) -> bool:
        return (self.folder / "state.json").is_file()

    def mark_last_best(self) -> None:
        """Make ``best.safetensors`` the weights just saved by :meth:`save` without writing them again.

        ``save`` replaces ``last.safetensors`` by rename (a new file each time), so a hard link keeps
        these weights as the best after later epochs overwrite ``last``. Where the file system has no
        hard links, the weights are copied.
        """
        if not self.write:
            return
        last, best = self.folder / "last.safetensors", self.folder / "best.safetensors"
        with io.atomic_path(best) as tmp:
            tmp.unlink()
            try:
                os.link(last, tmp)
            except OSError:
                shutil.copyfile(last, tmp)

    def restore_best(self, model: nn.Module) -> None:
        path = self.folder / "best.safetensors"
        if path.is_file():
            model.load_state_dict(io.load_tensors(path))

    def save(self, model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any], config: dict) -> None:
        if not self.write:
            return
        sd = opt.state_dict()
        tensors, scalars = {}, {}
        for idx, st in sd["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"{idx}.{k}"] = v
                else:
                    scalars[f"{idx}.{k}"] = v
        io.save_tensors(self.folder / "last.safetensors", model.state_dict())
        io.save_tensors(self.folder / "optimizer.safetensors", tensors)
        io.write_json(self.folder / "state.json", {"state": state, "config": config,
                                                   "param_groups": sd["param_groups"], "scalars": scalars})

    def load(self, model: nn.Module, opt: torch.optim.Optimizer, config: dict,
             differences: Callable[..., str]) -> dict[str, Any]:
        """Restore model and optimizer; ``differences(saved, now, ignore=...)`` (``TrainConfig.differences``, passed
        in so that this module does not import the trainer that imports it) must find none but resumable ones."""
        saved = json.loads((self.folder / "state.json").read_text())
        detail = differences(saved["config"], config, ignore=_RESUMABLE_DIFFS)
        if detail:
            raise RunError(f"cannot resume {self.folder.parent}: its settings differ ({detail}); "
                           f"use the same settings, or --force to start over")
        model.load_state_dict(io.load_tensors(self.folder / "last.safetensors"))
        tensors = io.load_tensors(self.folder / "optimizer.safetensors")
        state: dict[int, dict[str, Any]] = {}
        for key, v in {**tensors, **saved["scalars"]}.items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
        return saved["state"]

    def clear(self) -> None:
        if self.write and self.folder.exists():
            shutil.rmtree(self.folder)
