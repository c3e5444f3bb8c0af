"""The training data format: adapters, label masking, mixtures, bad items, the draw order."""

import collections
import itertools
import json
import tracemalloc

import pytest
from conftest import chat, target_runs, write_jsonl

from tarsier import TarsierError
from tarsier.models.tarsier.processing_tarsier import TarsierProcessor
from tarsier.prompting import IGNORE_INDEX
from tarsier.train.adapters import ADAPTERS, MC_INSTRUCTION
from tarsier.train.config import DataSettings, SourceSettings
from tarsier.train.data import (
    Collator,
    TrainingDataset,
    TrainingItem,
    parse_item,
)
from tarsier.train.mixture import (
    MixtureSchedule,
    PackedItems,
    RankBatchSampler,
    load_mixture,
)


@pytest.fixture(scope="module")
def processor(fast_checkpoint):
    return TarsierProcessor.from_pretrained(fast_checkpoint)


def test_labels_cover_exactly_the_assistant_replies_of_a_multi_turn_conversation(processor):
    messages = [
        {"role": "user", "content": "<video>\nWhat happens?"},
        {"role": "assistant", "content": "A man opens a door."},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": "He walks out.\nThe door closes."},
    ]
    ids, labels = processor.labelled_ids(messages, 2)
    assert len(ids) == len(labels)
    runs = target_runs(ids, labels)
    decoded = [processor.tokenizer.decode(run, skip_special_tokens=False) for run in runs]
    assert decoded == ["A man opens a door.</s>", "He walks out.\nThe door closes.</s>"]
    # Everything else is masked: BOS, both user turns, "ASSISTANT:" markers and both frames. (The
    # generation prompt ends in a lone "▁" that the conversation folds into "▁A": compare before it.)
    text = processor.chat_template.render(messages[:1], 2, add_generation_prompt=True)
    prompt_ids = processor.encode_prompt(text, 2)[:-1]
    assert ids[: len(prompt_ids)] == prompt_ids and set(labels[: len(prompt_ids)]) == {IGNORE_INDEX}
    assert sum(label != IGNORE_INDEX for label in labels) == sum(map(len, runs))
    layout = processor.layout.frame_token_ids
    assert sum(ids[i : i + len(layout)] == layout for i in range(len(ids))) == 2


def test_the_reply_mask_does_not_depend_on_how_pieces_would_tokenise_alone(processor):
    # "ASSISTANT:" directly followed by a reply starting with punctuation and digits.
    messages = [{"role": "user", "content": "Count."}, {"role": "assistant", "content": "(1, 2, 3)"}]
    ids, labels = processor.labelled_ids(messages, 0)
    assert [processor.tokenizer.decode(run, skip_special_tokens=False) for run in target_runs(ids, labels)] == ["(1, 2, 3)</s>"]


def test_parse_item_resolves_media_and_names_the_bad_field(tmp_path):
    item = parse_item(chat("clips/a.mp4", "Q", "A", n_frames=4, start=1.5, task="caption"), "f:1", tmp_path)
    assert item.media == str(tmp_path / "clips/a.mp4") and item.n_frames == 4 and item.start == 1.5 and item.task == "caption"
    assert parse_item({"media": ["a.png", "b.png"], "messages": chat(None, "Q", "A")["messages"]}, "f:1", tmp_path).media == [
        str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    problems = {
        "needs 'messages'": {"media": "a.mp4"},
        "message 1 must be": {"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]},
        "no assistant reply": {"messages": [{"role": "user", "content": "x"}]},
        "'media' must be": {**chat("a.mp4", "Q", "A"), "media": 3},
        "'n_frames' must be": chat("a.mp4", "Q", "A", n_frames=0),
        "'start' must be seconds": chat("a.mp4", "Q", "A", start="soon"),
        "placeholder but no 'media'": chat(None, "Q", "A"),
    }
    for message, record in problems.items():
        with pytest.raises(TarsierError, match=message):
            parse_item(record, "f:1", tmp_path)


def test_adapters_produce_the_common_format():
    caption = ADAPTERS["caption"]({"media": "a.mp4", "caption": "A dog runs."}, "f:1", 8)
    assert caption["task"] == "caption" and caption["messages"][1]["content"] == "A dog runs."
    assert caption == ADAPTERS["caption"]({"media": "a.mp4", "caption": "A dog runs."}, "f:1", 8)  # stable prompt
    assert "image" in ADAPTERS["caption"]({"media": "a.jpg", "caption": "x"}, "f:1", 8)["messages"][0]["content"]

    choice = ADAPTERS["multiple_choice"]({"media": "a.mp4", "question": "Where?", "options": ["left", "right"], "answer": "right"}, "f", 8)
    assert choice["messages"][0]["content"] == f"Where?\nOptions:\n(A) left\n(B) right\n{MC_INSTRUCTION}"
    assert choice["messages"][1]["content"] == "(B)"
    for answer in (1, "B", "(B)", "b"):
        record = {"media": "a.mp4", "question": "Where?", "options": ["left", "right"], "answer": answer}
        assert ADAPTERS["multiple_choice"](record, "f", 8)["messages"][1]["content"] == "(B)"
    with pytest.raises(TarsierError, match="not an option"):
        ADAPTERS["multiple_choice"]({"media": "a.mp4", "question": "Q", "options": ["x"], "answer": "Z"}, "f", 8)

    action = ADAPTERS["action"]({"media": "a.mp4", "label": "opening a door", "start": 2}, "f", 8)
    assert action["messages"][1]["content"] == "opening a door" and action["start"] == 2 and action["task"] == "action"
    multi = ADAPTERS["multi_image"]({"images": ["a.png", "b.png", "c.png"], "prompt": "Differences?", "response": "None."}, "f", 8)
    assert multi["media"] == ["a.png", "b.png", "c.png"] and multi["n_frames"] == 3
    text = ADAPTERS["text"]({"prompt": "Hi", "response": "Hello."}, "f", 8)
    assert text["media"] is None and text["task"] == "text"
    qa = ADAPTERS["open_qa"]({"media": "a.mp4", "question": "Who?", "answer": "A cat."}, "f", 8)
    assert [m["content"] for m in qa["messages"]] == ["Who?", "A cat."]
    with pytest.raises(TarsierError, match="'caption'"):
        ADAPTERS["caption"]({"media": "a.mp4"}, "f", 8)


def test_tracking_adapter_writes_the_box_of_each_frame_the_loader_will_sample():
    boxes = [[i * 10, 0, i * 10 + 20, 40] for i in range(10)]
    boxes[0] = None
    record = {"media": "a.mp4", "object": "the cat", "boxes": boxes, "size": [200, 100], "n_frames": 4}
    item = ADAPTERS["tracking"](record, "f", 8)
    assert item["frame_indices"] == [0, 3, 6, 9] and item["n_frames"] == 4
    assert item["messages"][1]["content"] == (
        "Frame 1: not visible\nFrame 2: [0.15, 0.00, 0.25, 0.40]\nFrame 3: [0.30, 0.00, 0.40, 0.40]\nFrame 4: [0.45, 0.00, 0.55, 0.40]"
    )
    xywh = ADAPTERS["tracking"]({**record, "boxes": [[0.1, 0.2, 0.3, 0.4]], "box_format": "xywh", "size": None, "n_frames": 1}, "f", 8)
    assert xywh["messages"][1]["content"] == "Frame 1: [0.10, 0.20, 0.40, 0.60]"


def test_missing_media_is_skipped_and_counted_and_too_much_aborts(tmp_path, clip_folder):
    good = [chat(str(clip_folder / "red.mp4"), "Q", "A")] * 9
    path = write_jsonl(tmp_path / "data.jsonl", good + [chat("gone.mp4", "Q", "A")])
    mixture = load_mixture(DataSettings(sources=[SourceSettings(path=str(path))], max_bad_fraction=0.2))
    (source,) = mixture.sources
    assert source.size == len(mixture.items) == 9 and source.lines == 10
    assert source.bad == [f"{path}:10: media {tmp_path / 'gone.mp4'} not found"]
    with pytest.raises(TarsierError, match=r"1 of 10 data lines are unusable \(10.0%\), more than data.max_bad_fraction=0.05; first: .*gone.mp4 not found"):
        load_mixture(DataSettings(sources=[SourceSettings(path=str(path))], max_bad_fraction=0.05))
    with pytest.raises(TarsierError, match="no usable lines"):
        load_mixture(DataSettings(sources=[SourceSettings(path=str(write_jsonl(tmp_path / "bad.jsonl", [{"x": 1}])))], max_bad_fraction=0.5))


def test_malformed_json_lines_are_skipped_and_counted_under_the_cap(tmp_path, clip_folder):
    good = "".join(json.dumps(chat(str(clip_folder / "red.mp4"), "Q", "A")) + "\n" for _ in range(96))
    tracking = {"media": str(clip_folder / "red.mp4"), "object": "x", "boxes": [[0, 0, 1, 1]] * 4, "n_frames": "eight"}
    path = tmp_path / "data.jsonl"
    path.write_bytes(good.encode() + b'{"media": "a.mp4", "messages": [\n' + b"[1, 2]\n\n" + b'"text"\n' + b'{"x": "\xff"}\n')
    mixture = load_mixture(DataSettings(sources=[SourceSettings(path=str(path))], max_bad_fraction=0.05))
    (source,) = mixture.sources
    assert source.size == len(mixture.items) == 96 and source.lines == 100
    assert source.bad == [
        f"{path}:97: not valid JSON (Expecting value: column 33)",
        f"{path}:98: expected a JSON object, got an array",
        f"{path}:100: expected a JSON object, got a string",
        f"{path}:101: not UTF-8 text",
    ]
    assert mixture.skipped() == source.bad and mixture.summary()[0].startswith("data: 96 items (4 skipped)")
    with pytest.raises(TarsierError, match=rf"^4 of 100 data lines are unusable \(4.0%\), more than data.max_bad_fraction=0.01; "
                                           rf"first: {path}:97: not valid JSON"):
        load_mixture(DataSettings(sources=[SourceSettings(path=str(path))], max_bad_fraction=0.01))
    # A field of the wrong kind that an adapter trips over is a bad line too, not a crash.
    tracks = write_jsonl(tmp_path / "tracks.jsonl", [{**tracking, "n_frames": 4}, tracking])
    (source,) = load_mixture(DataSettings(sources=[SourceSettings(path=str(tracks), adapter="tracking")], max_bad_fraction=0.5)).sources
    assert source.size == 1 and source.bad[0].startswith(f"{tracks}:2: unusable for the tracking adapter (TypeError: ")


def test_an_undecodable_item_is_replaced_by_the_next_of_its_source_and_reported(tmp_path, clip_folder, processor):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    path = write_jsonl(tmp_path / "data.jsonl", [chat(str(broken), "Q", "bad"), chat(str(clip_folder / "red.mp4"), "Q", "good")])
    mixture = load_mixture(DataSettings(sources=[SourceSettings(path=str(path))]))
    dataset = TrainingDataset(mixture.items, mixture.ranges, processor, [3], max_length=512)
    example = dataset[0]
    assert len(example["failures"]) == 1 and example["failures"][0].startswith(f"{path}:1: {broken}")
    assert processor.tokenizer.decode(target_runs(example["input_ids"], example["labels"])[0], skip_special_tokens=False) == "good</s>"
    assert example["media"]["pixel_values"].shape == (3, 3, 56, 56)
    batch = Collator(processor)([example, dataset[1]])
    assert batch["input_ids"].shape == batch["labels"].shape and batch["pixel_values"].shape[0] == 6
    assert len(batch["failures"]) == 1


def test_long_items_lose_the_end_of_the_reply_never_frames(tmp_path, clip_folder, processor):
    item = parse_item(chat(str(clip_folder / "red.mp4"), "Q", "word " * 200), "f:1", tmp_path)
    dataset = TrainingDataset([item], [(0, 1)], processor, [2], max_length=120)
    assert len(dataset.encode(item, 2)["input_ids"]) == 120
    with pytest.raises(TarsierError, match="frames do not fit in data.max_length=30"):
        TrainingDataset([item], [(0, 1)], processor, [2], max_length=30).encode(item, 2)


def test_the_schedule_follows_the_weights_and_is_a_function_of_position():
    schedule = MixtureSchedule([10, 1000], [3.0, 1.0], seed=7)
    first = list(itertools.islice(schedule.ids(), 20000))
    assert first == list(itertools.islice(MixtureSchedule([10, 1000], [3.0, 1.0], seed=7).ids(), 20000))
    share = sum(i < 10 for i in first) / len(first)
    assert 0.73 < share < 0.77
    # Within one pass over a source every item comes once.
    small = [i for i in first if i < 10]
    assert all(sorted(small[k : k + 10]) == list(range(10)) for k in range(0, 100, 10))
    # Starting at any position continues the same sequence (what resuming relies on).
    for start in (1, 4095, 4096, 9000):
        assert list(itertools.islice(schedule.ids(start), 50)) == first[start : start + 50]
    assert first != list(itertools.islice(MixtureSchedule([10, 1000], [3.0, 1.0], seed=8).ids(), 20000))


def test_processes_split_each_micro_step_of_the_single_process_order():
    schedule = MixtureSchedule([50], [1.0], seed=0)
    alone = list(RankBatchSampler(schedule, micro_batch=2, rank=0, world=1, first_microstep=0, microsteps=6))
    ranks = [list(RankBatchSampler(schedule, micro_batch=1, rank=r, world=2, first_microstep=0, microsteps=6)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == alone
    later = list(RankBatchSampler(schedule, micro_batch=2, rank=0, world=1, first_microstep=4, microsteps=2))
    assert later == alone[4:]
    counts = collections.Counter(i for batch in alone for i in batch)
    assert max(counts.values()) == 1


def test_packed_items_give_back_what_was_stored_in_a_third_of_the_memory():
    def item(i):
        reply = f"A person {i} walks into a kitchen, opens the fridge and pours a glass of milk."
        return TrainingItem(messages=[{"role": "user", "content": "<video>\nDescribe the video."}, {"role": "assistant", "content": reply}],
                            media=f"/data/videos/clip_{i:08d}.mp4", where=f"captions.jsonl:{i}", task="caption", n_frames=i % 3 or None)

    tracemalloc.start()
    objects = [item(i) for i in range(5000)]
    object_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    packed = PackedItems(objects).freeze()
    assert len(packed) == 5000 and packed[0] == objects[0] and packed[-1] == objects[-1] and list(packed) == objects
    assert packed.nbytes < object_bytes / 2.5, (packed.nbytes, object_bytes)
    with pytest.raises(IndexError):
        packed[5000]


def test_a_mixture_stores_its_sources_items_one_after_the_other(mixture_files, clip_folder):
    mixture = load_mixture(DataSettings(sources=[SourceSettings(**source) for source in mixture_files]))
    assert [source.size for source in mixture.sources] == [4, 2] and mixture.ranges == [(0, 4), (4, 6)]
    assert [item.media for item in mixture.items] == [str(clip_folder / f"{c}.mp4") for c in ("red", "green", "blue", "yellow", "red", "blue")]
    assert mixture.items[4].task == "caption" and not mixture.has_text_only
