"""Tarsier2 through the package's common paths: loading, the decode loop, the Describer and the CLI."""

import json
import shutil

import pytest
import torch
from media_factory import make_image, make_video

from tarsier import TarsierForConditionalGeneration
from tarsier.engine.chat import ChatSession
from tarsier.engine.describer import Describer, DescribeRequest
from tarsier.engine.generation import generate_ids
from tarsier.engine.loading import load_pretrained
from tarsier.engine.settings import GenerationSettings
from tarsier.models.tarsier.processing_tarsier import TarsierProcessor
from tarsier.models.tarsier2.modeling_tarsier2 import Tarsier2ForConditionalGeneration
from tarsier.models.tarsier2.processing_tarsier2 import Tarsier2Processor


@pytest.fixture(scope="module")
def loaded(tarsier2_checkpoint):
    return load_pretrained(tarsier2_checkpoint, device="cpu", progress=False)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tarsier2-media")
    return {
        "short": make_video(folder / "short.mp4", 3),
        "medium": make_video(folder / "medium.mp4", 9),
        "long": make_video(folder / "long.mp4", 40),
        "image": make_image(folder / "still.png", 2),
    }


def test_the_v1_entry_points_load_a_tarsier2_checkpoint(tarsier2_checkpoint, loaded):
    model = TarsierForConditionalGeneration.from_pretrained(tarsier2_checkpoint, dtype=torch.float32)
    processor = TarsierProcessor.from_pretrained(tarsier2_checkpoint)
    assert isinstance(model, Tarsier2ForConditionalGeneration)
    assert isinstance(processor, Tarsier2Processor) and processor.rules.n_frames == 16
    assert TarsierProcessor.from_pretrained(tarsier2_checkpoint, max_n_frames=4).rules.n_frames == 4
    model, processor = loaded
    assert isinstance(model, Tarsier2ForConditionalGeneration) and processor.rules.n_frames == 16
    assert processor.eos_token_ids == (151645, 151643)  # generation_config.json's


def test_tarsier2_frame_counts_have_a_ceiling_from_the_pixel_budget(tarsier2_checkpoint, capsys):
    """Not the first generation's 601 positions per frame: the shared pixel budget. 28 frames of 601
    positions would be refused for Tarsier; here they pass, 40 warn and 65 are refused."""
    from tarsier import TarsierError
    from tarsier.models.auto import check_frames

    check_frames(tarsier2_checkpoint, 28)
    assert capsys.readouterr().err == ""
    check_frames(tarsier2_checkpoint, 40)
    assert "each of 40 frames gets about 485 x 485 pixels" in capsys.readouterr().err  # isqrt(18,874,368 / 80)
    with pytest.raises(TarsierError, match=r"65 frames are too many: .* about 381 x 381 pixels; use at most 64 frames"):
        check_frames(tarsier2_checkpoint, 65)
    with pytest.raises(TarsierError, match="use at most 64 frames"):
        check_frames(tarsier2_checkpoint, 100_000)


def test_engine_gives_generate_s_greedy_ids(loaded, media):
    """The engine behind the Python API (3-D prefill positions, rows sliced for their own grids and
    prefilled without padding, finished rows dropped) against transformers' generate on the same inputs."""
    from tarsier.engine import sampling
    from tarsier.engine.generation import iter_tokens

    model, processor = loaded
    prompts = ["<video>\nDescribe the video in detail.", "Tell me everything.", "<video>\nWhat moves?", "<image>\nHi"]
    inputs = processor(text=prompts, videos=[media["long"], None, media["short"], media["image"]])
    length = inputs["input_ids"].shape[1]
    with torch.inference_mode():
        free = model.generate(**inputs, max_new_tokens=10, do_sample=False, eos_token_id=None)[:, length:]
    eos = int(free[0, 3])  # a token row 0 emits at step 3 ends it there: rows end at different steps
    with torch.inference_mode():
        expected = model.generate(**inputs, max_new_tokens=10, do_sample=False, eos_token_id=eos)[:, length:]
    settings = sampling.DecodeSettings(max_new_tokens=10, eos_token_id=[eos, -5], sampler=sampling.Sampler())
    rows = {row: [] for row in range(4)}
    for step in iter_tokens(model, processor, inputs, [settings] * 4):
        for row, token in step.items():
            rows[row].append(token)
    for row in range(4):
        assert rows[row] == expected[row, : len(rows[row])].tolist(), row
        assert len(rows[row]) == 10 or rows[row][-1] == eos
    assert len(rows[0]) == 4


def test_describer_batch_equals_each_item_alone(loaded, media, monkeypatch):
    model, processor = loaded
    settings = GenerationSettings(max_new_tokens=8)
    # A random model's ids are mostly outside the tiny tokenizer's vocabulary: compare the ids themselves.
    pad = processor.tokenizer.pad_token_id
    monkeypatch.setattr(processor, "decode", lambda ids, **kwargs: " ".join(str(token) for token in ids if token != pad))
    requests = [DescribeRequest(name, path) for name, path in media.items()]
    batched = list(Describer(model, processor, settings, batch_size=4, num_workers=0).run(requests))
    alone = Describer(model, processor, settings, batch_size=1, num_workers=0)
    assert [result.key for result in batched] == list(media)
    for result in batched:
        assert result.error is None and result.text
        assert next(alone.run([DescribeRequest(result.key, media[result.key])])).text == result.text
    by_key = {result.key: result for result in batched}
    assert len(by_key["long"].frame_indices) == 16 and by_key["medium"].frame_indices == list(range(9))
    assert by_key["image"].prompt == "<image>\nDescribe the image in detail."


def test_describer_prompt_is_the_checkpoint_s_chat_template(loaded, media):
    from tarsier.engine.describer import prepare_request

    _, processor = loaded
    prepared = prepare_request(processor, DescribeRequest("clip", media["short"]))
    assert prepared.error is None and prepared.prompt == "<video>\nDescribe the video in detail."
    text = processor.tokenizer.decode(prepared.ids)
    assert text.startswith("<|im_start|>") and "<|vision_start|><|image_pad|>" in text
    assert text.endswith("Describe the video in detail.<|im_end|>\n<|im_start|>assistant\n")
    assert prepared.media_inputs["image_grid_thw"].tolist() == [[3, 4, 4]]


def test_describe_cli_describes_with_the_family_s_frames(tarsier2_checkpoint, media, capsys, tmp_path):
    """In process, JSON and streamed: the text transformers' generate gives for the processor's
    inputs, on the family's frames (16, first and last included; a 9-frame clip: each frame once).

    The tiny tokenizer knows 370 of the embedding's 151,657 rows, so a random model mostly emits ids
    that decode to nothing: this copy's head gives the unknown rows zero logits, so the text is real."""
    from tarsier.cli import main

    model = Tarsier2ForConditionalGeneration.from_pretrained(tarsier2_checkpoint, dtype=torch.float32).eval()
    processor = TarsierProcessor.from_pretrained(tarsier2_checkpoint)
    known = sorted(processor.tokenizer.get_vocab().values())
    with torch.no_grad():
        unknown = torch.ones(model.get_output_embeddings().weight.shape[0], dtype=torch.bool)
        unknown[known] = False
        model.get_output_embeddings().weight[unknown] = 0
    checkpoint = tmp_path / "speaking"
    shutil.copytree(tarsier2_checkpoint, checkpoint)
    model.save_pretrained(checkpoint)

    def expected(video):
        inputs = processor(text="<video>\nDescribe the video in detail.", videos=[video])
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        return processor.tokenizer.decode(ids, skip_special_tokens=True)

    args = ["--model", str(checkpoint), "--device", "cpu", "--max-new-tokens", "8", "--no-progress"]
    assert main(["describe", str(media["long"]), "--json", *args]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["error"] is None and record["frames"] == [round(i * 39 / 15) for i in range(16)]
    assert record["text"] == expected(media["long"]) and record["text"].strip()
    assert main(["describe", str(media["medium"]), *args]) == 0
    out = capsys.readouterr()
    assert out.out == expected(media["medium"]) + "\n" and out.out.strip() and out.err == ""


def test_max_frames_defaults_to_the_family_s_without_loading_weights(tarsier2_checkpoint, fast_checkpoint):
    """Resume keys record the frame count, so it is settled from config.json alone (or, for the
    published ids, without network)."""
    import argparse

    from tarsier.cli.options import settle_max_frames

    def settled(model, max_frames=None):
        return settle_max_frames(argparse.Namespace(model=str(model), max_frames=max_frames))

    assert settled(tarsier2_checkpoint) == 16 and settled(fast_checkpoint) == 8
    assert settled(tarsier2_checkpoint, 5) == 5
    assert settled("omni-research/Tarsier2-Recap-7b") == 16 and settled("omni-research/Tarsier-7b") == 8


def test_chat_with_its_cache_equals_an_uncached_run_of_the_whole_conversation(loaded, media, monkeypatch):
    """Turn 2 continues turn 1's cache at the first turn's M-RoPE delta and with the tokens the
    checkpoint's template writes between turns, so it decodes as the whole conversation run afresh."""
    model, processor = loaded
    frames = processor.load_media(media["short"])
    settings = GenerationSettings(max_new_tokens=6)
    vision_calls = []
    encode_media = model.get_image_features
    monkeypatch.setattr(model, "get_image_features", lambda *args: vision_calls.append(1) or encode_media(*args))
    session = ChatSession(model, processor, frames, settings)
    "".join(session.ask("What happens?"))
    (kept,) = session._conversation._entries.values()  # turn 1's conversation, but the reply's last token
    cached = len(kept.ids)
    positions = []  # turn 2's, prefill then each step
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda **kwargs: positions.append(kwargs["position_ids"]) or forward(**kwargs))
    "".join(session.ask("And then?"))
    monkeypatch.setattr(model, "forward", forward)
    assert len(vision_calls) == 1  # the frames were encoded once for both turns
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]

    def greedy(ids, media_inputs):
        return generate_ids(model, processor, {**processor.pad([ids]), **media_inputs}, settings)[0].tolist()

    # The conversation as the template renders it, the first reply being the ids the model generated
    # (a random model's ids do not survive decoding to text and encoding again).
    first, media_inputs = processor.encode_conversation([{"role": "user", "content": "What happens?"}], frames)
    reply = greedy(first, media_inputs)
    reply = reply[:-1] if reply[-1] in processor.eos_token_ids else reply
    messages = [{"role": "user", "content": "What happens?"}, {"role": "assistant", "content": ""},
                {"role": "user", "content": "And then?"}]
    whole, media_inputs = processor.encode_conversation(messages, frames)
    assert whole[: len(first)] == first
    uncached = first + reply + whole[len(first) :]
    text = processor.tokenizer.decode(uncached[len(first) + len(reply) :])
    assert text == "<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n"

    assert session._ids[: len(uncached)] == uncached
    # Turn 2 sits where the uncached run puts it: M-RoPE positions shifted by turn 1's media.
    expected, delta = model.rope_positions(torch.tensor([uncached]), None, media_inputs["image_grid_thw"])
    assert int(delta) != 0 and torch.equal(positions[0], expected[:, :, cached:])
    assert positions[1].flatten().tolist() == [len(uncached) + int(delta)]
    assert session._ids[len(uncached) :] == processor.close_reply(greedy(uncached, media_inputs))


def test_conversation_puts_the_media_in_the_first_user_turn(loaded, media):
    _, processor = loaded
    frames = processor.load_media(media["image"])
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "<image>\nMore?"}]
    ids, media_inputs = processor.encode_conversation(messages, frames)
    text = processor.tokenizer.decode(ids)
    n_pads = processor.media_token_count(media_inputs)
    assert n_pads > 0 and ids.count(processor.image_token_id) == n_pads
    assert text.count("<|vision_start|>") == 1
    assert text.index("<|vision_start|>") < text.index("Hi") < text.index("Hello.") < text.index("More?")
    assert "<image>" not in text and text.endswith("More?<|im_end|>\n<|im_start|>assistant\n")
    single, _ = processor.encode_item("Hi", frames)
    assert processor.encode_conversation(messages[:1], frames)[0] == single
