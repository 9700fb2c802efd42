"""`cxr-edge predict`: one row per image (probability of PNEUMONIA, decision at the model's own threshold).

Decoding runs beside inference: a thread pool decodes and normalises the next batches (PIL and numpy release
the GIL) while the main thread runs the current batch through the predictor, so a folder of images costs
about the larger of the two, not their sum. A file that cannot be read becomes a row with its error and the
rest go on. The rows are written by :func:`write_rows` (CSV or JSON); the bundle's standalone ``predict.py``
writes the same columns.
"""

from __future__ import annotations

import csv
import io as _io
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from core.data import IMAGE_SUFFIXES, LABELS, DataError, decode_image
from core.preprocess import Preprocess

COLUMNS = ("path", "probability", "decision", "threshold", "model", "error")
PREDICTIONS_FORMAT = "cxr-edge-predictions/1"
_JUNK = {"thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class PredictConfig:
    """How to run: images per batch, test-time augmentation, decode threads and batches decoded ahead."""

    batch: int = 8
    tta: bool = False
    workers: int = 2
    prefetch: int = 4  # batches decoded ahead of the one being predicted

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"--batch {self.batch} must be at least 1, e.g. 8")
        if self.workers < 1 or self.prefetch < 1:
            raise ValueError(f"decode workers ({self.workers}) and prefetch ({self.prefetch}) must be at least 1")


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files of ``inputs`` in order: a file as given (whatever its suffix: a bad one becomes an error row),
    a folder recursed (files with an image suffix, sorted; hidden and system files left out)."""
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(item).parts)
                           and p.name.lower() not in _JUNK)
            if not found:
                raise DataError(f"folder {item} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); check the path")
            out += found
        else:
            out.append(item)  # a missing file becomes an error row, like any other bad file
    if not out:
        raise DataError("no INPUT given; pass image files or folders")
    return out


@dataclass
class Decoded:
    """One batch as decoded by a worker: the normalised inputs of the images that could be read, their uint8
    pictures, and the error of each one that could not (``None`` for the good ones), in order."""

    paths: list[Path]
    x: np.ndarray
    images: np.ndarray
    errors: list[str | None]


def decode_batch(paths: list[Path], pre: Preprocess) -> Decoded:
    """Decode and normalise ``paths`` exactly as training did (:func:`core.data.decode_image`, ``pre``)."""
    good, errors = [], []
    for p in paths:
        try:
            good.append(pre.image_to_uint8(decode_image(p)))
            errors.append(None)
        except DataError as err:
            errors.append(str(err))
        except Exception as err:  # a decoder bug on one odd file must not stop the others
            errors.append(f"cannot decode {p}: {type(err).__name__}: {err}")
    images = np.stack(good) if good else np.zeros((0, pre.size, pre.size, pre.channels), np.uint8)
    return Decoded(paths, pre.normalize(images) if good else np.zeros((0,), np.float32), images, errors)


def _batches(paths: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(paths), size):
        yield paths[i:i + size]


def decoded_batches(paths: list[Path], pre: Preprocess, config: PredictConfig) -> Iterator[Decoded]:
    """Batches of ``paths`` decoded by ``config.workers`` threads, up to ``config.prefetch`` batches ahead of the
    consumer, yielded in order."""
    todo = _batches(paths, config.batch)
    with ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="decode") as pool:
        pending = deque(pool.submit(decode_batch, b, pre) for b in islice(todo, config.prefetch))
        try:
            while pending:
                done = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(decode_batch, nxt, pre))
                yield done
        finally:
            for f in pending:
                f.cancel()


def sigmoid(logits: np.ndarray) -> np.ndarray:
    z = np.clip(np.asarray(logits, np.float64).reshape(-1), -60.0, 60.0)
    return 1.0 / (1.0 + np.exp(-z))


def probabilities(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, tta: bool) -> np.ndarray:
    """PNEUMONIA probability per image: of the batch itself, or the mean over the TTA views (:mod:`core.tta`)."""
    if tta:
        from core.tta import tta_probabilities

        return tta_probabilities(predict, x)
    return sigmoid(predict(x))


def make_row(path: Path, prob: float | None, threshold: float, model_id: str, error: str | None) -> dict[str, Any]:
    decision = None if prob is None else LABELS[int(prob >= threshold)]
    return {"path": str(path), "probability": prob, "decision": decision, "threshold": threshold,
            "model": model_id, "error": error}


@dataclass
class Summary:
    """Counts per decision, failures and throughput of one prediction job."""

    n: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {label: 0 for label in LABELS})
    failed: int = 0
    seconds: float = 0.0

    def add(self, row: dict[str, Any]) -> None:
        self.n += 1
        if row["error"]:
            self.failed += 1
        else:
            self.counts[row["decision"]] += 1

    @property
    def images_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.n, **self.counts, "failed": self.failed, "seconds": round(self.seconds, 3),
                "images_per_s": round(self.images_per_s, 1)}

    def line(self) -> str:
        per = ", ".join(f"{v} {k}" for k, v in self.counts.items())
        return (f"{self.n} images: {per}, {self.failed} failed; {self.images_per_s:.1f} images/s "
                f"({self.seconds:.1f} s)")


def predict_paths(predictor, ref, paths: list[Path], config: PredictConfig,
                  on_batch: Callable[[Decoded, list[dict[str, Any]]], None] | None = None
                  ) -> tuple[list[dict[str, Any]], Summary]:
    """Rows for ``paths`` in order and their :class:`Summary`; ``on_batch`` sees each decoded batch with its rows
    (the progress display and the heatmaps use it). ``ref`` is the :class:`~export.model_ref.ModelRef`."""
    rows: list[dict[str, Any]] = []
    summary = Summary()
    t0 = time.perf_counter()
    for batch in decoded_batches(paths, ref.preprocess, config):
        probs = iter(probabilities(predictor.predict, batch.x, config.tta) if len(batch.x) else [])
        new = [make_row(p, None if err else float(next(probs)), ref.threshold, ref.model_id, err)
               for p, err in zip(batch.paths, batch.errors)]
        for row in new:
            summary.add(row)
        rows += new
        summary.seconds = time.perf_counter() - t0
        if on_batch is not None:
            on_batch(batch, new)
    summary.seconds = time.perf_counter() - t0
    return rows, summary


def csv_text(rows: Iterable[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row.get(k) is None else repr(row[k]) if isinstance(row.get(k), float) else row[k])
                    for k in columns})
    return buf.getvalue()


def write_rows(path: Path, rows: list[dict[str, Any]], model: dict[str, Any], summary: dict[str, Any],
               columns: Sequence[str] = COLUMNS, force: bool = False) -> Path:
    """``path`` (.csv or .json) with the rows, written atomically; an existing file only with ``force``."""
    from core import io

    path = Path(path)
    if path.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--out {path}: name a .csv or a .json file")
    if path.exists() and not force:
        raise ValueError(f"--out {path} already exists (earlier predictions); pass --force to replace it or "
                         "choose another name")
    if path.suffix.lower() == ".csv":
        return io.write_atomic(path, lambda p: p.write_text(csv_text(rows, columns)))
    doc = {"format": PREDICTIONS_FORMAT, "model": model, "summary": summary, "columns": list(columns), "rows": rows}
    return io.write_json(path, io.json_safe(doc))


class Reporter:
    """A rich progress bar on a terminal; plain ``predicted i/n`` lines (about every tenth) when the output is a
    file or a pipe, so that a log shows how far a long job got."""

    def __init__(self, total: int, console, enabled: bool = True) -> None:
        self.total, self.console, self.enabled = total, console, enabled
        self.plain = enabled and not console.is_terminal
        self.bar = self.task = None
        self.step, self.next_line = max(1, total // 10), max(1, total // 10)
        self.t0 = time.perf_counter()

    def __enter__(self) -> Reporter:
        if self.enabled and not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("{task.fields[rate]}"), console=self.console, transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task("predict", total=self.total, rate="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, done: int, failed: int) -> None:
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        if self.bar is not None:
            self.bar.update(self.task, completed=done, rate=f"{rate:.0f} images/s, {failed} failed")
        elif self.plain and (done >= self.next_line or done == self.total):
            self.console.print(f"predicted {done}/{self.total} images ({failed} failed), {rate:.0f} images/s",
                               highlight=False)
            while self.next_line <= done:
                self.next_line += self.step


def default_workers() -> int:
    """Decode threads: two, or one on a one-core machine (the predictor needs the cores too)."""
    return 1 if (os.cpu_count() or 1) < 2 else 2


def model_info(ref, tta: bool) -> dict[str, Any]:
    """The model part of a predictions file: which file, its preprocessing and threshold, and their record."""
    return {"id": ref.model_id, "backbone": ref.backbone, "format": ref.format, "precision": ref.precision,
            "sha256": ref.sha256, "threshold": ref.threshold, "threshold_chosen_on": ref.threshold_chosen_on,
            "preprocess": ref.preprocess.to_dict(), "described_by": ref.described_by, "tta": tta,
            "labels": list(LABELS)}



MIN_SHIFT_IMAGES = 20  # fewer new images than this give tests too weak to say anything


class ShiftCheck:
    """The label-free shift warning (:mod:`core.shift`) for one ``predict`` call: the new images' probabilities
    (and, when MODEL is a run, their pooled features) against the source run's validation and training sides.

    Needs the source run (a run, or an artifact whose manifest names it); a bundle alone has no reference."""

    def __init__(self, ref, enabled: bool = True) -> None:
        self.ref, self.model, self.features = ref, None, []
        self.skipped = None if enabled else "turned off (--no-shift)"
        if self.skipped is None and (ref.source_run is None or not Path(ref.source_run).is_dir()):
            self.skipped = "no source run to compare with (a bundle alone, or the run is not found)"
        if self.skipped is None and ref.kind == "run":
            from core.runs import load_run

            self.model = load_run(ref.source_run).build_model()

    def add(self, batch: Decoded) -> None:
        """Pooled features of a decoded batch, when MODEL is a run (an artifact gives probabilities only)."""
        if self.model is not None and len(batch.x):
            from core.shift import pooled_features

            self.features.append(pooled_features(self.model, batch.x))

    def report(self, rows: list[dict[str, Any]], progress: bool = False) -> dict[str, Any]:
        """``{"shifted", "reasons", "notes", ...}`` of :class:`core.shift.ShiftReport`, or ``{"skipped": why}``."""
        probs = np.asarray([r["probability"] for r in rows if r["probability"] is not None], np.float64)
        if self.skipped is None and probs.size < MIN_SHIFT_IMAGES:
            self.skipped = f"{probs.size} images scored; the check needs at least {MIN_SHIFT_IMAGES}"
        if self.skipped is not None:
            return {"skipped": self.skipped}
        from core.runs import load_run
        from core.shift import ShiftReference, check_shift, reference_for_run

        ref = reference_for_run(load_run(self.ref.source_run), progress=progress)
        if self.model is None:
            ref = ShiftReference(ref.val_probs, self.ref.threshold, ref.run_hash)
        feats = np.concatenate(self.features) if self.features else None
        return check_shift(ref, probs, feats).to_dict()
