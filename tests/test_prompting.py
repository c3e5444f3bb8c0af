"""The reference's prompt rules and chat templates, as exact strings."""

import pytest

from tarsier import PromptError
from tarsier.models.tarsier.prompting_tarsier import CHAT_TEMPLATES, format_prompt, template_for_eos
from tarsier.prompting import default_prompt, split_frame


def test_video_prompt_expands_to_one_image_per_frame_inside_the_user_frame():
    prompt = format_prompt("<video>\nDescribe the video in detail.", 8)
    assert prompt == "USER: " + "<image>" * 8 + "\nDescribe the video in detail. ASSISTANT: "


def test_image_default_prompt_and_single_frame():
    assert default_prompt("image") == "<image>\nDescribe the image in detail."
    assert default_prompt("video") == "<video>\nDescribe the video in detail."
    assert format_prompt(default_prompt("image"), 1) == "USER: <image>\nDescribe the image in detail. ASSISTANT: "


def test_prompt_without_placeholder_gets_the_frames_in_front():
    assert format_prompt("What happens?", 2) == "USER: <image><image>\nWhat happens? ASSISTANT: "


def test_already_framed_prompt_is_kept():
    framed = "USER: <video>\nWhat happens? ASSISTANT: It"
    assert format_prompt(framed, 3) == "USER: <image><image><image>\nWhat happens? ASSISTANT: It"


def test_placeholders_are_dropped_without_media():
    assert format_prompt("<video>\nHello", 0) == "USER: \nHello ASSISTANT: "


def test_placeholder_count_must_match_the_frames():
    with pytest.raises(PromptError, match="3 <image> placeholders but the media gave 2 frames"):
        format_prompt("<image><image><image>\nHi", 2)


def test_vicuna_multi_turn_template():
    template = CHAT_TEMPLATES["tarsier-7b"]
    messages = [
        {"role": "user", "content": "<video>\nWhat happens?"},
        {"role": "assistant", "content": "A dog runs."},
        {"role": "user", "content": "<video>What colour is it?"},
    ]
    assert template.render(messages, n_frames=2) == (
        "USER: <image><image>\nWhat happens? ASSISTANT: A dog runs.</s>USER: What colour is it? ASSISTANT: "
    )
    assert template.render(messages[:1], n_frames=1) == format_prompt("<video>\nWhat happens?", 1)


def test_yi_template_and_reply_segments():
    template = CHAT_TEMPLATES["tarsier-34b"]
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert template.segments(messages, n_frames=1) == [
        ("USER: <image>\nQ ", False),
        ("ASSISTANT: ", False),
        ("A<|endoftext|>", True),
    ]
    assert template_for_eos("<|endoftext|>") is template
    assert template_for_eos("</s>") is CHAT_TEMPLATES["tarsier-7b"]


def test_conversation_must_alternate_roles():
    with pytest.raises(PromptError, match="expected role 'assistant'"):
        CHAT_TEMPLATES["tarsier-7b"].render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], 0)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("USER: <video> Q?\n(A) a\nASSISTANT: Answer: (", ("<video> Q?\n(A) a", " Answer: (")),
        ("USER: <video>\nDescribe. ASSISTANT: ", ("<video>\nDescribe.", "")),
        ("<video>\nDescribe.", None),
    ],
)
def test_split_frame_keeps_the_pre_fill_verbatim(prompt, expected):
    assert split_frame(prompt) == expected
