"""The compiled decode step (``compile_decode_step``): same logits and ids as eager, for both families."""

import numpy as np
import pytest
import torch
from PIL import Image

from tarsier.engine.decode_step import COMPILED_CAPACITY_STEP, compile_decode_step, decode_step
from tarsier.engine.generation import iter_tokens
from tarsier.engine.kv_cache import KVCache
from tarsier.engine.loading import load_model, load_pretrained
from tarsier.engine.sampling import DecodeSettings, Sampler


def frames(count, seed):
    rng = np.random.RandomState(seed)
    return [Image.fromarray((rng.rand(40, 56, 3) * 255).astype("uint8")) for _ in range(count)]


@pytest.fixture(params=["tarsier", "tarsier2"])
def loaded(request, fast_checkpoint, tarsier2_checkpoint):
    checkpoint = fast_checkpoint if request.param == "tarsier" else tarsier2_checkpoint
    model, processor = load_pretrained(checkpoint, device="cpu", dtype="fp32", progress=False)
    yield model, processor
    model.__dict__.pop("compiled_decode_step", None)
    torch._dynamo.reset()


def batch_inputs(processor):
    prompts = ["<video>\nDescribe the video in detail.", "<video>\nWhat moves?", "Tell me everything about it, please."]
    return processor(text=prompts, videos=[frames(4, 0), frames(2, 1), None], n_frames=4)


def run(model, processor, inputs, settings):
    rows = {}
    for step in iter_tokens(model, processor, inputs, settings):
        for row, token in step.items():
            rows.setdefault(row, []).append(token)
    return rows


def test_a_compiled_step_gives_eager_ids_while_rows_finish_at_different_steps(loaded, monkeypatch):
    model, processor = loaded
    inputs = batch_inputs(processor)
    free = run(model, processor, inputs, DecodeSettings(max_new_tokens=12, eos_token_id=None, sampler=Sampler()))
    eos = free[0][3]  # row 0 ends at its 4th token; row 1 at its limit of 5; row 2 runs 9 unless it meets eos
    settings = [DecodeSettings(max_new_tokens=n, eos_token_id=eos, sampler=Sampler()) for n in (12, 5, 9)]
    eager = run(model, processor, inputs, settings)
    assert len(eager[0]) == 4 and len(eager[1]) <= 5

    capacities = []
    made = KVCache.__init__

    def recording(self, model, batch_size, capacity, **kwargs):
        capacities.append(capacity)
        made(self, model, batch_size, capacity, **kwargs)

    monkeypatch.setattr(KVCache, "__init__", recording)
    compile_decode_step(model, mode="default")
    compiled = run(model, processor, inputs, settings)
    assert compiled == eager
    # one graph serves prompts up to the next multiple of the step: the cache is rounded up
    assert capacities[0] % COMPILED_CAPACITY_STEP == 0 and capacities[0] >= inputs["input_ids"].shape[1] + 12


def test_a_compiled_step_gives_the_eager_step_s_logits(loaded):
    """Ids of a random model can agree by accident: compare one step's logits from the same cache state."""
    model, processor = loaded
    inputs = batch_inputs(processor)
    batch, length = inputs["input_ids"].shape
    cache = KVCache(model, batch, length + 4, allocate=True)
    mask = torch.zeros(batch, length + 4, dtype=torch.long)
    mask[:, :length] = inputs["attention_mask"]
    media = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    with torch.inference_mode():
        positions, deltas = model.prefill_positions(inputs["input_ids"], mask[:, :length], media)
        model(input_ids=inputs["input_ids"], attention_mask=mask[:, :length], position_ids=positions, cache=cache.cache,
              use_cache=True, logits_to_keep=1, **media)
        mask[:, length] = 1
        step = {"input_ids": torch.tensor([[11], [12], [13]]), "attention_mask": mask,
                "position_ids": (mask[:, :length].sum(-1) + deltas[:, 0])[:, None], "cache": cache.cache}
        eager = decode_step(model, **dict(step))
        cache.set_length(length)  # the compiled step writes the same cache slot again
        compile_decode_step(model, mode="default")
        compiled = decode_step(model, **dict(step))
    assert compiled.shape == eager.shape == (3, model.get_output_embeddings().weight.shape[0])
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    assert int(cache.length) == length + 1


def test_models_load_without_hub_kernels(fast_checkpoint, monkeypatch):
    """transformers fetches layer kernels from the hub when ``use_kernels`` is left unset: offline that
    failed ``device_map="auto"`` on a GPU (seen on an H200). We never ask for them."""
    from tarsier.models.tarsier.modeling_tarsier import TarsierForConditionalGeneration

    seen = {}
    original = TarsierForConditionalGeneration.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        seen.update(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(TarsierForConditionalGeneration, "from_pretrained", classmethod(recording))
    load_model(fast_checkpoint, "cpu", "fp32", progress=False)
    assert seen["use_kernels"] is False


def test_generation_never_emits_media_placeholders_or_padded_vocabulary_rows(loaded, monkeypatch):
    """A model that prefers the ids that are not text (media placeholders, separators, the embedding
    rows past the tokenizer) still gives, greedy and seeded-sampled alike, what it gives when they
    carry no weight: those ids are masked in every step. Unmasked, the first step picked one and the
    next step failed the whole batch ("input_ids hold 1 image patch slots but no pixel_values")."""
    from tarsier.engine.generation import generate_ids
    from tarsier.engine.settings import GenerationSettings, vocab_end

    model, processor = loaded
    inputs = batch_inputs(processor)
    settings = [GenerationSettings(max_new_tokens=10), GenerationSettings(max_new_tokens=10, temperature=2.0, top_k=0, seed=5),
                GenerationSettings(max_new_tokens=10)]
    plain = generate_ids(model, processor, inputs, settings).tolist()
    width = model.get_output_embeddings().weight.shape[0]
    banned = sorted(processor.non_text_ids) + list(range(vocab_end(processor.tokenizer), width))
    assert processor.image_token_id in banned if hasattr(processor, "image_token_id") else 32000 in banned
    forward = model.forward

    def preferring_non_text(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits[..., banned] += 100.0
        return out

    monkeypatch.setattr(model, "forward", preferring_non_text)
    tilted = generate_ids(model, processor, inputs, settings).tolist()
    assert tilted == plain
    assert not set(banned) & {token for row in tilted for token in row}
