"""Crash-safe JSONL output: torn tails are repaired, done keys are read back."""

import pytest

from tarsier import TarsierError
from tarsier.jsonl import JsonlAppender, done_keys, iter_jsonl, read_records


def test_appender_writes_one_line_per_record_and_resumes(tmp_path):
    path = tmp_path / "out" / "results.jsonl"
    with JsonlAppender(path) as sink:
        sink.write({"path": "a.mp4", "text": "x"})
    with JsonlAppender(path) as sink:
        sink.write({"path": "b.mp4", "text": "ü"})
    assert path.read_text(encoding="utf-8") == '{"path": "a.mp4", "text": "x"}\n{"path": "b.mp4", "text": "ü"}\n'
    assert done_keys(path, "path") == {"a.mp4", "b.mp4"}


def test_torn_last_line_is_ignored_and_cut_before_appending(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"path": "a.mp4"}\n{"path": "b.mp', encoding="utf-8")
    assert [r["path"] for r in read_records(path)] == ["a.mp4"]
    with JsonlAppender(path) as sink:
        sink.write({"path": "c.mp4"})
    assert path.read_text() == '{"path": "a.mp4"}\n{"path": "c.mp4"}\n'


def test_bad_lines_name_the_file_and_line(tmp_path):
    path = tmp_path / "annotations.jsonl"
    path.write_text('{"a": 1}\n\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(TarsierError, match=r"annotations.jsonl:3: expected a JSON object"):
        list(iter_jsonl(path))
    path.write_text('{"a": 1}\n{oops}\n', encoding="utf-8")
    with pytest.raises(TarsierError, match=r"annotations.jsonl:2: not valid JSON"):
        list(iter_jsonl(path))
    with pytest.raises(TarsierError, match="file not found"):
        list(iter_jsonl(tmp_path / "missing.jsonl"))
