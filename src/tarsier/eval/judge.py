"""An LLM judge behind any OpenAI-compatible chat-completions endpoint.

OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp and similar servers all speak the same protocol, so
the judge is the official ``openai`` async client pointed at a base URL. Around it: a bound on
concurrent requests, a timeout per request, retries with exponential backoff on 429/5xx/timeouts/
connection errors, tolerant parsing of JSON replies (code fences, trailing commas, Python-style
quotes), a bounded number of repair turns when a reply still does not fit, and the reply cache.

Two kinds of failure are kept apart: an endpoint that stays down (or rejects the key/model) stops
the evaluation with one clear line, since every other call would fail the same way; a reply that
never fits, or a request the server refuses for its content, fails only that item, which is then
counted and listed.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tarsier.errors import TarsierError
from tarsier.eval.judge_cache import JudgeCache, request_key

T = TypeVar("T")

# Statuses worth retrying: request timeout, conflict/lock, rate limit, and server-side errors.
RETRY_STATUSES = frozenset({408, 409, 429})
# Statuses that mean the whole configuration is wrong (key, permission, model or URL).
FATAL_STATUSES = frozenset({401, 403, 404})


class ReplyFormatError(ValueError):
    """A judge reply that is not the JSON that was asked for."""


class JudgeReplyError(Exception):
    """No usable reply for one request; fails the item that needed it."""

    def __init__(self, message: str, replies: list[str] | None = None):
        super().__init__(message)
        self.replies = replies or []


class JudgeUnavailableError(TarsierError):
    """The judge endpoint cannot be used at all (down, or rejects our key/model)."""


@dataclass
class JudgeSettings:
    """Which judge to ask and how; everything but the key is stored with every result."""

    model: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    api_version: str | None = None  # set for Azure OpenAI (then base_url is the Azure endpoint)
    temperature: float = 0.0
    max_tokens: int | None = None
    seed: int | None = None
    timeout: float = 60.0  # seconds per request
    concurrency: int = 8  # requests in flight at once
    max_retries: int = 5  # extra attempts on 429/5xx/timeouts/connection errors
    backoff_base: float = 1.0  # first wait in seconds; doubles per attempt
    backoff_max: float = 60.0
    parse_retries: int = 2  # repair turns when a reply is not the JSON asked for

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "base_url": self.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1",
            "api_version": self.api_version,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "timeout": self.timeout,
            "concurrency": self.concurrency,
            "max_retries": self.max_retries,
            "parse_retries": self.parse_retries,
        }


@dataclass
class JudgeStats:
    """What the judge did in one run, reported with the results."""

    requests: int = 0  # HTTP requests sent, retries included
    replies: int = 0  # successful HTTP replies
    cache_hits: int = 0
    retries: int = 0  # transport retries (429/5xx/timeouts)
    malformed: int = 0  # replies that did not parse or validate
    planned: int = 0  # dry run: calls a real run would make
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class JudgeAnswer(Generic[T]):
    value: T
    reply: str
    cached: bool


_FENCE = re.compile(r"```[A-Za-z]*\s*(.*?)```", re.S)
_STRING_OR_LITERAL = re.compile(r"""("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')|\b(true|false|null)\b""")
_STRING_OR_TRAILING_COMMA = re.compile(r"""("(?:\\.|[^"\\])*")|,\s*(?=[}\]])""")
_PY_LITERALS = {"true": "True", "false": "False", "null": "None"}


def parse_json_object(text: str) -> dict[str, Any]:
    """The JSON object in a judge reply, forgiving fences, prose around it, trailing commas and
    Python-style quoting; anything else is a :class:`ReplyFormatError`."""
    body = text.strip()
    fenced = _FENCE.search(body)
    if fenced:
        body = fenced.group(1).strip()
    elif body.startswith("```"):  # an opening fence with no closing one (a cut-off reply)
        body = body.lstrip("`").split("\n", 1)[-1]
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        raise ReplyFormatError("no JSON object in the reply")
    body = body[start : end + 1]
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        without_commas = _STRING_OR_TRAILING_COMMA.sub(lambda m: m.group(1) or "", body)
        try:
            value = json.loads(without_commas)
        except json.JSONDecodeError:
            pythonic = _STRING_OR_LITERAL.sub(lambda m: m.group(1) or _PY_LITERALS[m.group(2)], body)
            try:
                value = ast.literal_eval(pythonic)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise ReplyFormatError("the reply is not valid JSON") from None
    if not isinstance(value, dict):
        raise ReplyFormatError("the reply is not a JSON object")
    return value


def make_client(settings: JudgeSettings) -> Any:
    """The async ``openai`` client for these settings; its own retries are off (ours are used)."""
    import openai

    if settings.api_version:
        if not settings.base_url:
            raise TarsierError("Azure OpenAI needs --judge-base-url https://RESOURCE.openai.azure.com")
        return openai.AsyncAzureOpenAI(
            azure_endpoint=settings.base_url,
            api_version=settings.api_version,
            api_key=settings.api_key,
            timeout=settings.timeout,
            max_retries=0,
        )
    api_key = settings.api_key
    if api_key is None:
        if settings.base_url is None:
            raise TarsierError(
                "no API key for the judge: set TARSIER_JUDGE_API_KEY or OPENAI_API_KEY, "
                "or point --judge-base-url at a local OpenAI-compatible server"
            )
        api_key = "none"  # local servers (vLLM, Ollama, llama.cpp) accept any key
    return openai.AsyncOpenAI(base_url=settings.base_url, api_key=api_key, timeout=settings.timeout, max_retries=0)


class Judge:
    """Asks the judge, through the cache; create and use inside one running event loop.

    With ``dry_run`` nothing is sent: cached replies are used as usual, and every other call is
    counted in ``stats.planned`` and answered with a placeholder so the evaluation can go on
    planning the calls that would follow.
    """

    def __init__(
        self,
        settings: JudgeSettings,
        *,
        cache: JudgeCache | None = None,
        dry_run: bool = False,
        client: Any = None,
    ):
        self.settings = settings
        self.cache = cache
        self.dry_run = dry_run
        self.stats = JudgeStats()
        self._client = client if client is not None or dry_run else make_client(settings)
        self._slots = asyncio.Semaphore(max(1, settings.concurrency))

    def request(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """The part of a chat request that decides the reply (the cache key)."""
        request: dict[str, Any] = {"model": self.settings.model, "messages": messages}
        request["temperature"] = self.settings.temperature
        if self.settings.max_tokens is not None:
            request["max_tokens"] = self.settings.max_tokens
        if self.settings.seed is not None:
            request["seed"] = self.settings.seed
        return request

    async def ask(self, messages: list[dict[str, str]], parse: Callable[[str], T], placeholder: T) -> JudgeAnswer[T]:
        """A parsed, validated reply: from the cache, or from the judge with repair turns."""
        request = self.request(messages)
        key = request_key(request)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                try:
                    value = parse(cached)
                except ReplyFormatError:
                    pass  # stored by an older, laxer parser: ask again
                else:
                    self.stats.cache_hits += 1
                    return JudgeAnswer(value, cached, True)
        if self.dry_run:
            self.stats.planned += 1
            return JudgeAnswer(placeholder, "", False)
        replies: list[str] = []
        conversation = list(messages)
        for _ in range(self.settings.parse_retries + 1):
            reply = await self._complete({**request, "messages": conversation})
            replies.append(reply)
            try:
                value = parse(reply)
            except ReplyFormatError as exc:
                self.stats.malformed += 1
                problem = str(exc)
                conversation = [
                    *messages,
                    {"role": "assistant", "content": reply},
                    {
                        "role": "user",
                        "content": f"That answer could not be used ({problem}). "
                        "Answer again with only the JSON object, in the format asked for.",
                    },
                ]
                continue
            if self.cache is not None:
                self.cache.put(key, request, reply)
            return JudgeAnswer(value, reply, False)
        raise JudgeReplyError(f"no usable judge reply after {len(replies)} attempts ({problem})", replies)

    def _where(self) -> str:
        return f"judge {self.settings.model!r} at {self.settings.base_url or 'the OpenAI API'}"

    async def _complete(self, request: dict[str, Any]) -> str:
        import openai

        attempts = self.settings.max_retries + 1
        for attempt in range(attempts):
            retry_after: float | None = None
            try:
                self.stats.requests += 1
                async with self._slots:
                    response = await self._client.chat.completions.create(**request)
            except openai.APIConnectionError as exc:  # includes APITimeoutError
                cause = exc.__cause__ or exc
                reason = (
                    "timed out"
                    if isinstance(exc, openai.APITimeoutError)
                    else f"connection failed ({_short(str(cause))})"
                )
            except openai.APIStatusError as exc:
                status = exc.status_code
                detail = _short(exc.message)
                if status in FATAL_STATUSES:
                    raise JudgeUnavailableError(
                        f"{self._where()} refused the request: HTTP {status} {detail}"
                    ) from None
                if status not in RETRY_STATUSES and status < 500:
                    raise JudgeReplyError(f"the judge rejected this request: HTTP {status} {detail}") from None
                reason = f"HTTP {status} {detail}"
                retry_after = _retry_after(exc)
            else:
                self.stats.replies += 1
                usage = getattr(response, "usage", None)
                if usage is not None:
                    self.stats.prompt_tokens += getattr(usage, "prompt_tokens", 0) or 0
                    self.stats.completion_tokens += getattr(usage, "completion_tokens", 0) or 0
                choices = getattr(response, "choices", None) or []
                content = choices[0].message.content if choices else None
                return content or ""
            if attempt + 1 == attempts:
                break
            self.stats.retries += 1
            delay = min(self.settings.backoff_max, self.settings.backoff_base * 2**attempt)
            delay = delay * (0.5 + random.random() / 2)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.settings.backoff_max))
            await asyncio.sleep(delay)
        raise JudgeUnavailableError(f"{self._where()} unavailable after {attempts} attempts: last error: {reason}")

    async def aclose(self) -> None:
        if self._client is not None and hasattr(self._client, "close"):
            await self._client.close()


def _short(message: str, limit: int = 200) -> str:
    message = " ".join(str(message).split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _retry_after(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
