"""`cxr-edge gradcam` (heatmaps, overlays, contact sheet) and `cxr-edge fidelity` (explanation fidelity)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.common import Progress, SkipBadLater, console, friendly, out, print_notes

Method = Annotated[str, typer.Option("--method",
                                     help="gradcam, gradcam++, hirescam, layercam or xgradcam (pytorch-grad-cam; "
                                           "LayerCAM weighs each cell by its own gradient and suits earlier, "
                                           "finer layers).")]
FidelityMethod = Annotated[str, typer.Option("--method", help="gradcam, gradcam++, hirescam, layercam or xgradcam; "
                                             "auto: choose method and layer per run on --select-split images "
                                             "(hirescam, xgradcam, gradcam at each stage output of stride >= 8).")]
Side = Annotated[str, typer.Option("--split", help="Side of the run's saved split to take images from when no "
                                   "IMAGES are given (train, val or test).")]
N = Annotated[int, typer.Option("--n", min=1,
                                help="Images taken from --split when no IMAGES are given (half PNEUMONIA).")]
Device = Annotated[str, typer.Option("--device", help="cpu or cuda[:N] for the PyTorch model.")]
Batch = Annotated[int, typer.Option("--batch-size", min=1, help="Images per Grad-CAM batch.")]
_LAYER_HELP = ("BACKBONE=LAYER (repeatable): Grad-CAM at this dotted module path instead of the registry's last "
               "stage, e.g. resnet18=layer3 (a finer grid: at 64 px the last stage of a stride-32 CNN is 2x2 cells)")
Layer = Annotated[list[str] | None, typer.Option("--layer", help=_LAYER_HELP + ".")]
AutoLayer = Annotated[list[str] | None, typer.Option("--layer", help=_LAYER_HELP + "; 'auto' (or BACKBONE=auto) "
                                                     "chooses each run's layer on --select-split images with lesion "
                                                     "masks: the best pointing game among the stage outputs that "
                                                     "pass the sanity check (stored as layer_selection).")]


def _read_choices(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """``(methods, layers)`` per backbone chosen by `cxr-edge fidelity --method auto|--layer auto` in ``path``."""
    import json

    try:
        doc = json.loads(Path(path).read_text())
        rows = [r for r in doc["runs"] if r.get("layer_selection")]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--choices {path}: not a fidelity.json of `cxr-edge fidelity` ({err})") from None
    if not rows:
        raise ValueError(f"--choices {path}: no run there was measured with --method auto or --layer auto")
    return {r["backbone"]: r["method"] for r in rows}, {r["backbone"]: r["layer"] for r in rows}


def _pick(run, side: str, n: int, seed: int = 0) -> list[str]:
    import numpy as np

    samples = run.split().samples(side)
    if not samples:
        raise ValueError(f"side {side!r} of {run.path / 'split.json'} has no images; choose train, val or test")
    rng = np.random.default_rng(seed)
    pos = [s.path for s in samples if s.label == 1]
    neg = [s.path for s in samples if s.label == 0]
    k_pos = min(len(pos), max(n - len(neg), (n + 1) // 2))
    pick = [pos[i] for i in sorted(rng.choice(len(pos), k_pos, replace=False))] if k_pos else []
    k_neg = min(len(neg), n - len(pick))
    pick += [neg[i] for i in sorted(rng.choice(len(neg), k_neg, replace=False))] if k_neg else []
    return pick


def _decode(paths: list[str], skip_bad: bool) -> tuple[list[str], list[Any]]:
    """The images (once; each run resizes them with its own preprocessing) and their paths; with ``skip_bad``
    the unreadable ones are left out, with a note."""
    from core.data import DataError, decode_image

    kept, decoded, bad = [], [], []
    for p in paths:
        try:
            decoded.append(decode_image(p))
            kept.append(p)
        except DataError as err:
            if not skip_bad:
                raise
            bad.append(err.reason)
    if bad:
        print_notes([f"{len(bad)} image(s) found unreadable and skipped (--skip-bad): " + "; ".join(bad)])
    if not kept:
        raise ValueError(f"none of the {len(paths)} image(s) could be read; give readable images")
    return kept, decoded


def _names(paths: list[str]) -> list[str]:
    """Unique file-name stems for the output files."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        stem = Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


@friendly
def gradcam(
    runs: Annotated[Path, typer.Argument(help="A run folder, or a folder of runs (runs/): one heatmap column "
                                         "per backbone.")],
    images: Annotated[list[Path] | None, typer.Argument(help="Image files (PNG, JPEG, DICOM...). Default: --n "
                                                        "images from --split of the first run's split.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for <backbone>/<image>.npy|.png, "
                                          "contact_sheet.png and gradcam.json.")] = Path("cams"),
    method: Method = "gradcam",
    side: Side = "test",
    n: N = 8,
    device: Device = "cpu",
    batch_size: Batch = 16,
    layer: Layer = None,
    choices: Annotated[Path | None, typer.Option("--choices", help="fidelity.json of `cxr-edge fidelity --method "
                                                 "auto` (or --layer auto): each backbone's chosen method and layer "
                                                 "replace --method/--layer for it.")] = None,
    skip_bad: SkipBadLater = False,
    progress: Progress = True,
) -> None:
    """Grad-CAM heatmaps of IMAGES for every run, prepared exactly as in training; raw .npy, overlay PNGs
    and one contact sheet (rows: images; columns: the image and each backbone's heatmap)."""
    import numpy as np
    from rich.progress import track

    from core import io
    from core.gradcam import METHODS, contact_sheet, explain, parse_layers, save_heatmaps
    from core.runs import find_runs

    if method not in METHODS:
        raise ValueError(f"--method {method!r} is not known; choose one of {', '.join(METHODS)}")
    found = find_runs([runs], skip_bad=skip_bad)
    layers = parse_layers(layer, [r.record["backbone"] for r in found])
    if "auto" in layers.values():
        raise ValueError("--layer auto chooses a layer by the pointing game on validation lesion masks: run "
                         "`cxr-edge fidelity RUNS --layer auto`, then pass the layer it names (its table's "
                         "'layer' column) here as --layer BACKBONE=LAYER")
    methods: dict[str, str] = {}
    if choices is not None:
        methods, chosen = _read_choices(choices)
        layers.update(chosen)
    if not images:
        print_notes([found[0].left_out_note((side,))])
    paths, decoded = _decode([str(p) for p in images] if images else _pick(found[0], side, n), skip_bad)
    names = _names(paths)
    labels = {}
    split = found[0].split()
    for name in ("train", "val", "test"):
        for s in split.samples(name):
            labels[s.path] = "PNEUMONIA" if s.label == 1 else "NORMAL"
    columns: dict[str, np.ndarray] = {}
    record: dict[str, Any] = {"method": method, "device": device, "images": paths, "runs": [],
                              "explained_class": "PNEUMONIA (the model's one logit)", "environment": io.environment()}
    first_images = None
    for run in track(found, description="Grad-CAM", disable=not progress or len(found) < 2):
        pre = run.preprocess
        imgs = np.stack([pre.image_to_uint8(d) for d in decoded])
        first_images = imgs if first_images is None else first_images
        name = run.record["backbone"]
        cb = explain(run.build_model(), run.backbone, pre, imgs, method=methods.get(name, method), device=device,
                     batch_size=batch_size, layer=layers.get(name))
        written = save_heatmaps(out_dir / name, names, imgs, cb.cams)
        columns[name] = cb.cams
        probs = 1 / (1 + np.exp(-cb.logits.astype(np.float64)))
        record["runs"].append({"run": str(run.path), "backbone": name, "size": pre.size,
                               "method": methods.get(name, method),
                               "layer": layers.get(name, run.backbone.cam_layer), "grid": list(cb.grids.shape[1:]),
                               "seconds_per_heatmap": cb.seconds_per_image,
                               "probabilities": probs.tolist(), "threshold": run.threshold, "files": written})
        out.print(f"{name}: {len(paths)} {methods.get(name, method)} heatmaps at {pre.size} px "
                  f"({layers.get(name, run.backbone.cam_layer)}, {cb.grids.shape[1]}x{cb.grids.shape[2]} grid), "
                  f"{cb.seconds_per_image * 1000:.0f} ms per heatmap on {device}")
    rows = [f"{labels.get(str(Path(p).resolve()), labels.get(p, ''))[:1]} {nm}" for p, nm in zip(paths, names)]
    sheet = contact_sheet(out_dir / "contact_sheet.png", first_images, columns, rows)
    io.write_json(out_dir / "gradcam.json", record)
    out.print(f"wrote {sheet} and {out_dir / 'gradcam.json'}")


@friendly
def fidelity(
    paths: Annotated[list[Path], typer.Argument(help="Run folders, folders of runs, or export folders "
                                                "(with manifest.json): each artifact is scored.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="JSON file of all results.")] = Path("fidelity.json"),
    method: FidelityMethod = "gradcam",
    side: Side = "test",
    n: Annotated[int, typer.Option("--n", min=1, help="PNEUMONIA images of --split to measure on.")] = 32,
    steps: Annotated[int, typer.Option("--steps", min=2, help="Deletion/insertion steps.")] = 32,
    boxes: Annotated[Path | None, typer.Option("--boxes", help="CSV image,x,y,width,height (RSNA style) of lesion "
                                               "boxes, for data without masks.")] = None,
    road: Annotated[bool, typer.Option("--road/--no-road",
                                       help="Compute ROAD (slow: a sparse solve per image).")] = True,
    device: Device = "cpu",
    layer: AutoLayer = None,
    select_split: Annotated[str, typer.Option("--select-split", help="Side whose PNEUMONIA images choose the layer "
                                              "under --layer auto (never test).")] = "val",
    skip_bad: SkipBadLater = False,
    progress: Progress = True,
) -> None:
    """Explanation fidelity. Runs: pointing game, energy in mask, deletion/insertion AUC, ROAD, the
    randomization sanity check, time per heatmap and FP16/BF16/INT8 heatmap agreement. Export folders:
    deletion/insertion AUC of every artifact (pixels ranked by its FP32 model's heatmap) and agreement."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bars

    from bench.fidelity import artifact_fidelity, fp32_heatmaps
    from bench.fidelity_run import fidelity_phases, run_fidelity
    from bench.layer_select import AUTO_METHODS, select_layer
    from bench.localization import fidelity_images
    from core import io
    from core.runs import find_runs, is_complete, load_run

    results: dict[str, Any] = {"method": method, "side": side, "n": n, "steps": steps, "runs": [], "artifacts": [],
                               "environment": io.environment()}
    run_paths, export_dirs = [], []
    for p in paths:
        (export_dirs if (p / "manifest.json").is_file() else run_paths).append(p)
    from core.gradcam import METHODS, parse_layers

    found = find_runs(run_paths, skip_bad=skip_bad) if run_paths else []
    print_notes([r.left_out_note(tuple(dict.fromkeys((side, select_split)))) for r in found])
    layers = parse_layers(layer, [r.record["backbone"] for r in found])
    if layers and export_dirs:
        raise ValueError("--layer applies to runs only: artifacts are judged by the pixel ranking of their run's "
                         "registry layer; score the export folders in a separate call")
    if method == "auto":
        if export_dirs:
            raise ValueError("--method auto applies to runs only: artifacts are judged by the pixel ranking of their "
                             "run's registry layer and one method; score the export folders in a separate call")
        if any(v != "auto" for v in layers.values()):
            raise ValueError("--method auto chooses the method and the layer together; leave out --layer")
        layers = {r.record["backbone"]: "auto" for r in found}
    elif method not in METHODS:
        raise ValueError(f"--method {method!r} is not known; choose one of {', '.join(METHODS)} or auto")
    if "auto" in layers.values() and select_split in ("test", side):
        raise ValueError(f"--select-split {select_split}: the layer would be chosen on the images it is judged on "
                         f"(--split {side}) or on test; use val to choose and test to judge")
    phases = fidelity_phases(with_road=road)
    if "auto" in layers.values():
        phases = ["layer selection", *phases]
    with Bars(TextColumn("{task.description:<60}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not progress) as bar:
        for run in found:
            name = run.record["backbone"]
            task = bar.add_task(f"{name}: {n} {side} images", total=len(phases))

            def on_phase(phase: str | None, task=task, name=name) -> None:
                done = len(phases) if phase is None else phases.index(phase)
                bar.update(task, completed=done, description=f"{name}: {phase or 'done'}")

            chosen, selection = layers.get(name), None
            if chosen == "auto":
                on_phase("layer selection")
                selection = select_layer(run, method=method, side=select_split, n=n, boxes=boxes, device=device,
                                         methods=AUTO_METHODS if method == "auto" else None)
                chosen = selection["layer"]
                console.print(f"{name}: {'--method' if method == 'auto' else '--layer'} auto chose "
                              f"{selection['method']} at {chosen} on {selection['n_images']} {select_split} "
                              f"images ({selection['reason']})")
                if selection["warning"]:
                    console.print(f"[yellow]warning: {name}: {selection['warning']}[/yellow]")
            elif "layer selection" in phases:
                on_phase("layer selection")
            run_method = selection["method"] if selection else method
            row = run_fidelity(run, side=side, n=n, method=run_method, steps=steps, device=device, boxes=boxes,
                               with_road=road, layer=chosen, on_phase=on_phase)
            if selection is not None:
                row["layer_selection"] = selection
            results["runs"].append(row)
    for folder in export_dirs:
        from export.manifest import read_manifest
        from export.pipeline import load_artifact

        by_run: dict[str, Any] = {}
        for rec in read_manifest(folder):
            row = {k: rec.get(k) for k in ("backbone", "format", "precision", "status", "path")}
            if rec.get("status") != "ok":
                results["artifacts"].append({**row, "error": rec.get("error") or rec.get("reason")})
                continue
            try:
                src = str(io.recorded_path(rec["source_run"], folder))  # relative to the manifest's folder
                if src not in by_run:
                    run = load_run(src, skip_bad) if is_complete(src) else None
                    if run is None:
                        raise ValueError(f"source run {src} of {rec['path']} is missing")
                    fs = fidelity_images(run, side=side, n=n)
                    by_run[src] = (fs, fp32_heatmaps(run, fs.inputs, method=method, device=device).cams, {})
                fs, cams, cache = by_run[src]
                predictor = load_artifact(rec, folder)
                row.update(artifact_fidelity(src, predictor.predict, fs.inputs, cams, precision=rec["precision"],
                                             calibration=rec.get("calibration"), steps=steps, device=device,
                                             cache=cache))
            except Exception as err:  # one failing artifact is a row with its error, never a stop
                row["error"] = f"{type(err).__name__}: {err}"
            console.print(f"{row['backbone']} {row['format']} {row['precision']}: "
                          + (row.get("error")
                             or "deletion %.3f insertion %.3f" % (row["deletion_auc"], row["insertion_auc"])))
            results["artifacts"].append(row)
    io.write_json(out_file, results)
    _print_tables(results)
    out.print(f"wrote {out_file}")


def _f(v: Any, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _print_tables(results: dict[str, Any]) -> None:
    if results["runs"]:
        t = Table(title=f"explanation fidelity of the FP32 models ({results['method']}, {results['side']}, "
                        f"n={results['n']} PNEUMONIA images)")
        for col in ("backbone", "val AUC", "layer", "grid", "pointing", "energy in mask",
                    "lesion drop (elsewhere)", "deletion ↓",
                    "insertion ↑", "ROAD ↑", "sanity", "INT8 ρ", "ms/heatmap"):
            t.add_column(col, no_wrap=True)
        for r in results["runs"]:
            s = r.get("sanity") or {}
            sanity = "-" if not s else f"{'pass' if s['passed'] else 'FAIL'} ({s['spearman_last_stage']:.2f})"
            int8 = (r.get("cam_agreement") or {}).get("int8", {}).get("spearman")
            occ = r.get("lesion_occlusion") or {}
            layer = f"{r['method']} {r['layer']} (auto)" if r.get("layer_selection") else r["layer"]
            t.add_row(r["backbone"], _f(r.get("val_roc_auc")), layer, "x".join(map(str, r["grid"])),
                      _f(r.get("pointing_game")),
                      f"{_f(r.get('energy_in_mask'))} (area {_f(r.get('mask_area'))})",
                      f"{_f(occ.get('lesion_drop'), '.2f')} ({_f(occ.get('elsewhere_drop'), '.2f')})",
                      _f(r["deletion_auc"]),
                      _f(r["insertion_auc"]), _f(r.get("road")), sanity, _f(int8),
                      _f(r["seconds_per_heatmap"] * 1000, ".0f"))
        out.print(t)
    if results["artifacts"]:
        t = Table(title="explanation fidelity of the artifacts (pixels ranked by the FP32 model's Grad-CAM)")
        for col in ("backbone", "format", "precision", "deletion ↓", "insertion ↑", "CAM ρ vs FP32", "top-10%", "note"):
            t.add_column(col, no_wrap=True)
        for r in results["artifacts"]:
            t.add_row(r["backbone"], r["format"], r["precision"], _f(r.get("deletion_auc")), _f(r.get("insertion_auc")),
                      _f(r.get("cam_agreement")), _f(r.get("cam_top10_overlap")),
                      r.get("error") or r.get("cam_agreement_source") or "")
        out.print(t)
