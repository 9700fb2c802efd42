"""What `cxr-edge bench` measures and how (:class:`BenchConfig`, written into results.json as ``settings``),
and the same in words for the report (:func:`method_text`). Split from :mod:`bench.runner`, which imports
both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bench import latency
from bench.backends import DEVICES

# "all": every artifact of every backbone is loaded, then all are timed in turns, so rows of different backbones
# share the same minutes of the machine; "backbone": each backbone's artifacts are timed in turns and unloaded
# before the next backbone (less memory, but the machine's drift between backbones goes into their comparison).
INTERLEAVE = ("all", "backbone")


@dataclass(frozen=True)
class BenchConfig:
    """Everything that decides what is measured and how; written into results.json as ``settings``."""

    device: str = "cpu"
    latency: latency.LatencyConfig = field(default_factory=latency.LatencyConfig)
    threads: int | None = None  # None: torch's default (all cores); applied to torch, onnxruntime, OpenVINO
    compile: bool = False  # add torch.compile rows
    n_boot: int = 1000  # bootstrap replicates of the CIs
    seed: int = 0
    accuracy_batch: int = 32
    backbones: tuple[str, ...] = ()  # only these (empty: all in the manifest)
    runs_dir: str | None = None  # find runs as <runs_dir>/<backbone> instead of the manifest's source_run
    interleave: str = "all"  # timing turns across all artifacts ("all") or within each backbone ("backbone")
    skip_bad: bool = False  # skip test images found unreadable now (those a run recorded are always left out)
    # GB of artifacts loaded at once for the timing (bench.windows); None: a share of this machine's memory
    max_memory_gb: float | None = None
    # with several windows, how many times a round visits every window (each for its share of the blocks)
    window_passes: int = 1

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r} is not known; choose one of {', '.join(DEVICES)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads} must be >= 1 (or leave it unset for all cores)")
        if self.interleave not in INTERLEAVE:
            raise ValueError(f"interleave={self.interleave!r} must be one of {', '.join(INTERLEAVE)}")
        if self.max_memory_gb is not None and not self.max_memory_gb > 0:
            raise ValueError(f"max_memory_gb={self.max_memory_gb} must be > 0 GB (e.g. 2)")
        if self.window_passes < 1:
            raise ValueError(f"window_passes={self.window_passes} must be >= 1 (e.g. 4)")
        if self.n_boot < 1:
            raise ValueError(f"n_boot={self.n_boot} must be >= 1 (1000 is usual)")
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("--device cuda asked for, but torch sees no CUDA GPU on this machine; "
                                 "use --device cpu")

    @property
    def memory_limit_gb(self) -> float:
        """``max_memory_gb``, or the default for this machine (:func:`bench.windows.default_max_memory_gb`)."""
        from bench.windows import default_max_memory_gb

        return self.max_memory_gb if self.max_memory_gb is not None else default_max_memory_gb()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["max_memory_gb"] = self.memory_limit_gb
        d["latency"] = self.latency.to_dict()
        d["backbones"] = list(self.backbones)
        return d


def method_text(config: BenchConfig, threads: int) -> str:
    lat = config.latency
    return (f"Accuracy on the test side of each run's saved split at the run's validation threshold; bootstrap "
            f"95% CIs ({config.n_boot} stratified replicates, seed {config.seed}; patients resampled where the test "
            f"side's patient ids are known, images otherwise: each row's ci_method); agreement and ROC-AUC change "
            f"against PyTorch eager FP32 of the same run. Latency: predict() on host float32 batches "
            f"{', '.join(map(str, lat.batches))}, {lat.warmup} warm-up calls per batch, then {lat.rounds} rounds "
            f"one after another, each >= {lat.min_iters} calls or {lat.slot_s:.2f} s per batch, cut into {lat.blocks} "
            f"blocks that take turns across "
            + ("all artifacts of all backbones" if config.interleave == "all" else "the artifacts of a backbone")
            + f" (reloaded a window at a time, at most {config.memory_limit_gb:g} GB of them loaded at once, "
            f"every round visiting every window up to {config.window_passes} times)"
            + (" and the speed probe (" + latency.PROBE_WORKLOAD.split(", median")[0] + ")"
               if config.device == "cpu" else "")
            + " "
            f"(after block j of a round it has had (j+1)/{lat.blocks} of its seconds and calls), timed with "
            f"time.perf_counter_ns{' with torch.cuda.synchronize()' if config.device == 'cuda' else ''}; p50/p90/p99 "
            f"over all rounds; spread (the ± band) = half-width of the 95% interval for a repeat's p50 from the round "
            f"medians, t(0.975, k-1) * sd * sqrt(2/k) / mean over k rounds"
            + ("; rel = p50 / the probe p50 timed in the same turns, its band from the round-by-round ratios"
               if config.device == "cpu" else "") +
            f". Threads: {threads} (torch, onnxruntime intra-op, OpenVINO INFERENCE_NUM_THREADS).")
