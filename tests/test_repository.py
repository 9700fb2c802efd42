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


# Absolute paths of a machine: Unix home, root, temporary and work folders, macOS homes, Windows drives.
MACHINE_PATH = re.compile(r"(?<![\w.])(/work/|/home/|/root/|/tmp/|/Users/)|\b[A-Za-z]:\\\\?[A-Za-z]")
DOC_SUFFIXES = {".md", ".json", ".csv", ".txt"}


def test_committed_docs_name_no_absolute_machine_path():
    """Records under docs/ name files relative to the repository or to themselves, so they travel
    (tools/relativise_docs.py rewrites older ones)."""
    hits = []
    for path in sorted((ROOT / "docs").rglob("*")):
        if not path.is_file() or path.suffix not in DOC_SUFFIXES:
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            match = MACHINE_PATH.search(line)
            if match:
                hits.append(f"{path.relative_to(ROOT)}:{i}: ...{line[max(0, match.start() - 40):match.end() + 40]}...")
    assert not hits, f"{len(hits)} line(s) with absolute machine paths:\n" + "\n".join(hits[:20])


def test_relativise_docs_keeps_every_other_byte():
    import importlib.util

    spec = importlib.util.spec_from_file_location("relativise_docs", ROOT / "tools" / "relativise_docs.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    text = '{"run": "/srv/co/repo/runs/resnet18", "data": "/srv/co/shared/data", "x": "/srv/co/repo2/a", "r": ' \
           '"/srv/co/repo"}\n| a | /srv/co/repo/artifacts |\n'
    assert tool.relativise(text, "/srv/co/repo") == ('{"run": "runs/resnet18", "data": "../shared/data", "x": '
                                                      '"../repo2/a", "r": "."}\n| a | artifacts |\n')
