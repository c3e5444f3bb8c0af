"""Choosing each row's next token: greedy or sampled, with repetition penalty and banned ids.

Settings are per row (serving), so one batch may mix greedy rows, seeded samplers and penalties.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch


class Sampler:
    """Greedy argmax, or temperature + top-k + top-p sampling with transformers' own warpers (same maths).

    With a ``seed``, sampling draws from its own generator, so a request gives the same reply
    whatever else runs in its batch.
    """

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, top_k: int = 0):
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.greedy = temperature <= 0
        warpers = [] if self.greedy else [TemperatureLogitsWarper(temperature)]
        if not self.greedy and top_k > 0:  # in generate()'s order: temperature, top-k, top-p
            warpers.append(TopKLogitsWarper(top_k))
        if not self.greedy and top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        self.warpers = LogitsProcessorList(warpers)
        self.seed = seed
        self._generator: torch.Generator | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.greedy:
            return logits.argmax(-1)
        if self.seed is not None and self._generator is None:
            self._generator = torch.Generator(logits.device).manual_seed(self.seed)
        scores = self.warpers(None, logits.float())
        return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1, generator=self._generator).squeeze(1)


def banned_logits(settings: Sequence[DecodeSettings], vocab: int, device: torch.device) -> torch.Tensor | None:
    """A ``[vocab]`` mask of the ids no row may emit (every row's banned ids and padded rows), or None."""
    banned = torch.zeros(vocab, dtype=torch.bool)
    for row in settings:
        banned[[i for i in row.banned_ids if 0 <= i < vocab]] = True
        if row.vocab_end is not None:
            banned[row.vocab_end :] = True
    return banned.to(device) if banned.any() else None


def penalise_repeats(logits: torch.Tensor, seen: torch.Tensor, penalties: torch.Tensor) -> torch.Tensor:
    """transformers' repetition penalty (in float32, as ``generate`` applies it): the logit of an id
    already in a row's sequence is divided by the row's penalty, or multiplied when negative."""
    logits = logits.float()
    penalties = penalties.to(logits.device)[:, None]
    return torch.where(seen, torch.where(logits < 0, logits * penalties, logits / penalties), logits)


def sample_rows(logits: torch.Tensor, samplers: Sequence[Sampler]) -> torch.Tensor:
    """One token per row; rows sharing one sampler, or all greedy, are handled together."""
    if all(sampler is samplers[0] for sampler in samplers):
        return samplers[0](logits)
    tokens = logits.argmax(-1)
    for row, sampler in enumerate(samplers):
        if not sampler.greedy:
            tokens[row] = sampler(logits[row : row + 1])[0]
    return tokens


@dataclass
class DecodeSettings:
    """One row's decoding settings; ``eos_token_id`` is one id or several (Tarsier2 stops at either
    of ``<|im_end|>`` and ``<|endoftext|>``), normalised to a tuple."""

    max_new_tokens: int
    eos_token_id: int | Collection[int] | None
    sampler: Sampler
    ignore_eos: bool = False  # benchmarks: always run max_new_tokens steps
    repetition_penalty: float = 1.0  # 1: none; over 1 discourages ids already in the sequence (prompt included)
    # Ids that are not text and must never be emitted (media placeholders), and where text ids end
    # (the embedding's rows past it are padding). Greedy and sampling alike never pick them.
    banned_ids: tuple[int, ...] = ()
    vocab_end: int | None = None

    def __post_init__(self) -> None:
        ids = self.eos_token_id
        self.eos_token_id = () if ids is None else (int(ids),) if isinstance(ids, int) else tuple(int(i) for i in ids)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """The ids that end this row (none when ``ignore_eos``)."""
        return () if self.ignore_eos else self.eos_token_id

