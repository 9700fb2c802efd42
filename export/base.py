"""What every export target shares: the table of formats, errors, the predictor interface,
the quantization config, the calibration set and the parity check.

Each target module (``export.onnx``, ``export.openvino``, ``export.tensorrt``, ``mobile.*``) has the
same small surface::

    build(ctx: ExportContext, precision: str, dest: Path) -> dict   # writes dest, returns facts
    load(path: Path, **options) -> Predictor                          # .predict(float NCHW) -> logits

A predictor takes a float32 ``N x C x H x W`` batch already normalised with the run's
:class:`~core.preprocess.Preprocess` and returns ``N`` logits (float32). The benchmark measures every
format through this one interface.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

PRECISIONS = ("fp32", "fp16", "int8")


class ExportError(RuntimeError):
    """An export that could not be built; the message says why and what to try."""


class BackendUnavailable(ExportError):
    """The runtime or converter for a format is not installed, or needs hardware that is absent."""


class ParityError(ExportError):
    """The artifact's outputs differ from PyTorch's beyond tolerance (numbers in the message)."""


class PrecisionError(ExportError):
    """The artifact built is not of the precision asked for (e.g. no INT8 nodes after quantization)."""


MOBILE_NOTE = ("mobile format: latency measured on this host's CPU with the format's desktop runtime stands in for "
               "a phone's, whose CPU, threads and delegates (GPU, NPU, Neural Engine) differ")


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str  # file (or folder) name suffix of the artifact
    precisions: tuple[str, ...]
    module: str  # where build()/load() live
    requires: tuple[str, ...]  # importable module names
    extra: str | None  # pip extra that installs them
    needs_gpu: bool = False
    description: str = ""
    note: str = ""  # copied into every record of this format (e.g. what its latency stands for)
    setup: str | None = None  # the `just` recipe that installs the extra, named in the install hint

    def missing(self) -> str | None:
        """None when usable here, else the reason (the install hint included)."""
        absent = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if absent:
            hint = f"pip install 'cxr-edge[{self.extra}]'" if self.extra else f"pip install {' '.join(absent)}"
            if self.setup:
                hint += f" (or `just {self.setup}`)"
            return f"{self.name} needs {', '.join(absent)}, which is not installed: {hint}"
        if self.needs_gpu:
            import torch

            if not torch.cuda.is_available():
                return f"{self.name} needs an NVIDIA GPU with CUDA; none is visible on this machine"
        return None


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("onnx", ".onnx", PRECISIONS, "export.onnx", ("onnx", "onnxruntime"), None,
               description="ONNX (dynamo exporter), run with onnxruntime; INT8 = static QDQ"),
        Format("openvino", ".xml", PRECISIONS, "export.openvino", ("openvino", "nncf"), "openvino",
               description="OpenVINO IR; FP16 = compressed weights; INT8 = NNCF post-training quantization"),
        Format("tensorrt", ".engine", PRECISIONS, "export.tensorrt", ("tensorrt",), "tensorrt", needs_gpu=True,
               description="TensorRT engine built from the ONNX file; INT8 from the QDQ ONNX"),
        Format("executorch", ".pte", ("fp32", "int8"), "mobile.executorch", ("executorch", "torchao"), "mobile",
               setup="setup-mobile", note=MOBILE_NOTE,
               description="ExecuTorch program lowered to XNNPACK, batch 1; INT8 = PT2E with XNNPACKQuantizer"),
        Format("litert", ".tflite", ("fp32", "int8"), "mobile.litert", ("litert_torch", "ai_edge_litert"), "mobile",
               setup="setup-mobile", note=MOBILE_NOTE,
               description="LiteRT (TFLite) from litert-torch, batch 1; INT8 = full-integer PT2E (static ranges)"),
        Format("coreml", ".mlpackage", ("fp32", "fp16"), "mobile.coreml", ("coremltools",), "mobile",
               setup="setup-mobile", note=MOBILE_NOTE + "; Core ML runs only on macOS",
               description="Core ML ML program (.mlpackage folder), batch 1; predicts on macOS only, checked "
                           "structurally elsewhere"),
    )
}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"format {name!r} is not known; choose from {', '.join(FORMATS)} or 'all'") from None


def parse_formats(spec: str) -> list[Format]:
    names = list(FORMATS) if spec == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    return [get_format(n) for n in names]


def parse_precisions(spec: str) -> list[str]:
    items = list(PRECISIONS) if spec == "all" else [s.strip().lower() for s in spec.split(",") if s.strip()]
    for p in items:
        if p not in PRECISIONS:
            raise ValueError(f"precision {p!r} is not known; choose from {', '.join(PRECISIONS)} or 'all'")
    return items


class Predictor(Protocol):
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``N x C x H x W`` normalised batch -> ``N`` float32 logits."""


class TorchPredictor:
    """The PyTorch FP32 reference (and the benchmark's eager baseline)."""

    def __init__(self, model, device: str = "cpu") -> None:
        import torch

        self.torch, self.device = torch, torch.device(device)
        self.model = model.to(self.device).eval()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            x = self.torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            return self.model(x).float().flatten().cpu().numpy()


CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class QuantConfig:
    """One validated description of post-training INT8 quantization, translated to each backend's
    arguments only inside that backend's module.

    Calibration images always come from the **training** side of the run's split.
    """

    calibration: str = "minmax"  # minmax | entropy | percentile (onnxruntime); NNCF uses its own presets
    n_calibration: int = 300
    per_channel: bool = True
    symmetric_activations: bool = False
    percentile: float = 99.999
    seed: int = 0
    accuracy_aware: bool = False  # OpenVINO: nncf.quantize_with_accuracy_control
    max_auc_drop: float = 0.005  # budget of the accuracy-aware path (validation ROC-AUC)
    ignored: tuple[str, ...] = ()  # node-name patterns kept in higher precision
    target: str = "generic"

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATION_METHODS:
            raise ValueError(f"calibration {self.calibration!r} is not known; choose from "
                             f"{', '.join(CALIBRATION_METHODS)}")
        if self.n_calibration < 1:
            raise ValueError(f"n_calibration={self.n_calibration} must be >= 1 (default 300)")
        if not 0 < self.max_auc_drop < 1:
            raise ValueError(f"max_auc_drop={self.max_auc_drop} must lie in (0, 1), e.g. 0.005")
        if not 90 <= self.percentile < 100:
            raise ValueError(f"percentile={self.percentile} must lie in [90, 100), e.g. 99.999")
        if self.accuracy_aware and self.target not in ("openvino", "generic"):
            raise ValueError("accuracy-aware quantization exists only for OpenVINO (nncf); drop --accuracy-aware "
                             f"or export --formats openvino (target was {self.target!r})")

    @classmethod
    def preset(cls, target: str, **overrides: Any) -> "QuantConfig":
        """Defaults per target: QDQ per-channel for onnxruntime with Percentile calibration (MinMax failed
        EfficientNet-B0's parity on the synthetic runs, max |dp| 0.23, and Percentile was as good or better on
        the other six), entropy with symmetric activations for TensorRT, MinMax ranges for OpenVINO's NNCF."""
        base: dict[str, Any] = {"target": target}
        if target == "onnx":
            base.update(calibration="percentile")
        if target == "tensorrt":
            base.update(symmetric_activations=True, calibration="entropy")
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ignored"] = list(self.ignored)
        return d


# One operation under its ONNX and its OpenVINO name, so that one ``--keep-float type:OP`` serves both targets
# (``type:Multiply`` keeps ONNX's Mul nodes in float, ``type:Mul`` OpenVINO's Multiply).
OP_ALIASES: dict[str, str] = {"Mul": "Multiply", "Sub": "Subtract", "Div": "Divide", "Pow": "Power",
                              "Conv": "Convolution", "HardSigmoid": "HSigmoid", "HardSwish": "HSwish"}


@dataclass(frozen=True)
class KeepFloat:
    """``--keep-float`` patterns: ``type:OP`` names an operation type, anything else globs node names."""

    patterns: tuple[str, ...] = ()

    @property
    def globs(self) -> tuple[str, ...]:
        return tuple(p for p in self.patterns if not p.startswith("type:"))

    def types(self, target: str) -> tuple[str, ...]:
        """Op types named, spelt as ``target`` ("onnx" or "openvino") spells them."""
        names = [p[len("type:"):] for p in self.patterns if p.startswith("type:")]
        if target == "openvino":
            return tuple(dict.fromkeys(OP_ALIASES.get(n, n) for n in names))
        back = {ov: onnx for onnx, ov in OP_ALIASES.items()}
        return tuple(dict.fromkeys(back.get(n, n) for n in names))

    def hits(self, name: str, op_type: str, target: str) -> bool:
        from fnmatch import fnmatchcase

        return op_type in self.types(target) or any(fnmatchcase(name, g) for g in self.globs)

    def unmatched(self, nodes: list[tuple[str, str]], target: str) -> list[str]:
        """Patterns that match none of ``nodes`` (``(name, op_type)`` pairs)."""
        return [p for p in self.patterns if not any(KeepFloat((p,)).hits(n, op, target) for n, op in nodes)]


def keep_float_patterns(quant: QuantConfig, backbone: str) -> tuple[tuple[str, ...], str | None, str]:
    """The patterns kept in float in INT8, where they come from and why: the user's ``--keep-float`` ("user"),
    else the backbone's registry default (``core.registry.Backbone.keep_float``, "<backbone> default"), else none."""
    if quant.ignored:
        return tuple(quant.ignored), "user", "named with --keep-float"
    from core import registry

    known = registry.BACKBONES.get(backbone)
    if known is not None and known.keep_float:
        return known.keep_float, f"{backbone} default", known.keep_float_why
    return (), None, ""


# Parity tolerances per precision, against the PyTorch FP32 model on validation images: the one place they live.
# FP32: every logit within atol + rtol * |PyTorch's logit| (as numpy.allclose). A bound on the absolute difference
# alone failed MobileNet-V3-Large in ONNX and OpenVINO (max |logit difference| 1.68e-4 on logits far from 0, while
# the probabilities agreed within 1.6e-6): float32 rounding grows with the size of the numbers summed.
# FP16/INT8: max |probability difference|, decision agreement and validation ROC-AUC drop.
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"atol": 1e-4, "rtol": 1e-4},
    "fp16": {"max_abs_prob": 0.02, "min_agreement": 0.98, "max_auc_drop": 0.01},
    "int8": {"max_abs_prob": 0.25, "min_agreement": 0.90, "max_auc_drop": 0.03},
}


AT_THRESHOLD = 1e-6  # reference probabilities this close to the threshold count as on it (see parity())


@dataclass
class ExportContext:
    """Everything a target needs for one run: the model, its preprocessing, calibration and
    validation batches (already normalised), the PyTorch reference logits, and the ONNX hub file."""

    run: Any  # core.runs.Run
    model: Any  # torch.nn.Module in eval mode, CPU
    calibration: np.ndarray  # float32 N x C x H x W, training side
    val_inputs: np.ndarray  # float32 N x C x H x W, validation side
    val_labels: np.ndarray
    reference_logits: np.ndarray  # PyTorch FP32 logits on val_inputs
    quant: QuantConfig
    work_dir: Path
    onnx_fp32: Path | None = None  # set once the ONNX FP32 file exists (the hub for other targets)
    facts: dict[str, Any] = field(default_factory=dict)
    left_out: dict[str, Any] = field(default_factory=dict)  # validation images left out as unreadable
    artifact_dir: Path | None = None  # the folder the artifacts go to (metadata name the run relative to it)

    def source_run(self) -> str:
        """The run folder as an artifact's metadata names it: relative to the artifact's folder (its name alone
        when that folder is not known), never an absolute path of this machine."""
        from core import io

        if self.artifact_dir is None:
            return Path(self.run.path).name
        return io.portable_path(self.run.path, self.artifact_dir)


def parity(reference_logits: np.ndarray, logits: np.ndarray, labels: np.ndarray, threshold: float,
           precision: str) -> dict[str, Any]:
    """Compare an artifact's logits with PyTorch's on the same validation images.

    Returns the figures and whether they are inside this precision's tolerance.
    """
    from core.metrics import roc_auc_or_nan

    ref, out = np.asarray(reference_logits, np.float64), np.asarray(logits, np.float64)
    if ref.shape != out.shape:
        raise ParityError(f"artifact returned {out.shape} logits for {ref.shape} inputs")
    if not np.all(np.isfinite(out)):
        raise ParityError(f"artifact returned {int(np.sum(~np.isfinite(out)))} non-finite logits")
    p_ref, p_out = 1 / (1 + np.exp(-ref)), 1 / (1 + np.exp(-out))
    # Youden's threshold is an observed validation score, so the image that defines it sits on it and
    # float rounding alone decides its side: images within AT_THRESHOLD of it are left out of agreement.
    on_cut = np.abs(p_ref - threshold) <= AT_THRESHOLD
    same = ((p_ref >= threshold) == (p_out >= threshold))[~on_cut]
    auc_ref, auc_out = roc_auc_or_nan(labels, p_ref), roc_auc_or_nan(labels, p_out)
    figures = {
        "n": int(len(ref)),
        "max_abs_logit": float(np.max(np.abs(ref - out))),
        "max_abs_prob": float(np.max(np.abs(p_ref - p_out))),
        "agreement": float(np.mean(same)) if same.size else 1.0,
        "at_threshold": int(on_cut.sum()),
        "val_auc_reference": auc_ref,
        "val_auc": auc_out,
        "auc_change": auc_out - auc_ref,
        "tolerance": TOLERANCES[precision],
    }
    tol = TOLERANCES[precision]
    failures = []
    if "atol" in tol:
        figures["logit_ratio"] = logit_ratio(ref, out, tol["atol"], tol["rtol"])
        if figures["logit_ratio"] > 1:
            failures.append(f"logit difference {figures['logit_ratio']:.3g} x its bound atol + rtol * |logit| "
                            f"(atol {tol['atol']:g}, rtol {tol['rtol']:g}; max |logit difference| "
                            f"{figures['max_abs_logit']:.3g})")
    if "max_abs_prob" in tol and figures["max_abs_prob"] > tol["max_abs_prob"]:
        failures.append(f"max |probability difference| {figures['max_abs_prob']:.3g} > {tol['max_abs_prob']:g}")
    if "min_agreement" in tol and figures["agreement"] < tol["min_agreement"]:
        failures.append(f"decision agreement {figures['agreement']:.3f} < {tol['min_agreement']:g}")
    if "max_auc_drop" in tol and -figures["auc_change"] > tol["max_auc_drop"]:
        failures.append(f"val ROC-AUC drop {-figures['auc_change']:.4f} > {tol['max_auc_drop']:g}")
    figures["within_tolerance"] = not failures
    figures["failures"] = failures
    return figures


def logit_ratio(reference_logits: np.ndarray, logits: np.ndarray, atol: float, rtol: float) -> float:
    """The worst |difference| / (atol + rtol * |reference|) over the logits: at most 1 where
    ``numpy.allclose(logits, reference_logits, rtol, atol)`` holds."""
    ref, out = np.asarray(reference_logits, np.float64), np.asarray(logits, np.float64)
    return float(np.max(np.abs(out - ref) / (atol + rtol * np.abs(ref)))) if ref.size else 0.0


def predict_batched(predictor: Predictor, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([np.asarray(predictor.predict(x[i:i + batch_size]), np.float32).reshape(-1)
                           for i in range(0, len(x), batch_size)])


def calibration_set(split, preprocess, n: int, seed: int = 0) -> np.ndarray:
    """``n`` normalised images drawn (seeded) from the **training** side only; never val or test.

    Files the run recorded as unreadable are not drawn; with the split's ``skip_bad`` a file found unreadable
    now is left out (one image fewer), otherwise it is an error naming the file.
    """
    from core.data import load_images

    train = split.samples("train")
    if not train:
        raise ExportError("the run's split has no training images to calibrate on")
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(train), size=min(n, len(train)), replace=False).tolist())
    images, _, _ = load_images([train[i] for i in pick], preprocess, skip_bad=split.skip_bad, progress=False)
    if not len(images):
        raise ExportError("none of the training images drawn for calibration could be read")
    return preprocess.normalize(images)


def artifact_name(backbone: str, fmt: Format, precision: str) -> str:
    return f"{backbone}/{fmt.name}-{precision}{fmt.suffix}"


def file_bytes(path: Path) -> int:
    """Bytes of an artifact, counting its side files (OpenVINO .bin, ONNX external data), or of every file
    of a folder artifact (a Core ML .mlpackage)."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in _folder_files(path))
    total = path.stat().st_size
    for side in (path.with_suffix(".bin"), path.with_name(path.name + ".data")):
        if side.exists() and side != path:
            total += side.stat().st_size
    return total


def artifact_files(path: Path) -> list[Path]:
    """The files of one artifact: the main file first, then its side files (OpenVINO .bin, ONNX external data)."""
    path = Path(path)
    sides = [s for s in (path.with_suffix(".bin"), path.with_name(path.name + ".data")) if s != path and s.exists()]
    return [path, *sides]


def _folder_files(path: Path) -> list[Path]:
    return sorted((f for f in Path(path).rglob("*") if f.is_file()), key=lambda f: f.relative_to(path).as_posix())


def file_sha256(path: Path) -> str:
    """sha256 over an artifact's files in :func:`artifact_files` order (the main file alone when it has none);
    for a folder artifact, over each file's relative path and bytes in path order."""
    import hashlib

    digest = hashlib.sha256()
    if Path(path).is_dir():
        for f in _folder_files(Path(path)):
            digest.update(f.relative_to(path).as_posix().encode() + b"\0")
            digest.update(f.read_bytes())
        return digest.hexdigest()
    for f in artifact_files(path):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def run_hash(run) -> str:
    """sha256 of the run's run.json bytes: names the exact trained model an artifact came from. run.json records
    the weights' sha256, which is checked here first, so the hash covers the weights too."""
    import hashlib

    if hasattr(run, "check_weights"):
        run.check_weights()
    return hashlib.sha256((Path(run.path) / "run.json").read_bytes()).hexdigest()
