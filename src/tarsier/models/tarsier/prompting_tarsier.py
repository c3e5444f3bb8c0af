"""The first generation's prompt rules: ``<video>`` expansion, the ``USER: ... ASSISTANT:`` frame
and the reference's conversation templates.

Everything here works on strings; tokenisation and placeholder expansion happen in the processor.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tarsier.errors import PromptError
from tarsier.prompting import FRAMED_PROMPT, IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, counted

_PLACEHOLDERS = re.compile(f"({IMAGE_PLACEHOLDER}|{VIDEO_PLACEHOLDER})\n*")


def format_prompt(prompt: str, n_frames: int, source: str | None = None) -> str:
    """Apply the reference's single-turn rules for a prompt paired with ``n_frames`` frames.

    ``<video>`` becomes one ``<image>`` per frame; a prompt without placeholders gets them in
    front (as the reference CLI does with ``<video>\\n``); a prompt without the
    ``USER: ... ASSISTANT:`` frame becomes ``USER: {prompt} ASSISTANT: `` (trailing space kept).
    A placeholder count that fits no frame count is a PromptError naming ``source`` (the media).
    """
    if n_frames == 0:
        prompt = prompt.replace(IMAGE_PLACEHOLDER, "").replace(VIDEO_PLACEHOLDER, "")
    else:
        prompt = prompt.replace(VIDEO_PLACEHOLDER, IMAGE_PLACEHOLDER * n_frames)
        found = prompt.count(IMAGE_PLACEHOLDER)
        if found == 0:
            prompt = IMAGE_PLACEHOLDER * n_frames + "\n" + prompt
        elif found != n_frames:
            where = f"{source}: " if source else ""
            raise PromptError(
                f"{where}the prompt has {counted(found, IMAGE_PLACEHOLDER + ' placeholder')} but the media gave "
                f"{counted(n_frames, 'frame')}; use {VIDEO_PLACEHOLDER} to stand for all frames"
            )
    if not FRAMED_PROMPT.search(prompt):
        prompt = f"USER: {prompt} ASSISTANT: "
    return prompt


@dataclass(frozen=True)
class ChatTemplate:
    """A USER/ASSISTANT conversation format (the reference's ``conv_templates``).

    A user turn is ``"USER: {text}" + user_sep``; an assistant turn is ``"ASSISTANT: {text}" +
    assistant_sep``; a pending assistant turn is ``"ASSISTANT: "``. Media placeholders live only in
    the first user turn, where one ``<image>`` per frame leads the text.
    """

    name: str
    assistant_sep: str
    user_sep: str = " "
    user_role: str = "USER"
    assistant_role: str = "ASSISTANT"

    def render(self, messages: Sequence[dict[str, str]], n_frames: int, add_generation_prompt: bool = True) -> str:
        """The prompt string for ``messages`` (dicts with ``role`` "user"/"assistant" and ``content``)."""
        return "".join(text for text, _ in self.segments(messages, n_frames, add_generation_prompt))

    def segments(
        self, messages: Sequence[dict[str, str]], n_frames: int, add_generation_prompt: bool = False
    ) -> list[tuple[str, bool]]:
        """The prompt as ``(text, is_assistant_reply)`` pieces, in order.

        Training masks labels with this: only reply text and the separator that ends it are
        targets, so the model learns to answer and to stop.
        """
        pieces: list[tuple[str, bool]] = []
        for turn, message in enumerate(messages):
            role, content = message.get("role"), message.get("content")
            expected = "user" if turn % 2 == 0 else "assistant"
            if role != expected or not isinstance(content, str):
                raise PromptError(
                    f"message {turn + 1}: expected role '{expected}' with text content, got role {role!r}; "
                    "conversations alternate user/assistant and start with the user"
                )
            content = _PLACEHOLDERS.sub("", content)
            if role == "user":
                if turn == 0 and n_frames:
                    content = IMAGE_PLACEHOLDER * n_frames + "\n" + content
                pieces.append((f"{self.user_role}: {content}{self.user_sep}", False))
            else:
                pieces.append((f"{self.assistant_role}: ", False))
                pieces.append((content + self.assistant_sep, True))
        if add_generation_prompt:
            if not messages or messages[-1].get("role") != "user":
                raise PromptError("a generation prompt needs the conversation to end with a user message")
            pieces.append((f"{self.assistant_role}: ", False))
        return pieces

    def user_turn(self, text: str) -> str:
        """A follow-up user turn plus the pending assistant turn (placeholders removed)."""
        return f"{self.user_role}: {_PLACEHOLDERS.sub('', text)}{self.user_sep}{self.assistant_role}: "


CHAT_TEMPLATES = {
    "tarsier-7b": ChatTemplate(name="tarsier-7b", assistant_sep="</s>"),
    "tarsier-34b": ChatTemplate(name="tarsier-34b", assistant_sep="<|endoftext|>"),
}


def template_for_eos(eos_token: str | None) -> ChatTemplate:
    """Pick the template whose assistant separator is the tokenizer's end-of-sequence token."""
    for template in CHAT_TEMPLATES.values():
        if template.assistant_sep == eos_token:
            return template
    return CHAT_TEMPLATES["tarsier-7b"]

