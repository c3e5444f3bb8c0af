"""What a user asks of generation (:class:`GenerationSettings`: the reference's defaults) and how
it resolves against a checkpoint's processor into the engine's per-row :class:`DecodeSettings`."""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tarsier.errors import TarsierError

if TYPE_CHECKING:  # torch is imported where it is used, so settings validate without it
    from tarsier.engine.sampling import DecodeSettings
    from tarsier.models.interface import FamilyProcessor


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
