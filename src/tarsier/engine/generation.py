"""The Python API's generation: a batch you prepared, run to its end or streamed, over the engine.

Rows run through :class:`~tarsier.engine.continuous_batch.ContinuousBatch` (a pre-allocated KV
cache, each row prefilled without its padding, finished rows leave the batch), so an item decodes
the same alone or in a batch.
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tarsier.engine.settings import GenerationSettings
from tarsier.errors import TarsierError

if TYPE_CHECKING:  # torch is imported where it is used
    import torch

    from tarsier.engine.sampling import DecodeSettings
    from tarsier.models.interface import FamilyModel, FamilyProcessor


def iter_tokens(
    model: FamilyModel,
    processor: FamilyProcessor,
    inputs: Mapping[str, torch.Tensor],
    settings: GenerationSettings | DecodeSettings | Sequence[GenerationSettings | DecodeSettings],
    cancelled: Container[int] = (),
) -> Iterator[dict[int, int]]:
    """``{row: token}`` after every step for the rows still running.

    ``inputs`` are a processor's (``input_ids``, ``attention_mask``, ``pixel_values``, and the
    model's other media inputs such as Tarsier2's ``image_grid_thw``), padded rows or one.
    ``settings`` is one for the batch or one per row; rows in ``cancelled`` stop after the current step.
    The rows run through the engine's continuous batch, as every application's requests do: each is
    prefilled without its padding, and a finished row leaves the batch.
    """
    import torch

    from tarsier.engine.continuous_batch import generate_steps

    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    per_row = list(settings) if isinstance(settings, (list, tuple)) else [settings] * len(ids)
    if len(per_row) != len(ids):
        raise TarsierError(f"got {len(per_row)} generation settings for {len(ids)} rows")
    media = {name: value for name, value in inputs.items() if name not in ("input_ids", "attention_mask") and value is not None}
    media_rows = model.media_by_row(ids, media) if media else [{}] * len(ids)
    prompts = [(row_ids[row_mask.to(torch.bool)].tolist(), row_media, row_settings)
               for row_ids, row_mask, row_media, row_settings in zip(ids, mask, media_rows, per_row)]
    yield from generate_steps(model, processor, prompts, cancelled)


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


