"""Multi-turn chat about one video that keeps its KV between turns: on its own (:class:`ChatSession`,
the CLI and the Python API) or on a shared scheduler (:class:`ScheduledChat`, the web demo)."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tarsier.engine.continuous_batch import Job
from tarsier.engine.generation import GenerationSettings, TextPieces, stream_text
from tarsier.engine.kv_cache import KVCache
from tarsier.errors import TarsierError

if TYPE_CHECKING:
    from tarsier.engine.scheduler import Scheduler
    from tarsier.media import SampledFrames
    from tarsier.models.interface import FamilyModel, FamilyProcessor

class _Turns:
    """How both kinds of chat write their conversation down: the next prompt's ids (the frames'
    inputs made on the first turn) and, once a reply is complete, the turn itself."""

    processor: FamilyProcessor
    frames: SampledFrames
    history: list[dict[str, str]]
    _ids: list[int]
    _media: dict[str, Any]

    def _prompt_ids(self, question: str) -> list[int]:
        if not self._ids:
            ids, self._media = self.processor.encode_conversation([{"role": "user", "content": question}], self.frames)
            return ids
        return self._ids + self.processor.follow_up_ids(question)

    def _record(self, question: str, ids: list[int], reply_ids: list[int], reply: str) -> None:
        self._ids = ids + self.processor.close_reply(reply_ids)  # a reply cut by max_new_tokens still closes its turn
        self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]


@dataclass
class ChatSession(_Turns):
    """A multi-turn conversation about one video that keeps its KV cache between turns.

    The first turn encodes the frames once; later turns append only their own tokens (what the
    processor's chat template adds for a new question) after the previous reply and its end of
    turn, so neither the video nor the history is recomputed. Unlike the reference, which
    re-tokenises the whole conversation as text every turn, the model sees exactly the tokens it
    generated. Either family: the processor says how turns are written, the engine continues the
    cache's positions (Tarsier2's M-RoPE delta included).
    """

    model: FamilyModel
    processor: FamilyProcessor
    frames: SampledFrames
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    history: list[dict[str, str]] = field(default_factory=list)
    _ids: list[int] = field(default_factory=list, repr=False)
    _cache: Any = field(default=None, repr=False)
    _media: dict[str, Any] = field(default_factory=dict, repr=False)  # the frames' inputs, kept for a rebuilt cache

    def ask(self, question: str) -> Iterator[str]:
        """Stream the reply to ``question``; the turn is recorded once the reply is complete.

        A reply cut short (Ctrl-C, the iterator closed) leaves the session as it was before the
        question: the partly filled cache is dropped and rebuilt on the next turn.
        """
        import torch

        before = self._ids
        ids = self._prompt_ids(question)
        # First turn, or after an interrupted one: the frames go in (again) with the whole prompt.
        extra = self._media if self._cache is None else {}
        cached = self._cache.length if self._cache is not None else 0
        needed = len(ids) + self.settings.max_new_tokens
        if self._cache is None or self._cache.capacity < needed:
            room = needed + 2 * self.settings.max_new_tokens  # a few more turns without growing
            self._cache = KVCache(self.model, 1, room) if self._cache is None else self._cache.with_capacity(self.model, room)
        new_ids = torch.tensor([ids[cached:]])
        inputs = {"input_ids": new_ids, "attention_mask": torch.ones_like(new_ids), **extra}
        reply_ids: list[int] = []
        pieces = []
        finished = False
        try:
            for piece in stream_text(self.model, self.processor, inputs, self.settings, reply_ids, self._cache):
                pieces.append(piece)
                yield piece
            finished = True
        finally:
            if not finished:
                self._ids, self._cache = before, None
        self._record(question, ids, reply_ids, "".join(pieces))


@dataclass
class ScheduledChat(_Turns):
    """A multi-turn conversation whose turns are jobs on a shared :class:`~tarsier.engine.scheduler.Scheduler`.

    Each turn joins whatever batch is running (other conversations, API requests), and its
    conversation's KV stays in the scheduler's prefix cache between turns, so a follow-up prefills
    only its own tokens while the entry lasts (and the whole conversation, media included, when it
    was evicted). Turns are recorded as :class:`ChatSession` records them: a reply cut short leaves
    the conversation as it was.
    """

    scheduler: Scheduler
    processor: FamilyProcessor
    frames: SampledFrames
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    history: list[dict[str, str]] = field(default_factory=list)
    _ids: list[int] = field(default_factory=list, repr=False)
    _media: dict[str, Any] = field(default_factory=dict, repr=False)

    def ask(self, question: str) -> Iterator[str]:
        """Stream the reply to ``question`` from the model thread; closing the iterator cancels the turn."""
        ids = self._prompt_ids(question)
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        job = Job(ids, self._media or None, self.settings, lambda token: events.put(("token", token)),
                  lambda error: events.put(("end", error)), remember_reply=True)
        self.scheduler.submit(job)
        pieces, reply_ids, text = TextPieces(self.processor.tokenizer), [], []
        finished = False
        try:
            while True:
                kind, value = events.get()
                if kind == "end":
                    if value is not None:
                        raise TarsierError(value)
                    break
                reply_ids.append(value)
                pieces.add(value)
                for piece in pieces.take():
                    text.append(piece)
                    yield piece
            pieces.end()
            for piece in pieces.take():
                text.append(piece)
                yield piece
            finished = True
        finally:
            if not finished:
                job.cancelled = True
        self._record(question, ids, reply_ids, "".join(text))
