"""The real ``tarsier`` console script in a subprocess: describe, caption (resume), chat, errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from media_factory import make_video
from tarsier.generation import GenerationSettings
from tarsier.inference import DescribeRequest, Describer

TARSIER = str(Path(sys.executable).with_name("tarsier"))


def tarsier(*args, stdin=None, timeout=300):
    return subprocess.run([TARSIER, *map(str, args)], input=stdin, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    for index in range(3):
        make_video(folder / f"clip{index}.mp4", 12 + index)
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    (folder / "notes.txt").write_text("ignored: not media")
    return folder


def model_args(checkpoint):
    return ["--model", checkpoint, "--device", "cpu", "--max-new-tokens", "5", "--max-frames", "3"]


def test_help_lists_every_command_and_teaches():
    result = tarsier("--help")
    assert result.returncode == 0
    for command in ("describe", "chat", "caption"):
        assert command in result.stdout
    describe_help = tarsier("describe", "--help").stdout
    assert "examples:" in describe_help and "--max-frames" in describe_help


def test_describe_streams_the_same_text_as_the_python_api(fast_checkpoint, videos):
    result = tarsier("describe", videos / "clip0.mp4", *model_args(fast_checkpoint))
    assert result.returncode == 0, result.stderr
    describer = Describer.from_pretrained(
        str(fast_checkpoint), device="cpu", max_n_frames=3, generation=GenerationSettings(max_new_tokens=5)
    )
    expected = next(describer.run([DescribeRequest("x", videos / "clip0.mp4")])).text
    assert result.stdout == expected + "\n"


def test_describe_json_over_a_folder_reports_bad_files_and_goes_on(fast_checkpoint, videos):
    result = tarsier("describe", videos, "--json", "--batch-size", "2", *model_args(fast_checkpoint))
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["path"]).name for r in records] == ["broken.mp4", "clip0.mp4", "clip1.mp4", "clip2.mp4"]
    assert records[0]["error"] and records[0]["text"] is None
    assert all(r["error"] is None and r["text"] for r in records[1:])
    assert records[1]["frames"] == [0, 6, 11]
    errors = [line for line in result.stderr.splitlines() if line.startswith("tarsier: error:")]
    assert len(errors) == 1 and "broken.mp4" in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "tpu9"], "unknown device 'tpu9'"),
        (["--dtype", "int3"], "unknown dtype 'int3'"),
        (["--max-frames", "0"], "--max-frames must be at least 1"),
    ],
)
def test_bad_options_are_one_line_errors(fast_checkpoint, videos, args, message):
    result = tarsier("describe", videos / "clip0.mp4", "--model", fast_checkpoint, *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"tarsier: error: {result.stderr.strip()[len('tarsier: error: '):]}"]
    assert message in result.stderr


def test_incomplete_checkpoint_and_missing_input_are_one_line_errors(fast_checkpoint, videos, tmp_path):
    broken = tmp_path / "no-weights"
    shutil.copytree(fast_checkpoint, broken)
    for shard in broken.glob("*.safetensors*"):
        shard.unlink()
    result = tarsier("describe", videos / "clip0.mp4", "--model", broken, "--device", "cpu")
    assert result.returncode == 2 and "no weights" in result.stderr and "Traceback" not in result.stderr
    result = tarsier("describe", tmp_path / "nowhere.mp4", *model_args(fast_checkpoint))
    assert result.returncode == 2 and "nowhere.mp4" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_caption_writes_jsonl_and_resumes_without_duplicates(fast_checkpoint, videos, tmp_path):
    output = tmp_path / "captions.jsonl"
    first = tarsier("caption", videos, "--output", output, "--batch-size", "2", *model_args(fast_checkpoint))
    assert first.returncode == 1  # one input failed; the others were captioned
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 4 and sum(bool(r["error"]) for r in records) == 1
    good = {r["path"]: r for r in records if not r["error"]}
    assert all(r["text"] and r["model"] == str(fast_checkpoint) and len(r["frames"]) == 3 for r in good.values())
    assert "captioning" in first.stderr  # progress bar

    # Simulate a crash: drop the last record and leave a torn line behind.
    lines = output.read_text().splitlines(keepends=True)
    output.write_text("".join(lines[:-1]) + lines[-1][:15])
    second = tarsier("caption", videos, "--output", output, *model_args(fast_checkpoint))
    resumed = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(r["path"] for r in resumed) == sorted(r["path"] for r in records)
    assert "1 to caption" in second.stderr

    third = tarsier("caption", videos, "--output", output, *model_args(fast_checkpoint))
    assert third.returncode == 0 and "0 to caption" in third.stderr
    assert [json.loads(line) for line in output.read_text().splitlines()] == resumed


def test_caption_retry_errors_replaces_failed_records(fast_checkpoint, videos, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    make_video(folder / "a.mp4", 10)
    (folder / "b.mp4").write_bytes(b"junk")
    output = tmp_path / "out.jsonl"
    tarsier("caption", folder, "--output", output, *model_args(fast_checkpoint))
    make_video(folder / "b.mp4", 10)  # fixed on disk
    result = tarsier("caption", folder, "--output", output, "--retry-errors", *model_args(fast_checkpoint))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 2 and not any(r["error"] for r in records)


def test_chat_answers_each_question_from_stdin(fast_checkpoint, videos):
    result = tarsier("chat", videos / "clip1.mp4", *model_args(fast_checkpoint), stdin="What happens?\nAnd then?\n")
    assert result.returncode == 0, result.stderr
    replies = [line for line in result.stdout.splitlines() if line.startswith("tarsier> ")]
    assert len(replies) == 2 and all(len(line) > len("tarsier> ") for line in replies)
    assert "you> What happens?" in result.stdout
