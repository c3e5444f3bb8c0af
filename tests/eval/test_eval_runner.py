"""``tarsier bench run``: sharding, resume, per-item errors and missing videos (with a stand-in
describer), then end to end on a tiny random checkpoint with generated videos, through ``tarsier eval``."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from eval_helpers import dream_release_line, tvbench_line, write_jsonl
from media_factory import make_frame_folder, make_video

from tarsier.cli import main
from tarsier.errors import TarsierError
from tarsier.eval.annotations import VideoResolver, load_annotations, load_predictions
from tarsier.eval.runner import RunSettings, missing_shards, plan, predictions_path, run, shard
from tarsier.jsonl import read_records


class FakeDescriber:
    """Same shape as tarsier.inference.Describer.run: results in request order."""

    def __init__(self, fail=(), crash_after=None):
        self.fail, self.crash_after, self.seen = set(fail), crash_after, []

    def run(self, requests):
        for n, request in enumerate(requests):
            if self.crash_after is not None and n == self.crash_after:
                raise KeyboardInterrupt
            self.seen.append(request.key)
            error = f"{request.media}: cannot decode" if request.key in self.fail else None
            yield SimpleNamespace(
                key=request.key,
                text=None if error else f"described {request.key}",
                error=error,
                frame_indices=[0, 1],
                total_frames=2,
                seconds=0.25,
            )


def annotation(dataset, idx, **fields):
    line = {
        "idx": idx,
        "dataset": dataset,
        "text": {"prompt": "<video>\nDescribe the video in detail.", "response": "r"},
        "video_file": "<placeholder>",
        "vid": idx,
    }
    line.update(fields)
    return line


@pytest.fixture
def bench(tmp_path):
    """10 DREAM items and 5 MVBench items (frame lists), with stand-in video files."""
    videos = tmp_path / "videos"
    videos.mkdir()
    lines = []
    for i in range(1, 11):
        (videos / f"{i}.mp4").write_bytes(b"x")
        lines.append(annotation(f"DREAM/{'ab'[i % 2]}", i, extra_info={"events": []}))
    for i in range(5):
        frames = videos / f"f{i}"
        frames.mkdir()
        for j in range(3):
            (frames / f"{j}.jpg").write_bytes(b"x")
        lines.append(
            annotation(
                "MVBench/Action Sequence",
                i,
                video_file=[f"f{i}/{j}.jpg" for j in range(3)],
                text={"prompt": "USER: <video> Q\nASSISTANT: Answer: (", "response": "A"},
            )
        )
    return write_jsonl(tmp_path / "annotations.jsonl", lines), videos


def run_shard(bench_files, out, describer, **settings):
    annotations, videos = bench_files
    run_settings = RunSettings(output_dir=out, progress=False, **settings)
    work = plan(load_annotations([annotations]), VideoResolver({None: videos}), run_settings)
    return work, run(work, describer, run_settings)


def test_shard_split():
    items = list(range(10))
    parts = [shard(items, 3, k) for k in range(3)]
    assert parts == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert shard(items, 20, 19) == [] and shard([], 2, 0) == []
    with pytest.raises(TarsierError, match="--shard-index must be in 0..2"):
        RunSettings(Path("x"), num_shards=3, shard_index=3)


def test_shards_are_disjoint_and_complete(bench, tmp_path):
    out = tmp_path / "out"
    for k in range(3):
        run_shard(bench, out, FakeDescriber(), num_shards=3, shard_index=k)
    keys = [[r["key"] for r in read_records(predictions_path(out, 3, k))] for k in range(3)]
    flat = [key for part in keys for key in part]
    assert len(flat) == len(set(flat)) == 15
    assert all(part for part in keys)
    records = {r["key"]: r for part in range(3) for r in read_records(predictions_path(out, 3, part))}
    first = records["DREAM/b/1"]
    assert first["text"]["prediction"] == "described DREAM/b/1" and first["error"] is None
    assert first["video_file"] == str(bench[1] / "1.mp4") and first["frame_indices"] == [0, 1]
    assert records["MVBench/Action Sequence/0"]["video_file"] == [str(bench[1] / "f0" / f"{j}.jpg") for j in range(3)]
    # The shard files are one predictions set for `tarsier eval` (which warns if one is missing).
    selection = load_predictions([out])
    assert selection.total == 15 and missing_shards(selection.files) == []
    predictions_path(out, 3, 1).unlink()
    assert missing_shards(load_predictions([out]).files) == [f"{out}: shards 1 of 3 are missing"]


def test_resume_after_a_crash_skips_done_items(bench, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_shard(bench, out, FakeDescriber(crash_after=4))
    assert len(read_records(predictions_path(out))) == 4
    # A torn last line (a crash mid-write) is repaired, not fatal.
    with predictions_path(out).open("a") as handle:
        handle.write('{"key": "DREAM/b/9", "text": {"pred')
    describer = FakeDescriber()
    work, (ok, failed) = run_shard(bench, out, describer)
    assert work.counts["dream"]["done"] == 4 and (ok, failed) == (11, 0)
    assert len(describer.seen) == 11 and "DREAM/b/1" not in describer.seen
    keys = [r["key"] for r in read_records(predictions_path(out))]
    assert len(keys) == len(set(keys)) == 15


def test_errors_are_recorded_and_retried_only_when_asked(bench, tmp_path):
    out = tmp_path / "out"
    _, (ok, failed) = run_shard(bench, out, FakeDescriber(fail={"DREAM/a/2", "MVBench/Action Sequence/3"}))
    assert (ok, failed) == (13, 2)
    errors = {r["key"]: r for r in read_records(predictions_path(out)) if r["error"]}
    assert errors["DREAM/a/2"]["text"]["prediction"] is None and "cannot decode" in errors["DREAM/a/2"]["error"]
    again = FakeDescriber()
    run_shard(bench, out, again)
    assert again.seen == []
    retry = FakeDescriber()
    work, (ok, failed) = run_shard(bench, out, retry, retry_errors=True)
    assert work.retried == 2 and sorted(retry.seen) == ["DREAM/a/2", "MVBench/Action Sequence/3"]
    records = read_records(predictions_path(out))
    assert len(records) == 15 and not any(r["error"] for r in records)


def test_missing_videos_stop_the_run_unless_skipped(bench, tmp_path):
    annotations, videos = bench
    (videos / "3.mp4").unlink()
    (videos / "f2" / "1.jpg").unlink()
    with pytest.raises(TarsierError) as info:
        run_shard(bench, tmp_path / "out", FakeDescriber())
    message = str(info.value)
    assert message.startswith("2 of 15 videos not found (dream: 1 of 10, mvbench: 1 of 5; e.g. DREAM/b/3 -> ")
    assert "--skip-missing" in message and "\n" not in message
    describer = FakeDescriber()
    work, (ok, _) = run_shard(bench, tmp_path / "out", describer, skip_missing=True)
    assert ok == 13 and work.counts["dream"]["missing"] == 1 and "DREAM/b/3" not in describer.seen


def test_placeholders_need_a_video_root_and_limit_applies_per_benchmark(bench, tmp_path):
    annotations, _ = bench
    with pytest.raises(
        TarsierError, match="dream annotations hold placeholders for video paths; give the video folder"
    ):
        plan(load_annotations([annotations]), VideoResolver({}), RunSettings(tmp_path, progress=False))
    describer = FakeDescriber()
    run_shard(bench, tmp_path / "out", describer, limit=2)
    assert describer.seen == ["DREAM/b/1", "DREAM/a/2", "MVBench/Action Sequence/0", "MVBench/Action Sequence/1"]


def test_bench_cli_errors(bench, tmp_path, capsys):
    annotations, videos = bench
    base = ["bench", "run", "--annotations", str(annotations), "--output-dir", str(tmp_path / "o")]
    assert main([*base, "-b", "dreamz"]) == 2
    assert "unknown benchmark 'dreamz'" in capsys.readouterr().err
    assert main([*base, "--video-root", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main([*base, "-b", "egoschema", "--video-root", str(videos)]) == 2
    assert "no annotation items for egoschema" in capsys.readouterr().err
    assert main([*base, "--video-root", str(videos), "--dry-run", "--num-shards", "2", "--shard-index", "1"]) == 0
    err = capsys.readouterr().err
    assert "dream: 5 items in shard 1/2, 0 already done, 0 without video, 5 to run" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.slow
def test_bench_run_and_eval_end_to_end_on_a_tiny_checkpoint(
    fast_checkpoint, tmp_path, judge_server, monkeypatch, capsys
):
    videos = tmp_path / "videos"
    videos.mkdir()
    lines = []
    for i in range(1, 4):
        make_video(videos / f"{i}.mp4", 6 + i)
        lines.append(
            annotation(
                "DREAM/stock",
                i,
                text={"prompt": "<video>\nDescribe the video in detail.", "response": "A man walks."},
                extra_info={"events": ["a man walks"]},
            )
        )
    for i in range(2):
        make_frame_folder(videos / f"mv{i}", 5)
        lines.append(
            annotation(
                "MVBench/Object Shuffle",
                i,
                video_file=[f"mv{i}/frame{j}.png" for j in range(5)],
                text={
                    "prompt": "USER: <video> Where is the ball?\n(A) left\n(B) right\nASSISTANT: Answer: (",
                    "response": "A",
                },
            )
        )
    annotations = write_jsonl(tmp_path / "annotations.jsonl", lines)
    out = tmp_path / "run"
    base = [
        "bench",
        "run",
        "-a",
        str(annotations),
        "--video-root",
        str(videos),
        "-o",
        str(out),
        "--model",
        str(fast_checkpoint),
        "--device",
        "cpu",
        "--max-frames",
        "4",
        "--max-new-tokens",
        "5",
        "--batch-size",
        "2",
        "--no-progress",
        "--num-shards",
        "2",
    ]
    assert main([*base, "--shard-index", "0"]) == 0
    assert main([*base, "--shard-index", "1"]) == 0
    shards = [read_records(predictions_path(out, 2, k)) for k in range(2)]
    keys = [r["key"] for part in shards for r in part]
    assert sorted(keys) == sorted(f"{line['dataset']}/{line['idx']}" for line in lines) and len(set(keys)) == 5
    records = [r for part in shards for r in part]
    for record in records:
        assert record["error"] is None and record["seconds"] >= 0
        # the text transformers' generate gives for the record's own prompt and video
        assert record["text"]["prediction"] == generated(fast_checkpoint, record["text"]["prompt"], record["video_file"])
    assert sorted(len(r["frame_indices"]) for r in records) == [4, 4, 4, 4, 4]
    assert json.loads((out / "predictions.shard-0-of-2.meta.json").read_text())["model"] == str(fast_checkpoint)
    capsys.readouterr()
    assert main([*base, "--shard-index", "0"]) == 0  # resume: nothing left to do, no model loaded
    assert "nothing to run" in capsys.readouterr().err

    monkeypatch.setenv("TARSIER_JUDGE_API_KEY", "k")
    assert (
        main(
            [
                "eval",
                str(out),
                "--judge-model",
                "j",
                "--judge-base-url",
                judge_server.url,
                "--no-progress",
                "--judge-cache",
                str(tmp_path / "c.sqlite"),
            ]
        )
        == 0
    )
    dream = json.loads((out / "eval" / "dream_summary.json").read_text())
    mvbench = json.loads((out / "eval" / "mvbench_summary.json").read_text())
    assert dream["items"] == 3 and dream["results"]["overall"]["success"] == 3
    assert mvbench["items"] == 2
    # the reference's parse: without parentheses, the first character names an option (A-Z, or 1-5)
    answers = [r["text"]["prediction"] for r in records if r["key"].startswith("MVBench")]
    parsed = sum(bool(re.match(r"\s*[A-Z1-5]", answer.replace("(", "").replace(")", ""))) for answer in answers)
    assert (mvbench["results"]["overall"]["success"], mvbench["results"]["overall"]["failed"]) == (parsed, 2 - parsed)


def generated(checkpoint, prompt, media, max_new_tokens=5, n_frames=4):
    """What transformers' generate writes for ``prompt`` about ``media`` (greedy), decoded as bench run does."""
    import torch

    from tarsier.models.tarsier.modeling_tarsier import TarsierForConditionalGeneration
    from tarsier.models.tarsier.processing_tarsier import TarsierProcessor

    model = TarsierForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    processor = TarsierProcessor.from_pretrained(checkpoint, max_n_frames=n_frames)
    inputs = processor(text=prompt, videos=[media])
    with torch.inference_mode():
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    return processor.tokenizer.decode(ids, skip_special_tokens=True)


def test_release_chat_annotations_run_resume_and_keep_their_lines(tmp_path):
    videos = tmp_path / "videos"
    (videos / "moving").mkdir(parents=True)
    for name in ("moving/clip0.mp4", "moving/clip1.mp4", "7.mp4"):
        (videos / name).write_bytes(b"x")
    lines = [tvbench_line(0), tvbench_line(1), dream_release_line(7)]
    annotations = write_jsonl(tmp_path / "TVBench.jsonl", lines)
    describer = FakeDescriber()
    run_shard((annotations, videos), tmp_path / "out", describer)
    assert describer.seen == ["DREAM/stock/7", "TVBench/Moving Direction/0", "TVBench/Moving Direction/1"]
    records = {r["key"]: r for r in read_records(predictions_path(tmp_path / "out"))}
    tv = records["TVBench/Moving Direction/1"]
    assert tv["task"] == "video/QA" and tv["messages"][0] == lines[1]["messages"][0]
    # The reference's scorer reads the prediction from the last assistant part; the rest is the line's own.
    answer = tv["messages"][1]["content"]
    assert answer[:-1] == lines[1]["messages"][1]["content"][:-1]
    assert answer[-1] == {**lines[1]["messages"][1]["content"][-1], "text": "described TVBench/Moving Direction/1"}
    assert lines[1]["messages"][1]["content"][-1]["text"] == ""  # the annotation itself is untouched
    assert tv["video_file"] == str(videos / "moving" / "clip1.mp4")
    assert tv["text"]["prompt"].endswith("(B) Right. ASSISTANT: Answer: (")
    assert tv["text"]["prediction"] == "described TVBench/Moving Direction/1"
    again = FakeDescriber()
    run_shard((annotations, videos), tmp_path / "out", again)
    assert again.seen == []  # the same prompts and videos: nothing to redo
    items = load_predictions([tmp_path / "out"]).items
    assert [i.prediction for i in items["tvbench"]] == [f"described TVBench/Moving Direction/{i}" for i in (0, 1)]
    assert items["dream"][0].response == "A dog chases a ball. The dog brings it back."


@pytest.mark.slow
@pytest.mark.parametrize("family", ["fast_checkpoint", "tarsier2_checkpoint"])
def test_bench_run_and_eval_on_release_chat_annotations(family, request, tmp_path, capsys):
    checkpoint = request.getfixturevalue(family)
    videos = tmp_path / "videos"
    (videos / "moving").mkdir(parents=True)
    for i in range(2):
        make_video(videos / "moving" / f"clip{i}.mp4", 6 + i)
    annotations = write_jsonl(tmp_path / "TVBench.jsonl", [tvbench_line(0, "A"), tvbench_line(1, "B")])
    out = tmp_path / "run"
    args = ["-a", str(annotations), "--video-root", str(videos), "-o", str(out), "--model", str(checkpoint)]
    options = ["--device", "cpu", "--max-new-tokens", "3", "--batch-size", "2", "--no-progress"]
    assert main(["bench", "run", "-b", "tvbench", *args, *options]) == 0
    records = read_records(predictions_path(out))
    assert [r["key"] for r in records] == ["TVBench/Moving Direction/0", "TVBench/Moving Direction/1"]
    assert all(r["error"] is None for r in records)
    if family == "fast_checkpoint":  # the tiny Tarsier2 tokenizer decodes most random ids to nothing
        for record in records:
            assert record["text"]["prediction"] == generated(checkpoint, record["text"]["prompt"], record["video_file"], 3, 8)
    assert all(r["text"]["prompt"].endswith(" ASSISTANT: Answer: (") for r in records)  # the reply is pre-filled
    # The family's frames: Tarsier2 takes every frame of these 6- and 7-frame clips once, Tarsier 8 with repeats.
    expected = [6, 7] if family == "tarsier2_checkpoint" else [8, 8]
    assert [len(r["frame_indices"]) for r in records] == expected
    assert main(["eval", str(out), "-b", "tvbench", "--no-progress"]) == 0
    summary = json.loads((out / "eval" / "tvbench_summary.json").read_text())
    overall = summary["results"]["overall"]
    parsed = sum(bool(re.match(r"\s*[A-Z1-5]", r["text"]["prediction"].replace("(", "").replace(")", ""))) for r in records)
    assert summary["items"] == 2 and (overall["success"], overall["failed"]) == (parsed, 2 - parsed)
    assert "TVBench" in capsys.readouterr().out


def test_an_item_whose_inputs_changed_is_predicted_again_and_replaces_the_old_line(bench, tmp_path):
    out = tmp_path / "out"
    run_shard(bench, out, FakeDescriber(), max_frames=8)
    describer = FakeDescriber()
    work, _ = run_shard(bench, out, describer, max_frames=8)
    assert describer.seen == [] and work.changed == 0
    # Another frame count changes every prediction: nothing may be skipped as "done".
    describer = FakeDescriber()
    work, (ok, failed) = run_shard(bench, out, describer, max_frames=16)
    assert work.changed == 15 and ok == 15 and len(describer.seen) == 15
    # One prompt edited in the annotations: only that item runs again.
    annotations, videos = bench
    lines = [json.loads(line) for line in annotations.read_text().splitlines()]
    lines[0]["text"]["prompt"] = "<video>\nWhat happens first?"
    write_jsonl(annotations, lines)
    describer = FakeDescriber()
    work, _ = run_shard(bench, out, describer, max_frames=16)
    assert describer.seen == ["DREAM/b/1"] and work.changed == 1
    latest = {p.key: p for p in load_predictions([out]).items["dream"]}
    assert latest["DREAM/b/1"].text["prompt"] == "<video>\nWhat happens first?"


def test_recorded_failures_are_counted_on_resume(bench, tmp_path):
    out = tmp_path / "out"
    run_shard(bench, out, FakeDescriber(fail={"DREAM/a/2"}))
    work, _ = run_shard(bench, out, FakeDescriber())
    assert work.failed_before == 1 and work.todo == []


def test_bench_run_refuses_an_output_another_process_writes(bench, tmp_path, capsys):
    from tarsier.jsonl import OutputLock

    annotations, videos = bench
    out = tmp_path / "o"
    args = ["bench", "run", "-a", str(annotations), "--video-root", str(videos), "-o", str(out), "--model", "x/y"]
    with OutputLock(predictions_path(out)):
        assert main(args) == 2
    assert "another tarsier process" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main([*args[:-4], "-o", str(tmp_path / "file" / "sub"), "--model", "x/y"]) == 2
    assert "cannot write here" in capsys.readouterr().err
