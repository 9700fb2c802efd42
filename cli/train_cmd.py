"""`cxr-edge train`, `train-all` and `evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import (
    Data,
    Progress,
    Ratios,
    SkipBad,
    SkipBadLater,
    SplitMethod,
    SplitSeed,
    SynthN,
    SynthSize,
    console,
    friendly,
    out,
    parse_ratios,
    print_notes,
)
from core.synthetic import SyntheticSpec

Out = Annotated[Path, typer.Option("--out", "-o",
                                   help="Folder of run folders; each backbone writes <out>/<backbone>/.")]
Size = Annotated[int, typer.Option("--size", min=16,
                                   help="Input size in pixels (square). 224 matches ImageNet weights.")]
Epochs = Annotated[int, typer.Option("--epochs", min=1, help="Maximum epochs.")]
Batch = Annotated[int, typer.Option("--batch-size", min=2, help="Images per step.")]
Lr = Annotated[float, typer.Option("--lr",
                                   help="Peak AdamW learning rate (> 0, after warm-up), shared by all backbones; "
                                    "ViT-B/16 runs at lr x 0.0625 (its registry lr_scale), recorded in run.json.")]
Wd = Annotated[float, typer.Option("--weight-decay", min=0.0, help="AdamW weight decay.")]
Gamma = Annotated[float, typer.Option("--gamma", min=0.0, help="Focal loss gamma (0 = weighted BCE).")]
Alpha = Annotated[float | None, typer.Option("--alpha", min=0.0, max=1.0,
                                             help="Focal loss weight of PNEUMONIA in [0,1]; default: the "
                                             "share of NORMAL images on the training side.")]
Patience = Annotated[int, typer.Option("--patience", min=1,
                                       help="Stop after this many epochs without a better val ROC-AUC.")]
Seed = Annotated[int, typer.Option("--seed", help="Training seed (init, order, augmentation).")]
Pretrained = Annotated[bool, typer.Option("--pretrained", help="Start from timm's ImageNet weights (needs the hub).")]
Weights = Annotated[Path | None, typer.Option("--weights", help="Start from ImageNet weights in this local file "
                                              "(a timm state dict; for one backbone).")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
Threads = Annotated[int | None, typer.Option("--threads", min=1,
                                             help="CPU threads for torch (default: all cores; the count used is "
                                                  "recorded in the run as environment.torch_threads). 0 is refused "
                                                  "rather than read as all cores: leave the option out for that.")]
NoAugment = Annotated[bool, typer.Option("--no-augment", help="Turn off training-side augmentation.")]
CutMix = Annotated[float, typer.Option("--cutmix", min=0.0, max=1.0,
                                       help="Probability per batch of CutMix (Yun et al. 2019, through "
                                       "timm's Mixup: a box of another image pasted in, labels mixed by area); "
                                       "0 = off, as in the paper. Needs an even --batch-size.")]
Recipe = Annotated[str, typer.Option("--recipe", help="Named training recipe (core/recipes.py; docs/recipes.md): "
                                      "baseline, strong-aug, equalize, smooth-ema, lean. Recorded in run.json.")]
Loss = Annotated[str, typer.Option("--loss", help="focal (the paper's; --gamma, --alpha), bce, or weighted-bce "
                                  "(binary cross-entropy with class weights n / (2 n_class) from the training "
                                  "side's class frequencies). Recorded in run.json's loss block.")]
Optimizer = Annotated[str, typer.Option("--optimizer", help="adamw (decoupled --weight-decay) or adam (torch Adam: "
                                        "--weight-decay as an L2 term; pass --weight-decay 0 for Keras' Adam).")]
Schedule = Annotated[str, typer.Option("--schedule", help="cosine (linear warm-up, then cosine decay) or constant "
                                       "(--lr throughout, no warm-up).")]
FreezeEpochs = Annotated[int, typer.Option("--freeze-epochs", help="Train only the new classifier head for this many "
                                           "epochs (frozen BatchNorm keeps its statistics), then unfreeze --unfreeze. "
                                           "Meant for a pretrained start (--pretrained / --weights).")]
Unfreeze = Annotated[str, typer.Option("--unfreeze", help="Modules that train after the head-only epochs: "
                                       "comma-separated dotted prefixes (e.g. layer4), or all.")]
BackboneLrScale = Annotated[float, typer.Option("--backbone-lr-scale", help="Learning rate multiplier of the "
                                                "backbone's (non-head) parameters, e.g. 0.1 to fine-tune at a 10x "
                                                "lower rate.")]
SplitFile = Annotated[Path | None, typer.Option("--split-file", help="Use this saved split instead of making one.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue interrupted runs from their last epoch.")]
Force = Annotated[bool, typer.Option("--force", help="Replace existing runs in --out.")]
Jobs = Annotated[int, typer.Option("--jobs", "-j", min=1,
                                   help="CPU: train this many backbones at a time, each in a process "
                                   "pinned to its own share of the cores, with that many torch threads (recorded "
                                   "as the run's threads; results depend on the thread count).")]


def _run(names, data, out_dir, size, epochs, batch_size, lr, weight_decay, gamma, alpha, patience, seed, pretrained,
         weights, device, threads, no_augment, split_file, split, split_seed, ratios, skip_bad, synthetic_images,
         resume, force, progress, jobs=1, cutmix=0.0, synthetic_size=128, recipe="baseline", *, loss="focal",
         optimizer="adamw", schedule="cosine", freeze_epochs=0, unfreeze="all", backbone_lr_scale=1.0) -> None:
    from core import recipes
    from core.pipeline import DataConfig, train_backbones
    from core.synthetic import SyntheticSpec
    from core.train import TrainConfig

    if weights is not None and len(names) > 1:
        raise ValueError("--weights names one file for one backbone; train each backbone with its own file")
    base = TrainConfig(backbone=names[0], size=size, epochs=epochs, batch_size=batch_size, lr=lr,
                       weight_decay=weight_decay, gamma=gamma, alpha=alpha, patience=patience, seed=seed,
                       augment=not no_augment, cutmix=cutmix, pretrained=pretrained,
                       weights=str(weights) if weights else None,
                       device=device, threads=threads, loss=loss, optimizer=optimizer, schedule=schedule,
                       freeze_epochs=freeze_epochs, unfreeze=unfreeze, backbone_lr_scale=backbone_lr_scale)
    base = recipes.apply(base, recipe)
    data_cfg = DataConfig(data=data, split_file=str(split_file) if split_file else None, split_method=split,
                          split_seed=split_seed, ratios=parse_ratios(ratios), skip_bad=skip_bad,
                          synthetic=SyntheticSpec(n_images=synthetic_images, size=synthetic_size))
    outcomes = train_backbones(names, base, data_cfg, out_dir, resume=resume, force=force, console=console,
                               show_progress=progress, jobs=jobs)
    table = Table(title=f"runs in {out_dir} ({outcomes[0].record['init']}, {size} px, recipe {recipe})")
    for col in ("backbone", "status", "val AUC", "threshold", "best/epochs", "secs"):
        table.add_column(col, no_wrap=True)
    for o in outcomes:
        r = o.record
        table.add_row(o.backbone, o.status, f"{r['val']['metrics']['roc_auc']['value']:.4f}",
                      f"{r['threshold']['threshold']:.3f}", f"{r['best_epoch']}/{r['epochs_run']}",
                      f"{r['train_seconds']:.0f}")
        bad = r.get("data", {}).get("skipped_files", 0)
        if bad:
            console.print(f"[yellow]{o.backbone}: {bad} unreadable file(s) skipped (listed in {o.run_dir}/run.json; "
                          "later stages leave them out)", highlight=False)
    out.print(table)


@friendly
def train(
    backbones: Annotated[list[str], typer.Argument(help="Backbone name(s): resnet18, resnet50, densenet121, "
                                                   "efficientnet_b0, mobilenetv2_100, mobilenetv3_large_100, "
                                                   "vit_base_patch16_224; the seed studies' baselines cnn3, "
                                                   "gapcnn; or the groups all, baselines.")],
    data: Data = "synthetic", out_dir: Out = Path("runs"), size: Size = 64, epochs: Epochs = 4,
    batch_size: Batch = 16, lr: Lr = 4e-3, weight_decay: Wd = 0.05, gamma: Gamma = 2.0, alpha: Alpha = None,
    patience: Patience = 5, seed: Seed = 42, pretrained: Pretrained = False, weights: Weights = None,
    device: Device = "auto", threads: Threads = None, no_augment: NoAugment = False, split_file: SplitFile = None,
    split: SplitMethod = "patient", split_seed: SplitSeed = 42, ratios: Ratios = "0.7,0.15,0.15",
    skip_bad: SkipBad = False, synthetic_images: SynthN = SyntheticSpec.n_images, resume: Resume = False,
    force: Force = False,
    jobs: Jobs = 1, progress: Progress = True, cutmix: CutMix = 0.0, synthetic_size: SynthSize = SyntheticSpec.size,
    recipe: Recipe = "baseline", loss: Loss = "focal", optimizer: Optimizer = "adamw", schedule: Schedule = "cosine",
    freeze_epochs: FreezeEpochs = 0, unfreeze: Unfreeze = "all", backbone_lr_scale: BackboneLrScale = 1.0,
) -> None:
    """Train one or more backbones with focal loss on a patient-wise split; one run folder each.

    Keeps the checkpoint with the best validation ROC-AUC and picks the operating threshold on
    validation (Youden's J). A finished run with the same settings is left alone.
    """
    from core.registry import parse_names

    _run(parse_names(backbones), data, out_dir, size, epochs, batch_size, lr, weight_decay, gamma, alpha, patience,
         seed, pretrained, weights, device, threads, no_augment, split_file, split, split_seed, ratios, skip_bad,
         synthetic_images, resume, force, progress, jobs, cutmix, synthetic_size, recipe, loss=loss,
         optimizer=optimizer, schedule=schedule, freeze_epochs=freeze_epochs, unfreeze=unfreeze,
         backbone_lr_scale=backbone_lr_scale)


@friendly
def train_all(
    backbones: Annotated[str, typer.Option("--backbones", "-b", help="Comma-separated names, or the groups 'all' "
                                           "(the paper's seven) and 'baselines' (cnn3, gapcnn).")] = "all",
    data: Data = "synthetic", out_dir: Out = Path("runs"), size: Size = 64, epochs: Epochs = 4,
    batch_size: Batch = 16, lr: Lr = 4e-3, weight_decay: Wd = 0.05, gamma: Gamma = 2.0, alpha: Alpha = None,
    patience: Patience = 5, seed: Seed = 42, pretrained: Pretrained = False,
    device: Device = "auto", threads: Threads = None, no_augment: NoAugment = False, split_file: SplitFile = None,
    split: SplitMethod = "patient", split_seed: SplitSeed = 42, ratios: Ratios = "0.7,0.15,0.15",
    skip_bad: SkipBad = False, synthetic_images: SynthN = SyntheticSpec.n_images, resume: Resume = False,
    force: Force = False,
    jobs: Jobs = 1, progress: Progress = True, cutmix: CutMix = 0.0, synthetic_size: SynthSize = SyntheticSpec.size,
    recipe: Recipe = "baseline", loss: Loss = "focal", optimizer: Optimizer = "adamw", schedule: Schedule = "cosine",
    freeze_epochs: FreezeEpochs = 0, unfreeze: Unfreeze = "all", backbone_lr_scale: BackboneLrScale = 1.0,
) -> None:
    """Train all seven backbones (or --backbones, e.g. all,baselines) with identical settings on one saved split."""
    from core.registry import parse_names

    _run(parse_names(backbones), data, out_dir, size, epochs, batch_size, lr, weight_decay, gamma, alpha, patience,
         seed, pretrained, None, device, threads, no_augment, split_file, split, split_seed, ratios, skip_bad,
         synthetic_images, resume, force, progress, jobs, cutmix, synthetic_size, recipe, loss=loss,
         optimizer=optimizer, schedule=schedule, freeze_epochs=freeze_epochs, unfreeze=unfreeze,
         backbone_lr_scale=backbone_lr_scale)


@friendly
def evaluate(
    runs: Annotated[list[Path], typer.Argument(help="Run folders, or a folder of runs (e.g. runs/); with --data also "
                                               "export folders (manifest.json) or artifact files.")],
    side: Annotated[str, typer.Option("--split", help="Side of the saved split to evaluate: train, val or test "
                                      "(without --data).")] = "test",
    data: Annotated[str | None, typer.Option("--data", "-d", help="Outside data to score every model on: a folder "
                                             "(Kermany layout or NORMAL|PNEUMONIA) or a CSV (path,label"
                                             "[,patient_id]); figures beside each model's internal test ones.")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="JSON report path (default: <first run's "
                                                  "parent>/evaluate-<side>.json, with --data evaluate-external.json "
                                                  "in the current folder).")] = None,
    n_boot: Annotated[int, typer.Option("--n-boot", min=1, help="Bootstrap replicates for the 95% CIs.")] = 1000,
    tta: Annotated[bool, typer.Option("--tta", help="With --data: average each model's probabilities over the "
                                      "test-time views of core.tta (identity and four 4% shifts).")] = False,
    threads: Threads = None,
    device: Device = "auto",
    skip_bad: SkipBadLater = False,
    progress: Progress = True,
) -> None:
    """Metrics with bootstrap 95% CIs at each run's validation threshold; with several runs, their
    ensemble too (mean of probabilities, threshold chosen on validation). With --data: the same on an outside
    data set, beside the internal test figures, with calibration, a local operating point and a shift warning."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    if data is not None:
        return _evaluate_external(runs, data, out_file or Path("evaluate-external.json"), n_boot, skip_bad, tta,
                                  threads, device, progress)
    if tta:
        raise ValueError("--tta applies to --data (outside data); drop it, or pass --data FOLDER")
    from core import io
    from core.evaluate import evaluate_runs
    from core.runs import find_runs

    found = find_runs(runs, skip_bad=skip_bad)
    report = evaluate_runs(found, side, n_boot=n_boot, device=device, progress=progress)
    left = report.get("images_left_out")
    if left:
        recorded = sum(left["recorded"].values())
        print_notes([f"{recorded + len(left['found_unreadable'])} image(s) left out: {recorded} recorded as unreadable "
                     f"by the run(s), {len(left['found_unreadable'])} found unreadable now and skipped (--skip-bad); "
                     f"listed in the report"])
    out_file = out_file or found[0].path.parent / f"evaluate-{side}.json"
    io.write_json(out_file, report)
    table = Table(title=f"{side} side of split {report['split_hash']} ({report['n_images']} images); "
                        f"95% bootstrap CIs, thresholds from val")
    names = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc")
    for col in ("model", "threshold", *names):
        table.add_column(col)
    rows = [(r["backbone"], r) for r in report["runs"]]
    if "ensemble" in report:
        rows.append(("ensemble (mean prob.)", report["ensemble"]))
    for name, r in rows:
        cells = [f"{m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]" for m in
                 (r["metrics"][k] for k in names)]
        table.add_row(name, f"{r['threshold']:.3f}", *cells)
    out.print(table)
    out.print(f"report written to {out_file}")


@friendly
def recipes(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown section per recipe (docs/recipes.md).")]
    = False,
) -> None:
    """List the named training recipes: what each sets, why, and the literature behind it."""
    from core import recipes as rc

    if markdown:
        for r in rc.RECIPES.values():
            settings = ", ".join(f"`{k}={v}`" for k, v in r.settings) or "the defaults of `cxr-edge train`"
            out.print(f"### `{r.name}`\n\n{r.summary[0].upper() + r.summary[1:]}.\n\n- Sets: {settings}\n"
                      f"- Why: {r.rationale}\n- Sources: "
                      + "; ".join(r.citations) + "\n", markup=False, highlight=False, soft_wrap=True)
        return
    table = Table(title="training recipes (cxr-edge train-all --recipe NAME)")
    for col in ("recipe", "what it does", "sets"):
        table.add_column(col, overflow="fold")
    for r in rc.RECIPES.values():
        table.add_row(r.name, r.summary, ", ".join(f"{k}={v}" for k, v in r.settings) or "-")
    out.print(table)


def external_table(report: dict) -> Table:
    """The outside-data table (fits 100 columns): per model and figure, outside [CI], internal test, change."""
    from rich import box

    from core.external import table_rows

    d = report["data"]
    table = Table(title=f"{d['n_images']} outside images against each model's internal test side",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col, justify in (("model", "left"), ("figure", "left"), ("outside [95% CI]", "right"),
                         ("int. test", "right"), ("change", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    for row in table_rows(report):
        table.add_row(*row, end_section=row[1] == "ECE (15 bins)")
    return table


def _evaluate_external(models, data, out_file, n_boot, skip_bad, tta, threads, device, progress) -> None:
    from core.external import evaluate_external, summary_lines, write_report

    report = evaluate_external(models, data, skip_bad=skip_bad, tta=tta, n_boot=n_boot, device=device,
                               threads=threads, progress=progress)
    json_path, png = write_report(report, out_file)
    out.print(external_table(report))
    for line in summary_lines(report):
        out.print(line, highlight=False, soft_wrap=True)
    out.print(f"report written to {json_path}; reliability diagram {png}")
