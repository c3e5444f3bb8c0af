"""Fine-tuning a Tarsier2 checkpoint: labels from its chat template, the loss, what trains, LoRA."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import chat, make_config, target_runs, write_jsonl

from tarsier import TarsierForConditionalGeneration
from tarsier.engine.describer import Describer, DescribeRequest
from tarsier.engine.settings import GenerationSettings
from tarsier.models.tarsier.processing_tarsier import TarsierProcessor
from tarsier.prompting import IGNORE_INDEX
from tarsier.testing import QWEN2_SPECIAL_IDS
from tarsier.train.data import Collator
from tarsier.train.trainer import family_data_defaults, train

MESSAGES = [
    {"role": "user", "content": "<video>\nWhat happens?"},
    {"role": "assistant", "content": "A man opens a door."},
    {"role": "user", "content": "And then?"},
    {"role": "assistant", "content": "He walks out."},
]


@pytest.fixture(scope="module")
def processor(tarsier2_checkpoint):
    return TarsierProcessor.from_pretrained(tarsier2_checkpoint)


@pytest.fixture(scope="module")
def frames(clip_folder, processor):
    return processor.load_media(str(clip_folder / "red.mp4"), n_frames=4)


def with_template(checkpoint, template):
    """The checkpoint's processor with another chat template (as if the checkpoint shipped that one)."""
    other = TarsierProcessor.from_pretrained(checkpoint)
    other.chat_template = template
    return other


def test_labels_are_the_replies_and_the_end_of_turn_after_each(processor, frames):
    ids, labels, media = processor.encode_for_training(MESSAGES, frames)
    assert len(ids) == len(labels)
    decoded = [processor.tokenizer.decode(run, skip_special_tokens=False) for run in target_runs(ids, labels)]
    assert decoded == ["A man opens a door.<|im_end|>", "He walks out.<|im_end|>"]
    # The ids are the template's rendering of the whole conversation, media pads expanded ...
    t, h, w = media["image_grid_thw"][0].tolist()
    assert (t, h, w) == (4, 4, 4) and media["pixel_values"].shape == (t * h * w, 3 * 2 * 14 * 14)
    assert ids.count(QWEN2_SPECIAL_IDS["<|image_pad|>"]) == t * h * w // 4
    rendered = processor.render_conversation(MESSAGES, processor.media_inputs(frames), add_generation_prompt=False)
    expanded = processor.expand_media(processor.tokenizer.encode(rendered), [t * h * w // 4])
    assert ids == expanded
    # ... and begin with the prompt the model answers at inference, all of it masked.
    prompt_ids, _ = processor.encode_conversation(MESSAGES[:1], frames)
    assert ids[: len(prompt_ids)] == prompt_ids and set(labels[: len(prompt_ids)]) == {IGNORE_INDEX}


def test_generation_blocks_in_the_template_decide_what_is_learned(tarsier2_checkpoint, processor, frames):
    """A template with ``{% generation %}`` blocks (what the reference's training reads through
    transformers' assistant mask): around reply + ``<|im_end|>`` it gives the same labels as the
    default rule; around the reply alone the end of turn is not learned."""
    plain = processor.chat_template
    both = plain.replace(
        "<|im_start|>{{ message['role'] }}\n",
        "<|im_start|>{{ message['role'] }}\n{% if message['role'] == 'assistant' %}{% generation %}"
        "{% for part in message['content'] %}{{ part['text'] }}{% endfor %}<|im_end|>{% endgeneration %}"
        "{{ '\\n' }}{% else %}",  # (a newline right after a tag is trimmed)
    ).replace("<|im_end|>\n{% endfor %}", "<|im_end|>\n{% endif %}{% endfor %}")
    assert both.count("{% generation %}") == 1 and both != plain
    reply_only = both.replace("{% endfor %}<|im_end|>{% endgeneration %}", "{% endfor %}{% endgeneration %}<|im_end|>")
    ids, labels, _ = processor.encode_for_training(MESSAGES, frames)
    marked_ids, marked_labels, _ = with_template(tarsier2_checkpoint, both).encode_for_training(MESSAGES, frames)
    assert (marked_ids, marked_labels) == (ids, labels)
    short_ids, short_labels, _ = with_template(tarsier2_checkpoint, reply_only).encode_for_training(MESSAGES, frames)
    decoded = [processor.tokenizer.decode(run, skip_special_tokens=False) for run in target_runs(short_ids, short_labels)]
    assert short_ids == ids and decoded == ["A man opens a door.", "He walks out."]


def test_the_loss_is_the_shifted_cross_entropy_of_the_reply_tokens(tarsier2_checkpoint, processor, frames):
    model = TarsierForConditionalGeneration.from_pretrained(str(tarsier2_checkpoint), dtype=torch.float32)
    examples = []
    for messages in (MESSAGES, MESSAGES[:2]):
        ids, labels, media = processor.encode_for_training(messages, frames)
        examples.append({"input_ids": ids, "labels": labels, "media": media, "failures": [], "task": "chat"})
    batch = Collator(processor)(examples)
    assert batch["image_grid_thw"].tolist() == [[4, 4, 4], [4, 4, 4]]
    inputs = {k: v for k, v in batch.items() if k not in ("failures", "tasks")}
    with torch.no_grad():
        output = model(**inputs)
    logits, labels = output.logits[:, :-1].float(), batch["labels"][:, 1:]
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    assert torch.allclose(output.loss, expected, rtol=1e-5)
    assert (labels != IGNORE_INDEX).sum() == sum(len(run) for e in examples for run in target_runs(e["input_ids"], e["labels"]))


def weights(folder):
    model = TarsierForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def learned(losses):
    return sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3


@pytest.fixture
def descriptions(tmp_path, clip_folder):
    return write_jsonl(tmp_path / "descriptions.jsonl", [
        chat(str(clip_folder / f"{c}.mp4"), "Describe the video.", f"A {c} block slides to the right.")
        for c in ("red", "green", "blue", "yellow")
    ])


def test_fine_tuning_lowers_the_loss_keeps_the_vit_and_trains_merger_and_llm(tarsier2_checkpoint, descriptions, clip_folder, tmp_path):
    config = make_config(tarsier2_checkpoint, [descriptions], "data.n_frames=null", "train.max_steps=12",
                         "optim.lr=3e-2", "optim.min_lr_ratio=1.0")
    assert family_data_defaults(config) == (16, 16384)  # the family's frames, as at inference, and length
    result = train(config, tmp_path / "run", progress=False)
    assert learned(result.losses), result.losses

    before, after = weights(tarsier2_checkpoint), weights(tmp_path / "run")
    assert before.keys() == after.keys()
    vit = [n for n in before if n.startswith("vision_tower.") and not n.startswith("vision_tower.merger.")]
    assert vit and all(torch.equal(before[n], after[n]) for n in vit)
    for prefix in ("vision_tower.merger.", "language_model.model.layers.", "language_model.lm_head."):
        assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith(prefix)), prefix
    for name in ("chat_template.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json"):
        assert (tmp_path / "run" / name).read_bytes() == (tarsier2_checkpoint / name).read_bytes(), name
    assert json.loads((tmp_path / "run" / "config.json").read_text())["text_config"]["model_type"] == "qwen2_vl"
    describer = Describer.from_pretrained(str(tmp_path / "run"), device="cpu", generation=GenerationSettings(max_new_tokens=3))
    result = next(describer.run([DescribeRequest("red", str(clip_folder / "red.mp4"))]))
    assert result.error is None and len(result.frame_indices) == 6  # a 6-frame clip: every frame once


def test_lora_fine_tuning_trains_adapters_and_the_merger_and_saves_merged_weights(tarsier2_checkpoint, descriptions, tmp_path):
    config = make_config(tarsier2_checkpoint, [descriptions], "train.max_steps=3", "model.lora.enabled=true",
                         "model.lora.r=4", "model.gradient_checkpointing=true")
    train(config, tmp_path / "run", progress=False)
    before, after = weights(tarsier2_checkpoint), weights(tmp_path / "run")
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert any(name.startswith("language_model.model.layers.") and ".self_attn.q_proj.weight" in name for name in changed)
    assert any(name.startswith("vision_tower.merger.") for name in changed)
    assert not any(
        (name.startswith("vision_tower.") and not name.startswith("vision_tower.merger.")) or "embed_tokens" in name
        or "norm" in name or "lm_head" in name
        for name in changed
    ), sorted(changed)
