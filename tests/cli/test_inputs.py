"""Manifests: .txt, .jsonl, .csv, .parquet, local or by URI, relative paths from the manifest's folder."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tarsier.cli.inputs import read_input_list
from tarsier.errors import TarsierError


def as_tuples(items):
    return [(item.path, item.prompt, item.start_time, item.end_time, item.id) for item in items]


@pytest.fixture
def expected(tmp_path):
    return [(str(tmp_path / "a.mp4"), None, None, None, None), (str(tmp_path / "sub" / "b.mp4"), "What?", 1.5, 3.0, "x7")]


def write_all(tmp_path):
    rows = [{"path": "a.mp4"}, {"path": "sub/b.mp4", "prompt": "What?", "start_time": 1.5, "end_time": 3.0, "id": "x7"}]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "items.csv").write_text("path,prompt,start_time,end_time,id\na.mp4,,,,\nsub/b.mp4,What?,1.5,3,x7\n")
    pq.write_table(pa.Table.from_pylist(
        [{"path": "a.mp4", "prompt": None, "start_time": None, "end_time": None, "id": None},
         {"path": "sub/b.mp4", "prompt": "What?", "start_time": 1.5, "end_time": 3.0, "id": "x7"}]),
        tmp_path / "items.parquet")


@pytest.mark.parametrize("name", ["items.jsonl", "items.csv", "items.parquet"])
@pytest.mark.parametrize("uri", [False, True])
def test_every_manifest_format_reads_the_same_items(tmp_path, expected, name, uri):
    write_all(tmp_path)
    source = f"file://{tmp_path / name}" if uri else tmp_path / name
    assert as_tuples(read_input_list(source)) == expected


def test_text_lists_and_absolute_paths(tmp_path):
    (tmp_path / "list.txt").write_text("# comment\na.mp4\n\n/abs/c.mp4\nfile:///abs/d.mp4\n")
    assert [item.path for item in read_input_list(tmp_path / "list.txt")] == [str(tmp_path / "a.mp4"), "/abs/c.mp4", "/abs/d.mp4"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.csv", "path,start_time\na.mp4,soon\n", "bad.csv:2: \"start_time\" must be a number"),
        ("bad.csv", "file,prompt\na.mp4,x\n", "bad.csv:2: each line needs a \"path\""),
        ("bad.jsonl", '{"path": 3}\n', "bad.jsonl:1: each line needs a \"path\""),
        ("bad.parquet", "not parquet", "bad.parquet: not a readable Parquet file"),
        ("bad.xlsx", "", "expected a .txt, .jsonl, .csv or .parquet manifest"),
    ],
)
def test_bad_manifests_are_one_line_errors_naming_the_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(TarsierError, match=message.replace(".", r"\.").replace("(", r"\(")):
        read_input_list(tmp_path / name)


def test_a_missing_manifest_uri_is_one_line(tmp_path):
    with pytest.raises(TarsierError, match="file not found"):
        read_input_list(f"file://{tmp_path}/none.csv")
