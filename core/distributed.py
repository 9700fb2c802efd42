"""The ``torchrun`` process group as training sees it: this process's rank and the world size.

Outside ``torchrun`` (the usual case) there is one process, rank 0, and every call is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> "Dist":
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return cls(torch.distributed.get_rank(), torch.distributed.get_world_size())
        return cls()

    @classmethod
    def init(cls) -> "Dist":
        """Join the process group that ``torchrun`` describes in the environment (no-op otherwise)."""
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend=backend)
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return cls.current()

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()
