"""What every command shares: the error wrapper, the console and option types."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any

import click
import typer
from rich.console import Console

console = Console(stderr=True)
out = Console()


def user_errors() -> tuple[type[BaseException], ...]:
    """The project's error types, and the built-in ones that bad input raises (a missing, unreadable or
    misplaced file, a bad value): their message is for the user, printed as one line."""
    from core.data import DataError
    from core.parallel import ParallelError
    from core.registry import RegistryError
    from core.runs import RunError
    from export.base import ExportError

    return (DataError, RunError, RegistryError, ExportError, ParallelError, ValueError, OSError)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text += f": {err.filename}"
    return text or type(err).__name__


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn errors into one red line instead of a traceback: user errors exit with status 2; anything else
    (a bug, or input no check foresaw) with status 1, naming its type. CXR_EDGE_DEBUG=1 adds the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except user_errors() as err:
            if os.environ.get("CXR_EDGE_DEBUG"):
                traceback.print_exc()
            console.print(f"[bold red]error:[/bold red] {_one_line(err)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except Exception as err:  # noqa: BLE001 - the last resort: one line, never a traceback
            if os.environ.get("CXR_EDGE_DEBUG"):
                traceback.print_exc()
            console.print(f"[bold red]error:[/bold red] unexpected {type(err).__name__}: {_one_line(err)} (set "
                          "CXR_EDGE_DEBUG=1 to see where)", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
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
SkipBad = Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable images (corrupt, empty, not an image) "
                                       "instead of stopping: every image is checked once and the bad ones are left "
                                       "out and recorded (the split's 'skipped', the run's data.skipped), so that "
                                       "later stages leave them out by themselves.")]
SkipBadLater = Annotated[bool, typer.Option("--skip-bad", help="Skip images found unreadable now instead of "
                                            "stopping (the count is printed). Images the run recorded as unreadable "
                                            "(trained with --skip-bad) are always left out.")]


def print_notes(lines: list[str | None]) -> None:
    """Warnings such as images left out, each once, in yellow."""
    for line in dict.fromkeys(x for x in lines if x):
        console.print(f"[yellow]note:[/yellow] {line}", highlight=False, soft_wrap=True)
SynthN = Annotated[int, typer.Option("--synthetic-images", min=1,
                                     help="Images in the synthetic set (when --data synthetic).")]
SynthSize = Annotated[int, typer.Option("--synthetic-size", min=16, help="Side in pixels the synthetic set is drawn at "
                                        "(when --data synthetic); --size then resizes it. 224 draws the lesions "
                                        "at 224 px rather than upsampling the 128 px set.")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
