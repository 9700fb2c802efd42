"""One training loop for every backbone: AdamW, cosine schedule with warm-up, focal loss (by default; Adam, a
constant rate, plain or class-weighted BCE and freeze-then-fine-tune reproduce the seed studies' recipes).

``fit(config, data)`` is a plain function of its config (so ``train-all`` can later fan out to
Ray). Under ``torchrun`` a process group exists and each rank trains on its shard; only rank 0
writes files. Nothing pickled is ever written or loaded: weights and optimizer state are
safetensors, everything else JSON.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Collection
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core import freeze, io, registry
from core.data import known_patients
from core.datasets import SideImages
from core.distributed import Dist
from core.losses import LOSSES, make_loss
from core.metrics import choose_operating_point, roc_auc_or_nan, summarize
from core.preprocess import Preprocess
from core.runs import RUN_FORMAT, RunError, write_run
from core.split import Split


@dataclass(frozen=True)
class TrainConfig:
    backbone: str
    size: int = 64
    epochs: int = 4
    batch_size: int = 16
    lr: float = 4e-3  # shared peak learning rate; see registry lr_scale
    weight_decay: float = 0.05
    warmup: float = 0.1  # fraction of all steps spent warming up linearly
    grad_clip: float = 1.0
    gamma: float = 2.0
    alpha: float | None = None  # None: from class frequency of the training side
    patience: int = 5  # epochs without a better validation ROC-AUC before stopping
    seed: int = 42
    augment: bool = True
    cutmix: float = 0.0  # probability per batch of CutMix (Yun et al. 2019), through timm's Mixup
    pretrained: bool = False
    weights: str | None = None
    device: str = "auto"
    threads: int | None = None
    amp: bool = True  # CUDA only: bf16 (or fp16 with a grad scaler) autocast and channels-last
    # Set by the named recipes of core/recipes.py (``baseline`` leaves them at these defaults).
    recipe: str = "baseline"
    augment_level: str = "mild"  # "mild" (affine + intensity jitter) or "strong" (acquisition differences)
    equalize: bool = False  # histogram equalisation inside the run's preprocessing
    label_smoothing: float = 0.0  # binary targets pulled to eps/2 and 1 - eps/2
    mixup: float = 0.0  # mixup's Beta(alpha, alpha) (Zhang et al. 2018); 0 = off
    ema_decay: float = 0.0  # exponential moving average of the weights, selected and saved instead; 0 = off
    drop_rate: float = 0.0  # dropout before the classifier (timm drop_rate)
    drop_path_rate: float = 0.0  # stochastic depth (timm drop_path_rate), where the backbone has it
    select_on: str = "auc"  # the validation figure that keeps the best epoch and stops early: "auc" or "loss"
    # The seed studies' recipes (docs/seeds.md): their loss, optimizer and freeze-then-fine-tune schedule.
    loss: str = "focal"  # "focal" (gamma, alpha), "bce", or "weighted-bce" (class weights from the training side)
    optimizer: str = "adamw"  # "adamw" (decoupled weight decay) or "adam" (weight_decay as an L2 term)
    schedule: str = "cosine"  # "cosine" (linear warm-up, then cosine decay) or "constant" (lr throughout, no warm-up)
    freeze_epochs: int = 0  # epochs at the start that train only the classifier head
    unfreeze: str = "all"  # modules unfrozen after the head-only epochs: dotted prefixes, comma-separated, or "all"
    backbone_lr_scale: float = 1.0  # learning rate multiplier of the backbone's (non-head) parameters

    def __post_init__(self) -> None:
        registry.get(self.backbone)
        checks = {
            "size": self.size >= 16, "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 2,
            "lr": self.lr > 0, "weight_decay": self.weight_decay >= 0, "warmup": 0 <= self.warmup < 1,
            "grad_clip": self.grad_clip > 0, "gamma": self.gamma >= 0, "patience": self.patience >= 1,
            "cutmix": 0 <= self.cutmix <= 1, "label_smoothing": 0 <= self.label_smoothing < 0.5,
            "mixup": self.mixup >= 0, "ema_decay": 0 <= self.ema_decay < 1, "drop_rate": 0 <= self.drop_rate < 1,
            "drop_path_rate": 0 <= self.drop_path_rate < 1, "augment_level": self.augment_level in ("mild", "strong"),
            "select_on": self.select_on in ("auc", "loss"), "loss": self.loss in LOSSES,
            "optimizer": self.optimizer in ("adamw", "adam"), "schedule": self.schedule in ("cosine", "constant"),
            "freeze_epochs": 0 <= self.freeze_epochs < self.epochs, "backbone_lr_scale": self.backbone_lr_scale > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is out of range; see `cxr-edge train --help`")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads} must be >= 1; leave it unset to use all cores")
        if freeze.parse_prefixes(self.unfreeze) is None:
            object.__setattr__(self, "unfreeze", "all")  # None and "" mean every module, as "all" does
        if self.loss != "focal" and (self.alpha is not None or self.gamma != 2.0):
            raise ValueError(f"--alpha and --gamma are focal-loss settings; --loss {self.loss} takes neither "
                             "(weighted-bce takes its class weights from the training side)")
        if self.alpha is not None and not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha={self.alpha} must lie in [0, 1] (or be left unset to use class frequency)")
        if self.cutmix > 0 and self.batch_size % 2:
            raise ValueError(f"cutmix={self.cutmix} needs an even batch_size (now {self.batch_size}): timm's Mixup "
                             "pairs each image with its mirror in the batch")
        if self.cutmix > 0 and self.mixup > 0:
            raise ValueError("cutmix and mixup are both set; choose one")
        if self.mixup > 0 and self.batch_size % 2:
            raise ValueError(f"mixup={self.mixup} needs an even batch_size (now {self.batch_size})")
        from core.recipes import NAMES as RECIPE_NAMES

        if self.recipe not in RECIPE_NAMES:
            raise ValueError(f"recipe {self.recipe!r} is not known; choose one of {', '.join(RECIPE_NAMES)}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device {self.device!r} is not known; use auto, cpu or cuda[:N]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def complete(cls, saved: dict[str, Any]) -> dict[str, Any]:
        """A saved config with the fields added since it was written set to their defaults (for comparison).

        ``cutmix`` came later than most runs; a run saved without it trained with the default (none).
        """
        defaults = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
        return {**{k: v for k, v in defaults.items() if k not in saved}, **saved}

    @classmethod
    def differences(cls, saved: dict[str, Any], now: dict[str, Any], ignore: Collection[str] = ()) -> str:
        """``"field: saved -> now, ..."`` for every field of ``now`` that a saved config (completed by
        :meth:`complete`) holds otherwise, ``ignore`` left out; ``""`` when they agree. Finished runs
        (:func:`core.pipeline._plan`) and interrupted ones (:meth:`core.checkpoint.Checkpoint.load`) compare so."""
        saved = cls.complete(saved)
        return ", ".join(f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in now.items()
                         if k not in ignore and saved.get(k) != v)


def init_head(model: nn.Module, prior: float) -> None:
    """Start the fresh classifier near the class prior: small weights, bias = logit of the prior.

    The prior-probability bias init of focal loss's paper (Lin et al. 2017, section 4.1); without it a
    randomly initialised network starts with large logits and spends its first epochs undoing them.
    """
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise TypeError(f"expected a linear classifier, got {type(head).__name__}")
    nn.init.normal_(head.weight, std=0.01)
    p = min(max(prior, 1e-3), 1 - 1e-3)
    nn.init.constant_(head.bias, math.log(p / (1 - p)))


def log_loss_or_nan(labels: np.ndarray, probs: np.ndarray) -> float:
    """Validation log-loss (binary cross-entropy of the probabilities); NaN when one class is absent."""
    from sklearn.metrics import log_loss

    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7), labels=[0, 1]))


def _describe_recipe(config: TrainConfig, backbone: registry.Backbone) -> dict[str, Any]:
    """The recipe's name, its settings as this run resolved them, and what did not apply to this backbone."""
    from core.recipes import get

    recipe = get(config.recipe)
    out: dict[str, Any] = {"name": recipe.name, "summary": recipe.summary,
                           "settings": {k: getattr(config, k) for k in recipe.as_dict()}}
    if config.drop_path_rate and not backbone.supports_drop_path:
        out["not_applied"] = [f"drop_path_rate: {backbone.name} has no stochastic depth in timm"]
    return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"device {name!r} asked for, but no CUDA GPU is visible to torch; use --device cpu")
    return torch.device(name)


def peak_lr(config: TrainConfig) -> float:
    """The shared --lr times the backbone's registry ``lr_scale`` (1 for the CNNs)."""
    return config.lr * registry.get(config.backbone).lr_scale


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up then cosine decay to zero (or the peak throughout, ``schedule="constant"``), as a pure
    function of the step (resume needs no state)."""
    peak = peak_lr(config)
    if config.schedule == "constant":
        return peak
    warm = max(1, round(config.warmup * total))
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def cutmix(p: float):
    """timm's Mixup set up as CutMix only (Yun et al. 2019: box area from Beta(1, 1), labels mixed by area).

    Applied to a whole batch with probability ``p``; each image takes a box from its mirror in the batch.
    Reads numpy's global generator, which :func:`train_one_epoch` seeds per epoch.
    """
    from timm.data import Mixup

    return Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=p, mode="batch", label_smoothing=0.0, num_classes=2)


def mixup(alpha: float):
    """timm's Mixup as mixup only (Zhang et al. 2018): each image blended with its mirror in the batch by a weight
    from Beta(alpha, alpha), labels blended alike; on every batch."""
    from timm.data import Mixup

    return Mixup(mixup_alpha=alpha, cutmix_alpha=0.0, prob=1.0, mode="batch", label_smoothing=0.0, num_classes=2)


def preprocess_for(config: TrainConfig) -> Preprocess:
    """The run's one preprocessing definition: the backbone's, with the recipe's histogram equalisation."""
    from dataclasses import replace as _replace

    pre = registry.get(config.backbone).preprocess(config.size)
    return _replace(pre, equalize="histogram") if config.equalize else pre


def augment(x: torch.Tensor, gen: torch.Generator, level: str = "mild") -> torch.Tensor:
    """Radiograph augmentation on a normalised batch: affine jitter, brightness, contrast; ``"strong"`` widens
    them and adds what differs between acquisitions (gamma, blur, lost resolution, noise), see
    :func:`_acquisition`.

    No horizontal flip: left/right anatomy is not symmetric in a chest radiograph.
    """
    n = x.shape[0]
    rand = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=gen)  # noqa: E731
    strong = level == "strong"
    if strong:
        x = _acquisition(x, gen)
    deg, zoom, shift = (10, 0.15, 0.10) if strong else (7, 0.08, 0.06)
    angle, scale = rand(-deg, deg) * math.pi / 180, rand(1 - zoom, 1 + zoom)
    tx, ty = rand(-shift, shift), rand(-shift, shift)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    fill = x.amin(dim=(1, 2, 3), keepdim=True)
    x = F.grid_sample(x - fill, grid, align_corners=False, padding_mode="zeros") + fill
    c, b = (0.3, 0.25) if strong else (0.15, 0.15)
    contrast = rand(1 - c, 1 + c).to(x).view(-1, 1, 1, 1)
    bright = rand(-b, b).to(x).view(-1, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast + mean + bright


def _acquisition(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """What differs between X-ray machines and sites, per image: gamma 0.7-1.4 (detector response and
    windowing), and with probability 0.3 each a Gaussian blur (sigma 0.3-1.2 px), a down-and-up resampling to
    50-90% (lost resolution), and Gaussian noise (sigma up to 0.04 of the range). Applied on the batch's own
    0..1 range, so it needs no preprocessing constants."""
    n = x.shape[0]
    u = lambda: torch.rand(n, generator=gen).to(x).view(-1, 1, 1, 1)  # noqa: E731
    lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    span = (hi - lo).clamp_min(1e-6)
    y = ((x - lo) / span).clamp(0, 1)
    y = y ** (0.7 + 0.7 * u())
    blur, down, noise = u() < 0.3, u() < 0.3, u() < 0.3
    sigma = float(0.3 + 0.9 * torch.rand(1, generator=gen))
    k = torch.arange(-3, 4, dtype=y.dtype, device=y.device)
    k = torch.exp(-k ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    ch = y.shape[1]
    blurred = F.conv2d(F.pad(y, (3, 3, 0, 0), mode="replicate"), k.view(1, 1, 1, 7).repeat(ch, 1, 1, 1), groups=ch)
    blurred = F.conv2d(F.pad(blurred, (0, 0, 3, 3), mode="replicate"), k.view(1, 1, 7, 1).repeat(ch, 1, 1, 1),
                       groups=ch)
    y = torch.where(blur, blurred, y)
    h, w = y.shape[-2:]
    f = float(0.5 + 0.4 * torch.rand(1, generator=gen))
    small = F.interpolate(y, size=(max(8, round(h * f)), max(8, round(w * f))), mode="bilinear", align_corners=False)
    y = torch.where(down, F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False), y)
    eps = torch.randn(y.shape, generator=gen).to(y) * 0.04 * u()
    y = torch.where(noise, (y + eps).clamp(0, 1), y)
    return y * span + lo


def batch_input(images: np.ndarray, preprocess: Preprocess, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = torch.from_numpy(preprocess.normalize(images)).to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def predict_probs(model: nn.Module, side: SideImages, preprocess: Preprocess, device: torch.device,
                  batch_size: int = 64, amp: bool = False) -> np.ndarray:
    """Probabilities of PNEUMONIA for every image of one side, in order."""
    model.eval()
    out = []
    for i in range(0, len(side.labels), batch_size):
        x = batch_input(side.images[i:i + batch_size], preprocess, device, amp)
        with _autocast(device, amp):
            out.append(torch.sigmoid(model(x).float().flatten()).cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def _autocast(device: torch.device, amp: bool):
    if device.type == "cuda" and amp:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def train_one_epoch(model, opt, loss_fn, train: SideImages, preprocess, config: TrainConfig, *, epoch: int,
                    step0: int, total_steps: int, device, dist: Dist, scaler, on_step=None,
                    ema=None) -> dict[str, float]:
    model.train()
    if config.freeze_epochs or config.unfreeze != "all":  # frozen BatchNorm layers keep their running statistics
        freeze.frozen_norms_to_eval(model.module if hasattr(model, "module") else model,
                                    epoch < config.freeze_epochs, freeze.parse_prefixes(config.unfreeze))
    gen = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    order = torch.randperm(len(train.labels), generator=gen).numpy()
    per_rank = len(order) // dist.world
    order = order[dist.rank * per_rank:(dist.rank + 1) * per_rank]  # a DistributedSampler's shard, drop-last
    n_steps = max(1, per_rank // config.batch_size)
    losses, seen, t0 = [], 0, time.perf_counter()
    channels_last = device.type == "cuda" and config.amp
    mix = cutmix(config.cutmix) if config.cutmix > 0 else (mixup(config.mixup) if config.mixup > 0 else None)
    if mix is not None:
        np.random.seed(config.seed * 1000 + epoch)  # so that a resumed run mixes as an uninterrupted one does
    for b in range(n_steps):
        idx = np.sort(order[b * config.batch_size:(b + 1) * config.batch_size])
        x = batch_input(train.images[idx], preprocess, device, channels_last)
        if config.augment:
            x = augment(x, gen, config.augment_level)
        y = torch.from_numpy(train.labels[idx]).float().to(device)
        if mix is not None:  # soft targets: the PNEUMONIA column of the mixed one-hot labels
            x, y = mix(x, y.long())
            y = y[:, 1].contiguous()
        if config.label_smoothing:
            y = y * (1 - config.label_smoothing) + config.label_smoothing / 2
        for g in opt.param_groups:
            g["lr"] = lr_at(step0 + b, total_steps, config) * g.get("lr_scale", 1.0)
        opt.zero_grad(set_to_none=True)
        with _autocast(device, config.amp):
            loss = loss_fn(model(x).float().flatten(), y)
        if not torch.isfinite(loss):
            raise RunError(f"{config.backbone}: loss became {loss.item()} at epoch {epoch + 1} step {b + 1}; "
                           f"lower --lr (now {config.lr}) or keep --grad-clip on")
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(opt) if scaler is not None else opt.step()
        if scaler is not None:
            scaler.update()
        losses.append(loss.item())
        seen += len(idx)
        if ema is not None:
            ema.update(model.module if hasattr(model, "module") else model, step=step0 + b)
        if on_step:
            on_step(b + 1, n_steps, float(np.mean(losses[-20:])), seen * dist.world / (time.perf_counter() - t0))
    secs = time.perf_counter() - t0
    return {"loss": float(np.mean(losses)), "steps": n_steps, "images": seen * dist.world, "seconds": secs,
            "images_per_s": seen * dist.world / secs}


@dataclass
class FitResult:
    run_dir: Path
    record: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def fit(config: TrainConfig, split: Split, sides: dict[str, SideImages], run_dir: str | Path, *,
        resume: bool = False, progress=None, extra: dict[str, Any] | None = None) -> FitResult:
    """Train one backbone on the train side, select on validation ROC-AUC, write ``run_dir``."""
    from core.checkpoint import Checkpoint

    dist, run_dir = Dist.current(), Path(run_dir)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    backbone = registry.get(config.backbone)
    preprocess = preprocess_for(config)
    train, val = sides["train"], sides["val"]
    model = backbone.build(config.size, pretrained=config.pretrained, weights=config.weights,
                           drop_rate=config.drop_rate, drop_path_rate=config.drop_path_rate)
    init_head(model, prior=float(np.mean(train.labels)))
    model = model.to(device)
    if device.type == "cuda" and config.amp:
        model = model.to(memory_format=torch.channels_last)
    loss_fn, loss_record = make_loss(config.loss, train.labels, gamma=config.gamma, alpha=config.alpha)
    prefixes = freeze.parse_prefixes(config.unfreeze)
    freeze.check_prefixes(model, prefixes)
    if dist.world > 1 and (config.freeze_epochs or prefixes):
        raise RunError("--freeze-epochs and --unfreeze change which parameters train, which DistributedDataParallel "
                       "does not allow after it starts; train with one process (without torchrun)")
    phases = [freeze.set_phase(model, head_only, prefixes) for head_only in (True, False)]  # counts for the record
    opt = make_optimizer(config, freeze.param_groups(model, peak_lr(config), config.backbone_lr_scale))
    use_scaler = device.type == "cuda" and config.amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    net = model
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpoint(run_dir / "checkpoint", write=dist.main)
    state = {"epoch": 0, "best_auc": -1.0, "best_score": -1e30, "best_epoch": -1, "stale": 0, "history": []}
    best_weights: dict[str, torch.Tensor] | None = None  # the best epoch's weights, kept in memory
    ema = None
    if config.ema_decay:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=config.ema_decay, use_warmup=True)
    if resume and ckpt.exists():
        state = ckpt.load(model, opt, config.to_dict(), TrainConfig.differences)
        if ema is not None and (ckpt.folder / "ema.safetensors").is_file():
            ema.module.load_state_dict(io.load_tensors(ckpt.folder / "ema.safetensors"))
    selected = ema.module if ema is not None else model  # the weights scored on validation and kept
    steps_per_epoch = max(1, len(train.labels) // dist.world // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    t_start = time.perf_counter()
    task = progress.add_task(config.backbone, total=total_steps, info="") if progress else None
    if progress:
        progress.update(task, completed=state["epoch"] * steps_per_epoch)

    for epoch in range(state["epoch"], config.epochs):
        if state["stale"] >= config.patience and epoch >= config.freeze_epochs:  # never before the unfreezing
            break
        freeze.set_phase(model, epoch < config.freeze_epochs, prefixes)

        def on_step(b, n, loss, ips, epoch=epoch):
            if progress:
                progress.update(task, completed=epoch * steps_per_epoch + b,
                                info=f"ep {epoch + 1}/{config.epochs} loss {loss:.4f} {ips:.0f} img/s "
                                     f"best val AUC {max(state['best_auc'], 0):.3f}")

        stats = train_one_epoch(net, opt, loss_fn, train, preprocess, config, epoch=epoch,
                                step0=epoch * steps_per_epoch, total_steps=total_steps, device=device, dist=dist,
                                scaler=scaler, on_step=on_step, ema=ema)
        t_eval = time.perf_counter()
        val_probs = predict_probs(selected, val, preprocess, device, amp=config.amp)
        val_auc = roc_auc_or_nan(val.labels, val_probs)
        val_loss = log_loss_or_nan(val.labels, val_probs)
        score = -val_loss if config.select_on == "loss" else val_auc
        improved = score > state.get("best_score", state["best_auc"]) + 1e-6
        row = {"epoch": epoch + 1, **stats, "val_auc": val_auc, "val_log_loss": val_loss,
               **({"phase": "head" if epoch < config.freeze_epochs else "fine-tune"} if config.freeze_epochs else {}),
               "val_seconds": time.perf_counter() - t_eval,
               "lr_end": opt.param_groups[0]["lr"], "improved": improved, "time": io.now()}
        state["history"].append(row)
        if dist.main and (progress is None or not sys.stderr.isatty()):  # a log file gets one line per epoch
            print(f"{config.backbone}: epoch {epoch + 1}/{config.epochs} loss {stats['loss']:.4f} "
                  f"val ROC-AUC {val_auc:.4f} log-loss {val_loss:.4f} ({stats['seconds']:.0f} s, "
                  f"{stats['images_per_s']:.0f} img/s){' best so far' if improved else ''}",
                  file=sys.stderr, flush=True)
        if improved:
            state.update(best_auc=val_auc, best_score=score, best_epoch=epoch + 1, stale=0)
            best_weights = {k: v.detach().to("cpu", copy=True) for k, v in selected.state_dict().items()}
        else:
            state["stale"] += 1
        state["epoch"] = epoch + 1
        if dist.main:
            io.append_jsonl(run_dir / "log.jsonl", row)
        if epoch + 1 < config.epochs:  # after the last epoch the run is written at once; nothing to resume
            ckpt.save(model, opt, state, config.to_dict())
            if ema is not None and dist.main:
                io.save_tensors(ckpt.folder / "ema.safetensors", ema.module.state_dict())
                if improved:
                    io.save_tensors(ckpt.folder / "best.safetensors", best_weights)
            elif improved:
                ckpt.mark_last_best()

    freeze.set_phase(model, False, None)  # the saved model is an ordinary one: every parameter trainable
    if best_weights is not None:
        model.load_state_dict(best_weights)
    else:  # resumed after the best epoch: its weights are on disk
        ckpt.restore_best(model)
    val_probs = predict_probs(model, val, preprocess, device, amp=config.amp)
    op = choose_operating_point(val.labels, val_probs)
    record = {
        "format": RUN_FORMAT,
        "backbone": config.backbone,
        "timm_id": backbone.timm_id,
        "architecture": {"source": backbone.source, "title": backbone.title, "group": backbone.group,
                         "input_size_fixed": backbone.size_bound},
        "config": config.to_dict(),
        "preprocess": preprocess.to_dict(),
        "init": _describe_init(config),
        "recipe": _describe_recipe(config, backbone),
        "optimizer": _describe_optimizer(config, backbone),
        "loss": loss_record,
        "freeze": _describe_freeze(config, model, phases),
        "split": {"hash": split.hash, "method": split.method, "seed": split.seed, "source": split.source_record(),
                  "file": "split.json", "counts": split.counts()},
        "threshold": {**op, "chosen_on": "val"},
        "val": summarize(val.labels, val_probs, op["threshold"], patients=known_patients(val.paths, val.patients)),
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "stopped_early": state["epoch"] < config.epochs,
        "history": state["history"],
        "train_seconds": sum(h["seconds"] + h["val_seconds"] for h in state["history"]),
        "wall_seconds": time.perf_counter() - t_start,
        "params": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "world_size": dist.world,
        "environment": io.environment(),
        **(extra or {}),
    }
    dist.barrier()  # every rank has restored the best weights before rank 0 removes the checkpoint
    if dist.main:
        write_run(run_dir, model, record, split)
        ckpt.clear()
    if progress:
        progress.update(task, completed=total_steps,
                        info=f"done: best val AUC {state['best_auc']:.3f} at epoch {state['best_epoch']}")
    return FitResult(run_dir, record, state["history"])


def make_optimizer(config: TrainConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """AdamW or Adam over the head and backbone parameter groups (:func:`core.freeze.param_groups`).

    fused: one kernel over all parameters; on a 2-core CPU the default per-parameter loop took 491 ms per step for
    ViT-B/16 (fused 50 ms), a third of its training time at 64 px. Same update, same state_dict.
    """
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=peak_lr(config), weight_decay=config.weight_decay, fused=True)


def _describe_optimizer(config: TrainConfig, backbone: registry.Backbone) -> dict[str, Any]:
    schedule = ("constant (no warm-up)" if config.schedule == "constant"
                else f"linear warm-up {config.warmup:.0%} + cosine")
    return {"name": "AdamW" if config.optimizer == "adamw" else "Adam", "peak_lr": peak_lr(config),
            "lr_scale": backbone.lr_scale, "backbone_lr_scale": config.backbone_lr_scale,
            "weight_decay": config.weight_decay,
            "weight_decay_kind": "decoupled" if config.optimizer == "adamw" else "L2 term in the gradient",
            "schedule": schedule, "grad_clip": config.grad_clip, "batch_size": config.batch_size}


def _describe_freeze(config: TrainConfig, model: nn.Module, phases: list[dict[str, int]]) -> dict[str, Any] | None:
    """What trained when: None when every parameter trained throughout."""
    if not config.freeze_epochs and config.unfreeze == "all":
        return None
    out = {"head_epochs": config.freeze_epochs, "head": freeze.head_name(model), "unfreeze": config.unfreeze,
           "backbone_lr_scale": config.backbone_lr_scale,
           "trainable_params": {"head_epochs": phases[0]["trainable"], "after": phases[1]["trainable"]},
           "frozen_batchnorm": "eval mode (running statistics kept)"}
    if config.freeze_epochs and not (config.pretrained or config.weights):
        out["note"] = ("no pretrained start: the head-only epochs train a head on the backbone's random "
                       "initial weights")
    return out


def _describe_init(config: TrainConfig) -> str:
    if config.weights:
        return f"ImageNet weights from local file {config.weights}"
    if config.pretrained:
        return "ImageNet weights from timm's hub"
    return "trained from scratch (random init)"

