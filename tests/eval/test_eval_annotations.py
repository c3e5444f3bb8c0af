"""The registry, reading the real DREAM-1K annotations, bad lines, and finding videos."""

import json
from pathlib import Path

import pytest
from eval_helpers import dream_release_line, tvbench_line, write_jsonl

from tarsier.errors import TarsierError
from tarsier.eval.annotations import VideoResolver, load_annotations, load_predictions, require_items
from tarsier.eval.benchmarks import BENCHMARKS, DESCRIBE_VIDEO, get_benchmark, resolve_benchmarks

DREAM_1K = Path(__file__).resolve().parents[3] / "shared" / "data" / "DREAM-1k.jsonl"


def test_registry_names_groups_and_aliases():
    assert [b.name for b in resolve_benchmarks(["all"])] == [b.name for b in BENCHMARKS]
    mc_qa = ["next-qa", "egoschema", "mvbench", "tvbench", "video-mme"]
    assert [b.name for b in resolve_benchmarks(["mc_qa"])] == mc_qa
    assert [b.name for b in resolve_benchmarks(["oe_qa,dream", "Dream-1K"])] == [
        "dream",
        "msvd-qa",
        "msr-vtt-qa",
        "tgif-qa",
        "anet-qa",
    ]
    assert get_benchmark("videomme").name == "video-mme"
    with pytest.raises(TarsierError, match=r"unknown benchmark 'msvd'; known: dream, msvd-caption, .*, all, caption"):
        resolve_benchmarks(["msvd"])
    dream = get_benchmark("dream")
    assert dream.matches("DREAM/shorts") and dream.matches("DREAM") and not dream.matches("DREAMS/x")
    assert dream.judged and not get_benchmark("mvbench").judged
    assert {b.metric for b in BENCHMARKS} == {"autodq", "cider", "multiple_choice", "open_qa"}


@pytest.mark.skipif(not DREAM_1K.exists(), reason="shared DREAM-1K annotations not present")
def test_real_dream_1k_annotations():
    selection = load_annotations([DREAM_1K])
    items = selection.items["dream"]
    assert list(selection.items) == ["dream"] and len(items) == 1000
    subsets = {}
    for item in items:
        subsets[item.dataset] = subsets.get(item.dataset, 0) + 1
    assert subsets == {
        f"DREAM/{s}": 200 for s in ("movie_animation", "movie_live_action", "shorts", "stock", "youtube")
    }
    no_events = [item.idx for item in items if not item.extra_info.get("events")]
    assert no_events == [649, 804, 980, 981]
    assert all(isinstance(item.extra_info.get("events"), list) for item in items)  # present, maybe empty
    assert items[0].prompt == "<video>\nDescribe the video in detail." and items[0].key == "DREAM/movie_animation/1"
    # The release's file name is found in a folder.
    assert load_annotations([DREAM_1K.parent], [get_benchmark("dream")]).total == 1000


@pytest.mark.skipif(not DREAM_1K.exists(), reason="shared DREAM-1K annotations not present")
def test_real_dream_1k_needs_predictions_to_evaluate():
    with pytest.raises(TarsierError, match=r"DREAM-1k.jsonl:1: no prediction \(expected 'text.prediction'"):
        load_predictions([DREAM_1K])


def good_line(idx=1, **changes):
    line = {
        "idx": idx,
        "dataset": "DREAM/shorts",
        "text": {"prompt": "<video>\nDescribe.", "response": "r"},
        "video_file": "<placeholder>",
        "vid": idx,
    }
    line.update(changes)
    return line


@pytest.mark.parametrize(
    "bad, message",
    [
        ("[1, 2]", "a.jsonl:2: expected a JSON object, got an array"),
        ('{"idx": 1', "a.jsonl:2: not valid JSON"),
        (json.dumps(good_line(2, dataset=3)), "a.jsonl:2: missing or invalid 'dataset'"),
        (json.dumps(good_line(2, text="hi")), "a.jsonl:2: missing or invalid 'text'"),
        (json.dumps(good_line(2, vid=None)), "a.jsonl:2: no 'video_file' and no 'vid'"),
        (json.dumps(good_line(2, video_file=7)), "a.jsonl:2: 'video_file' must be a path or a list"),
        (json.dumps(good_line(1)), "a.jsonl:2: duplicate item DREAM/shorts/1 (first at "),
        (
            json.dumps({**good_line(2, dataset="MVBench/Action Sequence"), "text": {"response": "A"}}),
            "a.jsonl:2: missing 'text.prompt' (mvbench has no default prompt)",
        ),
    ],
)
def test_malformed_annotation_lines_name_the_line(tmp_path, bad, message):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(good_line(1)) + "\n" + bad + "\n")
    with pytest.raises(TarsierError) as info:
        load_annotations([path])
    assert message in str(info.value) and "\n" not in str(info.value)


QUESTION = "Question: Which way does the ball roll?\n(A) Left.\n(B) Right."


def test_release_chat_lines_read_as_v1(tmp_path):
    tv, dream = tvbench_line(0), dream_release_line(7)
    image = tvbench_line(1)
    image["messages"][0]["content"][0] = {"type": "image", "image": {"image_file": "pics/cat.jpg"}}
    clip = dream_release_line(8)
    clip["messages"][0]["content"][0]["video"] = {"video_file": "clips/8.mp4", "start_time": 1.5, "end_time": 4.0}
    selection = load_annotations([write_jsonl(tmp_path / "a.jsonl", [tv, dream, image, clip])])
    (tv_item, image_item), (dream_item, clip_item) = selection.items["tvbench"], selection.items["dream"]
    assert tv_item.text == {
        "prompt": f"USER: <video>\n{QUESTION} ASSISTANT: Answer: (",
        "response": "B",
        "question": QUESTION,
    }
    assert tv_item.record == {**tv, "text": tv_item.text, "video_file": "<placeholder>"}  # nothing else dropped
    assert tv_item.key == "TVBench/Moving Direction/0" and tv_item.record["task"] == "video/QA"
    assert dream_item.text == {
        "prompt": DESCRIBE_VIDEO,
        "response": "A dog chases a ball. The dog brings it back.",
        "question": "Describe the video in detail.",
    }
    assert dream_item.prompt == "<video>\nDescribe the video in detail." and dream_item.record["vid"] == 7
    assert dream_item.extra_info["events"] == ["A dog chases a ball.", "The dog brings it back."]
    assert dream_item.record["messages"] == dream["messages"]
    assert image_item.prompt == f"USER: <image>\n{QUESTION} ASSISTANT: Answer: ("
    assert image_item.record["video_file"] == "pics/cat.jpg"
    assert (clip_item.record["video_file"], clip_item.record["start_time"], clip_item.record["end_time"]) == (
        "clips/8.mp4",
        1.5,
        4.0,
    )


def release_line_with(change):
    line = tvbench_line(2)
    change(line)
    return line


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.update(messages="hi"), "'messages' must be a list of turns (objects with 'role' and 'content')"),
        (lambda r: r["messages"].pop(0), "'messages' has no user turn (it holds the prompt)"),
        (lambda r: r["messages"].pop(), "'messages' has no assistant turn (it holds the reference answer)"),
        (
            lambda r: r["messages"][0].update(content="hi"),
            "the user turn's 'content' must be a list of parts (objects)",
        ),
        (lambda r: r["messages"][0]["content"].pop(0), "the user turn has 0 video/image parts (expected one)"),
        (
            lambda r: r["messages"][0]["content"].append({"type": "image", "image": {"image_file": "x.jpg"}}),
            "the user turn has 2 video/image parts (expected one)",
        ),
        (
            lambda r: r["messages"][0]["content"].append({"type": "audio"}),
            "unknown part type 'audio' in the user turn (expected video, image or text)",
        ),
        (lambda r: r["messages"][0]["content"][1].update(text=["Q"]), "a text part's 'text' must be a string"),
        (
            lambda r: r["messages"][1]["content"][-1].pop("reference"),
            "the last assistant part has no 'reference' (the expected answer)",
        ),
        (
            lambda r: r["messages"][1].update(content=[]),
            "the last assistant part has no 'reference' (the expected answer)",
        ),
        (
            lambda r: r["messages"][0]["content"][0]["video"].update(video_file=7),
            "'video_file' must be a path or a list of frame files",
        ),
    ],
)
def test_malformed_release_lines_name_the_line(tmp_path, change, message):
    path = write_jsonl(tmp_path / "a.jsonl", [tvbench_line(1), release_line_with(change)])
    with pytest.raises(TarsierError) as info:
        load_annotations([path])
    assert str(info.value) == f"{path}:2: {message}"


def test_release_prediction_lines(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [tvbench_line(0, prediction="B) Right."), dream_release_line(7)])
    selection = load_predictions([path])
    assert selection.items["tvbench"][0].prediction == "B) Right."
    assert selection.items["dream"][0].prediction == ""  # what an annotation line holds: an empty prediction
    null = tvbench_line(1)
    null["messages"][1]["content"][-1]["text"] = None
    with pytest.raises(TarsierError) as info:
        load_predictions([write_jsonl(tmp_path / "q.jsonl", [null])])
    assert str(info.value) == f"{tmp_path / 'q.jsonl'}:1: prediction is null and no 'error' says why"


def test_unknown_datasets_are_ignored_and_zero_items_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [good_line(1, dataset="MyBench/x"), good_line(2)])
    selection = load_annotations([path])
    assert selection.total == 1 and selection.ignored == {"MyBench/x": 1}
    selection = load_annotations([path], [get_benchmark("mvbench")])
    with pytest.raises(
        TarsierError, match=r"a.jsonl: no annotation items for mvbench; the files hold: MyBench/x \(1\), DREAM/shorts"
    ):
        require_items(selection, "annotation items")
    with pytest.raises(TarsierError, match="no annotation file for mvbench"):
        load_annotations([tmp_path], [get_benchmark("mvbench")])
    with pytest.raises(TarsierError, match="missing.jsonl: file not found"):
        load_annotations([tmp_path / "missing.jsonl"])


def test_a_later_prediction_line_supersedes_an_earlier_one(tmp_path):
    lines = [good_line(1, error="oom"), good_line(2), good_line(1)]
    lines[0]["text"] = {"response": "r", "prediction": None}
    lines[1]["text"] = {"response": "r", "prediction": "two"}
    lines[2]["text"] = {"response": "r", "prediction": "one"}
    selection = load_predictions([write_jsonl(tmp_path / "p.jsonl", lines)])
    assert [(i.idx, i.prediction) for i in selection.items["dream"]] == [(1, "one"), (2, "two")]
    assert selection.replaced == 1
    top_level = {**good_line(3), "prediction": "top"}  # another tool's layout
    assert load_predictions([write_jsonl(tmp_path / "q.jsonl", [top_level])]).items["dream"][0].prediction == "top"


def test_video_resolver(tmp_path):
    root = tmp_path / "videos"
    (root / "frames" / "clip").mkdir(parents=True)
    (root / "12.mp4").write_bytes(b"x")
    (root / "12.json").write_text("{}")  # not media: ignored
    (root / "abc.WEBM").write_bytes(b"x")
    (root / "frames" / "clip" / "0.jpg").write_bytes(b"x")
    (root / "frames" / "clip" / "1.jpg").write_bytes(b"x")
    (root / "direct.gif").write_bytes(b"x")
    other = tmp_path / "other"
    other.mkdir()
    (other / "12.mkv").write_bytes(b"x")
    lines = [
        good_line(1, vid=12),
        good_line(2, vid="abc"),
        good_line(3, vid="frames/clip"),
        good_line(4, video_file=["frames/clip/0.jpg", str(root / "frames" / "clip" / "1.jpg")]),
        good_line(5, video_file="direct.gif"),
        good_line(6, vid=404),
        good_line(7, video_file=["frames/clip/0.jpg", "frames/clip/9.jpg"]),
        {**good_line(8, vid=12), "dataset": "MVBench/Action Sequence", "text": {"prompt": "p", "response": "A"}},
    ]
    items = [i for items in load_annotations([write_jsonl(tmp_path / "a.jsonl", lines)]).items.values() for i in items]
    resolver = VideoResolver({None: root, "mvbench": other})
    media = [resolver.resolve(item)[0] for item in items]
    assert media[:6] == [
        str(root / "12.mp4"),
        str(root / "abc.WEBM"),
        str(root / "frames" / "clip"),
        [str(root / "frames" / "clip" / "0.jpg"), str(root / "frames" / "clip" / "1.jpg")],
        str(root / "direct.gif"),
        None,
    ]
    assert resolver.resolve(items[5])[1] == f"{root / '404'}.*"
    assert resolver.resolve(items[6]) == (None, str(root / "frames" / "clip" / "9.jpg"))
    assert media[7] == str(other / "12.mkv")  # the per-benchmark root wins
    assert VideoResolver({}).resolve(items[0]) == (None, "vid 12 (no video root given)")
