"""Multi-turn chat about one video that keeps its KV between turns: on an engine of its own
(:class:`ChatSession`, the CLI and the Python API) or on a shared scheduler (:class:`ScheduledChat`,
the web demo). Either way a turn is a :class:`~tarsier.engine.continuous_batch.Job` whose
conversation's KV is kept in a prefix cache after its reply, so the next turn prefills only its own
tokens."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tarsier.engine.continuous_batch import ContinuousBatch, Job
from tarsier.engine.generation import TextPieces
from tarsier.engine.prefix_cache import PrefixCache, default_budget
from tarsier.engine.settings import GenerationSettings
from tarsier.errors import TarsierError

if TYPE_CHECKING:
    from tarsier.engine.scheduler import Scheduler
    from tarsier.media import SampledFrames
    from tarsier.models.interface import FamilyModel, FamilyProcessor


class _Turns:
    """What both kinds of chat share: the next prompt's ids (the frames' inputs made on the first
    turn), a turn's tokens streamed as text, and the turn written down once its reply is complete."""

    processor: FamilyProcessor
    frames: SampledFrames
    settings: GenerationSettings
    history: list[dict[str, str]]
    _ids: list[int]
    _media: dict[str, Any]

    def _prompt_ids(self, question: str) -> list[int]:
        if not self._ids:
            ids, self._media = self.processor.encode_conversation([{"role": "user", "content": question}], self.frames)
            return ids
        return self._ids + self.processor.follow_up_ids(question)

    def _turn(self, question: str, run: Callable[[Job], Iterator[int | None]], on_cut: Callable[[Job], None]) -> Iterator[str]:
        """Stream the reply to ``question``: ``run`` starts the turn's job and yields its tokens (None
        when there is none yet); the turn is recorded once the reply is complete. A reply cut short
        (an error, Ctrl-C, the iterator closed) leaves the conversation as it was and calls ``on_cut``."""
        ids = self._prompt_ids(question)
        ends: list[str | None] = []
        job = Job(ids, self._media or None, self.settings, lambda token: None, ends.append, remember_reply=True)
        pieces, reply_ids, text = TextPieces(self.processor.tokenizer), [], []
        finished = False
        try:
            for token in run(job):
                if token is not None:
                    reply_ids.append(token)
                    pieces.add(token)
                for piece in pieces.take():
                    text.append(piece)
                    yield piece
            if not ends or ends[0] is not None:
                raise TarsierError(ends[0] if ends else "the turn ended without a reply")
            pieces.end()
            for piece in pieces.take():
                text.append(piece)
                yield piece
            finished = True
        finally:
            if not finished:
                on_cut(job)
        self._ids = ids + self.processor.close_reply(reply_ids)  # a reply cut by max_new_tokens still closes its turn
        self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": "".join(text)}]


@dataclass
class ChatSession(_Turns):
    """A multi-turn conversation about one video that keeps its KV between turns.

    The first turn encodes the frames once; later turns append only their own tokens (what the
    processor's chat template adds for a new question) after the previous reply and its end of
    turn, so neither the video nor the history is recomputed. Unlike the reference, which
    re-tokenises the whole conversation as text every turn, the model sees exactly the tokens it
    generated. Either family: the processor says how turns are written, the engine continues the
    conversation's positions (Tarsier2's M-RoPE delta included). Each turn runs on the engine every
    application runs (:class:`~tarsier.engine.continuous_batch.ContinuousBatch`), stepped here; the
    session's own prefix cache holds its latest conversation between turns.
    """

    model: FamilyModel
    processor: FamilyProcessor
    frames: SampledFrames
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    history: list[dict[str, str]] = field(default_factory=list)
    _ids: list[int] = field(default_factory=list, repr=False)
    _media: dict[str, Any] = field(default_factory=dict, repr=False)  # the frames' inputs
    _conversation: PrefixCache | None = field(default=None, repr=False)

    def ask(self, question: str) -> Iterator[str]:
        """Stream the reply to ``question``; the turn is recorded once the reply is complete.

        A reply cut short (Ctrl-C, the iterator closed) leaves the session as it was before the
        question; the next turn prefills the conversation again.
        """
        if self._conversation is None:
            self._conversation = PrefixCache(default_budget(self.model.device))
        batch = ContinuousBatch(self.model, self.processor, max_batch_size=1, prefix_cache=self._conversation)

        def run(job: Job) -> Iterator[int | None]:
            tokens: list[int] = []
            job.on_token = tokens.append
            batch.add(job)
            while batch.busy():
                batch.step()
                yield from tokens or [None]
                tokens.clear()

        def cut(job: Job) -> None:
            self._conversation = None  # an interrupted step may have left it half written

        yield from self._turn(question, run, cut)
        self._conversation.trim(1)  # the conversation so far; earlier turns' entries are prefixes of it


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

        def run(job: Job) -> Iterator[int]:
            events: queue.Queue[tuple[str, Any]] = queue.Queue()
            on_end = job.on_end
            job.on_token = lambda token: events.put(("token", token))
            job.on_end = lambda error: (on_end(error), events.put(("end", error)))
            self.scheduler.submit(job)
            while True:
                kind, value = events.get()
                if kind == "end":
                    return
                yield value

        def cut(job: Job) -> None:
            job.cancelled = True

        yield from self._turn(question, run, cut)
