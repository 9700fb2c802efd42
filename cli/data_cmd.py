"""`cxr-edge data synth|split|audit`."""

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

app = typer.Typer(help="Data sets: generate the synthetic set, make and audit patient-wise splits.",
                  no_args_is_help=True)


@app.command("synth")
@friendly
def synth(
    n_images: Annotated[int, typer.Option("--n-images", min=1, help="Number of images.")] = SyntheticSpec.n_images,
    size: Annotated[int, typer.Option("--size", min=16, help="Side of the square images in pixels.")] = 128,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Generator seed; the same seed gives the same bytes.")] = 0,
    cache: Annotated[Path | None, typer.Option("--cache", help="Cache folder (default $CXR_EDGE_CACHE or "
                                                "~/.cache/cxr-edge).")] = None,
    progress: Progress = True,
) -> None:
    """Generate the built-in synthetic chest-radiograph set (lesion masks included) and print its folder."""
    from core.synthetic import SyntheticSpec, ensure_synthetic

    root = ensure_synthetic(SyntheticSpec(n_images=n_images, size=size, seed=seed), cache_dir=cache,
                            progress=progress)
    out.print(str(root))


@app.command("split")
@friendly
def split(
    data: Data = "synthetic",
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Where to write the split manifest (JSON).")] = Path(
        "runs/split.json"),
    method: SplitMethod = "patient",
    seed: SplitSeed = 42,
    ratios: Ratios = "0.7,0.15,0.15",
    skip_bad: SkipBad = False,
    synthetic_images: SynthN = SyntheticSpec.n_images,
    synthetic_size: SynthSize = SyntheticSpec.size,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing split file.")] = False,
    progress: Progress = True,
) -> None:
    """Make a patient-wise stratified split and save it as the manifest every later stage reads."""
    from core.datasets import resolve_source
    from core.split import audit as audit_split
    from core.split import image_wise_warning, make_split
    from core.synthetic import SyntheticSpec

    if out_file.exists() and not force:
        raise FileExistsError(f"{out_file} exists; pass --force to replace it, or choose another --out")
    source = resolve_source(data, skip_bad=skip_bad, progress=progress,
                            synthetic=SyntheticSpec(n_images=synthetic_images, size=synthetic_size))
    result = make_split(source, ratios=parse_ratios(ratios), seed=seed, method=method)
    result.save(out_file)
    _print_counts(result)
    for p in audit_split(result) + [image_wise_warning(result)]:
        if p:
            console.print(f"[yellow]warning:[/yellow] {p}", highlight=False, soft_wrap=True)
    if result.skipped:
        print_notes([f"{len(result.skipped)} unreadable file(s) left out of the split (--skip-bad), listed with their "
                     f"reasons under 'skipped' in {out_file}; later stages never see them"])
    out.print(f"split {result.hash} written to {out_file}")


@app.command("audit")
@friendly
def audit(split_file: Annotated[Path, typer.Argument(help="A split manifest (split.json of a run or of runs/).")]
          ) -> None:
    """Check a saved split: no patient on two sides, no duplicate file, both classes on every side.

    Exits with status 1 when any problem is found.
    """
    from core.split import Split
    from core.split import audit as audit_split

    s = Split.load(split_file)
    _print_counts(s)
    problems = audit_split(s)
    if problems:
        for p in problems:
            console.print(f"[bold red]problem:[/bold red] {p}", highlight=False, soft_wrap=True)
        console.print(f"[bold red]{len(problems)} problem(s)[/bold red] in {split_file}")
        raise typer.Exit(1)
    out.print(f"[green]ok[/green]: split {s.hash} ({s.method}) has no patient on two sides, "
              f"no duplicate file, and both classes on every side")


def _print_counts(s) -> None:
    table = Table(title=f"split {s.hash} ({s.method}, seed {s.seed})")
    for col in ("side", "images", "patients", "NORMAL", "PNEUMONIA"):
        table.add_column(col, justify="right" if col != "side" else "left")
    for side, c in s.counts().items():
        table.add_row(side, str(c["images"]), str(c["patients"]), str(c.get("NORMAL", 0)), str(c.get("PNEUMONIA", 0)))
    out.print(table)
