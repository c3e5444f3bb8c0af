"""``--engine ray`` on a local Ray: same records as in process, errors recorded, killed runs resume exactly once."""

import json
import os
from pathlib import Path

import pytest
from media_factory import make_empty_video, make_video

from tarsier.cli import main
from tarsier.scale.shards import read_shard_records, shard_files
from tarsier.shapes.world import write_clips

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

RAY = ["--engine", "ray", "--replicas", "2", "--decode-workers", "2", "--gpus-per-replica", "0"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """20 inputs: 17 good clips, a corrupt file, a missing file and a video without frames.

    The good clips are the shapes world's, so the trained demo model gives each its own description
    (17 different texts): a record that got another item's text would show."""
    folder = tmp_path_factory.mktemp("clips")
    for index, (name, _) in enumerate(write_clips(folder, 17, seed=3)):
        (folder / name).rename(folder / f"clip{index:02d}.mp4")
    (folder / "clips.jsonl").unlink()
    (folder / "corrupt.mp4").write_bytes(os.urandom(2000))
    make_empty_video(folder / "empty.mp4")
    names = sorted(p.name for p in folder.iterdir()) + ["missing.mp4"]
    (folder / "list.txt").write_text("\n".join(names) + "\n")
    return folder


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def model_args():
    return ["--model", "shapes-demo", "--device", "cpu", "--max-new-tokens", "24", "--max-frames", "4",
            "--no-progress", "--batch-size", "2"]


def by_key(records):
    return {record["key"]: record for record in records}


@pytest.fixture(scope="module")
def in_process(clips, tmp_path_factory):
    output = tmp_path_factory.mktemp("local") / "captions.jsonl"
    assert main(["caption", str(clips / "list.txt"), "--output", str(output), *model_args()]) == 1
    return by_key(json.loads(line) for line in output.read_text().splitlines())


def test_ray_captions_each_input_once_with_the_in_process_text(clips, in_process, local_ray, tmp_path):
    output = tmp_path / "captions"
    status = main(["caption", str(clips / "list.txt"), "--output", f"{output}/", *model_args(), *RAY,
                   "--shard-size", "7"])
    assert status == 1  # three inputs failed, and said so
    records = read_shard_records(output)
    assert len(records) == 20 and len(by_key(records)) == 20
    assert len(shard_files(output)) >= 3
    assert len({record["text"] for record in in_process.values() if not record["error"]}) == 17
    for key, expected in in_process.items():
        got = by_key(records)[key]
        assert (got["path"], got["text"], got["frames"]) == (expected["path"], expected["text"], expected["frames"])
        assert bool(got["error"]) == bool(expected["error"])
    errors = {Path(r["path"]).name: r["error"] for r in records if r["error"]}
    assert set(errors) == {"corrupt.mp4", "empty.mp4", "missing.mp4"}
    assert "not found" in errors["missing.mp4"]
    # a rerun has nothing left to do
    assert main(["caption", str(clips / "list.txt"), "--output", f"{output}/", *model_args(), *RAY]) == 0
    assert len(read_shard_records(output)) == 20
    merged = tmp_path / "merged.jsonl"
    assert main(["merge", str(output), "--output", str(merged)]) == 0
    assert by_key(json.loads(line) for line in merged.read_text().splitlines()).keys() == in_process.keys()


def test_a_tarsier2_checkpoint_captions_with_ray_as_in_process(tarsier2_checkpoint, local_ray, tmp_path):
    """The Ray path is family-blind: Tarsier2's processor runs in the decode tasks (its 16-frame
    default, every frame once for these 8- to 12-frame clips) and its model in the actors."""
    manifest = tmp_path / "three.txt"
    short = [make_video(tmp_path / f"short{frames}.mp4", frames) for frames in (8, 9, 12)]
    manifest.write_text("".join(f"{path}\n" for path in short))
    args = ["--model", str(tarsier2_checkpoint), "--device", "cpu", "--max-new-tokens", "4", "--no-progress"]
    assert main(["caption", str(manifest), "--output", str(tmp_path / "local.jsonl"), *args]) == 0
    assert main(["caption", str(manifest), "--output", f"{tmp_path / 'ray'}/", *args, *RAY]) == 0
    local = by_key(json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines())
    distributed = by_key(read_shard_records(tmp_path / "ray"))
    assert distributed.keys() == local.keys() and len(local) == 3
    for key, expected in local.items():
        assert (distributed[key]["text"], distributed[key]["frames"]) == (expected["text"], expected["frames"])
    assert sorted(len(record["frames"]) for record in local.values()) == [8, 9, 12]


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet", "file-uri"])
def test_every_manifest_format_gives_the_same_items(clips, in_process, local_ray, tmp_path, kind):
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ["clip00.mp4", "clip03.mp4", "corrupt.mp4"]
    rows = [{"path": str(clips / name), "id": index} for index, name in enumerate(names)]
    if kind == "csv":
        manifest = tmp_path / "items.csv"
        manifest.write_text("path,prompt,start_time,end_time,id\n" + "".join(f"{r['path']},,,,{r['id']}\n" for r in rows))
    elif kind == "parquet":
        manifest = tmp_path / "items.parquet"
        pq.write_table(pa.Table.from_pylist(rows), manifest)
    else:
        manifest = tmp_path / "items.jsonl"
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = f"file://{manifest}" if kind == "file-uri" else str(manifest)
    output = tmp_path / "out"
    assert main(["caption", source, "--output", f"{output}/", *model_args(), *RAY]) == 1  # corrupt.mp4
    records = by_key(read_shard_records(output))
    assert len(records) == 3
    for record in records.values():
        assert record["text"] == in_process[record["key"]]["text"]
        assert str(record["id"]) == str(names.index(Path(record["path"]).name))


def test_bench_run_with_ray_scores_as_the_in_process_run(clips, local_ray, tmp_path):
    lines = []
    for idx in range(3):
        lines.append({"idx": idx, "dataset": "MSVD-Caption-test", "vid": f"clip{idx:02d}", "video_file": "<placeholder>",
                      "text": {"prompt": "<video>\nDescribe the video in one sentence.", "response": "a man walks"}})
        lines.append({"idx": idx, "dataset": "MVBench/Object Shuffle", "vid": f"clip{idx + 5:02d}",
                      "video_file": "<placeholder>",
                      "text": {"prompt": "USER: <video> Where is the ball?\n(A) left\n(B) right\nASSISTANT: Answer: (",
                               "response": "A"}})
    annotations = tmp_path / "annotations.jsonl"
    annotations.write_text("".join(json.dumps(line) + "\n" for line in lines))
    summaries = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        args = ["bench", "run", "-a", str(annotations), "--video-root", str(clips), "-o", str(out),
                *model_args()]
        assert main(args + (RAY if engine == "ray" else [])) == 0
        assert main(["eval", str(out), "--no-progress"]) == 0
        summaries[engine] = {
            name: json.loads((out / "eval" / f"{name}_summary.json").read_text())["results"]
            for name in ("msvd-caption", "mvbench")
        }
        predictions = {r["key"]: r["text"]["prediction"] for r in map(json.loads, (out / "predictions.jsonl").open())}
        summaries[engine]["predictions"] = predictions
    assert len(summaries["local"]["predictions"]) == 6
    assert summaries["ray"] == summaries["local"]
