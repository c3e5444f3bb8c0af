"""What the engine needs of a model, whatever its family.

Both families' models are transformers ``PreTrainedModel`` s that also give ``prefill_positions``
(a prompt's positions and each row's position delta: 0 for Tarsier, M-RoPE's for Tarsier2) and
``media_by_row`` (each row's own media inputs). The engine types its models by this protocol, so it
never imports a family.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch


class FamilyModel(Protocol):
    config: Any
    device: torch.device
    dtype: torch.dtype

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def get_input_embeddings(self) -> torch.nn.Module: ...

    def embed_inputs(self, input_ids: torch.LongTensor, **media: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the media features in the media slots (the forward's first stage)."""
        ...

    def prefill_positions(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor, media: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def media_by_row(self, input_ids: torch.LongTensor, media: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]: ...


class FamilyProcessor(Protocol):
    """What the engine needs of a family's processor (both families' processors give it)."""

    tokenizer: Any
    generation_config: dict[str, Any]
    max_n_frames: int

    @property
    def eos_token_ids(self) -> tuple[int, ...]: ...

    @property
    def non_text_ids(self) -> frozenset[int]: ...

    def load_media(self, media: Any, n_frames: int | None = None, start_time: float | None = None,
                   end_time: float | None = None) -> Any: ...

    def encode_item(self, prompt: str, frames: Any, source: str | None = None) -> tuple[list[int], dict[str, torch.Tensor]]: ...

    def collate(self, items: Any) -> dict[str, torch.Tensor]: ...

    def encode_conversation(self, messages: Any, frames: Any) -> tuple[list[int], dict[str, torch.Tensor]]: ...

    def close_reply(self, reply_ids: Any) -> list[int]: ...

    def follow_up_ids(self, question: str) -> list[int]: ...

    def media_token_count(self, media: Mapping[str, torch.Tensor]) -> int: ...

    def decode(self, ids: Any, skip_special_tokens: bool = True, **kwargs: Any) -> str: ...
