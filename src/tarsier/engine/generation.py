"""Generation: reference defaults, batches and streaming over the decode loop.

Decoding runs :func:`tarsier.engine.decode_loop.decode` (a pre-allocated KV cache, finished rows leave the
batch). Batches are correct because the processor left-pads and position ids count attended
tokens only, so an item decodes the same alone or in a batch.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tarsier.errors import TarsierError

if TYPE_CHECKING:  # torch is imported where it is used, so settings validate without it
    import torch

    from tarsier.engine.sampling import DecodeSettings
    from tarsier.models.interface import FamilyModel, FamilyProcessor


TRANSFORMERS_TOP_K = 50  # generate()'s top-k when a generation config sets none


@dataclass
class GenerationSettings:
    """Decoding options; the defaults are the reference's (greedy, 512 new tokens)."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    ignore_eos: bool = False  # always generate max_new_tokens (benchmarks)
    seed: int | None = None  # sampling draws from its own generator: same seed, same reply
    # None: the checkpoint's generation_config.json (as the reference's generate() applies it), else none.
    repetition_penalty: float | None = None
    # Sampling only. None: generation_config.json's, else transformers' default of 50 (the reference's
    # generate() samples with it); 0: no top-k.
    top_k: int | None = None

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise TarsierError(f"{name} must be a finite number, got {value}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise TarsierError(f"seed must be between 0 and 2**63 - 1, got {self.seed}")
        if self.max_new_tokens < 1:
            raise TarsierError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise TarsierError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise TarsierError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise TarsierError(f"top_k must be >= 0 (0 means no top-k), got {self.top_k}")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise TarsierError(f"repetition_penalty must be > 0 (1 means none), got {self.repetition_penalty}")

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def decode_settings(self, processor: FamilyProcessor) -> DecodeSettings:
        from tarsier.engine.sampling import DecodeSettings, Sampler

        defaults = processor.generation_config
        penalty = self.repetition_penalty
        if penalty is None:
            penalty = float(defaults.get("repetition_penalty") or 1.0)
        top_k = self.top_k
        if top_k is None:
            top_k = int(defaults.get("top_k", TRANSFORMERS_TOP_K) or 0)
        return DecodeSettings(
            max_new_tokens=self.max_new_tokens,
            eos_token_id=processor.eos_token_ids,
            sampler=Sampler(self.temperature, self.top_p, self.seed, top_k),
            ignore_eos=self.ignore_eos,
            repetition_penalty=penalty,
            banned_ids=tuple(sorted(processor.non_text_ids)),
            vocab_end=vocab_end(processor.tokenizer),
        )


_VOCAB_ENDS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def vocab_end(tokenizer: Any) -> int:
    """One past the tokenizer's largest id: the embedding rows from there on are padding, never text
    (Tarsier-7b's tokenizer ends at 32001 and its embedding at 32064)."""
    if tokenizer not in _VOCAB_ENDS:
        _VOCAB_ENDS[tokenizer] = max(tokenizer.get_vocab().values()) + 1
    return _VOCAB_ENDS[tokenizer]


# Inputs decode() takes by name; any other entry of a processor's output is a further media input.
_DECODE_ARGUMENTS = ("input_ids", "attention_mask", "pixel_values")


def iter_tokens(
    model: FamilyModel,
    processor: FamilyProcessor,
    inputs: Mapping[str, torch.Tensor],
    settings: GenerationSettings | Sequence[GenerationSettings],
    cancelled: Container[int] = (),
) -> Iterator[dict[int, int]]:
    """``{row: token}`` after every step for the rows still running (see :func:`tarsier.engine.decode_loop.decode`).

    ``inputs`` are a processor's (``input_ids``, ``attention_mask``, ``pixel_values``, and the
    model's other media inputs such as Tarsier2's ``image_grid_thw``, passed on as they are).
    ``settings`` is one for the batch or one per row; rows in ``cancelled`` stop after the current step.
    """
    import torch

    from tarsier.engine.decode_loop import decode

    pixels = inputs.get("pixel_values")
    if pixels is not None:
        if model.device.type == "cuda" and pixels.device.type == "cpu":
            pixels = pixels.pin_memory()  # lets the copy to the GPU run asynchronously
        pixels = pixels.to(model.device, model.dtype, non_blocking=True)
    with torch.inference_mode():
        if isinstance(settings, GenerationSettings):
            decode_settings = settings.decode_settings(processor)
        else:
            decode_settings = [row.decode_settings(processor) for row in settings]
        extra = {name: value.to(model.device) for name, value in inputs.items() if name not in _DECODE_ARGUMENTS}
        yield from decode(model, inputs["input_ids"], inputs["attention_mask"], pixels, decode_settings, cancelled,
                          extra_inputs=extra)


def generate_ids(
    model: FamilyModel,
    processor: FamilyProcessor,
    inputs: Mapping[str, torch.Tensor],
    settings: GenerationSettings,
) -> torch.Tensor:
    """New token ids ``[batch, n]`` (rows that stopped early are padded with the pad id), as ``generate`` gives."""
    import torch

    rows: list[list[int]] = [[] for _ in range(inputs["input_ids"].shape[0])]
    for step in iter_tokens(model, processor, inputs, settings):
        for row, token in step.items():
            rows[row].append(token)
    longest = max(len(row) for row in rows)
    out = torch.full((len(rows), longest), processor.tokenizer.pad_token_id, dtype=torch.long)
    for index, row in enumerate(rows):
        out[index, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def generate_text(
    model: FamilyModel,
    processor: FamilyProcessor,
    inputs: Mapping[str, torch.Tensor],
    settings: GenerationSettings,
) -> list[str]:
    """Decoded replies, one per batch row."""
    return processor.batch_decode(generate_ids(model, processor, inputs, settings), skip_special_tokens=True)


def stream_text(
    model: FamilyModel,
    processor: FamilyProcessor,
    inputs: Mapping[str, torch.Tensor],
    settings: GenerationSettings,
    result: list[int] | None = None,
) -> Iterator[str]:
    """Yield the reply of a single-row batch piece by piece as it is generated.

    Text is cut where transformers' ``TextStreamer`` cuts it (whole words, never half a character).
    Generation runs in the caller's thread, step by step, so Ctrl-C or closing the iterator stops
    it at once. When ``result`` is a list, the generated ids are appended to it as they come.
    """
    pieces = TextPieces(processor.tokenizer)
    for step in iter_tokens(model, processor, inputs, settings):
        token = step[0]
        if result is not None:
            result.append(token)
        pieces.add(token)
        yield from pieces.take()
    pieces.end()
    yield from pieces.take()


class TextPieces:
    """Token ids in, finished pieces of text out, using transformers' ``TextStreamer`` rules."""

    def __init__(self, tokenizer: Any):
        from transformers import TextStreamer

        outer = self

        class Collector(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    outer._ready.append(text)

        self._ready: list[str] = []
        self._streamer = Collector(tokenizer, skip_prompt=False, skip_special_tokens=True)

    def add(self, token: int) -> None:
        import torch

        self._streamer.put(torch.tensor([token]))

    def end(self) -> None:
        self._streamer.end()

    def take(self) -> list[str]:
        ready, self._ready = self._ready, []
        return ready


