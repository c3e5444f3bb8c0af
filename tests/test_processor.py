"""Pixels and token ids exactly as the reference builds them."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from tarsier import CheckpointError, PromptError
from tarsier.processor import TarsierProcessor

FRAME = ([32000] * 24 + [32002]) * 24 + [32003]
# "USER: " with BOS, then the frames, then "\nDescribe the video in detail. ASSISTANT: " in the
# legacy Llama tokenizer (a "▁" piece after every special token, as Vicuna checkpoints do).
HEAD = [1, 2223, 725, 28747, 28705]
TAIL = [28705, 13, 22836, 272, 3798, 297, 8291, 28723, 8602, 8048, 12738, 28747, 28705]


def gradient_image(width, height, seed=0):
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(height, width, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    return TarsierProcessor.from_pretrained(tiny_checkpoint)


def test_frame_layout_is_601_ids_with_row_and_frame_separators(processor):
    assert processor.layout.frame_token_ids == FRAME
    assert len(FRAME) == 601


def test_video_prompt_ids_are_exact(processor):
    frames = [gradient_image(64, 48, seed) for seed in range(2)]
    inputs = processor(text="<video>\nDescribe the video in detail.", videos=[frames])
    assert inputs["input_ids"][0].tolist() == HEAD + FRAME * 2 + TAIL
    assert inputs["attention_mask"].sum().item() == len(HEAD) + 2 * 601 + len(TAIL)
    assert inputs["pixel_values"].shape == (2, 3, 336, 336)
    assert inputs["pixel_values"].dtype == torch.float32


def test_pixels_match_clip_preprocessing_of_the_stretched_square(processor):
    image = gradient_image(64, 48)
    ours = processor.pixel_values([image])[0]
    clip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    expected = clip(images=[image.resize((64, 64))], return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_pad_mode_fills_with_the_mean_colour(tiny_checkpoint):
    padded = TarsierProcessor.from_pretrained(tiny_checkpoint, do_image_padding=True)
    image = gradient_image(64, 32)
    pixels = padded.pixel_values([image])[0]
    mean = np.array(padded.image_settings.mean)
    std = np.array(padded.image_settings.std)
    background = (np.floor(mean * 255) / 255 - mean) / std
    torch.testing.assert_close(pixels[:, 0, 0], torch.tensor(background, dtype=torch.float32), atol=1e-5, rtol=0)
    clip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    square = Image.new("RGB", (64, 64), tuple(int(x * 255) for x in mean))
    square.paste(image, (0, 16))
    torch.testing.assert_close(pixels, clip(images=[square], return_tensors="pt")["pixel_values"][0], atol=1e-5, rtol=0)


def test_batches_are_left_padded_and_rows_match_single_encodings(processor):
    videos = [[gradient_image(40, 40, 1)], [gradient_image(40, 40, 2), gradient_image(40, 40, 3)]]
    prompts = ["<video>\nDescribe the video in detail.", "<video>\nWhat moves?"]
    batch = processor(text=prompts, videos=videos)
    assert batch["pixel_values"].shape[0] == 3
    for row, (prompt, frames) in enumerate(zip(prompts, videos)):
        single = processor(text=prompt, videos=[frames])["input_ids"][0]
        mask = batch["attention_mask"][row].bool()
        assert batch["input_ids"][row][mask].tolist() == single.tolist()
        padding = (~mask).sum().item()
        assert mask[padding:].all() and not mask[:padding].any()
        assert (batch["input_ids"][row][:padding] == processor.tokenizer.pad_token_id).all()


def test_too_many_image_placeholders_is_a_prompt_error(processor):
    with pytest.raises(PromptError, match="3 <image> placeholders but the media gave 1 frames"):
        processor(text="<image><image><image>\nHi", videos=[[gradient_image(32, 32)]])


def test_prompt_without_media_has_no_image_tokens(processor):
    inputs = processor(text="Hello <video> there")
    assert 32000 not in inputs["input_ids"][0].tolist()
    assert "pixel_values" not in inputs


def test_decode_skips_layout_ids(processor):
    ids = processor(text="<video>\nhi", videos=[[gradient_image(32, 32)]])["input_ids"][0]
    # the "▁" pieces after "USER:" and after the image decode as spaces, as in the reference
    assert processor.decode(ids) == "USER:  \nhi ASSISTANT: "


@pytest.mark.parametrize("missing", ["config.json", "tokenizer"])
def test_incomplete_checkpoint_folders_are_clear_errors(tiny_checkpoint, tmp_path, missing):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    if missing == "tokenizer":
        (broken / "tokenizer.json").unlink()
        (broken / "tokenizer.model").unlink()
        message = "no tokenizer.json or tokenizer.model"
    else:
        (broken / missing).unlink()
        message = "missing config.json"
    with pytest.raises(CheckpointError, match=message):
        TarsierProcessor.from_pretrained(broken)


def test_unknown_path_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint folder or a hub model id"):
        TarsierProcessor.from_pretrained(str(tmp_path / "nope"))
