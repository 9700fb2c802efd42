"""Each fidelity measure on a hand-made case whose answer is known: a model that only looks at the
top-left quadrant of the image, a mask on that quadrant, heatmaps that do or do not mark it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench import fidelity as F
from bench import fidelity_run
from bench import localization as L
from core.data import DataError

S = 16  # image side; the quadrant is S/2 x S/2
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class Quadrant(nn.Module):
    """Logit = 4 * (mean of the top-left quadrant, all channels) - 2: blind to the rest of the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (4.0 * x[:, :, : S // 2, : S // 2].mean(dim=(1, 2, 3)) - 2.0).unsqueeze(1)


def _predict(batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return Quadrant()(torch.from_numpy(batch)).reshape(-1).numpy()


def _inputs(n: int = 4) -> np.ndarray:
    """Normalised images whose top-left quadrant is bright (a confident PNEUMONIA for the model)."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.3, (n, 3, S, S)).astype(np.float32)
    x[:, :, : S // 2, : S // 2] += 2.0
    return x


def _quadrant_map(n: int = 4) -> np.ndarray:
    m = np.zeros((n, S, S), np.float32)
    m[:, : S // 2, : S // 2] = 1.0
    return m


def test_deletion_by_the_right_heatmap_drops_fast_and_insertion_rises_fast():
    x = _inputs()
    good = F.deletion_insertion(_predict, x, _quadrant_map(), steps=16, mean=MEAN, std=STD)
    wrong = F.deletion_insertion(_predict, x, 1.0 - _quadrant_map(), steps=16, mean=MEAN, std=STD)
    rand = F.deletion_insertion(_predict, x, np.random.default_rng(1).random((4, S, S)), steps=16, mean=MEAN, std=STD)
    # The quadrant is a quarter of the pixels: deleting it first kills the score within 4 of 16 steps.
    assert good["deletion_auc"] < rand["deletion_auc"] < wrong["deletion_auc"]
    assert good["insertion_auc"] > rand["insertion_auc"] > wrong["insertion_auc"]
    assert good["deletion_auc"] < 0.25 and wrong["deletion_auc"] > 0.7
    curve = good["deletion_curve"]
    assert len(curve) == 17 and curve[0] > 0.9 and curve[4] < 0.05  # quadrant gone after 1/4 of the pixels
    assert len(good["deletion_auc_per_image"]) == 4


def test_explained_class_zero_reads_one_minus_p():
    x = _inputs(2)
    one = F.deletion_insertion(_predict, x, _quadrant_map(2), [1, 1], steps=8, mean=MEAN, std=STD)
    zero = F.deletion_insertion(_predict, x, _quadrant_map(2), [0, 0], steps=8, mean=MEAN, std=STD)
    np.testing.assert_allclose(np.asarray(one["deletion_curve"]) + zero["deletion_curve"], 1.0, atol=1e-9)


def test_deletion_input_errors():
    x = _inputs(2)
    with pytest.raises(ValueError, match="do not match"):
        F.deletion_insertion(_predict, x, np.zeros((2, S + 1, S)), mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="one logit per image"):
        F.deletion_insertion(lambda b: np.zeros(len(b) + 1), x, _quadrant_map(2), mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="mean and std"):
        F.deletion_insertion(_predict, x, _quadrant_map(2))
    with pytest.raises(ValueError, match="baseline"):
        F.deletion_insertion(_predict, x, _quadrant_map(2), deletion_baseline="grey", mean=MEAN, std=STD)


def test_baselines():
    x = _inputs(1)
    black = F.baseline_image(x, "black", mean=MEAN, std=STD)
    assert black.shape == x.shape and np.allclose(black, -2.0)  # (0 - 0.5) / 0.25
    assert np.allclose(F.baseline_image(x, "mean"), 0.0)
    assert F.baseline_image(x, "blur").std() < x.std()


def test_road_prefers_the_right_heatmap():
    x = torch.from_numpy(_inputs(2)).numpy()
    good = F.road(Quadrant(), x, _quadrant_map(2), percentiles=(20, 50, 80))["road"]
    wrong = F.road(Quadrant(), x, 1.0 - _quadrant_map(2), percentiles=(20, 50, 80))["road"]
    assert good > 0 > wrong


def test_cam_agreement_known_answers():
    rng = np.random.default_rng(0)
    a = rng.random((3, S, S))
    same = F.cam_agreement(a, a)
    assert same["spearman"] == pytest.approx(1.0) and same["top_overlap"] == pytest.approx(1.0)
    inv = F.cam_agreement(a, 1.0 - a)
    assert inv["spearman"] == pytest.approx(-1.0) and inv["top_overlap"] == 0.0
    const = F.cam_agreement(a, np.zeros_like(a))
    assert const["spearman"] == 0.0  # a constant map carries no ranking
    with pytest.raises(ValueError, match="cannot be compared"):
        F.cam_agreement(a, a[:, :4])


def test_top_overlap_counts_shared_top_pixels():
    a = np.arange(100, dtype=float)  # top 10%: 90..99
    b = a.copy()
    b[95:] = -1  # five of a's top ten leave b's top ten
    assert F.top_overlap(a, b, 0.1) == pytest.approx(0.5)


def test_pointing_game_and_energy_on_the_quadrant():
    masks = _quadrant_map(4).astype(bool)
    grids = np.zeros((4, 2, 2), np.float32)
    grids[:2, 0, 0] = 1.0  # two maps point at the quadrant
    grids[2:, 1, 1] = 1.0  # two at the opposite one
    pts = L.pointing_points(grids, S)
    assert pts[0].tolist() == [4, 4] and pts[3].tolist() == [12, 12]
    pg = L.pointing_game(pts, masks)
    assert pg["pointing_game"] == 0.5 and pg["n_images"] == 4
    assert L.pointing_game(pts, masks, tolerance=8)["pointing_game"] == 1.0  # 8 px reaches the quadrant
    flat = L.pointing_points(np.zeros((1, 2, 2)), S)
    assert flat[0].tolist() == [-1, -1] and L.pointing_game(flat, masks[:1])["pointing_game"] == 0.0
    no_lesion = L.pointing_game(pts[:1], np.zeros((1, S, S), bool))
    assert no_lesion["pointing_game"] is None and no_lesion["n_images"] == 0
    en = L.energy_in_mask(_quadrant_map(4), masks)
    assert en["energy_in_mask"] == pytest.approx(1.0) and en["mask_area"] == pytest.approx(0.25)
    uniform = L.energy_in_mask(np.ones((4, S, S)), masks)
    assert uniform["energy_in_mask"] == pytest.approx(0.25)


def test_randomized_copy_touches_only_head_and_last_stage():
    from bench import sanity as S
    from tests.core.test_gradcam import _model

    model = _model("resnet18", 32)
    head_only = S.randomized_copy(model, None, seed=1)
    cascade = S.randomized_copy(model, S.last_stage("resnet18", model), seed=1)
    same = lambda a, b, name: torch.equal(a.get_parameter(name), b.get_parameter(name))  # noqa: E731
    assert same(model, head_only, "layer4.1.conv2.weight") and not same(model, head_only, "fc.weight")
    assert not same(model, cascade, "layer4.1.conv2.weight") and not same(model, cascade, "fc.weight")
    assert same(model, cascade, "layer3.1.conv2.weight") and same(model, cascade, "conv1.weight")
    assert S.last_stage("vit_base_patch16_224", _model("vit_base_patch16_224", 32)) == "blocks.11"
    # the first module at the final grid: DenseNet's transition into it, the MobileNets' last stride-2 stage
    assert S.last_stage("densenet121", _model("densenet121", 32)) == "features.transition3"
    for name in ("efficientnet_b0", "mobilenetv2_100", "mobilenetv3_large_100"):
        assert S.last_stage(name, _model(name, 64)) == "blocks.5", name
    dense = _model("densenet121", 32)
    cascade = S.randomized_copy(dense, S.last_stage("densenet121", dense), seed=1)
    assert not same(dense, cascade, "features.transition3.conv.weight")
    assert same(dense, cascade, "features.denseblock3.denselayer24.conv2.weight")


def test_fake_quantized_copy_is_close_and_has_gradients():
    from bench.fakequant import FakeQuantUnavailable, fake_quantize
    from tests.core.test_gradcam import _model

    model = _model("resnet18", 32)
    calib = np.random.default_rng(0).normal(0, 1, (8, 3, 32, 32)).astype(np.float32)
    q = fake_quantize(model, calib)
    x = torch.from_numpy(calib[:2]).requires_grad_()
    y, ref = q(x), model(x)
    assert not torch.equal(y, ref) and torch.allclose(y, ref, atol=0.5 * float(ref.abs().max()) + 1e-3)
    y.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert q.get_submodule("layer4") is not None and hasattr(q.get_submodule("fc"), "inner")
    with pytest.raises(FakeQuantUnavailable, match="entropy"):
        fake_quantize(model, calib, calibration_method="entropy")


def test_read_boxes(tmp_path):
    good = tmp_path / "boxes.csv"
    good.write_text("image,x,y,width,height\npatient1,10,20,30,40\npatient1,50,50,10,10\npatient2,,,,\n")
    boxes = L.read_boxes(good)
    assert boxes == {"patient1": [(10.0, 20.0, 30.0, 40.0), (50.0, 50.0, 10.0, 10.0)], "patient2": []}
    assert L.boxes_for(boxes, "/data/x/patient1.dcm") == boxes["patient1"]
    assert L.boxes_for(boxes, "/data/x/other.png") is None
    m = L.box_mask(boxes["patient1"], (100, 200), 10)  # 100 wide, 200 high -> 10 x 10
    assert m.shape == (10, 10) and m[1:3, 1:4].all() and m.sum() == 2 * 3 + 1 * 1 + 0  # rows 1-2 cols 1-3; row 2 col 5
    cases = {
        "missing.csv": None,
        "cols.csv": "image,x,y,w,h\na,1,2,3,4\n",
        "nan.csv": "image,x,y,width,height\na,1,two,3,4\n",
        "neg.csv": "image,x,y,width,height\na,1,2,-3,4\n",
        "noname.csv": "image,x,y,width,height\n,1,2,3,4\n",
        "empty.csv": "image,x,y,width,height\n",
        "blank.csv": "",
    }
    messages = {"missing.csv": "does not exist", "cols.csv": "lacks column", "nan.csv": "must be numbers",
                "neg.csv": "not valid", "noname.csv": "image name is empty", "empty.csv": "no rows",
                "blank.csv": "lacks column"}
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(DataError, match=messages[name]):
            L.read_boxes(path)
    with pytest.raises(DataError, match="outside"):
        L.box_mask([(150, 0, 5, 5)], (100, 100), 10)


def test_resize_mask_follows_the_image_resize():
    m = np.zeros((128, 128), bool)
    m[32:64, 64:96] = True
    small = L.resize_mask(m, 64)
    assert small.shape == (64, 64) and small[16:32, 32:48].all() and small.sum() == 16 * 16


@pytest.mark.slow
def test_fidelity_of_a_trained_run_and_its_onnx_artifacts(tmp_path_factory, tiny_split):
    """The whole path on the tiny ResNet-18 run of the export tests: run-level measures and one call
    of artifact_fidelity per ONNX artifact (the bench contract)."""
    from export.pipeline import export_runs, load_artifact
    from tests.export.conftest import tiny_run

    run = tiny_run(tmp_path_factory, tiny_split)
    res = fidelity_run.run_fidelity(run, n=4, steps=8, with_road=False)
    assert res["grid"] == [1, 1] and res["mask_source"] == "synthetic lesion masks"
    assert res["lesion_occlusion"]["n_images"] == 4 and -1 <= res["lesion_occlusion"]["lesion_drop"] <= 1
    seen: list = []
    finer = fidelity_run.run_fidelity(run, n=4, steps=8, with_road=False, with_int8=False, layer="layer3",
                                      on_phase=seen.append)
    assert seen == fidelity_run.fidelity_phases(with_road=False) + [None]  # what the CLI's progress bar shows, in order
    assert finer["grid"] == [2, 2] and finer["layer"] == "layer3" and isinstance(finer["sanity"]["passed"], bool)
    assert 0 <= res["deletion_auc"] <= 1 and 0 <= res["insertion_auc"] <= 1
    assert isinstance(res["sanity"]["passed"], bool) and res["seconds_per_heatmap"] > 0
    assert res["cam_agreement"]["int8"]["source"].startswith("pytorch fake-quantized")
    out = tmp_path_factory.mktemp("fid-artifacts")
    records = export_runs([run], out, ["onnx"], ["fp32", "int8"], {}, progress=False, verify=False) \
        if "verify" in export_runs.__code__.co_varnames else export_runs([run], out, ["onnx"], ["fp32", "int8"], {},
                                                                          progress=False)
    fs = L.fidelity_images(run, n=4)
    cams = F.fp32_heatmaps(run, fs.inputs).cams
    cache: dict = {}
    for rec in (r for r in records if r["status"] == "ok"):
        row = F.artifact_fidelity(run.path, load_artifact(rec, out).predict, fs.inputs, cams,
                                  precision=rec["precision"], calibration=rec.get("calibration"), steps=8, cache=cache)
        assert {"deletion_auc", "insertion_auc", "cam_agreement"} <= set(row)
        if rec["precision"] == "fp32":
            assert row["cam_agreement"] is None and row["cam_agreement_source"] == "fp32 is the reference"
        else:
            assert -1 <= row["cam_agreement"] <= 1


def test_lesion_occlusion_tells_a_model_that_uses_the_lesion_from_one_that_does_not():
    x, masks = _inputs(), _quadrant_map().astype(bool)
    uses = L.lesion_occlusion(_predict, x, masks, dilate=0)
    assert uses["n_images"] == 4 and uses["p_original"] > 0.99
    assert uses["lesion_drop"] > 0.8 and abs(uses["elsewhere_drop"]) < 0.01  # 6 -> -2 logit; other quadrant: none
    wrong_place = np.roll(masks, (S // 2, S // 2), axis=(1, 2))  # a "lesion" the model never looks at
    blind = L.lesion_occlusion(_predict, x, wrong_place, dilate=0)
    assert abs(blind["lesion_drop"]) < 0.01 and blind["region_area"] == 0.25
    assert L.lesion_occlusion(_predict, x, np.zeros_like(masks))["n_images"] == 0
