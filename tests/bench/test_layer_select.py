"""`--layer auto`: stage outputs per family, the choice rule on hand-made figures, and the selection on the
tiny trained run (validation images, never test)."""

from __future__ import annotations

import pytest

from bench import layer_select as LS
from bench import sanity as S


def test_stage_outputs_name_the_last_module_of_each_grid():
    from tests.core.test_gradcam import _model

    assert S.stage_outputs("resnet18", _model("resnet18", 32), 32) == [
        ("layer1", 8), ("layer2", 4), ("layer3", 2), ("layer4", 1)]
    mnv2 = S.stage_outputs("mobilenetv2_100", _model("mobilenetv2_100", 64), 64)
    assert mnv2[-3:] == [("blocks.2", 8), ("blocks.4", 4), ("blocks.6", 2)]
    dense = S.stage_outputs("densenet121", _model("densenet121", 64), 64)
    assert dense[-3:] == [("features.denseblock2", 8), ("features.denseblock3", 4), ("features.norm5", 2)]
    assert S.stage_outputs("vit_base_patch16_224", _model("vit_base_patch16_224", 32), 32) == [("blocks.11", 2)]
    # the last stage (randomized by the sanity check) still starts where the final grid does
    assert S.last_stage("mobilenetv2_100", _model("mobilenetv2_100", 64), 64) == "blocks.5"


def test_stage_outputs_probe_the_model_on_its_own_device():
    """The Explainer moves a shared model to the GPU in place, and `--method auto` then asks for the stages of
    that model again (a CPU probe input failed there, on an H200). The meta device stands in for a GPU here."""
    from tests.core.test_gradcam import _model

    model = _model("resnet18", 32).to("meta")
    assert S.stage_outputs("resnet18", model, 32)[-1] == ("layer4", 1)
    assert S.last_stage("resnet18", model, 32) == "layer4"


def test_candidates_are_stride_8_or_coarser_then_the_registry_layer():
    from tests.core.test_gradcam import _model

    got = LS.candidate_layers("resnet18", _model("resnet18", 32), 32, "layer4")
    assert got == [("layer2", 4), ("layer3", 2), ("layer4", 1)]  # layer1 (stride 4) is left out


def _row(layer, pg, passed, method="hirescam"):
    grid = {"layer2": 16, "layer3": 8, "layer4": 4}[layer]
    return {"method": method, "layer": layer, "grid": grid, "pointing_game": pg, "sanity_passed": passed}


def test_choose_takes_the_best_pointing_that_passes_the_sanity_check():
    rows = [_row("layer2", 0.95, False), _row("layer3", 0.81, True), _row("layer4", 0.40, True)]
    best, why = LS.choose(rows)
    assert best["layer"] == "layer3" and "0.81" in why and "2 of 3" in why  # 0.95 fails the check: not taken
    best, _ = LS.choose([_row("layer2", 0.7, True), _row("layer3", 0.7, True), _row("layer4", 0.2, True)])
    assert best["layer"] == "layer3"  # a tie goes to the coarser layer
    best, why = LS.choose([_row("layer2", 0.9, False), _row("layer4", None, True)])
    assert best is None and "registry" in why
    rows = [_row("layer2", 0.8, True), _row("layer3", 0.9, False), _row("layer2", 0.85, True, "xgradcam"),
            _row("layer3", 0.8, True, "xgradcam")]
    assert LS.choose(rows)[0]["method"] == "xgradcam" and LS.choose(rows)[0]["layer"] == "layer2"
    rows[2]["pointing_game"] = 0.8  # three-way tie at 0.8: the coarser layer first
    assert (LS.choose(rows)[0]["method"], LS.choose(rows)[0]["layer"]) == ("xgradcam", "layer3")
    rows[3]["layer"], rows[3]["grid"] = "layer2", 16  # same layer, same figure: the method named first
    assert LS.choose(rows)[0]["method"] == "hirescam"


def test_localisation_warning_flags_a_chosen_candidate_below_the_bar():
    def sel(rows, method, layer):
        return {"candidates": rows, "method": method, "layer": layer, "side": "val", "n_images": 128}

    rows = [_row("layer2", 0.51, True, "xgradcam"), _row("layer3", 0.9, False, "xgradcam")]  # 0.51 x 128 = 65.3
    warning = LS.localisation_warning(sel(rows, "xgradcam", "layer2"))
    assert "65 of 128 val images (0.510, below 0.8)" in warning
    assert LS.localisation_warning(sel(rows, "xgradcam", "layer2"), min_pointing=0.5) is None
    rows[0]["pointing_game"] = 0.8  # exactly 0.8: no warning
    assert LS.localisation_warning(sel(rows, "xgradcam", "layer2")) is None
    rows[0]["sanity_passed"] = False  # nothing passes: the registry's layer is kept and flagged
    assert "sanity check" in LS.localisation_warning(sel(rows, "xgradcam", "layer4"))


def test_select_layer_on_the_tiny_run(bench_run):
    sel = LS.select_layer(bench_run, n=4)
    assert sel["side"] == "val" and sel["n_images"] == 4 and sel["mask_source"] == "synthetic lesion masks"
    assert [c["layer"] for c in sel["candidates"]] == ["layer2", "layer3", "layer4"]
    best, _ = LS.choose(sel["candidates"])
    assert sel["layer"] == (best["layer"] if best else "layer4")
    assert sel["min_pointing"] == LS.MIN_POINTING and sel["warning"] == LS.localisation_warning(sel)
    for c in sel["candidates"]:
        assert 0 <= c["pointing_game"] <= 1 and c["sanity_passed"] == (abs(c["sanity_spearman_last_stage"]) < 0.5)
    with pytest.raises(ValueError, match="never on the test"):
        LS.select_layer(bench_run, side="test", n=4)


def test_sanity_check_without_the_head_step_gives_the_same_verdict():
    import numpy as np

    from tests.core.test_gradcam import _model

    model = _model("resnet18", 32).eval()
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    full = S.sanity_check(model, "resnet18", x, layer="layer3")
    short = S.sanity_check(model, "resnet18", x, layer="layer3", with_head=False)
    assert "spearman_head" in full and "spearman_head" not in short
    assert short["spearman_last_stage"] == pytest.approx(full["spearman_last_stage"])
    assert short["passed"] == full["passed"]
