"""The real ``tarsier`` console script in a subprocess: describe, caption (resume), chat, errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from media_factory import make_video

from tarsier.engine.describer import Describer, DescribeRequest
from tarsier.engine.settings import GenerationSettings

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
        (["--start", "-3"], "--start must be 0 or more seconds"),
        (["--cache-gb", "-1"], "--cache-gb must be 0 (no cache) or more"),
        (["--start", "5", "--end", "2"], "must be after --start"),
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
    assert first.stdout == "" and "tarsier: error:" in first.stderr and "broken.mp4" in first.stderr  # errors on stderr

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


def test_caption_keys_items_by_window_and_prompt_not_by_path(fast_checkpoint, videos, tmp_path):
    clip = make_video(tmp_path / "long.mp4", 50)  # 2 s at 25 fps
    items = tmp_path / "items.jsonl"
    lines = [
        {"path": str(clip), "start_time": 0.0, "end_time": 0.6},
        {"path": str(clip), "start_time": 0.6, "end_time": 1.2},
        {"path": str(clip), "start_time": 1.2, "end_time": 2.0},
        {"path": str(clip), "prompt": "<video>\nWhat moves?", "id": "q1"},
        {"path": str(clip), "start_time": 0.0, "end_time": 0.6},  # the same work as the first line
    ]
    items.write_text("".join(json.dumps(line) + "\n" for line in lines))
    output = tmp_path / "captions.jsonl"
    first = tarsier("caption", items, "--output", output, *model_args(fast_checkpoint))
    assert first.returncode == 0, first.stderr
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 4 and len({r["key"] for r in records}) == 4
    assert [(r["start_time"], r["end_time"]) for r in records[:3]] == [(0.0, 0.6), (0.6, 1.2), (1.2, 2.0)]
    windows = [r["frames"] for r in records[:3]]
    assert windows[0][-1] <= windows[1][0] and windows[1][-1] <= windows[2][0] and windows[2][-1] == 49
    assert records[3]["prompt"] == "<video>\nWhat moves?" and records[3]["id"] == "q1"
    assert "1 input line(s) repeat an earlier one" in first.stderr

    # Interrupted after two items (the last line torn): the rerun captions exactly the two others.
    kept = output.read_text().splitlines(keepends=True)[:2]
    output.write_text("".join(kept) + kept[1][:20])
    second = tarsier("caption", items, "--output", output, *model_args(fast_checkpoint))
    assert second.returncode == 0 and "4 inputs, 2 already in" in second.stderr and "2 to caption" in second.stderr
    resumed = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(r["key"] for r in resumed) == sorted(r["key"] for r in records)
    assert {r["key"]: r["text"] for r in resumed} == {r["key"]: r["text"] for r in records}

    # Another --max-frames is other work: nothing is skipped as done.
    third = tarsier("caption", items, "--output", output, "--limit", "1", *model_args(fast_checkpoint)[:-1], "2")
    assert "4 inputs, 0 already in" in third.stderr and "1 to caption" in third.stderr


def test_a_file_is_one_item_however_its_path_is_spelled(fast_checkpoint, videos, tmp_path, monkeypatch):
    """A folder run, then a list naming the same files as ./videos/x, by absolute path and from the
    list's own folder, into one output: nothing is captioned twice."""
    from tarsier.cli.inputs import MediaInput

    work = tmp_path / "work"
    shutil.copytree(videos, work / "videos")
    (work / "videos" / "broken.mp4").unlink()
    (work / "lists").mkdir()
    (work / "lists" / "clips.txt").write_text(f"../videos/clip0.mp4\n{work / 'videos' / 'clip1.mp4'}\n")
    (work / "more.txt").write_text("./videos/clip2.mp4\nvideos//clip0.mp4\n")
    monkeypatch.chdir(work)
    output = work / "captions.jsonl"
    first = tarsier("caption", "videos", "--output", output, *model_args(fast_checkpoint))
    assert first.returncode == 0 and "3 to caption" in first.stderr, first.stderr
    for listing in ("lists/clips.txt", "more.txt"):
        again = tarsier("caption", listing, "--output", output, *model_args(fast_checkpoint))
        assert again.returncode == 0 and "0 to caption" in again.stderr, again.stderr
    assert len(output.read_text().splitlines()) == 3

    # an output written when keys took the path as spelled still resumes under another spelling
    records = [json.loads(line) for line in output.read_text().splitlines()]
    for record in records:
        record["key"] = MediaInput(record["path"]).spelled_key(record["path"], 3)
    output.write_text("".join(json.dumps(record) + "\n" for record in records))
    old = tarsier("caption", "more.txt", "--output", output, *model_args(fast_checkpoint))
    assert old.returncode == 0 and "2 inputs, 2 already in" in old.stderr, old.stderr


def test_caption_resumes_an_output_written_before_keys_existed(fast_checkpoint, videos, tmp_path):
    output = tmp_path / "old.jsonl"
    output.write_text(json.dumps({"path": str(videos / "clip0.mp4"), "text": "old", "error": None}) + "\n")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{videos / 'clip0.mp4'}\n{videos / 'clip1.mp4'}\n")
    result = tarsier("caption", listing, "--output", output, *model_args(fast_checkpoint))
    assert "2 inputs, 1 already in" in result.stderr and "1 to caption" in result.stderr
    assert [json.loads(line)["path"] for line in output.read_text().splitlines()] == [
        str(videos / "clip0.mp4"),
        str(videos / "clip1.mp4"),
    ]


def test_caption_refuses_an_output_that_another_process_writes(videos, tmp_path):
    from tarsier.jsonl import OutputLock

    output = tmp_path / "captions.jsonl"
    with OutputLock(output):
        result = tarsier("caption", videos, "--output", output, "--model", "nobody/nothing")
    assert result.returncode == 2 and "another tarsier process" in result.stderr
    assert result.stderr.count("\n") == 1 and not output.exists()


@pytest.mark.parametrize("where", ["file-as-shard-folder", "proc", "under-a-file", "typo"])
def test_caption_checks_the_output_before_loading_a_model(videos, tmp_path, where):
    (tmp_path / "file").write_text("")
    output = {
        "file-as-shard-folder": tmp_path / "file",  # neither NAME.jsonl nor a folder
        "typo": tmp_path / "captions.json",  # once became a folder of shards without a word
        "proc": Path("/proc/x.jsonl"),
        "under-a-file": tmp_path / "file" / "x.jsonl",
    }[where]
    result = tarsier("caption", videos, "--output", output, "--model", "nobody/nothing")  # never loaded
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and str(output) in result.stderr
    assert not (tmp_path / "captions.json").exists()


def test_merge_writes_only_a_jsonl_file(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "part-1-a-00000.jsonl").write_text('{"key": "a", "text": "x"}\n')
    result = tarsier("merge", tmp_path / "shards", "--output", tmp_path / "all.csv")
    assert result.returncode == 2 and "name the output NAME.jsonl" in result.stderr and not (tmp_path / "all.csv").exists()
    assert tarsier("merge", tmp_path / "shards", "--output", tmp_path / "all.jsonl").returncode == 0
    assert json.loads((tmp_path / "all.jsonl").read_text()) == {"key": "a", "text": "x"}


def test_caption_rerun_counts_recorded_failures_and_names_retry_errors(fast_checkpoint, videos, tmp_path):
    output = tmp_path / "captions.jsonl"
    tarsier("caption", videos, "--output", output, *model_args(fast_checkpoint))
    again = tarsier("caption", videos, "--output", output, *model_args(fast_checkpoint))
    assert again.returncode == 0 and "0 to caption" in again.stderr
    assert "1 of them failed in an earlier run" in again.stderr and "--retry-errors" in again.stderr


@pytest.mark.parametrize("command", ["describe", "chat"])
def test_ctrl_c_while_a_reply_streams_stops_generation_and_exits_130(fast_checkpoint, videos, command):
    import signal
    import time

    args = [TARSIER, command, str(videos / "clip0.mp4"), "--model", str(fast_checkpoint), "--device", "cpu"]
    args += ["--max-new-tokens", "3000", "--max-frames", "2", "--no-progress"]
    process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if command == "chat":
        process.stdin.write(b"What happens?\n")
        process.stdin.flush()
    streamed, marker = b"", b"tarsier> " if command == "chat" else b""
    deadline = time.monotonic() + 120
    while marker not in streamed or len(streamed) < len(marker) + 20:  # some reply text has arrived
        assert time.monotonic() < deadline and process.poll() is None, "no reply was streamed"
        streamed += process.stdout.read1(64)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    err = err.decode()
    assert process.returncode == 130, err
    assert "terminate called" not in err and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "tarsier: interrupted"


def test_prompt_backslash_n_is_the_reference_line_break(fast_checkpoint, videos):
    from tarsier.cli.options import prompt_text

    assert prompt_text(r"<video>\nWhat is the man holding?") == "<video>\nWhat is the man holding?"
    assert prompt_text(r"a\\nb") == "a\\nb" and prompt_text("plain") == "plain"
    result = tarsier("describe", videos / "clip0.mp4", "--json", "--prompt", r"<video>\nWhat moves?", *model_args(fast_checkpoint))
    assert json.loads(result.stdout)["prompt"] == "<video>\nWhat moves?"


def test_too_many_frames_are_refused_before_any_decoding(fast_checkpoint, long_video):
    import time

    started = time.monotonic()
    result = tarsier("describe", long_video, "--model", fast_checkpoint, "--device", "cpu", "--max-frames", "10000")
    assert result.returncode == 2 and time.monotonic() - started < 60
    # 21 positions per 56 px frame, a 4,096-position model: at most (4 x 4096 - 100) // 21 frames
    assert result.stderr.strip() == (
        "tarsier: error: 10000 frames need about 210,100 positions (21 per frame), but this model attends to 4,096; "
        "use at most 775 frames"
    )


def test_a_lone_missing_input_still_gets_its_json_record(videos, tmp_path):
    missing = tmp_path / "missing.mp4"
    text = tarsier("describe", missing, "--model", "nobody/nothing")
    as_json = tarsier("describe", missing, "--json", "--model", "nobody/nothing")
    assert text.returncode == as_json.returncode == 2
    assert json.loads(as_json.stdout) == {
        "path": str(missing), "prompt": None, "text": None, "frames": [], "error": f"{missing}: file not found"
    }
    assert text.stdout == "" and text.stderr == as_json.stderr == f"tarsier: error: {missing}: file not found\n"


def test_a_lone_corrupt_input_exits_2_with_nothing_on_stdout_but_its_json_record(fast_checkpoint, videos):
    broken = videos / "broken.mp4"
    text = tarsier("describe", broken, *model_args(fast_checkpoint))
    as_json = tarsier("describe", broken, "--json", *model_args(fast_checkpoint))
    assert text.returncode == as_json.returncode == 2, (text.stderr, as_json.stderr)
    assert text.stdout == ""  # no blank line for a reply that never came
    record = json.loads(as_json.stdout)
    assert record["path"] == str(broken) and record["text"] is None and "broken.mp4" in record["error"]
    for result in (text, as_json):
        errors = [line for line in result.stderr.splitlines() if line.startswith("tarsier: error:")]
        assert len(errors) == 1 and "broken.mp4" in errors[0] and "Traceback" not in result.stderr


def test_no_progress_hides_the_weight_loading_bar(fast_checkpoint, videos):
    shown = tarsier("describe", videos / "clip0.mp4", *model_args(fast_checkpoint))
    hidden = tarsier("describe", videos / "clip0.mp4", "--no-progress", *model_args(fast_checkpoint))
    assert "Loading weights" in shown.stderr
    assert hidden.returncode == 0 and hidden.stderr == "" and hidden.stdout == shown.stdout


def test_option_errors_come_before_torch_is_imported(videos):
    script = (
        "import sys; from tarsier.cli import main; "
        f"code = main(['describe', {str(videos / 'clip0.mp4')!r}, '--dtype', 'int3']); "
        "print(code, 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["2", "False"] and "unknown dtype 'int3'" in result.stderr


def test_chat_commands_stay_local_and_version_is_printed(fast_checkpoint, videos):
    result = tarsier("chat", videos / "clip1.mp4", *model_args(fast_checkpoint), stdin="/help\n/bogus\nWhat?\n")
    assert result.returncode == 0, result.stderr
    assert "/reset" in result.stdout and "unknown command /bogus; /help lists the commands" in result.stdout
    assert [line for line in result.stdout.splitlines() if line.startswith("you> ")] == ["you> What?"]
    version = tarsier("--version")
    assert version.returncode == 0 and version.stdout.startswith("tarsier 0.")


def test_compile_describes_a_batch_as_the_eager_engine_does():
    """--compile (the decode step compiled; rows that end early stay in the batch) on the trained demo
    model, whose clips get descriptions of different lengths: the same records as without it."""
    samples = Path(__file__).parents[2] / "src" / "tarsier" / "assets" / "samples"
    args = ["describe", samples / "shapes_1.mp4", samples / "shapes_2.mp4", samples / "shapes_3.mp4", "--model", "shapes-demo",
            "--device", "cpu", "--batch-size", "3", "--json", "--no-progress"]
    eager, compiled = tarsier(*args), tarsier(*args, "--compile")
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr
    texts = [json.loads(line)["text"] for line in eager.stdout.splitlines()]
    assert len(texts) == 3 and len({len(text) for text in texts}) > 1 and all(texts)
    assert compiled.stdout == eager.stdout


def test_bench_list_piped_keeps_whole_lines():
    from tarsier.eval.benchmarks import BENCHMARKS

    result = tarsier("bench", "list")  # stdout is a pipe here
    assert result.returncode == 0 and "…" not in result.stdout
    for benchmark in BENCHMARKS:
        for name in benchmark.annotation_files:
            assert name in result.stdout
