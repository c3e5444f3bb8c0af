"""Tarsier2 against a straightforward composition of transformers' Qwen2-VL classes, plus layout,
round trip, M-RoPE positions, generation and loss.

The independent reference is ``Qwen2VLForConditionalGeneration`` built from the checkpoint's raw
config.json and loaded with the safetensors renamed the way vLLM and transformers name Qwen2-VL
(``vision_tower.`` -> ``model.visual.``, ``language_model.model.`` -> ``model.language_model.``,
``language_model.lm_head.`` -> ``lm_head.``); it computes its own M-RoPE positions.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import DynamicCache, Qwen2VLConfig, Qwen2VLForConditionalGeneration

from tarsier.errors import TarsierError
from tarsier.models.tarsier2.configuration_tarsier2 import Tarsier2Config
from tarsier.models.tarsier2.family import is_tarsier2_config
from tarsier.models.tarsier2.modeling_tarsier2 import Tarsier2ForConditionalGeneration
from tarsier.models.tarsier2.processing_tarsier2 import Tarsier2Processor
from tarsier.testing import QWEN2_SPECIAL_IDS, TARSIER2_VOCAB_SIZE, build_random_tarsier2_checkpoint

IMAGE_PAD = QWEN2_SPECIAL_IDS["<|image_pad|>"]
EOS_IDS = {QWEN2_SPECIAL_IDS["<|im_end|>"], QWEN2_SPECIAL_IDS["<|endoftext|>"]}
RENAMES = (("vision_tower.", "model.visual."), ("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."))


def random_frames(count, size=(112, 84), seed=0):
    rng = np.random.RandomState(seed)
    return [Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype("uint8")) for _ in range(count)]


def checkpoint_tensors(folder):
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    return tensors


def until_eos(ids):
    ids = [int(t) for t in ids]
    ends = [i for i, t in enumerate(ids) if t in EOS_IDS]
    return ids[: ends[0] + 1] if ends else ids


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_random_tarsier2_checkpoint(tmp_path_factory.mktemp("tarsier2"))


@pytest.fixture(scope="module")
def tiny(checkpoint):
    model = Tarsier2ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return model, Tarsier2Processor.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def reference(checkpoint):
    raw = json.loads((checkpoint / "config.json").read_text())
    text = raw["text_config"]
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=raw["vision_config"],
        **{key: text[key] for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")},
    )
    model = Qwen2VLForConditionalGeneration(config).float().eval()  # the config says bfloat16
    renamed = {}
    for name, tensor in checkpoint_tensors(checkpoint).items():
        old, new = next((old, new) for old, new in RENAMES if name.startswith(old))
        renamed[new + name[len(old) :]] = tensor
    model.load_state_dict(renamed, strict=True)
    return model


@pytest.fixture(scope="module")
def batch(tiny):
    """Left-padded: a 3-frame video (grid 3 x 6 x 8), a text-only prompt, an image (grid 1 x 6 x 8)."""
    _, processor = tiny
    prompts = ["Describe the video in detail.", "Hi", "Describe the image in detail."]
    return processor(prompts, videos=[random_frames(3), None, random_frames(1, seed=1)[0]])


def test_checkpoint_is_sharded_with_the_official_names(checkpoint):
    weight_map = json.loads((checkpoint / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(weight_map.values())) > 1
    assert {name.split(".")[0] for name in weight_map} == {"vision_tower", "language_model"}
    assert {
        "vision_tower.patch_embed.proj.weight",
        "vision_tower.blocks.0.attn.qkv.weight",
        "vision_tower.merger.ln_q.weight",
        "vision_tower.merger.mlp.2.weight",
        "language_model.model.embed_tokens.weight",
        "language_model.model.layers.1.self_attn.q_proj.bias",
        "language_model.model.norm.weight",
        "language_model.lm_head.weight",
    } <= set(weight_map)
    tensors = checkpoint_tensors(checkpoint)
    assert {tensor.dtype for tensor in tensors.values()} == {torch.bfloat16}
    assert tensors["language_model.model.embed_tokens.weight"].shape[0] == TARSIER2_VOCAB_SIZE == 151_657
    assert tensors["vision_tower.patch_embed.proj.weight"].shape[1:] == (3, 2, 14, 14)
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["model_type"] == "llava" and config["projection_head"] is None
    assert {config["text_config"]["model_type"], config["vision_config"]["model_type"]} == {"qwen2_vl"}
    assert all("auto_map" in c for c in (config, config["text_config"], config["vision_config"]))


def test_from_pretrained_builds_qwen2vl_blocks_and_ignores_auto_map(tiny):
    model, _ = tiny
    assert type(model.vision_tower).__name__ == "Qwen2VisionTransformerPretrainedModel"
    assert type(model.language_model.model).__name__ == "Qwen2VLTextModel"
    assert model.config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    assert model.config.vision_config.spatial_merge_size == 2 and model.config.vision_config.temporal_patch_size == 2
    assert model.generation_config.eos_token_id == [151645, 151643]  # generation_config.json honoured


def test_save_pretrained_round_trips_names_values_and_config(tiny, checkpoint, tmp_path):
    model, _ = tiny
    model.save_pretrained(tmp_path, max_shard_size="8MB")
    saved = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(saved) == set(json.loads((checkpoint / "model.safetensors.index.json").read_text())["weight_map"])
    written = checkpoint_tensors(tmp_path)
    for name, tensor in checkpoint_tensors(checkpoint).items():
        assert torch.equal(written[name], tensor.float()), name
    config = json.loads((tmp_path / "config.json").read_text())
    assert {config["text_config"]["model_type"], config["vision_config"]["model_type"]} == {"qwen2_vl"}
    assert config["text_config"]["rope_scaling"] == {"type": "mrope", "mrope_section": [2, 3, 3]}
    reloaded = Tarsier2ForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32)
    assert reloaded.config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    assert reloaded.config.image_token_index == IMAGE_PAD
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name


def test_the_two_generations_are_told_apart_by_their_config(checkpoint):
    from tarsier.testing import PRESETS, official_config

    assert is_tarsier2_config(json.loads((checkpoint / "config.json").read_text()))
    assert not is_tarsier2_config(official_config(PRESETS["tiny"]))
    with pytest.raises(TarsierError, match="text_config has model_type 'llama'"):
        Tarsier2Config(text_config={"model_type": "llama"}, vision_config={})


def test_logits_match_transformers_qwen2vl(tiny, reference, batch):
    model, _ = tiny
    mm_token_type_ids = (batch["input_ids"] == IMAGE_PAD).int()
    with torch.no_grad():
        ours = model(**batch).logits
        theirs = reference(**batch, mm_token_type_ids=mm_token_type_ids).logits
    attended = batch["attention_mask"].bool()
    assert ours.shape == theirs.shape == (*batch["input_ids"].shape, TARSIER2_VOCAB_SIZE)
    torch.testing.assert_close(ours[attended], theirs[attended], rtol=1e-5, atol=1e-5)


def test_rope_positions_match_transformers_get_rope_index(tiny, reference, batch):
    model, _ = tiny
    positions, deltas = model.rope_positions(batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"])
    expected, expected_deltas = reference.model.get_rope_index(
        batch["input_ids"],
        mm_token_type_ids=(batch["input_ids"] == IMAGE_PAD).int(),
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
    )
    assert torch.equal(positions, expected)
    assert torch.equal(deltas, expected_deltas)
    # A row's next token sits at (attended tokens) + delta: its last position + 1.
    last = positions[:, :, -1]
    assert torch.equal(last[0] + 1, batch["attention_mask"].sum(-1) + deltas[:, 0])


def test_text_after_a_long_video_continues_from_its_largest_position(tiny):
    """The reference's rule when the grid has more time slots than merged rows or columns (3 > 2 here);
    transformers 5.24's get_rope_index would continue at start + max(rows, columns) instead."""
    model, processor = tiny
    inputs = processor("Hi", videos=[random_frames(3, size=(56, 56))])  # grid 3 x 4 x 4: 3 x 2 x 2 tokens
    ids = inputs["input_ids"][0].tolist()
    start = ids.index(IMAGE_PAD)
    positions, deltas = model.rope_positions(inputs["input_ids"], inputs["attention_mask"], inputs["image_grid_thw"])
    block = positions[:, 0, start : start + 12]
    assert block.tolist() == [
        [start + t for t in range(3) for _ in range(4)],
        [start + h for _ in range(3) for h in range(2) for _ in range(2)],
        [start + w for _ in range(3) for _ in range(2) for w in range(2)],
    ]
    assert positions[:, 0, start + 12].tolist() == [start + 3] * 3  # <|vision_end|>
    assert deltas.tolist() == [[3 - 12]]


def greedy(model, inputs, steps):
    """HF generate's new ids and the logits it chose them from (``[B, steps, V]``)."""
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True)
    return out.sequences[:, inputs["input_ids"].shape[1] :], torch.stack(out.logits, dim=1)


def test_generate_batch_equals_single_with_left_padding(tiny, batch):
    model, _ = tiny
    together, together_logits = greedy(model, batch, 6)
    length = batch["input_ids"].shape[1]
    sizes = batch["image_grid_thw"].prod(-1).tolist()
    media_of_row = {0: 0, 2: 1}
    for row in range(3):
        n = int(batch["attention_mask"][row].sum())
        single = {key: batch[key][row : row + 1, length - n :] for key in ("input_ids", "attention_mask")}
        if row in media_of_row:
            media = media_of_row[row]
            first = sum(sizes[:media])
            single["pixel_values"] = batch["pixel_values"][first : first + sizes[media]]
            single["image_grid_thw"] = batch["image_grid_thw"][media : media + 1]
        alone, alone_logits = greedy(model, single, 6)
        ids = until_eos(alone[0])
        assert until_eos(together[row]) == ids, row
        torch.testing.assert_close(together_logits[row, : len(ids)], alone_logits[0, : len(ids)], rtol=1e-5, atol=1e-5)


def test_decoding_at_attended_tokens_plus_delta_equals_generate(tiny, batch):
    """What an engine does: prefill with rope_positions, then each new token at attended + delta."""
    model, _ = tiny
    steps = 5
    expected, expected_logits = greedy(model, batch, steps)
    with torch.no_grad():
        positions, deltas = model.rope_positions(batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"])
        cache = DynamicCache(config=model.config.text_config)
        mask, attended = batch["attention_mask"], batch["attention_mask"].sum(-1)
        with pytest.warns(FutureWarning, match="Use `cache` instead"):  # the old name still works
            out = model(**batch, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
        logits = [out.logits[:, -1]]
        for step in range(steps - 1):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            next_positions = (attended + step + deltas[:, 0])[:, None]  # text: the same on all three axes
            out = model(input_ids=expected[:, step : step + 1], attention_mask=mask, position_ids=next_positions,
                        cache=cache, use_cache=True)
            logits.append(out.logits[:, -1])
    logits = torch.stack(logits, dim=1)
    for row in range(3):
        ids = until_eos(expected[row])
        assert logits[row, : len(ids)].argmax(-1).tolist() == ids, row
        torch.testing.assert_close(logits[row, : len(ids)], expected_logits[row, : len(ids)], rtol=1e-5, atol=1e-5)


def test_loss_is_shifted_cross_entropy_over_labelled_positions(tiny, batch):
    model, _ = tiny
    labels = batch["input_ids"].clone()
    labels[:, :-5] = -100
    with torch.no_grad():
        output = model(**batch, labels=labels)
    logits, targets = output.logits[:, :-1].reshape(-1, TARSIER2_VOCAB_SIZE), labels[:, 1:].reshape(-1)
    keep = targets != -100
    assert keep.sum() == 3 * 5
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(logits[keep], targets[keep]))


def test_mismatched_inputs_are_clear_errors(tiny, batch):
    model, _ = tiny
    with pytest.raises(TarsierError, match="image slots but no pixel_values"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], image_grid_thw=batch["image_grid_thw"])
    with pytest.raises(TarsierError, match="more media blocks than image_grid_thw has rows"):
        model.rope_positions(batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"][:1])
    cache = DynamicCache(config=model.config.text_config)
    with torch.no_grad():
        model(input_ids=batch["input_ids"][1:2, -3:], cache=cache, use_cache=True)
        with pytest.raises(ValueError, match="pass position_ids when continuing from a cache"):
            model(input_ids=batch["input_ids"][1:2, -1:], cache=cache, use_cache=True)
