"""Named training recipes: the settings that decide how well a model holds up on patients and machines it has
not seen, as recorded presets (``cxr-edge train-all --recipe NAME``, ``just kermany recipe=NAME``).

Internal figures do not predict a new cohort: on the Kermany images, runs that score higher on their own
validation side score lower on an independent test cohort, and photometric stress on validation images did
not rank them as the cohort did. The recipes are therefore candidates, each with its rationale and the
literature behind it; an outside cohort (``cxr-edge evaluate RUNS --data FOLDER``) chooses among them, never
the internal test side. ``baseline`` is the shared recipe of the paper this project grows out of.

A recipe sets fields of :class:`core.train.TrainConfig`; every run records its recipe's name and the resolved
settings, and the preprocessing it implies (histogram equalisation) travels inside the run's one
:class:`core.preprocess.Preprocess`, so every artifact made from the run applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    rationale: str
    citations: tuple[str, ...]
    settings: tuple[tuple[str, Any], ...] = ()  # TrainConfig fields this recipe sets

    def as_dict(self) -> dict[str, Any]:
        return dict(self.settings)


_STRONG = (("augment_level", "strong"),)
_EQUALIZE = (("equalize", True),)

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("baseline", "the paper's recipe: mild affine and intensity jitter, focal loss, selection on val ROC-AUC",
           "The shared recipe of the seven backbones (Shahi & Bagale 2025); the reference every candidate is "
           "compared against.",
           ("Shahi & Bagale, arXiv 2511.00456 (2025)",)),
    Recipe("strong-aug", "augmentation aimed at acquisition differences: exposure, gamma, contrast, blur, "
           "resolution, noise, framing (no flips)",
           "A pneumonia CNN learns the hospital and the machine as readily as the disease (Zech et al. 2018), and "
           "domain shift between chest X-ray sets costs most of the accuracy lost on a new site (Pooch et al. "
           "2020). Randomising what differs between acquisitions (exposure and gamma, contrast, sharpness, "
           "resolution, noise, patient framing) removes those cues from the training signal. No flips: the "
           "heart's side is anatomy.",
           ("Zech et al., PLoS Medicine 15(11): e1002683 (2018)",
            "Pooch, Ballester & Barros, MICCAI TIA workshop, arXiv 1909.01940 (2020)"),
           _STRONG),
    Recipe("equalize", "per-image histogram equalisation inside the preprocessing, plus strong-aug",
           "Global histogram equalisation maps each radiograph's grey levels to a uniform distribution, so that "
           "exposure, windowing and detector response of another site change the input less; it is part of the "
           "run's one preprocessing definition, so every artifact applies it (numpy/Pillow only, no extra "
           "runtime). Contrast normalisation is the usual first step of cross-site chest X-ray pipelines.",
           ("Pooch, Ballester & Barros, arXiv 1909.01940 (2020)",
            "Pizer et al., Computer Vision, Graphics, and Image Processing 39(3): 355-368 (1987)"),
           _STRONG + _EQUALIZE),
    Recipe("smooth-ema", "equalize + label smoothing 0.1 + mixup (alpha 0.2) + EMA weights (decay 0.995)",
           "Over-confident models keep their training-site threshold where the score distribution has moved; "
           "label smoothing and mixup calibrate scores (Mueller et al. 2019; Thulasidasan et al. 2019), and an "
           "average of weights along the trajectory lands in flatter minima that generalise across domains "
           "(Izmailov et al. 2018; Cha et al. 2021). The candidate expected to hold up best.",
           ("Mueller, Kornblith & Hinton, NeurIPS 2019 (label smoothing)",
            "Zhang et al., ICLR 2018 (mixup); Thulasidasan et al., NeurIPS 2019",
            "Izmailov et al., UAI 2018 (weight averaging); Cha et al., NeurIPS 2021 (SWAD)"),
           _STRONG + _EQUALIZE + (("label_smoothing", 0.1), ("mixup", 0.2), ("ema_decay", 0.995))),
    Recipe("lean", "equalize + dropout 0.3, stochastic depth 0.1, weight decay 0.1, selection and early "
           "stopping on validation loss",
           "A model trained from scratch on 3,600 images of one hospital has capacity to memorise its site; "
           "stronger regularisation and choosing the epoch by validation log-loss (calibrated probabilities) "
           "rather than ROC-AUC (ranking only) favour the model whose scores transfer.",
           ("Srivastava et al., JMLR 15 (2014) (dropout); Huang et al., ECCV 2016 (stochastic depth)",
            "Prechelt, Early stopping - but when? (1998)"),
           _STRONG + _EQUALIZE + (("drop_rate", 0.3), ("drop_path_rate", 0.1), ("weight_decay", 0.1),
                                  ("select_on", "loss"))),
)}
NAMES: tuple[str, ...] = tuple(RECIPES)


def get(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"recipe {name!r} is not known; choose one of {', '.join(NAMES)}") from None


def apply(config, name: str):
    """``config`` (a :class:`core.train.TrainConfig`) with recipe ``name``'s settings. A field the recipe sets that
    ``config`` already holds at another value than the default is the user's own request: an error, never
    silently replaced."""
    from dataclasses import fields, replace

    recipe = get(name)
    defaults = {f.name: f.default for f in fields(config)}
    clashes = [f"{k}={getattr(config, k)!r}" for k, v in recipe.settings
               if getattr(config, k) != defaults[k] and getattr(config, k) != v]
    if clashes:
        raise ValueError(f"recipe {name!r} sets {', '.join(k for k, _ in recipe.settings)}; the options "
                         f"{', '.join(clashes)} contradict it. Drop them, or use --recipe baseline with your settings")
    return replace(config, recipe=name, **recipe.as_dict())
