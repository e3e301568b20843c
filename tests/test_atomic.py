"""agenttune.common.atomic: a failed write leaves the old file and no temp file; the JSON Lines bytes are fixed."""

import pytest

from agenttune.common.atomic import atomic_write, read_jsonl, write_jsonl, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out" / "table.md"
    write_text(path, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n" and [p.name for p in path.parent.iterdir()] == ["table.md"]


def test_jsonl_bytes_compact_and_default_separators(tmp_path):
    rows = [{"id": "a", "text": "é"}, {"id": "b", "n": [1, 2]}]
    write_jsonl(tmp_path / "compact.jsonl", rows)
    write_jsonl(tmp_path / "spaced.jsonl", iter(rows), compact=False)
    assert (tmp_path / "compact.jsonl").read_bytes() == '{"id":"a","text":"é"}\n{"id":"b","n":[1,2]}\n'.encode()
    assert (tmp_path / "spaced.jsonl").read_bytes() == '{"id": "a", "text": "é"}\n{"id": "b", "n": [1, 2]}\n'.encode()
    (tmp_path / "blank.jsonl").write_text('{"id": "a"}\n\n{"id": "b"}\n')
    assert read_jsonl(tmp_path / "blank.jsonl") == [{"id": "a"}, {"id": "b"}]
