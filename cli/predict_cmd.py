"""`cxr-edge predict` (one row per image with a chosen model) and `cxr-edge package` (a bundle for the device)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import Progress, console, friendly, out

ModelArg = Annotated[Path, typer.Argument(help="A run folder, an export folder (with --pick), one artifact file "
                                          "(.onnx, .xml, .pte, .tflite, .engine) or a bundle of `cxr-edge package`.")]
Pick = Annotated[str | None, typer.Option("--pick", help="BACKBONE/FORMAT/PRECISION of an export folder's artifact, "
                                          "e.g. resnet18/onnx/int8 (`cxr-edge recommend` names one).")]
RunOpt = Annotated[Path | None, typer.Option("--run", help="The FP32 run the artifact was exported from, when its "
                                             "recorded source_run is not here (e.g. moved).")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]


@friendly
def predict(
    model: ModelArg,
    inputs: Annotated[list[Path], typer.Argument(help="Image files (JPEG, PNG, TIFF, BMP, DICOM) or folders "
                                                 "(recursed).")],
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Write the rows to this .csv or .json file "
                                                  "(default: CSV on stdout).")] = None,
    heatmaps: Annotated[Path | None, typer.Option("--heatmaps", help="Folder for Grad-CAM overlays (.png) and "
                                                  "heatmaps (.npy) of the source run's FP32 PyTorch model.")] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Average the probability over the image and four small "
                                      "shifts (core.tta; no flips).")] = False,
    pick: Pick = None,
    batch: Annotated[int, typer.Option("--batch", help="Images per batch.")] = 8,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads of the runtime (default: its own, "
                                                "all cores).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Threads decoding the next batches while the "
                                                "current one runs (default 2).")] = None,
    run: RunOpt = None,
    force: Force = False,
    shift_check: Annotated[bool, typer.Option("--shift/--no-shift", help="Compare the images with the source run's "
                                              "validation and training images (label-free shift warning; needs "
                                              "the run and at least 20 images).")] = True,
    progress: Progress = True,
) -> None:
    """PNEUMONIA probability and decision for each image, at the model's own threshold and preprocessing.

    One row per image: path, probability, decision (NORMAL/PNEUMONIA), threshold, model id
    (backbone/format/precision@sha256) and the error of a file that could not be read. Exit status 1 when any
    image failed (the others are still predicted).
    """
    from export import model_ref
    from export.predict import (
        PredictConfig,
        Reporter,
        ShiftCheck,
        csv_text,
        default_workers,
        list_images,
        model_info,
        predict_paths,
        write_rows,
    )

    config = PredictConfig(batch=batch, tta=tta, workers=workers or default_workers())
    if out_file is not None and out_file.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--out {out_file}: name a .csv or a .json file")
    if out_file is not None and out_file.exists() and not force:
        raise ValueError(f"--out {out_file} already exists (earlier predictions); pass --force to replace it")
    ref = model_ref.resolve(model, pick)
    paths = list_images(inputs)
    cams = None
    if heatmaps is not None:
        from export.predict_cams import HeatmapWriter

        cams = HeatmapWriter(ref, heatmaps, run or ref.source_run, force=force)
    predictor = ref.load(threads=threads)
    console.print(f"{ref.model_id}: {len(paths)} images, threshold {ref.threshold:.4f} (chosen on "
                  f"{ref.threshold_chosen_on}), preprocessing from {ref.described_by}" + (", TTA" if tta else ""),
                  highlight=False, soft_wrap=True)
    shift = ShiftCheck(ref, enabled=shift_check)
    with Reporter(len(paths), console, enabled=progress) as rep:
        done = {"n": 0, "failed": 0}

        def on_batch(b, rows) -> None:
            shift.add(b)
            if cams is not None:
                cams.add(b, rows)
            done["n"] += len(rows)
            done["failed"] += sum(1 for r in rows if r["error"])
            rep.update(done["n"], done["failed"])

        rows, summary = predict_paths(predictor, ref, paths, config, on_batch)
    columns = ("path", "probability", "decision", "threshold", "model", "error") + (("heatmap",) if cams else ())
    if cams is not None:
        where = cams.close()
        console.print(f"heatmaps: {cams.caption}; {where}" + (f" [yellow]{cams.warning}" if cams.warning else ""),
                      highlight=False, soft_wrap=True)
    shifted = shift.report(rows, progress=progress)
    if out_file is None:
        out.file.write(csv_text(rows, columns))
    else:
        write_rows(out_file, rows, model_info(ref, tta), {**summary.to_dict(), "shift": shifted}, columns, force=force)
    for r in rows:
        if r["error"]:
            console.print(f"[red]failed:[/red] {r['error']}", highlight=False, soft_wrap=True)
    console.print(summary.line() + (f"; wrote {out_file}" if out_file else ""), highlight=False, soft_wrap=True)
    if "skipped" in shifted:
        console.print(f"shift check: not run ({shifted['skipped']})", highlight=False, soft_wrap=True)
    elif shifted["shifted"]:
        console.print("[yellow]SHIFT: these images look unlike the training data: " + "; ".join(shifted["reasons"])
                      + ". Check the figures on a labelled sample of this site before trusting the decisions "
                      "(`cxr-edge evaluate MODEL --data SAMPLE`).", highlight=False, soft_wrap=True)
    else:
        console.print(f"shift check: no shift detected against the model's validation images ({shifted['n_images']} "
                      f"images{'; ' + shifted['notes'][0] if shifted['notes'] else ''})", highlight=False,
                      soft_wrap=True)
    if summary.failed:
        raise typer.Exit(1)


@friendly
def package(
    model: ModelArg,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The bundle folder to write (built beside it, then "
                                          "renamed into place).")],
    pick: Pick = None,
    results: Annotated[Path | None, typer.Option("--results", help="Results folder of `cxr-edge bench` (e.g. "
                                                 "results/cpu): the artifact's test figures with CIs, latency and "
                                                 "fidelity go into model.json and the card.")] = None,
    evaluation: Annotated[Path | None, typer.Option("--evaluation", help="JSON of an external evaluation (`cxr-edge "
                                                    "evaluate --data`): stored verbatim and summarised.")] = None,
    threshold_from: Annotated[Path | None, typer.Option("--threshold-from", help="JSON with local_operating_point "
                                                        "{threshold, n_images, target_sensitivity}: adopt the "
                                                        "threshold chosen on the site's own sample.")] = None,
    run: RunOpt = None,
    force: Force = False,
) -> None:
    """A folder to copy to the device: the artifact, model.json, MODEL_CARD.md, a standalone predict.py
    (numpy, Pillow and the runtime only) and its requirements.txt."""
    from export import model_ref
    from export.bundle import package as write_bundle

    ref = model_ref.resolve(model, pick)
    if ref.kind != "artifact":
        raise ValueError(f"{model} is a {ref.kind}; package an exported artifact: an export folder with --pick, or "
                         "an .onnx/.xml file of `cxr-edge export`")
    bundle = write_bundle(ref, out_dir, results=results, evaluation=evaluation, threshold_from=threshold_from,
                          run_dir=run, force=force)
    files = sorted(p.name for p in bundle.iterdir())
    out.print(f"packaged {ref.model_id} into {bundle}: {', '.join(files)}", highlight=False, soft_wrap=True)
    out.print("on the device: pip install -r requirements.txt; python predict.py IMAGES... --out predictions.csv",
              highlight=False, markup=False, soft_wrap=True)
