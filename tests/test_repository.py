"""Rules that hold for the repository as a whole (its files, not its behaviour)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE_SUFFIXES = {".py", ".sh", ".bash", ""}
# Ways to stop, kill or re-prioritise a process. The project may end only processes it started itself
# (core.parallel terminates its own workers through multiprocessing), so none of these may appear.
FOREIGN_PROCESS_CONTROL = re.compile(
    r"\bos\.kill\b|\bos\.killpg\b|\bpkill\b|\bkillall\b|\brenice\b|\bionice\b|SIGSTOP|SIGCONT|"
    r"\bkill\s+-(STOP|CONT|9|KILL|TERM)\b|\bos\.setpriority\b|\bos\.nice\b")


def _code_files() -> list[Path]:
    files = [p for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts and ".venv" not in p.parts
             and "__pycache__" not in p.parts and p.suffix in CODE_SUFFIXES]
    return [p for p in files if p != Path(__file__).resolve()]


def test_nothing_stops_or_reprioritises_processes_it_did_not_start():
    hits = []
    for path in _code_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if FOREIGN_PROCESS_CONTROL.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not hits, "process control of foreign processes:\n" + "\n".join(hits)
    assert not (ROOT / "tools" / "freeze-others.sh").exists()
