"""What every command shares: the error wrapper, the console and option types."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(stderr=True)
out = Console()


def user_errors() -> tuple[type[BaseException], ...]:
    from core.data import DataError
    from core.registry import RegistryError
    from core.runs import RunError
    from export.base import ExportError

    return (DataError, RunError, RegistryError, ExportError, ValueError, FileNotFoundError, PermissionError)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into one red line and exit status 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except user_errors() as err:
            if os.environ.get("CXR_EDGE_DEBUG"):
                traceback.print_exc()
            console.print(f"[bold red]error:[/bold red] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]; finished files are kept (an interrupted training run "
                          "continues with --resume)")
            sys.exit(130)

    return wrapper


def parse_ratios(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--ratios {text!r} must be three numbers like 0.7,0.15,0.15") from None
    if len(parts) != 3:
        raise ValueError(f"--ratios {text!r} must be three numbers (train,val,test) like 0.7,0.15,0.15")
    return parts  # type: ignore[return-value]


Data = Annotated[str, typer.Option("--data", "-d", help="'synthetic' (built-in, generated on first use), a folder "
                                   "(Kermany train|val|test/NORMAL|PNEUMONIA, or NORMAL|PNEUMONIA) or a CSV "
                                   "manifest (path,label[,patient_id]).")]
SplitMethod = Annotated[str, typer.Option("--split", help="'patient': patient-wise stratified split; 'official': "
                                          "keep the data set's own train/val/test folders.")]
SplitSeed = Annotated[int, typer.Option("--split-seed", help="Seed of the patient-wise split.")]
Ratios = Annotated[str, typer.Option("--ratios", help="train,val,test shares of images.")]
SkipBad = Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable images with a warning (counted in the "
                                       "run record) instead of stopping.")]
SynthN = Annotated[int, typer.Option("--synthetic-images", help="Images in the synthetic set (when --data synthetic).")]
SynthSize = Annotated[int, typer.Option("--synthetic-size", help="Side in pixels the synthetic set is drawn at "
                                        "(when --data synthetic); --size then resizes it. 224 draws the lesions "
                                        "at 224 px rather than upsampling the 128 px set.")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
