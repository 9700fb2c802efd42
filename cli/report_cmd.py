"""`cxr-edge report`: a results document (docs/RESULTS.md) from a benchmark's output files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import friendly, out


@friendly
def report(
    results: Annotated[Path, typer.Argument(help="A `cxr-edge bench` output folder (holds results.json).")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The Markdown file to write; result files are "
                                           "copied beside it into a folder named after it (docs/RESULTS.md -> "
                                           "docs/RESULTS/).")
                        ] = Path("docs/RESULTS.md"),
    recipe: Annotated[str, typer.Option("--recipe", help="The command that reproduces these results, quoted "
                                        "in the document.")] = "just kermany",
    contact_sheet: Annotated[Optional[Path], typer.Option("--contact-sheet", help="A Grad-CAM contact sheet PNG "
                                                           "(`cxr-edge gradcam`).")] = None,
    fidelity: Annotated[Optional[Path], typer.Option("--fidelity", help="The JSON written by `cxr-edge fidelity`.")
                        ] = None,
    reproduction: Annotated[Optional[Path], typer.Option("--reproduction", help="`cxr-edge compare --json` of the "
                                                         "previous run of the recipe against this one.")] = None,
    title: Annotated[str, typer.Option("--title", help="The document's title.")
                     ] = "Results on the Kermany chest X-rays",
    caption: Annotated[str, typer.Option("--caption", help="How the runs were made (size, epochs, init), in words.")
                       ] = "",
) -> None:
    """Write a results document: training, the paper's figures beside ours, what to ship under 10/30/100 ms,
    INT8 validation ROC-AUC change, explanations and the full accuracy-cost table, all read from files."""
    from bench.publish import write_results_doc

    path = write_results_doc(results, out_file, recipe=recipe, contact_sheet=contact_sheet, fidelity=fidelity,
                             title=title, caption=caption, reproduction=reproduction)
    out.print(f"wrote {path}")
