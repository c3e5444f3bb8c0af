"""The model against an independent, reference-style computation, plus layout, loss and limits."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import CLIPVisionModel

from tarsier import TarsierError, TarsierForConditionalGeneration
from tarsier.models.tarsier.processing_tarsier import TarsierProcessor


def random_frames(count, size=(64, 48), seed=0):
    rng = np.random.RandomState(seed)
    return [Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype("uint8")) for _ in range(count)]


def saved_keys(folder):
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return set(json.loads(index.read_text())["weight_map"])
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return set(handle.keys())


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    model = TarsierForConditionalGeneration.from_pretrained(tiny_checkpoint, torch_dtype=torch.float32).eval()
    return model, TarsierProcessor.from_pretrained(tiny_checkpoint)


def test_official_layout_is_sharded_and_named_like_the_published_weights(tiny_checkpoint):
    keys = saved_keys(tiny_checkpoint)
    assert (tiny_checkpoint / "model.safetensors.index.json").exists()
    assert len(set(json.loads((tiny_checkpoint / "model.safetensors.index.json").read_text())["weight_map"].values())) > 1
    assert {key.split(".")[0] for key in keys} == {"vision_tower", "multi_modal_projector", "language_model"}
    assert "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight" in keys
    assert "vision_tower.vision_model.post_layernorm.weight" in keys
    assert {"multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_2.bias"} <= keys
    assert {"language_model.lm_head.weight", "language_model.model.embed_tokens.weight"} <= keys
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["model_type"] == "llava" and config["text_config"]["use_bpex_rmsnorm"] is True


def test_save_pretrained_round_trips_names_and_values(tiny, tiny_checkpoint, tmp_path):
    model, _ = tiny
    model.save_pretrained(tmp_path, max_shard_size="4MB")
    assert saved_keys(tmp_path) == saved_keys(tiny_checkpoint)
    reloaded = TarsierForConditionalGeneration.from_pretrained(tmp_path, torch_dtype=torch.float32)
    original = model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    assert reloaded.config.image_newline_idx == 32002 and reloaded.config.image_new_idx == 32003


def reference_logits(model, processor, prompt, frames):
    """What the reference computes: all CLIP hidden states, pick -2, add separators, merge at <image>."""
    config = model.config
    clip = CLIPVisionModel(config.vision_config).eval()
    prefix = "vision_tower.vision_model."
    clip.load_state_dict({k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)})
    pixels = processor.pixel_values(frames)
    with torch.no_grad():
        hidden = clip(pixels, output_hidden_states=True).hidden_states[config.vision_feature_layer][:, 1:]
        features = model.multi_modal_projector(hidden)
        embed = model.get_input_embeddings()
        grid = config.vision_config.image_size // config.vision_config.patch_size
        newline = embed(torch.tensor(config.image_newline_idx))
        frame_end = embed(torch.tensor(config.image_new_idx))
        blocks = []
        for frame in features:
            rows = frame.view(grid, grid, -1)
            rows = torch.cat([rows, newline.expand(grid, 1, -1)], dim=1).reshape(-1, frame.shape[-1])
            blocks.append(torch.cat([rows, frame_end[None]], dim=0))
        text_ids = processor.tokenizer.encode(processor.format_prompt(prompt, len(frames)))
        pieces, frame_number = [], 0
        for token in text_ids:
            if token == config.image_token_index:
                pieces.append(blocks[frame_number])
                frame_number += 1
            else:
                pieces.append(embed(torch.tensor([token])))
        merged = torch.cat(pieces)[None]
        return model.language_model(inputs_embeds=merged).logits[0]


def test_logits_match_a_reference_style_computation(tiny):
    model, processor = tiny
    frames = random_frames(2)
    inputs = processor(text="<video>\nDescribe the video in detail.", videos=[frames])
    assert inputs["input_ids"].shape[1] == len(processor.tokenizer.encode("USER: <image><image>\nDescribe the video in detail. ASSISTANT: ")) + 2 * 600
    with torch.no_grad():
        ours = model(**inputs).logits[0]
    expected = reference_logits(model, processor, "<video>\nDescribe the video in detail.", frames)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=2e-4, rtol=1e-4)


def test_vision_tower_never_runs_the_last_encoder_layer(tiny):
    model, processor = tiny
    calls = []
    hooks = [
        layer.register_forward_hook(lambda module, args, output, index=index: calls.append(index))
        for index, layer in enumerate(model.vision_tower.vision_model.encoder.layers)
    ]
    try:
        with torch.no_grad():
            features = model.get_image_features(processor.pixel_values(random_frames(1)))
    finally:
        for hook in hooks:
            hook.remove()
    layers = model.config.vision_config.num_hidden_layers
    assert calls == list(range(layers - 1))
    assert features.shape == (1, 24 * 24, model.config.text_config.hidden_size)


def test_sequences_longer_than_max_position_embeddings_run(tiny):
    model, processor = tiny
    inputs = processor(text="<video>\nDescribe the video in detail.", videos=[random_frames(8)])
    length = inputs["input_ids"].shape[1]
    assert length > model.config.text_config.max_position_embeddings == 4096
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, length, 32064)
    assert torch.isfinite(logits).all()


def test_loss_is_shifted_cross_entropy_over_labelled_positions(tiny):
    model, processor = tiny
    inputs = processor(text="<video>\nWhat happens?", videos=[random_frames(1)])
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[0, -6:] = inputs["input_ids"][0, -6:]
    with torch.no_grad():
        output = model(**inputs, labels=labels)
    logits = output.logits[0, :-1]
    targets = labels[0, 1:]
    keep = targets != -100
    expected = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    assert keep.sum() == 6
    torch.testing.assert_close(output.loss, expected)


def test_loads_in_bfloat16_and_runs_on_cpu(tiny_checkpoint):
    model = TarsierForConditionalGeneration.from_pretrained(tiny_checkpoint, torch_dtype=torch.bfloat16)
    processor = TarsierProcessor.from_pretrained(tiny_checkpoint)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        logits = model(**processor(text="<video>\nHi", videos=[random_frames(1)])).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_mismatched_frames_and_slots_is_a_clear_error(tiny):
    model, processor = tiny
    inputs = processor(text="<video>\nHi", videos=[random_frames(2)])
    with pytest.raises(TarsierError, match="image patch slots"):
        model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"][:1])
    with pytest.raises(TarsierError, match="no pixel_values"):
        model(input_ids=inputs["input_ids"])


def test_bundled_model_loads_by_name_offline_like_the_processor(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub lookup would fail at once instead of after 45 s
    model = TarsierForConditionalGeneration.from_pretrained("shapes-demo")
    processor = TarsierProcessor.from_pretrained("shapes-demo")
    assert model.config.image_token_index == processor.layout.image_token_id
    assert model.config.text_config.max_position_embeddings == 1024


def test_frame_budget_is_checked_from_the_config(tiny_checkpoint, capsys):
    from tarsier.models.auto import check_frames

    check_frames(tiny_checkpoint, 8)  # 4,908 positions: the reference default, silent
    assert capsys.readouterr().err == ""
    check_frames(tiny_checkpoint, 16)  # 9,716 > 2 x 4,096: allowed, with the numbers
    assert "16 frames need about 9,716 positions (601 per frame), over 2x the 4,096" in capsys.readouterr().err
    with pytest.raises(TarsierError, match="28 frames need about 16,928 positions .* use at most 27 frames"):
        check_frames(tiny_checkpoint, 28)
