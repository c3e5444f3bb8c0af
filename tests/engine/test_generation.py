"""Greedy/sampled decoding, batch == single, streaming, and chat turns that reuse the KV cache."""

import numpy as np
import pytest
import torch
from PIL import Image

from tarsier import TarsierError, TarsierForConditionalGeneration
from tarsier.engine.chat import ChatSession
from tarsier.engine.generation import generate_ids, generate_text, iter_tokens, stream_text
from tarsier.engine.settings import GenerationSettings, vocab_end
from tarsier.media import SampledFrames
from tarsier.models.tarsier.processing_tarsier import TarsierProcessor


def frames(count, seed):
    rng = np.random.RandomState(seed)
    return [Image.fromarray((rng.rand(40, 56, 3) * 255).astype("uint8")) for _ in range(count)]


@pytest.fixture(scope="module")
def fast(fast_checkpoint):
    model = TarsierForConditionalGeneration.from_pretrained(fast_checkpoint, torch_dtype=torch.float32).eval()
    return model, TarsierProcessor.from_pretrained(fast_checkpoint)


def test_settings_validate_and_default_to_the_reference():
    settings = GenerationSettings()
    assert (settings.max_new_tokens, settings.temperature, settings.top_p, settings.do_sample) == (512, 0.0, 1.0, False)
    for bad in ({"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}):
        with pytest.raises(TarsierError):
            GenerationSettings(**bad)


def test_batched_greedy_generation_equals_each_item_alone(fast):
    model, processor = fast
    prompts = ["<video>\nDescribe the video in detail.", "<video>\nWhat is moving?", "Tell me everything about it."]
    videos = [frames(3, 0), frames(1, 1), frames(5, 2)]
    settings = GenerationSettings(max_new_tokens=12)
    batch = generate_ids(model, processor, processor(text=prompts, videos=videos), settings)
    assert batch.shape[1] == 12
    for row, (prompt, video) in enumerate(zip(prompts, videos)):
        alone = generate_ids(model, processor, processor(text=prompt, videos=[video]), settings)[0]
        assert batch[row, : len(alone)].tolist() == alone.tolist()


def test_sampling_is_seeded_and_differs_from_greedy(fast):
    model, processor = fast
    inputs = processor(text="<video>\nDescribe.", videos=[frames(2, 3)])
    greedy = generate_ids(model, processor, inputs, GenerationSettings(max_new_tokens=10))
    sampling = GenerationSettings(max_new_tokens=10, temperature=1.5, top_p=0.95)
    torch.manual_seed(7)
    first = generate_ids(model, processor, inputs, sampling)
    torch.manual_seed(7)
    second = generate_ids(model, processor, inputs, sampling)
    assert first.tolist() == second.tolist()
    assert first.tolist() != greedy.tolist()


def test_streamed_text_equals_the_decoded_reply(fast):
    model, processor = fast
    inputs = processor(text="<video>\nDescribe.", videos=[frames(2, 4)])
    settings = GenerationSettings(max_new_tokens=15)
    streamed = "".join(stream_text(model, processor, inputs, settings))
    assert streamed == generate_text(model, processor, inputs, settings)[0]
    assert streamed


def test_chat_reuses_the_cache_and_matches_an_uncached_run(fast):
    model, processor = fast
    video = SampledFrames(frames(2, 5), [0, 1], 2, None, "test", "frames")
    settings = GenerationSettings(max_new_tokens=6)
    vision_calls = []
    hook = model.vision_tower.vision_model.register_forward_hook(lambda *args: vision_calls.append(1))
    try:
        session = ChatSession(model, processor, video, settings)
        first = "".join(session.ask("What happens?"))
        ids_after_first = list(session._ids)
        second = "".join(session.ask("And then?"))
    finally:
        hook.remove()
    assert len(vision_calls) == 1  # the frames were encoded once for both turns
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]
    assert session.history[1]["content"] == first

    # Turn 2 continues turn 1 token for token: reply, end separator, then the new user turn.
    follow_up = processor.encode_prompt("USER: And then? ASSISTANT: ", 0, add_bos=False)
    assert ids_after_first[-1] == processor.tokenizer.eos_token_id
    turn_two_prompt = ids_after_first + follow_up
    assert session._ids[: len(turn_two_prompt)] == turn_two_prompt

    # An uncached run over the same ids gives the same second reply.
    ids = torch.tensor([turn_two_prompt])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": processor.pixel_values(video.images)}
    assert generate_text(model, processor, inputs, settings)[0] == second


def test_engine_gives_generate_s_greedy_ids_as_rows_finish_at_different_steps(fast):
    """The engine behind the Python API (pre-allocated cache, rows prefilled without their padding,
    finished rows dropped) against transformers' generate on the same left-padded batch."""
    from tarsier.engine import sampling

    model, processor = fast
    prompts = ["<video>\nDescribe the video in detail.", "<video>\nWhat is moving?", "Tell me everything about it.", "Hi"]
    inputs = processor(text=prompts, videos=[frames(3, 0), frames(1, 1), frames(5, 2), frames(2, 3)])
    with torch.inference_mode():
        free = model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None)
    free = free[:, inputs["input_ids"].shape[1] :]
    # Make a token that row 1 emits at step 4 the "EOS", so rows end at different steps.
    eos = int(free[1, 4])
    with torch.inference_mode():
        expected = model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=eos)
    expected = expected[:, inputs["input_ids"].shape[1] :]
    settings = sampling.DecodeSettings(max_new_tokens=12, eos_token_id=eos, sampler=sampling.Sampler())
    rows = {row: [] for row in range(4)}
    steps = []
    for step in iter_tokens(model, processor, inputs, [settings] * 4):
        steps.append(sorted(step))
        for row, token in step.items():
            rows[row].append(token)
    for row in range(4):
        want = expected[row].tolist()
        if eos in want:
            want = want[: want.index(eos) + 1]
        assert rows[row] == want
    assert any(len(tokens) < 12 for tokens in rows.values())  # some row did finish early...
    assert len(steps[-1]) < 4  # ...and was no longer computed


def test_rows_keep_their_own_limits_samplers_and_cancellation(fast):
    """Serving's per-row settings: each row equals its run alone, a seeded row repeats, a cancelled row stops."""
    model, processor = fast
    prompts = ["<video>\nDescribe the video in detail.", "<video>\nWhat is moving?", "Tell me everything about it."]
    videos = [frames(3, 0), frames(1, 1), frames(2, 2)]
    per_row = [GenerationSettings(max_new_tokens=4), GenerationSettings(max_new_tokens=9, temperature=1.0, seed=3),
               GenerationSettings(max_new_tokens=7)]

    def run(rows, settings, cancel_after=None):
        inputs = processor(text=[prompts[r] for r in rows], videos=[videos[r] for r in rows])
        out = {row: [] for row in range(len(rows))}
        stopped = set()

        class Cancelled:  # a Container only answers ``in``: the engine must not iterate it
            def __contains__(self, row):
                return row in stopped

        for step in iter_tokens(model, processor, inputs, settings, cancelled=Cancelled()):
            for row, token in step.items():
                out[row].append(token)
                if cancel_after and row == cancel_after[0] and len(out[row]) == cancel_after[1]:
                    stopped.add(row)
        return [out[row] for row in range(len(rows))]

    batch = run([0, 1, 2], per_row)
    assert [len(tokens) for tokens in batch] == [4, 9, 7]  # random weights: no EOS this early
    for row in range(3):
        assert run([row], per_row[row]) == [batch[row]]
    cut = run([0, 1, 2], per_row, cancel_after=(2, 3))
    assert cut[2] == batch[2][:3] and cut[0] == batch[0] and cut[1] == batch[1]


def test_chat_turn_cut_short_leaves_the_session_as_before(fast):
    model, processor = fast
    video = SampledFrames(frames(2, 5), [0, 1], 2, None, "test", "frames")
    settings = GenerationSettings(max_new_tokens=6)
    session = ChatSession(model, processor, video, settings)
    first = "".join(session.ask("What happens?"))
    ids = list(session._ids)
    reply = session.ask("And then?")
    next(reply)
    reply.close()  # as Ctrl-C or a closed stream would
    assert session._ids == ids and len(session.history) == 2
    fresh = ChatSession(model, processor, video, settings)
    assert "".join(fresh.ask("What happens?")) == first
    assert "".join(session.ask("And then?")) == "".join(fresh.ask("And then?"))


@pytest.mark.parametrize("family", ["fast_checkpoint", "tarsier2_checkpoint"])
def test_repetition_penalty_gives_generate_s_ids_alone_and_in_a_batch(family, request):
    """transformers' repetition penalty over the prompt's and the reply's ids, per row (padding is
    not part of a row's sequence, so a batch gives each row's single-prompt ids). A penalty under 1
    (allowed, it favours repeats) makes sure it changes these random models' replies."""
    checkpoint = request.getfixturevalue(family)
    model = TarsierForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    processor = TarsierProcessor.from_pretrained(checkpoint, max_n_frames=3)
    prompts = ["<video>\nDescribe the video in detail.", "Tell me everything about it."]
    videos = [frames(3, 0), None]
    penalised = GenerationSettings(max_new_tokens=12, repetition_penalty=0.3, ignore_eos=True)
    batch = generate_ids(model, processor, processor(text=prompts, videos=videos), penalised)
    for row, (prompt, video) in enumerate(zip(prompts, videos)):
        inputs = processor(text=prompt, videos=None if video is None else [video])
        with torch.inference_mode():
            # a penalty under 1 favours the prompt's media ids, which our engine never emits: generate() must not either
            reference = model.generate(**inputs, max_new_tokens=12, do_sample=False, repetition_penalty=0.3,
                                       eos_token_id=None, pad_token_id=0, suppress_tokens=non_text_ids(model, processor),
                                       )[0, inputs["input_ids"].shape[1] :]
        plain = generate_ids(model, processor, inputs, GenerationSettings(max_new_tokens=12, ignore_eos=True))[0]
        assert batch[row].tolist() == reference.tolist(), row
        assert plain.tolist() != reference.tolist()  # the penalty changed this random model's reply


def non_text_ids(model, processor) -> list[int]:
    """The ids generation never emits: the processor's media ids and the embedding rows past the tokenizer."""
    width = model.get_output_embeddings().weight.shape[0]
    return sorted(processor.non_text_ids) + list(range(vocab_end(processor.tokenizer), width))


def test_the_checkpoint_s_repetition_penalty_is_the_default(fast):
    _, processor = fast
    assert GenerationSettings().decode_settings(processor).repetition_penalty == 1.0  # no generation_config.json
    processor.generation_config = {"repetition_penalty": 1.05}
    try:
        assert GenerationSettings().decode_settings(processor).repetition_penalty == 1.05
        assert GenerationSettings(repetition_penalty=1.0).decode_settings(processor).repetition_penalty == 1.0
    finally:
        processor.generation_config = {}
    with pytest.raises(TarsierError, match="repetition_penalty must be > 0"):
        GenerationSettings(repetition_penalty=0)


def test_a_chat_s_later_turn_penalises_the_earlier_turns_ids_too(fast):
    model, processor = fast
    video = SampledFrames(frames(2, 5), [0, 1], 2, None, "test", "frames")
    settings = GenerationSettings(max_new_tokens=6, repetition_penalty=0.3)
    session = ChatSession(model, processor, video, settings)
    "".join(session.ask("What happens?"))
    turn_two = session._ids + processor.follow_up_ids("And then?")
    second = "".join(session.ask("And then?"))
    ids = torch.tensor([turn_two])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": processor.pixel_values(video.images)}
    assert generate_text(model, processor, inputs, settings)[0] == second


def test_sampling_takes_the_checkpoint_s_top_k_else_transformers_default(fast):
    model, processor = fast
    assert GenerationSettings(temperature=1.0).decode_settings(processor).sampler.warpers[1].top_k == 50
    processor.generation_config = {"top_k": 1}
    try:
        # top-k 1 from the config makes sampling greedy, as the reference's generate() would
        inputs = processor(text="<video>\nDescribe.", videos=[frames(2, 3)])
        greedy = generate_ids(model, processor, inputs, GenerationSettings(max_new_tokens=8))
        sampled = generate_ids(model, processor, inputs, GenerationSettings(max_new_tokens=8, temperature=1.5, seed=1))
        assert sampled.tolist() == greedy.tolist()
        explicit = GenerationSettings(max_new_tokens=8, temperature=1.5, seed=1, top_k=0)
        assert len(explicit.decode_settings(processor).sampler.warpers) == 1  # temperature only
        assert generate_ids(model, processor, inputs, explicit).tolist() != greedy.tolist()
    finally:
        processor.generation_config = {}
    with pytest.raises(TarsierError, match="top_k must be >= 0"):
        GenerationSettings(top_k=-1)
