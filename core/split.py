"""Patient-wise stratified train/val/test split, saved as a JSON manifest every later stage reads.

The manifest (``format: cxr-edge-split/2``) lists every image with its label, patient and side, and
a hash of those entries; :meth:`Split.load` refuses a file whose entries no longer match the hash,
so a run can name the exact split it used.

The split's identity comes from the data, not from where the data lies: entries name images relative
to the data root (a folder's own root, a CSV's folder; a CSV's absolute paths stay as written), the hash
covers those relative paths with labels, patients and sides, and the data source itself is recorded
relative to the split file (the built-in synthetic set by its cache name and settings). The same folder at
two places gives one hash and one assignment; a moved runs/ folder finds its data again. When the data
moved, ``CXR_EDGE_DATA_ROOT`` names its new place (the folder, or the CSV file).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from core.data import LABELS, DataError, DataSource, Sample

SIDES = ("train", "val", "test")
METHODS = ("patient", "official")
FORMAT = "cxr-edge-split/2"
_OLD_FORMAT = "cxr-edge-split/1"  # absolute paths; read and converted
SOURCE_KINDS = ("folder", "csv", "synthetic")
DATA_ROOT_ENV = "CXR_EDGE_DATA_ROOT"
_REMAKE = "make a new one with `cxr-edge data split`"


@dataclass(frozen=True)
class SplitEntry:
    path: str  # relative to the data root (posix), or absolute as a CSV wrote it
    label: int
    patient: str
    side: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _posix_rel(path: str, root: str) -> str:
    """``path`` relative to ``root`` in posix form when it lies inside it, else ``path`` unchanged."""
    rel = os.path.relpath(path, root)
    return path if rel == os.pardir or rel.startswith(os.pardir + os.sep) else Path(rel).as_posix()


@dataclass
class Split:
    entries: list[SplitEntry]
    method: str  # "patient" or "official"
    seed: int
    ratios: tuple[float, float, float]  # asked for ("patient") or found in the folders ("official")
    source: str  # the data folder or CSV file, absolute, on this machine (recorded relative to the split file)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path relative to the root, reason)
    created: str = field(default_factory=_now)  # ISO time; not part of the hash
    source_kind: str = "folder"  # "folder", "csv" or "synthetic" (a CSV in the synthetic cache)
    synthetic: dict[str, Any] | None = None  # the synthetic set's settings, to make it again where it is missing

    @property
    def root(self) -> str:
        """The folder entries are relative to: the data folder, or the CSV's folder."""
        return self.source if self.source_kind == "folder" else os.path.dirname(self.source)

    # A run's view of its split (core.runs.Run.split), neither saved nor hashed: files the run recorded as
    # unreadable (path -> reason), left out by samples(); and whether files found unreadable now are skipped.
    excluded: dict[str, str] = field(default_factory=dict, repr=False)
    skip_bad: bool = False

    @property
    def hash(self) -> str:
        """First 16 hex chars of sha256 over the sorted (path, label, patient, side) entries; paths are
        relative to the data root, so the same data at another place has the same hash."""
        rows = sorted((e.path, int(e.label), e.patient, e.side) for e in self.entries)
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]

    def side(self, name: str) -> list[SplitEntry]:
        if name not in SIDES:
            raise DataError(f"side {name!r} is not known; choose one of {', '.join(SIDES)}")
        return [e for e in self.entries if e.side == name]

    def abspath(self, path: str) -> str:
        """An entry's path on this machine."""
        return path if os.path.isabs(path) else os.path.join(self.root, path)

    def relpath(self, path: str) -> str:
        """A path on this machine as the split records it (relative to the data root when inside it)."""
        return _posix_rel(os.path.abspath(path), self.root)

    def samples(self, name: str) -> list[Sample]:
        """The entries of side ``name`` as :class:`Sample` with paths on this machine (for
        :func:`core.data.load_images`), without the files in ``excluded``."""
        entries = [e for e in self.side(name) if not self._is_excluded(e)]
        self._ensure_data(entries)
        return [Sample(self.abspath(e.path), e.label, e.patient, e.side) for e in entries]

    def _is_excluded(self, e: SplitEntry) -> bool:
        return bool(self.excluded) and (e.path in self.excluded or self.abspath(e.path) in self.excluded)

    def left_out(self, name: str) -> int:
        """How many entries of side ``name`` :meth:`samples` leaves out (recorded as unreadable)."""
        return sum(self._is_excluded(e) for e in self.side(name))

    def _ensure_data(self, entries: list[SplitEntry]) -> None:
        if self.source_kind == "synthetic" and not os.path.exists(self.source) and self.synthetic:
            from core.synthetic import SyntheticSpec, ensure_synthetic

            made = ensure_synthetic(SyntheticSpec(**self.synthetic)) / "manifest.csv"
            self.source = str(made)
        if entries and not os.path.exists(self.source):
            raise DataError(
                f"the images of split {self.hash} are not found: {self.source} does not exist (the data moved, or "
                f"the split was made on another machine); set {DATA_ROOT_ENV} to the data folder (or CSV file)"
            )

    def counts(self) -> dict[str, dict[str, int]]:
        """Per side: images, patients and images per label name."""
        out = {}
        for name in SIDES:
            entries = self.side(name)
            row = {"images": len(entries), "patients": len({e.patient for e in entries})}
            row.update({label: sum(e.label == i for e in entries) for i, label in enumerate(LABELS)})
            out[name] = row
        return out

    def source_record(self, relative_to: str | Path | None = None) -> dict[str, Any]:
        """Where the data lies, without machine paths: the synthetic set by its cache name and settings;
        a folder or CSV relative to ``relative_to`` (the split file's folder), else by its name alone."""
        if self.source_kind == "synthetic":
            name = Path(self.source)
            return {"kind": "synthetic", "path": f"{name.parent.name}/{name.name}", "spec": self.synthetic}
        where = (Path(os.path.relpath(self.source, relative_to)).as_posix() if relative_to is not None
                 else Path(self.source).name)
        return {"kind": self.source_kind, "path": where}

    def to_dict(self, relative_to: str | Path | None = None) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "hash": self.hash,
            "method": self.method,
            "seed": self.seed,
            "ratios": list(self.ratios),
            "source": self.source_record(relative_to),
            "created": self.created,
            "counts": self.counts(),
            "skipped": [list(s) for s in self.skipped],
            "entries": [asdict(e) for e in self.entries],
        }

    def to_json(self, relative_to: str | Path | None = None) -> str:
        return json.dumps(self.to_dict(relative_to), indent=1)

    def save(self, path: str | Path) -> Path:
        """Write the manifest atomically (a temporary file in the same folder, then ``os.replace``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.to_json(relative_to=os.path.abspath(path.parent)))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Split":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"split file {path} does not exist; {_REMAKE}")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"split file {path} is not valid JSON ({err}); {_REMAKE}") from err
        try:
            split, stored_rows_hash = _from_dict(d, path.parent)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise DataError(f"split file {path} is not a {FORMAT} manifest ({err!r}); {_REMAKE}") from err
        if d.get("hash") != stored_rows_hash:
            raise DataError(
                f"split file {path} was edited after it was made (stored hash {d.get('hash')}, "
                f"entries hash {stored_rows_hash}); {_REMAKE}"
            )
        return split


def _resolve_source(rec: Any, base: Path) -> tuple[str, str, dict[str, Any] | None]:
    """(absolute data folder or CSV on this machine, kind, synthetic settings) from a v2 source record."""
    if not isinstance(rec, dict) or rec.get("kind") not in SOURCE_KINDS:
        raise ValueError(f"source {rec!r} is not a source record")
    kind, spec = rec["kind"], rec.get("spec")
    override = os.environ.get(DATA_ROOT_ENV)
    if override:
        where = Path(override).expanduser()
        if kind != "folder" and where.is_dir():
            where = where / Path(rec["path"]).name
        return os.path.abspath(where), kind, spec
    if kind == "synthetic":
        from core.synthetic import default_cache_dir

        return str(default_cache_dir() / rec["path"]), kind, spec
    return os.path.normpath(os.path.join(os.path.abspath(base), rec["path"])), kind, spec


def _entry(e: Any) -> SplitEntry:
    entry = SplitEntry(str(e["path"]), int(e["label"]), str(e["patient"]), str(e["side"]))
    if entry.side not in SIDES or entry.label not in range(len(LABELS)):
        raise ValueError(f"entry {e} has an unknown side or label")
    return entry


def _from_dict(d: Any, base: Path) -> tuple[Split, str]:
    """The split and the hash its stored entries give (checked against the stored hash by the caller)."""
    fmt = d.get("format") if isinstance(d, dict) else None
    if fmt not in (FORMAT, _OLD_FORMAT):
        raise ValueError(f"format is {fmt!r}, expected {FORMAT!r}")
    entries = [_entry(e) for e in d["entries"]]
    skipped = [(str(p), str(r)) for p, r in d.get("skipped", [])]
    if fmt == _OLD_FORMAT:  # absolute paths and source: hash as then, then make the paths relative
        rows_hash = hashlib.sha256(json.dumps(sorted((e.path, e.label, e.patient, e.side)
                                                     for e in entries)).encode()).hexdigest()[:16]
        source = str(d["source"])
        kind = "csv" if source.lower().endswith(".csv") else "folder"
        root = source if kind == "folder" else os.path.dirname(source)
        entries = [SplitEntry(_posix_rel(e.path, root), e.label, e.patient, e.side) for e in entries]
        skipped = [(_posix_rel(p, root), r) for p, r in skipped]
        spec = None
    else:
        source, kind, spec = _resolve_source(d["source"], base)
        rows_hash = ""
    if d["method"] not in METHODS:
        raise ValueError(f"method {d['method']!r}")
    ratios = tuple(float(r) for r in d["ratios"])
    if len(ratios) != 3:
        raise ValueError(f"ratios {d['ratios']} are not three numbers")
    split = Split(entries=entries, method=d["method"], seed=int(d["seed"]), ratios=ratios,  # type: ignore[arg-type]
                  source=source, skipped=skipped, created=str(d.get("created", "")), source_kind=kind,
                  synthetic=spec)
    return split, rows_hash or split.hash


def _check_ratios(ratios: Any) -> tuple[float, float, float]:
    try:
        values = tuple(float(r) for r in ratios)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or any(not r > 0 for r in values) or abs(sum(values) - 1.0) > 1e-6:
        raise DataError(
            f"split ratios {ratios!r} are not allowed; give three positive numbers (train, val, test) "
            f"that sum to 1, e.g. 0.7 0.15 0.15"
        )
    return values  # type: ignore[return-value]


def _assign_stratum(patients: list[str], sizes: dict[str, int], ratios: tuple[float, ...]) -> dict[str, str]:
    """Greedy: one patient to each side first, then each patient to the side furthest below its
    target image count."""
    total = sum(sizes[p] for p in patients)
    targets = [r * total for r in ratios]
    counts = [0] * len(SIDES)
    out = {}
    for i, patient in enumerate(patients):
        k = i if i < len(SIDES) else int(np.argmax([t - c for t, c in zip(targets, counts)]))
        out[patient] = SIDES[k]
        counts[k] += sizes[patient]
    return out


def _patient_split(samples: list[Sample], ratios: tuple[float, ...], seed: int) -> list[str]:
    sizes: dict[str, int] = defaultdict(int)
    plabel: dict[str, int] = defaultdict(int)
    for s in samples:
        sizes[s.patient] += 1
        plabel[s.patient] = max(plabel[s.patient], s.label)  # any pneumonia image -> pneumonia patient
    rng = np.random.default_rng(seed)
    side_of: dict[str, str] = {}
    for label, name in enumerate(LABELS):
        stratum = sorted(p for p in sizes if plabel[p] == label)
        if len(stratum) < len(SIDES):
            raise DataError(
                f"the data set has {len(stratum)} {name} patient(s); a patient-wise train/val/test split "
                f"needs at least {len(SIDES)} per class (more for useful sides); add images"
            )
        shuffled = [stratum[i] for i in rng.permutation(len(stratum))]
        side_of.update(_assign_stratum(shuffled, sizes, ratios))
    return [side_of[s.patient] for s in samples]


def make_split(
    source: DataSource,
    *,
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    method: str = "patient",
) -> Split:
    """Split ``source`` into train/val/test.

    ``"patient"``: patients (label = their highest image label) are shuffled per class with
    ``seed`` and given to sides so each side's image count approximates ``ratios``; a patient is
    never on two sides. ``"official"``: the sides of the data set's own train/val/test folders are
    kept as they are, overlaps included (:func:`audit` reports them); ``ratios`` records the
    fractions found.
    """
    if method not in METHODS:
        raise DataError(f"split method {method!r} is not known; choose one of {', '.join(METHODS)}")
    samples = source.samples
    if not samples:
        raise DataError(f"data source {source.root} has no images to split; add images")
    if method == "patient":
        ratios = _check_ratios(ratios)
        sides = _patient_split(samples, ratios, seed)
    else:
        bare = [s for s in samples if s.side is None]
        if bare:
            raise DataError(
                f"this data set has no train/val/test folders ({bare[0].path} has no side); "
                f"use --split patient"
            )
        sides = [s.side for s in samples]  # type: ignore[misc]
        ratios = tuple(round(sides.count(name) / len(sides), 6) for name in SIDES)  # type: ignore[assignment]
    synthetic = source.synthetic or _synthetic_spec_of(source.root)
    kind = "synthetic" if synthetic else ("csv" if source.kind == "csv" else "folder")
    root = source.root if kind == "folder" else os.path.dirname(source.root)
    entries = [SplitEntry(_posix_rel(s.path, root), s.label, s.patient, side) for s, side in zip(samples, sides)]
    skipped = [(_posix_rel(p, root), reason) for p, reason in source.skipped]
    return Split(entries, method, int(seed), tuple(ratios), source.root, skipped,  # type: ignore[arg-type]
                 source_kind=kind, synthetic=dict(synthetic) if synthetic else None)


def _synthetic_spec_of(root: str) -> dict[str, Any] | None:
    """The settings of a built-in synthetic set when ``root`` is its manifest.csv (its folder holds spec.json), so
    that a split of it is recorded by name and settings however the set was given (``synthetic`` or the CSV)."""
    folder = Path(root).parent
    if Path(root).name != "manifest.csv" or not folder.name.startswith("synthetic-"):
        return None
    try:
        spec = json.loads((folder / "spec.json").read_text())["spec"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return spec if isinstance(spec, dict) else None


def audit(split: Split) -> list[str]:
    """Problems that make a split unfit for honest evaluation; empty when there are none."""
    problems = []
    by_path: dict[str, list[SplitEntry]] = defaultdict(list)
    by_patient: dict[str, dict[str, str]] = defaultdict(dict)  # patient -> side -> example path
    for e in split.entries:
        by_path[e.path].append(e)
        by_patient[e.patient].setdefault(e.side, e.path)
    for path, entries in by_path.items():
        if len(entries) > 1:
            problems.append(
                f"{path} is listed {len(entries)} times (sides {', '.join(e.side for e in entries)})"
            )
    for patient, sides in sorted(by_patient.items()):
        if len(sides) > 1:
            where = "; ".join(f"{side} (e.g. {sides[side]})" for side in SIDES if side in sides)
            problems.append(f"patient {patient} is on {len(sides)} sides: {where}")
    for name, row in split.counts().items():
        if row["images"] == 0:
            problems.append(f"side {name} is empty")
        else:
            present = [label for label in LABELS if row[label] > 0]
            if len(present) == 1:
                problems.append(f"side {name} has {present[0]} images only")
    return problems


def image_wise_warning(split: Split) -> str | None:
    """A plain warning when a patient-wise split is in fact image-wise (every image its own patient: no file
    name gave a patient id and no CSV said one), or None. Images of one patient may then sit on two sides."""
    patients = {e.patient for e in split.entries}
    if split.method != "patient" or len(split.entries) < 2 or len(patients) < len(split.entries):
        return None
    return (f"every one of the {len(split.entries)} images is its own patient: no file name gave a patient id "
            f"(as Kermany's person1000_bacteria_2931.jpeg does) and no CSV column said one, so this split is "
            f"image-wise and images of one patient may sit on two sides. To split by patient, give --data a CSV "
            f"with columns path,label,patient_id")
