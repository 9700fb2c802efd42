"""core.io: atomic writes keep what was there; format-checked JSON reads name the file and the fix."""

from __future__ import annotations

import pytest

from core import io


def test_write_json_replaces_atomically_and_keeps_old_file_on_failure(tmp_path):
    path = io.write_json(tmp_path / "a.json", {"x": 1})
    assert path.read_text().startswith("{")

    def broken(p):
        p.write_text("half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError):
        io.write_atomic(path, broken)
    assert '"x": 1' in path.read_text()  # the earlier file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left behind


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not valid JSON"),
    ('{"format": "other/1"}', "is not a demo/1 file"),
    ("[1, 2]", "is not a demo/1 file"),
    (b"\xff\xfe\x00", "is not valid JSON"),
])
def test_read_format_json_errors_name_file_and_fix(tmp_path, text, message):
    path = tmp_path / "doc.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(KeyError) as err:
        io.read_format_json(path, "demo/1", "make it again", KeyError)
    assert message in str(err.value) and str(path) in str(err.value) and "make it again" in str(err.value)


def test_read_format_json_returns_the_document(tmp_path):
    path = io.write_json(tmp_path / "doc.json", {"format": "demo/1", "rows": [1]})
    assert io.read_format_json(path, "demo/1", "fix") == {"format": "demo/1", "rows": [1]}
