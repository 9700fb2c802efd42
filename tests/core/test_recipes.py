"""Named training recipes: each trains and is recorded; settings that contradict a recipe are refused."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from core import recipes
from core.datasets import load_sides
from core.preprocess import Preprocess
from core.runs import load_run
from core.train import TrainConfig, augment, fit, preprocess_for


def _config(**kw):
    return TrainConfig(**{**dict(backbone="mobilenetv3_large_100", size=32, epochs=2, batch_size=8, seed=3,
                                 threads=2), **kw})


@pytest.mark.parametrize("name", recipes.NAMES)
def test_every_recipe_trains_and_is_recorded(name, tiny_split, tmp_path):
    config = recipes.apply(_config(), name)
    sides = load_sides(tiny_split, preprocess_for(config), sides=("train", "val"), progress=False)[0]
    fit(config, tiny_split, sides, tmp_path / name, progress=False)
    run = load_run(tmp_path / name)
    assert run.record["recipe"]["name"] == name and run.record["config"]["recipe"] == name
    assert run.record["recipe"]["settings"] == recipes.get(name).as_dict()
    assert run.preprocess.equalize == ("histogram" if config.equalize else "none")
    assert np.isfinite(run.record["val"]["metrics"]["roc_auc"]["value"])
    run.build_model()


def test_recipe_refuses_contradicting_options():
    with pytest.raises(ValueError, match="recipe 'lean' sets .*weight_decay=0.3"):
        recipes.apply(_config(weight_decay=0.3), "lean")
    assert recipes.apply(_config(), "lean").weight_decay == 0.1
    with pytest.raises(ValueError, match="recipe 'nope' is not known; choose one of baseline"):
        recipes.apply(_config(), "nope")


def test_strong_augmentation_differs_and_is_seeded():
    x = torch.randn(6, 3, 32, 32)
    a = augment(x, torch.Generator().manual_seed(1), "strong")
    b = augment(x, torch.Generator().manual_seed(1), "strong")
    m = augment(x, torch.Generator().manual_seed(1), "mild")
    assert torch.equal(a, b) and a.shape == x.shape and torch.isfinite(a).all()
    assert not torch.allclose(a, m, atol=1e-3)


def test_histogram_equalisation_is_part_of_the_preprocessing():
    ramp = np.tile(np.linspace(60, 100, 64).astype(np.uint8), (64, 1))  # a low-contrast image
    plain, eq = Preprocess.for_model(64), Preprocess(size=64, equalize="histogram")
    assert np.ptp(plain.image_to_uint8(Image.fromarray(ramp))) <= 40
    assert np.ptp(eq.image_to_uint8(Image.fromarray(ramp))) >= 200  # spread over the whole range
    assert Preprocess.from_dict(json.loads(json.dumps(eq.to_dict()))) == eq
    assert Preprocess.from_dict({k: v for k, v in plain.to_dict().items() if k != "equalize"}) == plain
    with pytest.raises(ValueError, match="equalize rule 'clahe' is not known"):
        Preprocess(size=64, equalize="clahe")


def test_ema_weights_are_the_ones_kept(tiny_split, tmp_path):
    """With EMA on, the saved model is the averaged one: it differs from the same recipe trained without EMA."""
    sides = load_sides(tiny_split, preprocess_for(_config()), sides=("train", "val"), progress=False)[0]
    fit(_config(epochs=1, ema_decay=0.9), tiny_split, sides, tmp_path / "ema", progress=False)
    fit(_config(epochs=1), tiny_split, sides, tmp_path / "raw", progress=False)
    a, b = (load_run(tmp_path / n).build_model().state_dict() for n in ("ema", "raw"))
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_docs_list_every_recipe_as_the_command_prints_it():
    from pathlib import Path

    from typer.testing import CliRunner

    from cli.main import app

    printed = CliRunner().invoke(app, ["recipes", "--markdown"]).output
    doc = (Path(__file__).resolve().parents[2] / "docs" / "recipes.md").read_text()
    assert printed.strip() and doc.endswith(printed) and all(f"### `{n}`" in doc for n in recipes.NAMES)
