"""Generation: reference defaults, streaming, and multi-turn chat that reuses the KV cache.

Decoding itself is transformers' ``generate`` (greedy or temperature/top-p sampling, KV cache,
stop at EOS). Batches are correct because the processor left-pads and the model derives position
ids from the attention mask, so an item decodes the same alone or in a batch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tarsier.errors import TarsierError

if TYPE_CHECKING:  # torch is imported where it is used, so settings validate without it
    import torch

    from tarsier.media import SampledFrames
    from tarsier.model import TarsierForConditionalGeneration
    from tarsier.processor import TarsierProcessor


@dataclass
class GenerationSettings:
    """Decoding options; the defaults are the reference's (greedy, 512 new tokens)."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise TarsierError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise TarsierError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise TarsierError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def generate_kwargs(self, processor: TarsierProcessor) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "eos_token_id": processor.tokenizer.eos_token_id,
            "pad_token_id": processor.tokenizer.pad_token_id,
            "use_cache": True,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=None)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


def generate_ids(
    model: TarsierForConditionalGeneration,
    processor: TarsierProcessor,
    inputs: Mapping[str, torch.Tensor],
    settings: GenerationSettings,
    **extra: Any,
) -> torch.Tensor:
    """New token ids ``[batch, n]`` (rows that stopped early are padded with the pad id)."""
    import torch

    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    with torch.inference_mode():
        output = model.generate(**inputs, **settings.generate_kwargs(processor), **extra)
    return output[:, inputs["input_ids"].shape[1] :]


def generate_text(
    model: TarsierForConditionalGeneration,
    processor: TarsierProcessor,
    inputs: Mapping[str, torch.Tensor],
    settings: GenerationSettings,
) -> list[str]:
    """Decoded replies, one per batch row."""
    return processor.batch_decode(generate_ids(model, processor, inputs, settings), skip_special_tokens=True)


def stream_text(
    model: TarsierForConditionalGeneration,
    processor: TarsierProcessor,
    inputs: Mapping[str, torch.Tensor],
    settings: GenerationSettings,
    result: list[torch.Tensor] | None = None,
    **extra: Any,
) -> Iterator[str]:
    """Yield the reply of a single-row batch piece by piece as it is generated.

    Generation runs in a helper thread feeding transformers' ``TextIteratorStreamer``. When
    ``result`` is a list, the generated ids are appended to it once generation ends. If the
    caller stops early (Ctrl-C, a closed generator), generation is told to stop and joined
    before this returns, so no thread is left running inside torch while the process exits.
    """
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop = threading.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            criteria = StoppingCriteriaList([_StopWhenSet(stop)])
            ids = generate_ids(model, processor, inputs, settings, streamer=streamer, stopping_criteria=criteria, **extra)
            if result is not None:
                result.append(ids)
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield from streamer
    finally:
        stop.set()  # a no-op when generation already ended
        thread.join()
    if failure:
        raise failure[0]


class _StopWhenSet:
    """A stopping criterion that ends every row once ``event`` is set (checked after each step)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass
class ChatSession:
    """A multi-turn conversation about one video that keeps its KV cache between turns.

    The first turn encodes the frames once; later turns append only their own tokens
    (``USER: ... ASSISTANT: ``) after the previous reply and its end separator, so neither the
    video nor the history is recomputed. Unlike the reference, which re-tokenises the whole
    conversation as text every turn, the model sees exactly the tokens it generated.
    """

    model: TarsierForConditionalGeneration
    processor: TarsierProcessor
    frames: SampledFrames
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    history: list[dict[str, str]] = field(default_factory=list)
    _ids: list[int] = field(default_factory=list, repr=False)
    _cache: Any = field(default=None, repr=False)

    def ask(self, question: str) -> Iterator[str]:
        """Stream the reply to ``question``; the turn is recorded once the reply is complete."""
        import torch
        from transformers import DynamicCache

        template = self.processor.chat_template
        n_frames = len(self.frames.images)
        extra: dict[str, Any] = {}
        if not self._ids:
            prompt = template.render([{"role": "user", "content": question}], n_frames)
            self._ids = self.processor.encode_prompt(prompt, n_frames)
            extra["pixel_values"] = self.processor.pixel_values(self.frames.images)
            self._cache = DynamicCache(config=self.model.config.text_config)
        else:
            self._ids = self._ids + self.processor.encode_prompt(template.user_turn(question), 0, add_bos=False)
        ids = torch.tensor([self._ids])
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **extra}
        generated: list[torch.Tensor] = []
        pieces = []
        for piece in stream_text(self.model, self.processor, inputs, self.settings, generated, cache=self._cache):
            pieces.append(piece)
            yield piece
        reply_ids = generated[0][0].tolist()  # one row: no padding
        end_id = self.processor.tokenizer.convert_tokens_to_ids(template.assistant_sep)
        if not reply_ids or reply_ids[-1] != end_id:
            reply_ids.append(end_id)  # a reply cut by max_new_tokens still closes its turn
        self._ids = self._ids + reply_ids
        self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": "".join(pieces)}]
