"""Pixels and token ids exactly as the reference builds them."""

import shutil

import numpy as np
import pytest
import torch
from media_factory import make_frame_folder, make_gif, make_image, make_video
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from tarsier import CheckpointError, PromptError
from tarsier.errors import MediaError
from tarsier.media import SampledFrames
from tarsier.models.tarsier.processing_tarsier import TarsierProcessor

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
    with pytest.raises(PromptError, match="3 <image> placeholders but the media gave 1 frame;"):
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


# --- media items: a list passed to videos=/images= holds one item per prompt -----------------------

VIDEO_PROMPT = "<video>\nDescribe the video."
IMAGE_PROMPT = "<image>\nDescribe the image."


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """One of each media kind, every frame showing its index (64x48)."""
    root = tmp_path_factory.mktemp("processor-media")
    frames = make_frame_folder(root / "frames", 12)
    return {
        "video": str(make_video(root / "clip.mp4", 20, fps=10)),
        "gif": str(make_gif(root / "anim.gif", 5)),
        "image": str(make_image(root / "photo.png", 7)),
        "folder": str(root / "frames"),
        "frame_files": [str(path) for path in frames[:3]],
    }


def media_item(kind, media):
    """(prompt, item, frames the item gives with max_n_frames=8) for each kind of media item."""
    if kind == "video":
        return VIDEO_PROMPT, media["video"], 8
    if kind == "gif":
        return VIDEO_PROMPT, media["gif"], 5
    if kind == "image-for-image-prompt":
        return IMAGE_PROMPT, media["image"], 1
    if kind == "image-for-video-prompt":
        return VIDEO_PROMPT, media["image"], 1
    if kind == "frame-folder":
        return VIDEO_PROMPT, media["folder"], 8
    if kind == "frame-files":
        return VIDEO_PROMPT, media["frame_files"], 8  # sampled like a video: 3 files, frames repeat
    if kind == "pil-image":
        return IMAGE_PROMPT, gradient_image(40, 30, 4), 1
    if kind == "pil-frames":
        return VIDEO_PROMPT, [gradient_image(40, 30, 5), gradient_image(40, 30, 6)], 2
    if kind == "sampled-frames":
        images = [gradient_image(40, 30, 7), gradient_image(40, 30, 8)]
        return VIDEO_PROMPT, SampledFrames(images, [0, 1], 2, None, "given.mp4", "video"), 2
    raise AssertionError(kind)


MEDIA_KINDS = [
    "video", "gif", "image-for-image-prompt", "image-for-video-prompt", "frame-folder", "frame-files",
    "pil-image", "pil-frames", "sampled-frames",
]


@pytest.mark.parametrize("keyword", ["videos", "images"])
@pytest.mark.parametrize("kind", MEDIA_KINDS)
def test_a_one_item_list_for_one_prompt_is_that_item(processor, media, kind, keyword):
    prompt, item, n_frames = media_item(kind, media)
    sampled = processor.load_media(item)  # the item on its own: a list here is one video's frames
    assert len(sampled.images) == n_frames
    expected_ids = processor.encode_prompt(processor.format_prompt(prompt, n_frames), n_frames)

    wrapped = processor(text=prompt, **{keyword: [item]})
    assert wrapped["input_ids"][0].tolist() == expected_ids
    assert wrapped["pixel_values"].shape[0] == n_frames
    torch.testing.assert_close(wrapped["pixel_values"], processor.pixel_values(sampled.images), atol=0, rtol=0)
    if not isinstance(item, list):  # a single item may also be passed unwrapped
        alone = processor(text=[prompt], **{keyword: item})
        assert alone["input_ids"].tolist() == wrapped["input_ids"].tolist()
        torch.testing.assert_close(alone["pixel_values"], wrapped["pixel_values"], atol=0, rtol=0)


@pytest.mark.parametrize("prompt", [IMAGE_PROMPT, VIDEO_PROMPT])
def test_an_image_alone_and_in_a_batch_gives_the_same_single_frame(processor, media, prompt):
    alone = processor(text=prompt, images=[media["image"]])
    batch = processor(text=[prompt, VIDEO_PROMPT, prompt], videos=[media["image"], media["video"], media["image"]])
    assert alone["pixel_values"].shape[0] == 1
    assert batch["pixel_values"].shape[0] == 1 + 8 + 1
    torch.testing.assert_close(batch["pixel_values"][:1], alone["pixel_values"], atol=0, rtol=0)
    mask = batch["attention_mask"][0].bool()
    assert batch["input_ids"][0][mask].tolist() == alone["input_ids"][0].tolist()


@pytest.mark.parametrize("flat", ["frame-files", "pil-frames"])
def test_a_flat_list_of_frames_for_one_prompt_must_be_nested(processor, media, flat):
    frames = media["frame_files"] if flat == "frame-files" else [gradient_image(40, 30, 1), gradient_image(40, 30, 2)]
    with pytest.raises(PromptError, match=rf"1 prompt but {len(frames)} media items") as error:
        processor(text=VIDEO_PROMPT, videos=frames)
    message = str(error.value)
    assert "videos=[[frame1, frame2, ...]]" in message and "\n" not in message
    nested = processor(text=VIDEO_PROMPT, videos=[frames], n_frames=len(frames))
    assert nested["pixel_values"].shape[0] == len(frames)


def test_media_count_must_equal_prompt_count(processor, media):
    with pytest.raises(PromptError, match="got 2 prompts but 3 media items") as error:
        processor(text=[VIDEO_PROMPT] * 2, videos=[media["video"]] * 3)
    assert "\n" not in str(error.value)
    with pytest.raises(PromptError, match="got 2 prompts but 1 media item:"):
        processor(text=[VIDEO_PROMPT] * 2, videos=media["video"])
    with pytest.raises(PromptError, match="got 1 prompt but 0 media items"):
        processor(text=VIDEO_PROMPT, videos=[])


def test_placeholder_count_error_names_the_file(processor, media):
    with pytest.raises(PromptError) as error:
        processor(text=IMAGE_PROMPT, videos=[media["video"]])
    message = str(error.value)
    assert message.startswith(f"{media['video']}: the prompt has 1 <image> placeholder but the media gave 8 frames;")
    assert "\n" not in message
    with pytest.raises(PromptError, match=r"^media item 2 of 2: the prompt has 2 <image> placeholders but the media gave 1 frame;"):
        processor(text=[VIDEO_PROMPT, "<image><image>\nHi"], videos=[media["video"], [gradient_image(32, 32)]])


def test_placeholder_token_count_error_names_the_file(processor):
    ids = processor.tokenizer.encode("USER: <image>\nHi ASSISTANT: ")
    with pytest.raises(PromptError, match=r"^clip\.mp4: the prompt has 1 <image> token but the media gave 8 frames$"):
        processor.expand_image_tokens(ids, 8, source="clip.mp4")
    with pytest.raises(PromptError, match=r"^the prompt has 0 <image> tokens but the media gave 1 frame$"):
        processor.encode_prompt("USER: Hi ASSISTANT: ", 1)


def test_unsupported_media_items_are_media_errors(processor):
    with pytest.raises(MediaError, match="unsupported media item of type ndarray"):
        processor(text=VIDEO_PROMPT, videos=[np.zeros((2, 32, 32, 3), dtype=np.uint8)])
    with pytest.raises(MediaError, match="frame file paths or PIL images, not int"):
        processor(text=VIDEO_PROMPT, videos=[["a.png", 3]])


@pytest.mark.parametrize("family", ["tiny_checkpoint", "tarsier2_checkpoint"])
def test_hugging_face_padding_options_are_taken_and_others_refused(family, request):
    """HF examples call processor(text=[...], videos=[...], padding=True, return_tensors="pt")."""
    processor = TarsierProcessor.from_pretrained(request.getfixturevalue(family), max_n_frames=2)
    prompts = ["<video>\nDescribe the video in detail.", "<video>\nHi"]
    videos = [[gradient_image(64, 48, 1)] * 2, [gradient_image(64, 48, 2)] * 2]
    plain = processor(text=prompts, videos=videos)
    for padding in (True, "longest"):
        padded = processor(text=prompts, videos=videos, padding=padding, return_tensors="pt")
        assert padded.keys() == plain.keys() and all(torch.equal(padded[k], plain[k]) for k in plain)
    assert plain["attention_mask"][1, 0] == 0  # the shorter prompt is padded on the left
    for padding in (False, "max_length", "do_not_pad"):
        with pytest.raises(ValueError, match="padding=True or 'longest'"):
            processor(text=prompts, videos=videos, padding=padding)


@pytest.mark.parametrize("family", ["tiny_checkpoint", "tarsier2_checkpoint"])
def test_the_model_view_is_what_the_pixel_values_hold(family, request, tmp_path):
    """The demo shows processor.model_view: the frames' pixels before normalisation, so the
    normalised view must be the model's pixel values (a 64x48 image: stretched and cropped to
    336 x 336 for Tarsier; resized to multiples of 28 for Tarsier2)."""
    processor = TarsierProcessor.from_pretrained(request.getfixturevalue(family))
    frames = processor.load_media(make_image(tmp_path / "small.png", 5, size=(64, 48)))
    [view] = processor.model_view(frames)
    inputs = processor(text="<image>\nDescribe.", images=[frames])
    if family == "tiny_checkpoint":
        assert view.size == (336, 336)
        settings = processor.image_settings
        expected = (np.asarray(view, dtype=np.float64) / 255 - np.asarray(settings.mean)) / np.asarray(settings.std)
        torch.testing.assert_close(inputs["pixel_values"][0], torch.from_numpy(expected.astype(np.float32).transpose(2, 0, 1)))
    else:
        t, h, w = inputs["image_grid_thw"][0].tolist()
        assert view.size == (w * 14, h * 14) and t == 1
        assert view.size[0] % 28 == 0 and view.size[1] % 28 == 0
