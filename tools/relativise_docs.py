"""Rewrite absolute machine paths in the committed records under docs/ as paths relative to the repository.

    .venv/bin/python tools/relativise_docs.py --made-in /path/to/the/checkout/that/wrote/them [--check]

Records written before the pipeline named files relatively (results.json, table.md/.csv, fidelity JSON,
RESULTS.md) hold the absolute paths of the machine that made them. A path under ``--made-in`` (the
repository checkout the records were made in) becomes relative to the repository (``runs/resnet18``); a path
under its parent folder (data beside the repository, experiment folders) becomes ``../<rest>``. Nothing else
in a file changes: the rewrite is a plain text substitution, so every other byte stays as it was. ``--check``
only lists the files that would change (exit status 1 when any would).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

SUFFIXES = {".md", ".json", ".csv", ".txt"}


def relativise(text: str, made_in: str) -> str:
    """``text`` with ``made_in/<rest>`` as ``<rest>`` and ``<parent of made_in>/<rest>`` as ``../<rest>``."""
    made_in = made_in.rstrip("/")
    parent = made_in.rsplit("/", 1)[0]
    if not made_in.startswith("/") or not parent:
        raise SystemExit(f"--made-in {made_in!r} must be an absolute folder below the file system's root")
    text = re.sub(rf"(?<![\w.]){re.escape(made_in)}/", "", text)
    text = re.sub(rf"(?<![\w.]){re.escape(made_in)}(?![\w./-])", ".", text)
    return re.sub(rf"(?<![\w.]){re.escape(parent)}/", "../", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--made-in", required=True, help="absolute path of the checkout that wrote the records")
    parser.add_argument("--docs", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    parser.add_argument("--check", action="store_true", help="list what would change; write nothing")
    args = parser.parse_args(argv)
    changed = []
    for path in sorted(p for p in args.docs.rglob("*") if p.is_file() and p.suffix in SUFFIXES):
        text = path.read_text(encoding="utf-8")
        new = relativise(text, args.made_in)
        if new != text:
            changed.append(path)
            if not args.check:
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(new, encoding="utf-8")
                tmp.replace(path)
    for path in changed:
        print(path)
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
