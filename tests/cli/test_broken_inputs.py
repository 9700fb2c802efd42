"""Every command, given broken inputs of each kind, answers with one line and a non-zero exit status, never a
traceback; and the options its message names are options of that command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

KINDS = ("missing", "file", "corrupt", "wrong-format", "empty")
# command -> (arguments before the input, the record file a folder input holds, arguments after it)
COMMANDS = {
    "data split": (["data", "split", "--data"], None, ["--out", "{tmp}/split.json"]),
    "data audit": (["data", "audit"], "split.json", []),
    "train": (["train", "resnet18", "--out", "{tmp}/runs", "--split-file"], "split.json", []),
    "evaluate": (["evaluate"], "run.json", []),
    "export": (["export"], "run.json", ["--out", "{tmp}/artifacts"]),
    "bench": (["bench"], "manifest.json", ["--out", "{tmp}/results"]),
    "table": (["table"], "results.json", []),
    "recommend": (["recommend"], "results.json", []),
    "compare": (["compare"], "results.json", ["{tmp}/also-missing"]),
    "gradcam": (["gradcam"], "run.json", ["--out", "{tmp}/cams"]),
    "fidelity": (["fidelity"], "run.json", ["--out", "{tmp}/fidelity.json"]),
    "report": (["report"], "results.json", ["--out", "{tmp}/docs/RESULTS.md"]),
}
FILE_INPUTS = {"data audit", "train"}  # these take a file: "file" gives them a folder instead, and a record is the file


def broken(kind: str, record: str | None, file_input: bool, tmp: Path) -> Path:
    """An input of one broken kind: a missing path, a file where a folder is expected (a folder where a file
    is), a folder (or file) whose record is not JSON, a record of another format, an empty folder."""
    where = tmp / "input"
    if kind == "missing":
        return where
    if kind == "file":
        if file_input:
            where.mkdir()
        else:
            where.write_text("not a folder\n")
        return where
    if kind == "empty":
        where.mkdir()
        return where
    target = where if file_input else where / (record or "manifest.csv")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("{ not json" if kind == "corrupt" else json.dumps({"format": "something-else/9", "rows": 3}))
    if record == "run.json":
        (where / "model.safetensors").write_bytes(b"\0" * 64)
    return where


def options_of(command: list[str]) -> set[str]:
    words = [w for w in command if not w.startswith("-") and "{" not in w][:2]
    words = words[:2] if words[0] == "data" else words[:1]
    text = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "300"}).output
    return set(re.findall(r"--[a-z][a-z0-9-]*", text))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(COMMANDS))
def test_broken_input_is_one_line_without_traceback(name, kind, tmp_path):
    before, record, after = COMMANDS[name]
    target = broken(kind, record, name in FILE_INPUTS, tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in before] + [str(target)] + [
        a.replace("{tmp}", str(tmp_path)) for a in after]
    r = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    text = r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), f"{type(r.exception).__name__}: {r.exception}"
    assert r.exit_code == 2 and "Traceback" not in text, text  # 2: a user error, foreseen and explained
    assert "unexpected" not in text, text  # not the last-resort line of an error no check foresaw
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and len(text.strip().splitlines()) <= 3, text
    # hints name options of this command only (commands quoted in backticks may name their own)
    named = set(re.findall(r"--[a-z][a-z0-9-]*", re.sub(r"`[^`]*`", "", errors[0])))
    assert named <= options_of(before), (named - options_of(before), errors[0])


def test_an_unforeseen_error_is_one_line_naming_its_type(capsys):
    import typer

    from cli.common import friendly

    @friendly
    def broken_command() -> None:
        raise KeyError("rows")

    @friendly
    def exiting_command() -> None:
        raise typer.Exit(1)  # a command's own exit status passes through untouched

    with pytest.raises(typer.Exit) as err:
        broken_command()
    assert err.value.exit_code == 1
    text = capsys.readouterr().err
    assert text.count("\n") == 1 and "unexpected KeyError: 'rows'" in text and "CXR_EDGE_DEBUG=1" in text
    with pytest.raises(typer.Exit) as err:
        exiting_command()
    assert err.value.exit_code == 1 and capsys.readouterr().err == ""
