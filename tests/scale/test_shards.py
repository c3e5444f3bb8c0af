"""Output folders of shards: whole shards only, resume reads them all, merge keeps one line per key."""

import json

import pytest

from tarsier.errors import TarsierError
from tarsier.scale.shards import (
    ShardWriter,
    drop_shard_records,
    is_shard_folder,
    merge_shards,
    read_shard_records,
    remove_pending,
    shard_files,
)


def test_a_shard_appears_whole_every_n_records_and_on_close(tmp_path):
    with ShardWriter(tmp_path / "out", rows=3) as writer:
        for index in range(7):
            writer.write({"key": str(index)})
            assert len(read_shard_records(tmp_path / "out")) == index + 1 - (index + 1) % 3
    assert [len(path.read_text().splitlines()) for path in shard_files(tmp_path / "out")] == [3, 3, 1]
    assert [r["key"] for r in read_shard_records(tmp_path / "out")] == [str(i) for i in range(7)]


def test_half_written_shards_are_ignored_and_removed(tmp_path):
    folder = tmp_path / "out"
    with ShardWriter(folder, rows=2) as writer:
        writer.write({"key": "a"})
        writer.write({"key": "b"})
    (folder / "part-x-00000.jsonl.pending").write_text('{"key": "c"}\n{"key": "d"')
    assert [r["key"] for r in read_shard_records(folder)] == ["a", "b"]
    assert remove_pending(folder) == 1 and not list(folder.glob("*.pending"))


def test_drop_and_merge_keep_one_line_per_key(tmp_path):
    folder = tmp_path / "out"
    with ShardWriter(folder, rows=2) as writer:
        for key, error in (("a", None), ("b", "broken"), ("c", None)):
            writer.write({"key": key, "error": error})
    assert drop_shard_records(folder, lambda r: bool(r["error"])) == 1
    with ShardWriter(folder, rows=2) as writer:  # a later run: b again, and a again (latest wins)
        writer.write({"key": "b", "error": None})
        writer.write({"key": "a", "error": None, "text": "new"})
    merged = tmp_path / "merged.jsonl"
    assert merge_shards(folder, merged) == 3
    lines = [json.loads(line) for line in merged.read_text().splitlines()]
    assert [r["key"] for r in lines] == ["c", "b", "a"] and lines[-1]["text"] == "new"


def test_an_output_is_a_jsonl_file_or_a_folder_and_nothing_is_guessed(tmp_path):
    (tmp_path / "existing").mkdir()
    assert is_shard_folder("captions/") and is_shard_folder(str(tmp_path / "existing"))
    assert not is_shard_folder("captions.jsonl") and not is_shard_folder("CAPTIONS.JSONL")
    for unclear in ("typo.json", "runs/captions", "out.csv"):
        with pytest.raises(TarsierError, match=r"write NAME.jsonl for one file, or a folder of shards"):
            is_shard_folder(unclear)
