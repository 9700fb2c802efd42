"""Freeze-then-fine-tune: train only the new classifier head for the first epochs, then unfreeze the backbone (or
the modules named) and train on, the backbone at a lower learning rate.

This is the transfer-learning recipe of the seed study's ResNet-18 (head only for 5 epochs, then its last block at
a 10x lower rate). A frozen module does not learn and, for BatchNorm, does not update its running statistics
either (it runs in eval mode, as Keras' ``trainable = False`` does), so the head-only epochs leave every backbone
tensor of the state dict as it was.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class FreezeError(ValueError):
    """A module prefix to unfreeze that the model does not have; the message lists what it has."""


def head_name(model: nn.Module) -> str:
    """Dotted name of the model's classifier (timm's ``get_classifier()``)."""
    head = model.get_classifier()
    for name, module in model.named_modules():
        if module is head:
            return name
    raise FreezeError(f"{type(model).__name__}.get_classifier() is not one of its modules")


def parse_prefixes(text: str | None) -> tuple[str, ...] | None:
    """``--unfreeze``: comma-separated dotted module prefixes; ``None``, ``""`` or ``all``: everything."""
    if text is None or text.strip() in ("", "all"):
        return None
    return tuple(p.strip() for p in text.split(",") if p.strip())


def check_prefixes(model: nn.Module, prefixes: tuple[str, ...] | None) -> None:
    """Every prefix must name a module of ``model``; the error lists its top-level modules."""
    if prefixes is None:
        return
    names = {n for n, _ in model.named_modules()}
    unknown = [p for p in prefixes if p not in names]
    if unknown:
        top = ", ".join(n for n, _ in model.named_children())
        raise FreezeError(f"--unfreeze {','.join(unknown)}: no such module in {type(model).__name__}; give dotted "
                          f"module names such as {top} (or their children, e.g. layer4.1), or 'all'")


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def is_trainable(name: str, head: str, head_only: bool, prefixes: tuple[str, ...] | None) -> bool:
    """Whether the parameter or module ``name`` trains: the head always; the rest after the head-only epochs, if
    it lies under one of ``prefixes`` (``None``: everything)."""
    if _under(name, (head,)):
        return True
    if head_only:
        return False
    return prefixes is None or _under(name, prefixes)


def set_phase(model: nn.Module, head_only: bool, prefixes: tuple[str, ...] | None) -> dict[str, int]:
    """Set ``requires_grad`` of every parameter for this phase; returns trainable and frozen parameter counts."""
    head = head_name(model)
    counts = {"trainable": 0, "frozen": 0}
    for name, p in model.named_parameters():
        p.requires_grad_(is_trainable(name, head, head_only, prefixes))
        counts["trainable" if p.requires_grad else "frozen"] += p.numel()
    return counts


def frozen_norms_to_eval(model: nn.Module, head_only: bool, prefixes: tuple[str, ...] | None) -> None:
    """After ``model.train()``: put the BatchNorm layers of frozen modules in eval mode (running statistics used,
    not updated)."""
    head = head_name(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not is_trainable(name, head, head_only, prefixes):
            module.eval()


def param_groups(model: nn.Module, lr: float, backbone_lr_scale: float) -> list[dict[str, Any]]:
    """Optimizer groups: the head at ``lr``, the backbone at ``lr * backbone_lr_scale``. Each group keeps its
    ``lr_scale`` so the schedule can set ``lr`` per step. Frozen parameters get no gradient, so the optimizer
    leaves them (and their weight decay) alone until they are unfrozen.

    With ``backbone_lr_scale`` 1 there is one group of all parameters in the model's order, as before these options
    existed, so that checkpoints of interrupted runs from then still resume."""
    named = list(model.named_parameters())
    if backbone_lr_scale == 1.0:
        return [{"params": [p for _, p in named], "lr_scale": 1.0, "name": "all", "lr": lr}]
    head = head_name(model)
    groups = [{"params": [p for n, p in named if _under(n, (head,))], "lr_scale": 1.0, "name": "head"},
              {"params": [p for n, p in named if not _under(n, (head,))], "lr_scale": backbone_lr_scale,
               "name": "backbone"}]
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return [g for g in groups if g["params"]]

