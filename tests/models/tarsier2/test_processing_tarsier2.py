"""Tarsier2Processor against the reference's rules and independent computations.

Frames: which indices a video gives, by the rule written out here. Pixels: transformers'
``Qwen2VLImageProcessor`` (its PIL backend) run frame by frame, which is what feeding each frame
twice amounts to. Prompts: the expected strings written out, the ids from the tokenizer.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from tarsier.errors import PromptError
from tarsier.media import SampledFrames, sample_frame_indices
from tarsier.models.tarsier2.family import FrameRules
from tarsier.models.tarsier2.processing_tarsier2 import Tarsier2Processor, every_frame_once
from tarsier.testing import QWEN2_SPECIAL_IDS, build_random_tarsier2_checkpoint

IMAGE_PAD = QWEN2_SPECIAL_IDS["<|image_pad|>"]
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def reference_indices(total, n):
    """The reference's inference sampling: first and last frame, every frame once when short."""
    if n == 1:
        return [0]
    if total <= n:
        return list(range(total))
    return [round(i * (total - 1) / (n - 1)) for i in range(n)]


def expected_prompt(question, n_pads):
    media = "<|vision_start|>" + "<|image_pad|>" * n_pads + "<|vision_end|>" if n_pads else ""
    return f"{SYSTEM}<|im_start|>user\n{media}{question}<|im_end|>\n<|im_start|>assistant\n"


def random_frames(count, size=(112, 84), seed=0):
    rng = np.random.RandomState(seed)
    return [Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype("uint8")) for _ in range(count)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_random_tarsier2_checkpoint(tmp_path_factory.mktemp("tarsier2"))


@pytest.fixture(scope="module")
def processor(checkpoint):
    return Tarsier2Processor.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def qwen2vl_images(checkpoint):
    return Qwen2VLImageProcessorPil.from_pretrained(str(checkpoint))


# -- frames -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("total", "n"), [(5, 16), (16, 16), (40, 16), (40, 4), (40, 1), (1, 16)])
def test_video_frames_follow_the_tarsier2_sampling_rule(processor, tmp_path, total, n):
    from media_factory import make_video, read_frame_index

    video = make_video(tmp_path / "clip.mp4", total, fps=25)
    sampled = processor.load_media(video, n_frames=n if n != 16 else None)  # 16 is the default
    assert sampled.indices == reference_indices(total, n)
    assert [read_frame_index(image) for image in sampled.images] == sampled.indices


def test_every_frame_once_is_the_reference_rule_for_all_short_and_long_clips():
    for n in (1, 2, 3, 16, 32):
        for total in range(1, 120):
            indices = sample_frame_indices(total, n)
            sampled = SampledFrames([None] * len(indices), indices, total, None, "x", "video")
            assert every_frame_once(sampled).indices == reference_indices(total, n), (total, n)


def test_frame_count_is_capped_at_max_n_frames(processor, tmp_path):
    from media_factory import make_frame_folder

    make_frame_folder(tmp_path / "frames", 300, size=(16, 16))
    assert processor.max_n_frames == 16
    assert len(processor.load_media(tmp_path / "frames", n_frames=1000).indices) == 16
    assert len(processor.load_media(tmp_path / "frames", n_frames=5).indices) == 5


# -- pixels -----------------------------------------------------------------------------------------


def test_video_pixels_are_the_image_processor_frame_by_frame(processor, qwen2vl_images):
    frames = random_frames(3)
    inputs = processor("Describe the video in detail.", videos=[frames])
    expected = [qwen2vl_images(images=frame, return_tensors="pt") for frame in frames]
    assert inputs["image_grid_thw"].tolist() == [[3, 6, 8]]  # 84 x 112 px -> 6 x 8 patches per frame
    assert all(e["image_grid_thw"].tolist() == [[1, 6, 8]] for e in expected)
    assert inputs["pixel_values"].shape == (3 * 6 * 8, 3 * 2 * 14 * 14)
    assert inputs["pixel_values"].dtype == torch.float32
    assert torch.equal(inputs["pixel_values"], torch.cat([e["pixel_values"] for e in expected]))


def test_each_frame_fills_both_halves_of_its_temporal_patch(processor):
    pixels = processor("Hi", videos=[random_frames(2)])["pixel_values"].view(-1, 3, 2, 14, 14)
    assert torch.equal(pixels[:, :, 0], pixels[:, :, 1])


def test_an_image_is_one_grid_with_one_time_slot(processor, qwen2vl_images):
    image = random_frames(1, size=(200, 150))[0]
    inputs = processor("Describe the image in detail.", images=image)
    expected = qwen2vl_images(images=image, return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == expected["image_grid_thw"].tolist() == [[1, 10, 14]]  # 150 x 200 -> 140 x 196
    assert torch.equal(inputs["pixel_values"], expected["pixel_values"])


def test_frames_over_460800_pixels_are_shrunk_first(processor, qwen2vl_images):
    frame = random_frames(1, size=(1280, 720))[0]
    # The reference shrinks by sqrt(921600 / 460800) with factor 1: 720 x 1280 -> 509 x 905 (460,645 px).
    shrunk = frame.resize((905, 509), Image.Resampling.BICUBIC)
    inputs = processor("Hi", videos=[[frame]])
    expected = qwen2vl_images(images=shrunk, return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == expected["image_grid_thw"].tolist() == [[1, 36, 64]]
    assert torch.equal(inputs["pixel_values"], expected["pixel_values"])


def _reference_pixels_maker():
    """tests/models/tarsier2/data/make_tarsier2_reference_pixels.py (its input builders; no reference code runs here)."""
    path = Path(__file__).parent / "data" / "make_tarsier2_reference_pixels.py"
    spec = importlib.util.spec_from_file_location("make_tarsier2_reference_pixels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REFERENCE_PIXELS = json.loads((Path(__file__).parent / "data" / "tarsier2_reference_pixels.json").read_text())


@pytest.fixture(scope="module")
def reference_inputs(tmp_path_factory):
    maker = _reference_pixels_maker()
    return maker, {item["name"]: item for item in maker.build_inputs(tmp_path_factory.mktemp("reference-inputs"))}


def test_reference_pixels_were_made_with_this_preprocessor_config(checkpoint):
    stored = REFERENCE_PIXELS["preprocessor_config"]
    assert json.loads((checkpoint / "preprocessor_config.json").read_text()) == stored
    assert set(REFERENCE_PIXELS["inputs"]) == {
        "palette_200x150.gif", "rgb_300x400.png", "rgba_300x400.png", "gray_300x400.png",
        "palette_300x400.png", "rgb_1280x720.png",
    }


@pytest.mark.parametrize("name", sorted(REFERENCE_PIXELS["inputs"]))
def test_pixels_are_bit_identical_to_the_original_code(processor, reference_inputs, name):
    """The original Tarsier2 code's pixel values (stored by tests/models/tarsier2/data/make_tarsier2_reference_pixels.py,
    run with its pinned transformers 4.47 and Pillow 9.3) for a palette GIF, PNGs in four modes and a
    PNG over the 460,800-pixel cap: decoded frames, grid and every float32 value the same."""
    maker, inputs = reference_inputs
    expected = REFERENCE_PIXELS["inputs"][name]
    item = inputs[name]
    frames = processor.load_media(item["path"]).images
    assert maker.sha256(np.stack([np.asarray(frame) for frame in frames])) == expected["frames_sha256"], "decoding"
    media = {"videos": [item["path"]]} if item["kind"] == "video" else {"images": [item["path"]]}
    inputs = processor("<video>\nDescribe.", **media)
    pixels = inputs["pixel_values"].numpy()
    assert inputs["image_grid_thw"].tolist() == [expected["image_grid_thw"]]
    assert list(pixels.shape) == expected["shape"]
    positions = expected["sample_positions"]
    assert positions == maker.sample_positions(pixels.size)
    sampled = pixels.reshape(-1)[positions]
    difference = np.abs(sampled - np.asarray(expected["sample_values"], dtype=np.float32)).max()
    assert difference == 0, f"sampled values differ from the original code's by up to {difference:g}"
    assert pixels.sum(dtype=np.float64) == pytest.approx(expected["sum"], rel=1e-12)
    assert maker.sha256(pixels.astype("<f4")) == expected["sha256"]


def test_per_sample_pixel_budget_shrinks_frames_of_long_videos(processor, qwen2vl_images):
    rules = FrameRules()
    assert rules.pixel_limits(2 * 16) == (0, 460_800)  # 16 frames: the per-frame cap binds
    assert rules.pixel_limits(2 * 64) == (0, 128 * 384 * 384 // 128)  # 64 frames: 147,456 each
    small_budget = Tarsier2Processor(
        processor.tokenizer, processor.image_processor, processor.chat_template, processor.image_token_id,
        rules=FrameRules(max_pixels_per_sample=6 * 4_000),  # 3 frames fed twice: 4,000 px each
    )
    frames = random_frames(3)  # 112 x 84 = 9,408 px -> shrunk by sqrt(9408 / 4000): 54 x 73 (3,942 px)
    inputs = small_budget("Hi", videos=[frames])
    expected = [qwen2vl_images(images=f.resize((73, 54), Image.Resampling.BICUBIC), return_tensors="pt") for f in frames]
    assert inputs["image_grid_thw"].tolist() == [[3, 4, 6]]
    assert torch.equal(inputs["pixel_values"], torch.cat([e["pixel_values"] for e in expected]))


# -- prompts ----------------------------------------------------------------------------------------


def test_video_prompt_string_ids_and_pad_count(processor):
    inputs = processor("Describe the video in detail.", videos=[random_frames(3)])
    n_pads = 3 * 6 * 8 // 4
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(IMAGE_PAD) == n_pads
    assert QWEN2_SPECIAL_IDS["<|video_pad|>"] not in ids  # the template's video pad became image pads
    assert processor.decode(ids, skip_special_tokens=False) == expected_prompt("Describe the video in detail.", n_pads)
    assert ids == processor.tokenizer.encode(expected_prompt("Describe the video in detail.", n_pads), add_special_tokens=False)
    assert inputs["attention_mask"].tolist() == [[1] * len(ids)]


@pytest.mark.parametrize("v1_form", ["<video>\n{q}", "<image>\n{q}", "<video>{q}", "<video>\n\n{q}", "<video> {q}"])
def test_v1_placeholder_form_gives_the_prompt_of_the_bare_question(processor, v1_form):
    question = "What is the person doing?"
    frames = random_frames(2)
    bare = processor(question, videos=[frames])["input_ids"]
    assert torch.equal(processor(v1_form.format(q=question), videos=[frames])["input_ids"], bare)


def test_placeholder_in_the_middle_keeps_its_place_and_text_only_drops_it(processor):
    ids = processor("Look: <video>\nwhat moves?", images=random_frames(1)[0])["input_ids"][0].tolist()
    assert processor.decode(ids, skip_special_tokens=False) == (
        f"{SYSTEM}<|im_start|>user\nLook: <|vision_start|>" + "<|image_pad|>" * 12 + "<|vision_end|>what moves?"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    text_only = processor("<video>\nHello there")["input_ids"][0].tolist()
    assert processor.decode(text_only, skip_special_tokens=False) == expected_prompt("Hello there", 0)
    with pytest.raises(PromptError, match="2 media placeholders but one media item"):
        processor("<video> and <video>", videos=[random_frames(1)])


@pytest.mark.parametrize(
    "annotation",
    [
        "USER: <video> Which object moves first?\n(A) the ball\n(B) the cup\nASSISTANT: Answer: (",  # v1 release
        "USER: <video>\nWhich object moves first?\n(A) the ball\n(B) the cup ASSISTANT: Answer: (",  # Tarsier2 release
    ],
)
def test_a_framed_annotation_prompt_pre_fills_the_reply(processor, annotation):
    """Multiple-choice annotations end ``ASSISTANT: Answer: (``: the question is the user turn and the
    reply continues from the pre-fill (leading space kept, as Tarsier2's TVBench lines have it)."""
    ids = processor(annotation, videos=[random_frames(1)])["input_ids"][0].tolist()
    question = "Which object moves first?\n(A) the ball\n(B) the cup"
    assert processor.decode(ids, skip_special_tokens=False) == expected_prompt(question, 12) + " Answer: ("
    assert ids[-len(processor.tokenizer.encode(" Answer: (")) :] == processor.tokenizer.encode(" Answer: (")


def test_a_frame_without_pre_fill_is_the_plain_question(processor):
    frames = random_frames(1)
    framed = processor("USER: <video>\nWhat is the person doing? ASSISTANT: ", videos=[frames])["input_ids"]
    assert torch.equal(framed, processor("What is the person doing?", videos=[frames])["input_ids"])


def test_prompt_comes_from_the_checkpoints_chat_template(checkpoint, tmp_path):
    folder = tmp_path / "processor"
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(checkpoint / name, folder / name)
    template = json.loads((checkpoint / "chat_template.json").read_text())["chat_template"]
    template = template.replace("You are a helpful assistant.", "You describe videos.")
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    ids = Tarsier2Processor.from_pretrained(folder)("Hi")["input_ids"][0].tolist()
    assert Tarsier2Processor.from_pretrained(folder).decode(ids, skip_special_tokens=False).startswith(
        "<|im_start|>system\nYou describe videos.<|im_end|>\n"
    )


def test_a_template_that_reads_only_typed_parts_renders_every_turn(checkpoint, processor):
    """The reference always passes contents as lists of typed parts, so a checkpoint's template may
    handle only that form: every turn, replies and a pre-fill included, is given to it that way."""
    strict = Tarsier2Processor.from_pretrained(checkpoint)
    strict.chat_template = processor.chat_template.replace(
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}", ""
    ).replace("{% endif %}{% endfor %}{% endif %}", "{% endif %}{% endfor %}")
    assert "is string" not in strict.chat_template
    conversation = [
        {"role": "user", "content": "<video>\nWhat happens?"},
        {"role": "assistant", "content": "A man opens a door."},
        {"role": "user", "content": "And then?"},
    ]
    frames = SampledFrames(random_frames(2), [0, 1], 2, None, "<frames>", "frames")
    assert strict.encode_conversation(conversation, frames)[0] == processor.encode_conversation(conversation, frames)[0]
    framed = "USER: <video>\nWhich?\n(A) x\n(B) y ASSISTANT: Answer: ("
    assert torch.equal(strict(framed, videos=[frames])["input_ids"], processor(framed, videos=[frames])["input_ids"])
    assert strict.render_conversation(conversation[:2], add_generation_prompt=False).endswith(
        "<|im_start|>assistant\nA man opens a door.<|im_end|>\n"
    )


def test_batch_is_left_padded_and_keeps_media_in_prompt_order(processor):
    video, image = random_frames(3, seed=1), random_frames(1, seed=2)[0]
    prompts = ["Describe the video in detail.", "Hi", "Describe the image in detail."]
    batch = processor(prompts, videos=[video, None, image])
    singles = [processor(prompts[0], videos=[video]), processor(prompts[1]), processor(prompts[2], images=image)]
    length = batch["input_ids"].shape[1]
    assert length == max(s["input_ids"].shape[1] for s in singles)
    for row, single in enumerate(singles):
        n = single["input_ids"].shape[1]
        assert batch["input_ids"][row, length - n :].tolist() == single["input_ids"][0].tolist()
        assert batch["attention_mask"][row].tolist() == [0] * (length - n) + [1] * n
        assert (batch["input_ids"][row, : length - n] == processor.tokenizer.pad_token_id).all()
    assert batch["image_grid_thw"].tolist() == [[3, 6, 8], [1, 6, 8]]
    assert torch.equal(batch["pixel_values"], torch.cat([singles[0]["pixel_values"], singles[2]["pixel_values"]]))


def test_generation_config_and_decoding(processor):
    assert processor.generation_config == {
        "bos_token_id": 151643,
        "do_sample": False,
        "eos_token_id": [151645, 151643],
        "max_new_tokens": 512,
        "pad_token_id": 151643,
    }
    ids = processor.tokenizer.encode("A ball rolls.", add_special_tokens=False)
    assert processor.decode(ids + [151645]) == "A ball rolls."
    assert processor.batch_decode([ids, [151652, *ids]]) == ["A ball rolls.", "A ball rolls."]
