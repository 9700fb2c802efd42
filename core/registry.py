"""The one table of backbones: name -> how to build it, its Grad-CAM target layer, its reshape rule.

Everything else looks backbones up here; nothing else lists them. Target layers are dotted paths
resolved with ``model.get_submodule`` (never ``eval``), as in pytorch-grad-cam's recipes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core import baselines
from core.preprocess import Preprocess


class RegistryError(ValueError):
    """A backbone or weights request that cannot be honoured; the message says how to fix it."""


@dataclass(frozen=True)
class Backbone:
    name: str
    timm_id: str | None  # None: built by ``constructor`` (a baseline of this project, not a timm model)
    title: str  # as the paper and tables name it
    cam_layer: str  # dotted path of the Grad-CAM target layer
    family: str  # "cnn" or "vit"
    default_size: int = 224  # the size its ImageNet weights were trained at
    patch_size: int | None = None  # ViT only
    # Multiplier of the shared --lr. Every other setting is identical across backbones, but AdamW at
    # the learning rate that BatchNorm CNNs train well with (4e-3 at batch 16) stalls a ViT-B/16
    # trained from scratch; transformers train at far lower AdamW rates per batch image. Measured on
    # the synthetic set, 64 px, 5 epochs, batch 16, best val ROC-AUC of ViT (avg-pool head) at a peak
    # of 1e-3: 0.79; 5e-4: 0.895; 2.5e-4: 0.941 (the CNNs: 0.94-0.997 at 4e-3).
    lr_scale: float = 1.0
    timm_kwargs: tuple[tuple[str, object], ...] = ()  # extra timm.create_model arguments
    # Seconds per training step (batch 16, 128 px, 2 CPU threads; ../shared/ENVIRONMENT.md). Only orders
    # parallel jobs (`--jobs` of train and export), the costliest first; never reported.
    train_cost: float = 1.0
    # Layers kept in float when quantizing to INT8, unless the user names others (--keep-float): ONNX's
    # nodes_to_exclude and NNCF's ignored scope, in export.base.KeepFloat syntax ("type:Mul" means ONNX's Mul and
    # OpenVINO's Multiply). ``keep_float_why`` is copied into every INT8 record that keeps them.
    keep_float: tuple[str, ...] = ()
    keep_float_why: str = ""
    # Builds a model that is not timm's: ``constructor(img_size, num_classes=..., **kwargs)``; the model offers timm's
    # surface (get_classifier, forward_head, num_features, pretrained_cfg, feature_info). See core/baselines.py.
    constructor: Callable[..., nn.Module] | None = None
    group: str = "paper"  # "paper": one of the seven (`all`); "baseline": the seed studies' own models (`baselines`)
    size_bound: bool = False  # a layer (a flatten + dense) fixes the input size to the one it was built for

    def build(
        self,
        size: int,
        *,
        pretrained: bool = False,
        weights: str | Path | None = None,
        num_classes: int = 1,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> nn.Module:
        """Build the timm model with ``num_classes`` logits for ``size x size`` inputs.

        ``pretrained`` loads timm's ImageNet weights from the hub; ``weights`` loads them from a
        local file (safetensors or a timm/PyTorch state dict) instead. The classifier of the file is
        dropped and a fresh one of ``num_classes`` outputs is made, as timm does for fine-tuning.
        A missing source is an error, never a silent fall-back to random weights.
        """
        if self.constructor is not None:
            return self._build_own(size, pretrained=pretrained, weights=weights, num_classes=num_classes,
                                   drop_rate=drop_rate)
        import timm

        kwargs: dict = {"num_classes": num_classes, **dict(self.timm_kwargs)}
        if drop_rate:
            kwargs["drop_rate"] = drop_rate
        if drop_path_rate and self.supports_drop_path:
            kwargs["drop_path_rate"] = drop_path_rate
        if self.family == "vit":
            if size % self.patch_size:
                raise RegistryError(
                    f"{self.name} needs an image size divisible by its patch size {self.patch_size}; "
                    f"got {size}. Use e.g. {max(self.patch_size, size // self.patch_size * self.patch_size)}."
                )
            kwargs["img_size"] = size
        if weights is not None:
            path = Path(weights)
            if not path.is_file():
                raise RegistryError(
                    f"weights file {str(path)!r} does not exist; give the path of a timm "
                    f"{self.timm_id} state dict (.safetensors, .pth or .bin)"
                )
            # timm resolves the file through the pretrained config, which also handles the
            # classifier swap and ViT position-embedding resampling for another input size.
            kwargs["pretrained_cfg_overlay"] = {"file": str(path.resolve()), "hf_hub_id": None, "url": None}
            try:
                model = timm.create_model(self.timm_id, pretrained=True, **kwargs)
            except (RuntimeError, KeyError, ValueError, OSError) as err:
                raise RegistryError(
                    f"could not load {self.name} weights from {str(path)!r}: {err}. The file must be a "
                    f"state dict of timm's {self.timm_id}."
                ) from err
            _check_weights_cover(model, path, self)
            return model
        if pretrained:
            try:
                return timm.create_model(self.timm_id, pretrained=True, **kwargs)
            except Exception as err:  # network errors come in many types from huggingface_hub
                raise RegistryError(
                    f"could not fetch ImageNet weights for {self.timm_id} from timm's hub ({type(err).__name__}: "
                    f"{err}). Without network access, download them elsewhere and train each backbone with "
                    f"`cxr-edge train {self.name} --weights FILE`, or train from scratch without --pretrained."
                ) from err
        return timm.create_model(self.timm_id, pretrained=False, **kwargs)

    def _build_own(self, size: int, *, pretrained: bool, weights: str | Path | None, num_classes: int,
                   drop_rate: float) -> nn.Module:
        """A model of ``constructor``; ``weights`` is a state dict of the same architecture at the same size (e.g.
        another run's model.safetensors), whose classifier is replaced by a fresh one."""
        if pretrained:
            raise RegistryError(f"{self.name} has no ImageNet weights on timm's hub; train it from scratch (drop "
                                f"--pretrained) or pass --weights FILE with a {self.name} state dict")
        kwargs: dict = {"drop_rate": drop_rate} if drop_rate else {}
        model = self.constructor(size, num_classes=num_classes, **kwargs)
        if weights is None:
            return model
        path = Path(weights)
        if not path.is_file():
            raise RegistryError(f"weights file {str(path)!r} does not exist; give the path of a {self.name} "
                                f"state dict (.safetensors)")
        from timm.models import load_state_dict

        try:
            state = load_state_dict(str(path))
        except Exception as err:  # safetensors and torch raise many types for a file that is not theirs
            raise RegistryError(f"could not read {self.name} weights from {str(path)!r}: {err}") from err
        head = model.pretrained_cfg["classifier"]
        body = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
        own = {k: v for k, v in model.state_dict().items() if not k.startswith(f"{head}.")}
        wrong = sorted(k for k in own if k not in body or tuple(body[k].shape) != tuple(own[k].shape))
        if wrong or set(body) - set(own):
            extra = sorted(set(body) - set(own))
            raise RegistryError(
                f"could not load {self.name} weights from {str(path)!r}: {len(wrong)} tensors missing or of another "
                f"shape (e.g. {', '.join(wrong[:3]) or '-'}), {len(extra)} unexpected. The file must be a state dict "
                f"of {self.name} at {size} px" + (" (its dense layer fixes the input size)" if self.size_bound else ""))
        model.load_state_dict(body, strict=False)
        return model

    @property
    def supports_drop_path(self) -> bool:
        """Whether the model of this backbone has stochastic depth (timm's DenseNet and the baselines have none)."""
        return self.timm_id is not None and not self.timm_id.startswith("densenet")

    @property
    def source(self) -> str:
        """Where the architecture comes from, as run records name it: ``timm:<id>`` or ``cxr-edge:<name>``."""
        return f"timm:{self.timm_id}" if self.timm_id else f"cxr-edge:{self.name}"

    def cam_target(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.cam_layer)

    def reshape_transform(self, size: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """For ViT: tokens (N, 1+H*W, C) -> feature map (N, C, H, W), grid computed from ``size``."""
        if self.family != "vit":
            return None
        grid = size // self.patch_size
        return _TokensToGrid(grid)

    def preprocess(self, size: int) -> Preprocess:
        return Preprocess.for_model(size)


def _check_weights_cover(model: nn.Module, path: Path, backbone: Backbone) -> None:
    """timm loads files non-strictly; refuse a file that leaves backbone weights at random init."""
    from timm.models import load_state_dict

    file_keys = set(load_state_dict(str(path)).keys())
    head = model.pretrained_cfg.get("classifier", "")
    missing = [k for k in model.state_dict() if k not in file_keys and not k.startswith(f"{head}.")
               and not k.endswith("num_batches_tracked")]
    if missing:
        raise RegistryError(
            f"could not load {backbone.name} weights from {str(path)!r}: {len(missing)} backbone tensors are "
            f"missing from the file (e.g. {', '.join(missing[:3])}). The file must be a state dict of timm's "
            f"{backbone.timm_id}."
        )


class _TokensToGrid:
    def __init__(self, grid: int) -> None:
        self.grid = grid

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        n_prefix = tokens.shape[1] - self.grid * self.grid
        if n_prefix < 0:
            raise ValueError(f"cannot reshape {tuple(tokens.shape)} tokens to a {self.grid}x{self.grid} grid")
        x = tokens[:, n_prefix:, :].reshape(tokens.shape[0], self.grid, self.grid, tokens.shape[2])
        return x.permute(0, 3, 1, 2)


# Why two backbones keep their Mul ops (squeeze-excite gates, SiLU / hard-swish products) in float in INT8:
# quantizing the inputs of a product of two activations puts both ranges' rounding into it, and the gates'
# ranges are narrow (0..1) beside the features they scale.
_EFFNET_KEEP_FLOAT = ("squeeze-excite gates and SiLU products (Mul) kept in float: quantized, they cost OpenVINO "
                      "INT8 the parity check on a synthetic run (max probability change 0.25, decision agreement "
                      "0.81; in float 0.17 and 0.99)")
_MOBILENETV3_KEEP_FLOAT = ("squeeze-excite gates and hard-swish products (Mul) kept in float: quantized, ONNX INT8 "
                           "moved validation probabilities by up to 0.31 on a synthetic run (agreement 0.59, "
                           "ROC-AUC -0.039); on the default demo run kept in float halved the largest change "
                           "(0.149 -> 0.075)")

BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("resnet18", "resnet18", "ResNet-18", "layer4", "cnn", train_cost=0.73),
        Backbone("resnet50", "resnet50", "ResNet-50", "layer4", "cnn", train_cost=1.6),
        Backbone("densenet121", "densenet121", "DenseNet-121", "features.norm5", "cnn", train_cost=1.3),
        Backbone("efficientnet_b0", "efficientnet_b0", "EfficientNet-B0", "bn2", "cnn", train_cost=0.51,
                 keep_float=("type:Mul",), keep_float_why=_EFFNET_KEEP_FLOAT),
        Backbone("mobilenetv2_100", "mobilenetv2_100", "MobileNet-V2", "bn2", "cnn", train_cost=0.33),
        Backbone("mobilenetv3_large_100", "mobilenetv3_large_100", "MobileNet-V3-Large", "blocks", "cnn",
                 train_cost=0.25, keep_float=("type:Mul",), keep_float_why=_MOBILENETV3_KEEP_FLOAT),
        # Mean of the (final-normed) patch tokens feeds the head rather than the class token: from
        # scratch on a small set the class token's attention learns slowly (val ROC-AUC ~0.8 after 5
        # epochs on the synthetic set). fc_norm=False keeps timm's `norm`, so ImageNet weights load whole.
        Backbone("vit_base_patch16_224", "vit_base_patch16_224", "ViT-B/16", "blocks.11.norm1", "vit", patch_size=16,
                 lr_scale=0.0625, train_cost=4.9, timm_kwargs=(("global_pool", "avg"), ("fc_norm", False))),
        # The seed studies' own small CNNs (core/baselines.py), trained from scratch; not part of `all`. Their
        # train_cost: a quarter of MobileNet-V3-Large's step time, measured side by side on a loaded 2-core machine.
        Backbone("cnn3", None, "3-layer CNN", "features.2", "cnn", train_cost=0.06, constructor=baselines.cnn3,
                 group="baseline", size_bound=True),
        Backbone("gapcnn", None, "GAP CNN", "features.3", "cnn", train_cost=0.06, constructor=baselines.gapcnn,
                 group="baseline"),
    )
}
NAMES: tuple[str, ...] = tuple(n for n, b in BACKBONES.items() if b.group == "paper")  # `all`: the paper's seven
BASELINES: tuple[str, ...] = tuple(n for n, b in BACKBONES.items() if b.group == "baseline")  # `baselines`
KNOWN: tuple[str, ...] = tuple(BACKBONES)
GROUPS: dict[str, tuple[str, ...]] = {"all": NAMES, "baselines": BASELINES}


def get(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise RegistryError(f"backbone {name!r} is not known; choose one of {', '.join(KNOWN)} "
                            f"(or the groups {', '.join(GROUPS)})") from None


def parse_names(spec: str | list[str] | None) -> list[str]:
    """'all' / None / 'a,b' / ['a','b'] -> validated list of backbone names, each once, in the order given.

    ``all`` stands for the paper's seven, ``baselines`` for the seed studies' own models (``all,baselines``: both).
    """
    if spec is None:
        return list(NAMES)
    items = spec.split(",") if isinstance(spec, str) else [s for part in spec for s in part.split(",")]
    names: list[str] = []
    for item in (s.strip() for s in items):
        for n in GROUPS.get(item, (item,) if item else ()):
            get(n)
            if n not in names:
                names.append(n)
    if not names:
        raise RegistryError(f"no backbone given; choose from {', '.join(KNOWN)} or {' / '.join(GROUPS)}")
    return names
