"""`cxr-edge bench`, `table` and `recommend`: measure every artifact, show the table, pick one to ship."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import Progress, SkipBadLater, console, friendly, out, print_notes


@friendly
def bench(
    artifacts: Annotated[Path, typer.Argument(help="Artifacts folder holding manifest.json (from `cxr-edge export`).")]
    = Path("artifacts"),
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Results folder: results.json, table.csv, "
                                                 "table.md, pareto.png. Default: results/<device>.")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda. On cuda: PyTorch FP32/FP16/BF16 "
                                        "(channels-last), onnxruntime CUDA and TensorRT providers, OpenVINO GPU and "
                                        "TensorRT engines, each skipped with its reason where absent.")] = "cpu",
    batches: Annotated[str, typer.Option("--batches", help="Comma-separated batch sizes to time.")] = "1,8,32",
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed calls per batch size before timing.")] = 3,
    min_iters: Annotated[int, typer.Option("--min-iters", min=2,
                                           help="Fewest timed calls per batch size and round.")] = 10,
    budget_s: Annotated[float, typer.Option("--budget-s",
                                            help="Seconds (> 0) of timed calls per artifact, over all batch "
                                            "sizes and rounds (each gets an equal share, at least --min-iters "
                                            "calls).")] = 3.0,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Timing rounds, one after another; the table's ± band "
                                        "(95% for a repeat's p50) comes from their medians: 4 or more.")] = 4,
    block_s: Annotated[float, typer.Option("--block-s",
                                           help="Rounds are cut into blocks of about this many seconds (> 0) "
                                           "that take turns across the artifacts (and the speed probe), so the "
                                           "machine's drift hits all alike; more blocks, steadier rounds.")] = 0.025,
    interleave: Annotated[str, typer.Option("--interleave", help="all: score every artifact, then time all in "
                                            "turns (a window of them loaded at a time, every round visiting every "
                                            "window), so rows of different backbones share the machine's minutes; "
                                            "backbone: time each backbone's artifacts before scoring the next.")]
    = "all",
    max_memory_gb: Annotated[float | None, typer.Option("--max-memory-gb", min=0.01, help="GB of artifacts loaded "
                                                        "at once while timing: they are timed in turns a window "
                                                        "at a time within it. Default: 25% of this machine's "
                                                        "memory, at most 2.")] = None,
    window_passes: Annotated[int, typer.Option("--window-passes", min=1, help="When the artifacts need several "
                                               "windows: how many times each round visits every window (each for "
                                               "its share of the round's blocks; more reloads, each row's calls "
                                               "spread wider over the round).")] = 1,
    threads: Annotated[int | None, typer.Option("--threads", min=1,
                                                help="CPU threads for torch, onnxruntime (intra-op) "
                                                "and OpenVINO. Default: torch's (all cores).")] = None,
    compile: Annotated[bool, typer.Option("--compile", help="Add torch.compile rows (needs a C++ compiler on CPU; "
                                          "a failure is a failed row).")] = False,
    n_boot: Annotated[int, typer.Option("--n-boot", min=1, help="Bootstrap replicates of the 95% CIs.")] = 1000,
    backbones: Annotated[str | None, typer.Option("--backbones", help="Comma-separated backbones to bench (default: "
                                                  "all in the manifest).")] = None,
    runs: Annotated[Path | None, typer.Option("--runs", help="Folder of run folders to use instead of each "
                                              "artifact's recorded source_run (e.g. after moving them).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace results already in --out.")] = False,
    fidelity_n: Annotated[int, typer.Option("--fidelity-n", min=0, help="PNEUMONIA test images per run for the "
                                            "explanation-fidelity columns (deletion/insertion AUC, INT8 heatmap "
                                            "agreement, sanity check); 0 turns them off.")] = 8,
    fidelity_steps: Annotated[int, typer.Option("--fidelity-steps", min=2, help="Deletion/insertion steps.")] = 16,
    skip_bad: SkipBadLater = False,
    progress: Progress = True,
) -> None:
    """Benchmark every artifact in the manifest, plus PyTorch eager FP32 of each backbone.

    Accuracy on the test side of each run's saved split at its validation threshold (95% bootstrap
    CIs), agreement with FP32; latency percentiles and throughput per batch size; parameters, GFLOPs,
    bytes and peak memory. A failing artifact is a failed row with its error; the loop goes on. Exit status 1
    when no row is ok, or when a backbone's run or test images could not be read (the results are written all the
    same).
    """
    from bench import fidelity_hook, report
    from bench.latency import LatencyConfig, parse_batches
    from bench.results_file import check_out, write_results
    from bench.runner import ROW_METRICS, BenchConfig, bench_artifacts

    fidelity_hook.SETTINGS = fidelity_hook.FidelitySettings(n=fidelity_n, steps=fidelity_steps)
    fidelity_hook.reset()
    config = BenchConfig(device=device, threads=threads, compile=compile, n_boot=n_boot,
                         latency=LatencyConfig(batches=parse_batches(batches), warmup=warmup, min_iters=min_iters,
                                               max_iters=max(1000, min_iters), budget_s=budget_s, rounds=rounds,
                                               block_s=block_s),
                         backbones=tuple(b.strip() for b in backbones.split(",") if b.strip()) if backbones else (),
                         runs_dir=str(runs) if runs else None, interleave=interleave, skip_bad=skip_bad,
                         max_memory_gb=max_memory_gb, window_passes=window_passes)
    out_dir = out_dir or Path("results") / device
    check_out(out_dir, force)
    hook = fidelity_hook.explanation_fidelity
    added = bool(fidelity_n) and hook not in ROW_METRICS
    if added:
        ROW_METRICS.append(hook)
    try:
        doc = bench_artifacts(artifacts, config, progress=progress, console=console,
                              on_backbone=lambda partial: write_results(out_dir, partial))
    finally:
        if added:
            ROW_METRICS.remove(hook)
        fidelity_hook.reset()
    write_results(out_dir, doc)
    paths = report.write_reports(doc, out_dir)
    _print(doc, out_dir)
    out.print(f"results: {out_dir / 'results.json'}; " + ", ".join(str(p) for p in paths))
    counts = {s: sum(r["status"] == s for r in doc["rows"]) for s in ("ok", "skipped", "failed")}
    console.print(f"{counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed rows in "
                  f"{doc['seconds']:.0f} s")
    print_notes([_left_out(name, info) for name, info in doc["backbones"].items()]
                + [r.get("memory_warning") for r in doc["rows"]])
    mem = doc.get("memory", {})
    console.print(f"peak resident memory {mem.get('peak_rss_mib', 0) / 1024:.2f} GB; at most "
                  f"{mem.get('max_memory_gb')} GB of artifacts loaded at once while timing", highlight=False)
    unprepared = {name: info["error"] for name, info in doc["backbones"].items() if info.get("error")}
    for name, error in unprepared.items():
        console.print(f"[bold red]error:[/bold red] {name}: {error}", highlight=False, soft_wrap=True)
    if not counts["ok"]:
        console.print(f"[bold red]error:[/bold red] no row is ok ({counts['failed']} failed, {counts['skipped']} "
                      f"skipped): nothing was measured. Each row's error or reason is in the notes above and in "
                      f"{out_dir / 'results.json'}", highlight=False, soft_wrap=True)
    if unprepared or not counts["ok"]:  # a backbone's rows all failed for one reason (printed above), or none is ok
        raise typer.Exit(1)


def _left_out(name: str, info: dict) -> str | None:
    """One line on the test images a backbone's rows were scored without, or None."""
    left = info.get("test_images_left_out")
    if not left:
        return None
    found = len(left["found_unreadable"])
    return (f"{name}: {left['recorded'] + found} test image(s) left out ({left['recorded']} recorded as unreadable "
            f"in its run, {found} found unreadable now and skipped with --skip-bad); accuracy is on the "
            f"{info.get('n_test')} others")


def _print(doc, folder: Path, every_row: bool = False, keys: list[str] | None = None) -> None:
    """The Pareto-optimal rows and the picks under 10, 30 and 100 ms in 100 columns, then where the full table
    is; ``every_row`` prints every row (with every column unless ``keys`` names some) and its notes. A file or
    pipe gets 100 columns for the short view and the full width for every row or column."""
    from rich.console import Console

    from bench import report

    wide = every_row or keys is not None
    con = out if out.is_terminal else Console(width=400 if wide else 100)
    if not every_row:
        con.print(report.summary_table(doc, keys))
        con.print(report.SUMMARY_LEGEND, highlight=False, markup=False, style="dim")
        for line in report.pick_lines(doc):
            con.print(line, highlight=False, markup=False)
        counts = {s: sum(r["status"] == s for r in doc["rows"]) for s in ("ok", "skipped", "failed")}
        for line in (f"{counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed rows.",
                     f"Full table: {folder / report.TABLE_MD} (and {report.TABLE_CSV})",
                     f"Every row, with reasons and environment: cxr-edge table {folder} --all"):
            con.print(line, highlight=False, markup=False)
        return
    con.print(report.rich_table(doc, compact=keys is None and con.width < 200, keys=keys))
    for reason, i in report.note_numbers(doc["rows"]).items():
        con.print(f"[{i}] {reason}", highlight=False, markup=False)
    for line in report.environment_lines(doc):
        con.print(line, highlight=False, markup=False, style="dim")


@friendly
def table(
    results: Annotated[Path, typer.Argument(help="Results folder (or its results.json) from `cxr-edge bench`.")]
    = Path("results/cpu"),
    every_row: Annotated[bool, typer.Option("--all", help="Every row, every column (unless --columns), the "
                                            "reasons of skipped and failed rows and the environment.")] = False,
    columns: Annotated[str | None, typer.Option("--columns", help="Comma-separated columns to show, e.g. "
                                                "backbone,artifact,auc,p50,mem (an unknown name lists them all).")]
    = None,
) -> None:
    """Print a benchmark in the terminal: by default the Pareto-optimal artifacts and the best under 10, 30 and
    100 ms, in 100 columns; --all and --columns show the rest (all of it is in table.md and table.csv)."""
    from bench import report
    from bench.results_file import read_results

    doc = read_results(results)
    keys = report.parse_columns(columns) if columns is not None else None
    if keys is not None:
        report.select_columns(report.columns(doc["rows"], report.batches_of(doc)), keys)  # fail before printing
    _print(doc, results if results.is_dir() else results.parent, every_row=every_row, keys=keys)


@friendly
def recommend(
    results: Annotated[Path, typer.Argument(help="Results folder (or its results.json) from `cxr-edge bench`.")]
    = Path("results/cpu"),
    budget_ms: Annotated[float, typer.Option("--budget-ms", help="Largest p50 latency allowed, in ms (> 0).")] = 20.0,
    device: Annotated[str | None, typer.Option("--device", help="Device the rows were measured on (cpu, cuda); "
                                               "needed only when the results hold several.")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size the budget applies to.")] = 1,
    min_sensitivity: Annotated[float | None, typer.Option("--min-sensitivity", min=0.0, max=1.0,
                                                          help="Lowest test sensitivity "
                                                          "allowed (at the validation threshold), e.g. 0.95.")]
    = None,
    formats: Annotated[str | None, typer.Option("--formats", help="Only rows of these formats, comma-separated "
                                                "(e.g. onnx,openvino: what a bundle of `cxr-edge package` runs).")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead (pick: BACKBONE/FORMAT/"
                                          "PRECISION for --pick, the rows, the explanation).")] = False,
) -> None:
    """The artifact with the best test ROC-AUC inside a latency budget, with its numbers and why.

    Exit status 1 when nothing fits (the closest rows are shown).
    """
    import json

    from bench.recommend import as_json as to_json
    from bench.recommend import recommend as pick
    from bench.results_file import read_results
    from core.io import json_safe

    wanted = tuple(f.strip() for f in formats.split(",") if f.strip()) if formats else ()
    rec = pick(read_results(results), budget_ms, device=device, batch=batch, min_sensitivity=min_sensitivity,
               formats=wanted)
    if as_json:
        out.file.write(json.dumps(json_safe(to_json(rec)), indent=2, default=str) + "\n")
    for line in [] if as_json else rec.lines:
        out.print(line, highlight=False, markup=False)
    if rec.best is None:
        raise typer.Exit(1)


@friendly
def compare(
    first: Annotated[Path, typer.Argument(help="Results folder (or results.json) of the earlier benchmark.")],
    second: Annotated[Path, typer.Argument(help="Results folder (or results.json) of the later benchmark.")],
    bound: Annotated[float, typer.Option("--bound", help="A latency change counted as small, as a fraction "
                                         "in (0, 10) (0.10 = 10%).")] = 0.10,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the comparison here (JSON), "
                                                     "e.g. for `cxr-edge report --reproduction`.")] = None,
    fail: Annotated[bool, typer.Option("--fail/--no-fail", help="Exit with status 1 when an accuracy figure "
                                       "changed or a p50 changed by more than its stated band and --bound.")]
    = False,
) -> None:
    """Does a second benchmark of the same artifacts reproduce the first? Per row: the change of the test
    accuracy figures and of p50 latency at each batch size, against the band the runs stated, and (where both
    runs timed the speed probe in turns with the rows) of p50 relative to the probe."""
    from rich.table import Table

    from bench.compare import compare as compare_docs
    from bench.compare import summary_lines
    from bench.results_file import read_results
    from core import io

    if not 0 < bound < 10:
        raise ValueError(f"--bound {bound} must be a fraction such as 0.10 (10%)")
    cmp = compare_docs(read_results(first), read_results(second), str(first), str(second))
    table = Table(title=f"{first} -> {second}")
    table.add_column("Row")
    table.add_column("max |Δ| accuracy", justify="right")
    rel = [n for n in cmp.batches if any(f"b{n}_rel_change" in r for r in cmp.rows)]
    for n in cmp.batches:
        table.add_column(f"b{n} p50 ms", justify="right")
        table.add_column(f"b{n} change (band)", justify="right")
        if n in rel:
            table.add_column(f"b{n} / probe change (band)", justify="right")

    def cell(change: float, band: float | None, within: bool) -> str:
        mark = "" if within or change <= bound else " [red]!"
        return f"{change:.0%} ({'n/a' if band is None else f'{band:.0%}'}){mark}"

    for r in cmp.rows:
        cells = [r["row"], "n/a" if r["accuracy_max_change"] is None else f"{r['accuracy_max_change']:.4f}"]
        for n in cmp.batches:
            if f"b{n}_change" not in r:
                cells += [""] * (3 if n in rel else 2)
                continue
            cells += [f"{r[f'b{n}_p50_a']:.2f} -> {r[f'b{n}_p50_b']:.2f}",
                      cell(r[f"b{n}_change"], r[f"b{n}_spread"], r[f"b{n}_within_spread"])]
            if n in rel:
                cells.append(cell(r[f"b{n}_rel_change"], r[f"b{n}_rel_spread"], r[f"b{n}_rel_within_spread"])
                             if f"b{n}_rel_change" in r else "")
        table.add_row(*cells)
    out.print(table)
    for line in summary_lines(cmp, bound):
        out.print(line, highlight=False, markup=False)
    if json_out:
        record = {**cmp.to_dict(bound), "a": io.portable_path(first, json_out.parent),
                  "b": io.portable_path(second, json_out.parent)}  # relative to the file's folder
        io.write_json(json_out, io.json_safe(record))
        out.print(f"wrote {json_out}")
    bad = [r for r in cmp.rows if (r["accuracy_max_change"] or 0) > 0 or any(
        f"b{n}_change" in r and not r[f"b{n}_within_spread"] and r[f"b{n}_change"] > bound for n in cmp.batches)]
    if fail and bad:
        raise typer.Exit(1)
