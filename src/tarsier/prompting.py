"""The prompt language both families accept: ``<video>``/``<image>`` placeholders, the default
instructions, and the ``USER: ... ASSISTANT: pre-fill`` frame benchmark annotations use.

Each family's processor renders these in its own format (:mod:`tarsier.models`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

IGNORE_INDEX = -100  # a label that is not trained on
IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
DEFAULT_VIDEO_PROMPT = "<video>\nDescribe the video in detail."
DEFAULT_IMAGE_PROMPT = "<image>\nDescribe the image in detail."

FRAMED_PROMPT = re.compile(r"USER:(.*)ASSISTANT:(.*)", re.S)


def default_prompt(kind: str) -> str:
    """The reference's default instruction for a media kind ("image" describes an image)."""
    return DEFAULT_IMAGE_PROMPT if kind == "image" else DEFAULT_VIDEO_PROMPT


def counted(count: int, noun: str) -> str:
    """``1 frame``, ``8 frames``: error messages say counts in plain English."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def in_spans(text: str, start: int, end: int, spans: Sequence[tuple[int, int]]) -> bool:
    """Whether the token covering ``text[start:end]`` is a target: its first non-space character
    (or, for a token that is all spaces, its first character) lies in one of the ``spans``.

    Tokenisers fold the space before a word into the word's token (SentencePiece "▁A", byte-level
    BPE "ĠA"), so the token that starts a reply may begin on the separator's space; what it spells
    is reply text. A token the tokenizer added (BOS: no characters) is never a target.
    """
    if start >= end:
        return False
    piece = text[start:end]
    if piece.strip():
        start += len(piece) - len(piece.lstrip())
    return any(low <= start < high for low, high in spans)


def split_frame(prompt: str) -> tuple[str, str] | None:
    """``USER: question ASSISTANT: prefill`` -> ``(question, prefill)``; None for an unframed prompt.

    Benchmark annotations pre-fill the reply this way (multiple choice ends ``ASSISTANT: Answer: (``),
    so a chat-template model can render the question as the user turn and continue the reply from the
    pre-fill. The pre-fill is kept verbatim (its leading space too, as Tarsier2's own annotations
    have it); one that is only whitespace is no pre-fill.
    """
    match = FRAMED_PROMPT.search(prompt)
    if match is None:
        return None
    prefill = match.group(2)
    return match.group(1).strip(), prefill if prefill.strip() else ""


