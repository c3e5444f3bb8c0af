"""The OpenAI chat-completions request, read into what tarsier needs, with OpenAI-style errors.

Parsing is by hand rather than by a schema library so that every refusal is one line that names the
field (``messages[1].content[0].video_url.url: ...``) and carries the status a client expects:
400 for a value we cannot use, 422 for a body of the wrong shape, 404 for an unknown model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tarsier.engine.settings import GenerationSettings

MEDIA_PART_TYPES = {"video_url": "video", "image_url": "image"}
MAX_STOP_STRINGS = 4
MAX_SEED = 2**63 - 1  # what a torch generator takes
_TYPE_NAMES = {int: "an integer", str: "a string", bool: "true or false"}


class ApiError(Exception):
    """A request we refuse: HTTP status, one-line message, OpenAI error type and offending field."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())
        self.param = param
        self.code = code

    @property
    def kind(self) -> str:
        return {401: "authentication_error", 404: "not_found_error", 413: "request_too_large",
                503: "server_busy"}.get(self.status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    """A chat-completions request, checked: text turns, at most one media URL, decoding settings."""

    model: str
    messages: list[dict[str, str]]  # alternating user/assistant text, starting and ending with user
    media_url: str | None
    media_kind: str | None  # "video" or "image": which part type carried it
    settings: GenerationSettings
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    max_frames: int | None = None
    start_time: float | None = None
    end_time: float | None = None


def parse_chat_request(body: Any, *, max_tokens_cap: int, default_max_tokens: int) -> ChatRequest:
    """Read a decoded JSON body; raises :class:`ApiError` naming the first problem."""
    if not isinstance(body, dict):
        raise ApiError(422, "the request body must be a JSON object")
    model = _typed(body, "model", str, required=True)
    messages, media_url, media_kind = _messages(body.get("messages"))

    max_tokens = _typed(body, "max_completion_tokens", int)
    if max_tokens is None:
        max_tokens = _typed(body, "max_tokens", int)
    if max_tokens is None:
        max_tokens = min(default_max_tokens, max_tokens_cap)
    param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if max_tokens < 1:
        raise ApiError(400, f"{param} must be at least 1, got {max_tokens}", param)
    if max_tokens > max_tokens_cap:
        raise ApiError(400, f"{param} is {max_tokens}, over this server's limit of {max_tokens_cap}", param)
    temperature = _number(body, "temperature", 0.0)  # greedy by default, as the reference (OpenAI's is 1)
    top_p = _number(body, "top_p", 1.0)
    if not 0 <= temperature <= 2:
        raise ApiError(400, f"temperature must be between 0 and 2, got {temperature}", "temperature")
    if not 0 < top_p <= 1:
        raise ApiError(400, f"top_p must be in (0, 1], got {top_p}", "top_p")
    seed = _typed(body, "seed", int)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ApiError(400, f"seed must be between 0 and {MAX_SEED}, got {seed}", "seed")
    n = _typed(body, "n", int)
    if n not in (None, 1):
        raise ApiError(400, f"n must be 1 (one reply per request), got {n}", "n")
    for penalty in ("presence_penalty", "frequency_penalty"):
        if _number(body, penalty, 0.0) != 0:
            raise ApiError(400, f"{penalty} is not supported (leave it at 0)", penalty)
    if body.get("logprobs") or body.get("tools"):
        name = "logprobs" if body.get("logprobs") else "tools"
        raise ApiError(400, f"{name} is not supported by this server", name)

    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and all(isinstance(item, str) for item in stop)):
        raise ApiError(422, "stop must be a string or a list of strings", "stop")
    if len(stop) > MAX_STOP_STRINGS or any(not item for item in stop):
        raise ApiError(400, f"stop takes up to {MAX_STOP_STRINGS} non-empty strings", "stop")

    stream = _typed(body, "stream", bool) or False
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(422, "stream_options must be an object", "stream_options")
    include_usage = bool((options or {}).get("include_usage", False))

    max_frames = _typed(body, "max_frames", int)
    if max_frames is not None and max_frames < 1:
        raise ApiError(400, f"max_frames must be at least 1, got {max_frames}", "max_frames")
    start_time = _number(body, "start_time", None)
    end_time = _number(body, "end_time", None)
    for name, value in (("start_time", start_time), ("end_time", end_time)):
        if value is not None and value < 0:
            raise ApiError(400, f"{name} must be 0 or more seconds, got {value}", name)
    if start_time is not None and end_time is not None and 0 < end_time <= start_time:
        raise ApiError(400, f"end_time ({end_time}) must be after start_time ({start_time})", "end_time")

    top_k = _typed(body, "top_k", int)  # vLLM's extra fields; None: the checkpoint's
    if top_k is not None and top_k < 0:
        raise ApiError(400, f"top_k must be >= 0 (0 means no top-k), got {top_k}", "top_k")
    repetition_penalty = _number(body, "repetition_penalty", None)
    if repetition_penalty is not None and repetition_penalty <= 0:
        raise ApiError(400, f"repetition_penalty must be > 0 (1 means none), got {repetition_penalty}", "repetition_penalty")
    settings = GenerationSettings(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                  top_k=top_k, repetition_penalty=repetition_penalty)
    return ChatRequest(model, messages, media_url, media_kind, settings, stop, stream, include_usage,
                       max_frames, start_time, end_time)


def _messages(raw: Any) -> tuple[list[dict[str, str]], str | None, str | None]:
    """Text turns for the chat template, and the one media URL (first user turn only)."""
    if not isinstance(raw, list) or not raw:
        raise ApiError(422, "messages must be a non-empty list", "messages")
    system: list[str] = []
    turns: list[dict[str, str]] = []
    media_url = media_kind = None
    for index, message in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise ApiError(422, f"{where} must be an object", where)
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, f"{where}.role must be system, user or assistant, got {role!r}", f"{where}.role")
        text, media = _content(message.get("content"), f"{where}.content")
        if role in ("system", "developer"):
            if turns:
                raise ApiError(400, f"{where}: a system message must come before the conversation", where)
            if media:
                raise ApiError(400, f"{where}: media belongs in the first user message", where)
            system.append(text)
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise ApiError(400, f"{where}: expected a {expected} message (turns alternate user/assistant, "
                           "starting with the user)", f"{where}.role")
        if media:
            if turns:
                raise ApiError(400, f"{where}: media is only read from the first user message", where)
            if len(media) > 1:
                raise ApiError(400, f"{where}: one video or image per conversation, got {len(media)}", where)
            media_url, media_kind = media[0]
        turns.append({"role": role, "content": text})
    if not turns or turns[-1]["role"] != "user":
        raise ApiError(400, "the last message must be from the user", "messages")
    if system:  # Tarsier's template has no system turn: the instruction leads the first question
        turns[0]["content"] = "\n".join(system + [turns[0]["content"]])
    return turns, media_url, media_kind


def _content(content: Any, where: str) -> tuple[str, list[tuple[str, str]]]:
    """A message's text (parts joined by newlines) and its media ``(url, kind)`` parts."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise ApiError(422, f"{where} must be a string or a list of content parts", where)
    texts: list[str] = []
    media: list[tuple[str, str]] = []
    for index, part in enumerate(content):
        here = f"{where}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ApiError(422, f"{here}.text must be a string", f"{here}.text")
            texts.append(part["text"])
        elif kind in MEDIA_PART_TYPES:
            value = part.get(kind)
            url = value.get("url") if isinstance(value, dict) else value
            if not isinstance(url, str) or not url:
                raise ApiError(422, f"{here}.{kind}.url must be a non-empty string", f"{here}.{kind}.url")
            if "\x00" in url:
                raise ApiError(400, f"{here}.{kind}.url holds a NUL byte", f"{here}.{kind}.url")
            media.append((url, MEDIA_PART_TYPES[kind]))
        else:
            raise ApiError(400, f"{here}: unsupported content part type {kind!r}; use text, video_url or image_url",
                           f"{here}.type")
    return "\n".join(texts), media


def _typed(body: dict[str, Any], name: str, kind: type, required: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(422, f"{name} is required", name)
        return None
    # JSON true/false are not numbers here, though Python's bool is an int
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(422, f"{name} must be {_TYPE_NAMES[kind]}", name)
    return value


def _number(body: dict[str, Any], name: str, default: float | None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(422, f"{name} must be a number", name)
    if not math.isfinite(value):  # Python's json reads NaN and Infinity
        raise ApiError(400, f"{name} must be a finite number, got {value}", name)
    return float(value)
