"""Crash-safe JSONL output: torn tails are repaired, done keys are read back."""

import pytest

from tarsier import TarsierError
from tarsier.jsonl import JsonlAppender, OutputLock, fingerprint, iter_jsonl, read_records


def test_appender_writes_one_line_per_record_and_resumes(tmp_path):
    path = tmp_path / "out" / "results.jsonl"
    with JsonlAppender(path) as sink:
        sink.write({"path": "a.mp4", "text": "x"})
    with JsonlAppender(path) as sink:
        sink.write({"path": "b.mp4", "text": "ü"})
    assert path.read_text(encoding="utf-8") == '{"path": "a.mp4", "text": "x"}\n{"path": "b.mp4", "text": "ü"}\n'
    assert [r["path"] for r in read_records(path)] == ["a.mp4", "b.mp4"]


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


def test_fingerprint_changes_with_every_field_and_only_then():
    base = fingerprint(path="a.mp4", prompt=None, start_time=None, end_time=None, max_frames=8)
    assert base == fingerprint(max_frames=8, end_time=None, start_time=None, prompt=None, path="a.mp4")
    others = [
        fingerprint(path="b.mp4", prompt=None, start_time=None, end_time=None, max_frames=8),
        fingerprint(path="a.mp4", prompt="<video>\nQ", start_time=None, end_time=None, max_frames=8),
        fingerprint(path="a.mp4", prompt=None, start_time=0, end_time=None, max_frames=8),
        fingerprint(path="a.mp4", prompt=None, start_time=None, end_time=5, max_frames=8),
        fingerprint(path="a.mp4", prompt=None, start_time=None, end_time=None, max_frames=16),
    ]
    assert len({base, *others}) == 6 and all(len(f) == 16 for f in others)


def test_output_lock_is_exclusive_and_released(tmp_path):
    import os

    path = tmp_path / "runs" / "out.jsonl"
    with OutputLock(path):
        with pytest.raises(TarsierError, match=rf"out.jsonl: another tarsier process \(pid {os.getpid()}\) is writing"):
            OutputLock(path).acquire()
    with OutputLock(path):  # released by the first holder
        pass
    assert path.parent.is_dir()


def test_output_lock_checks_the_path_before_any_work(tmp_path):
    with pytest.raises(TarsierError, match="is a folder; give the path of a .jsonl file"):
        OutputLock(tmp_path).acquire()
    (tmp_path / "plain").write_text("")
    with pytest.raises(TarsierError, match=r"plain/x.jsonl: cannot write here"):
        OutputLock(tmp_path / "plain" / "x.jsonl").acquire()
