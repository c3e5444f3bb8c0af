"""The KV cache the decode loop writes: allocated once for prompt + new tokens, rows dropped as they finish.

transformers' ``StaticCache`` underneath: ``generate``'s default cache grows by concatenation, which
copies the whole cache every step (79% of a batch-8 decode step on CPU at ~4,800 positions per row).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tarsier.models.interface import FamilyModel

class KVCache:
    """transformers' ``StaticCache`` plus what the loops need: capacity, row copies, views, dropping rows."""

    def __init__(self, model: FamilyModel, batch_size: int, capacity: int, *, allocate: bool = False):
        from transformers import StaticCache

        text = model.config.text_config
        self.cache = StaticCache(config=text, max_cache_len=capacity)
        self.capacity = capacity
        if allocate:  # needed before rows are copied in; otherwise each layer allocates on its own device
            head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
            self.cache.early_initialization(batch_size, text.num_key_value_heads, head_dim, model.dtype, model.device)

    @property
    def length(self) -> int:
        """Positions filled so far."""
        return int(self.cache.get_seq_length())

    def copy_row(self, row: int, source: KVCache, length: int, offset: int = 0, *, source_row: int = 0,
                 source_offset: int = 0) -> None:
        """Positions ``offset .. offset+length`` of row ``row`` take ``length`` positions of ``source``'s
        row ``source_row`` from ``source_offset``."""
        for target, layer in zip(self.cache.layers, source.cache.layers):
            target.keys[row, :, offset : offset + length].copy_(layer.keys[source_row, :, source_offset : source_offset + length])
            target.values[row, :, offset : offset + length].copy_(layer.values[source_row, :, source_offset : source_offset + length])

    def positions_view(self, model: FamilyModel, row: int, start: int, length: int, rows: int = 1) -> KVCache:
        """A cache of ``rows`` rows from ``row`` over positions ``start .. start+length``, sharing its
        memory: a forward into the view writes the batch cache in place (prompts prefilled where they belong)."""
        view = KVCache(model, rows, length)
        for target, layer in zip(view.cache.layers, self.cache.layers):
            target.keys = layer.keys[row : row + rows, :, start : start + length]
            target.values = layer.values[row : row + rows, :, start : start + length]
            target.device = layer.keys.device
            target.batch_size, target.num_heads = rows, layer.keys.shape[1]
            target.k_head_dim, target.v_head_dim = layer.keys.shape[-1], layer.values.shape[-1]
            target.cumulative_length = torch.zeros((), dtype=torch.long, device=layer.keys.device)
            target.is_initialized = True
        return view

    @property
    def nbytes(self) -> int:
        """Bytes the keys and values take."""
        return sum(t.numel() * t.element_size() for layer in self.cache.layers for t in (layer.keys, layer.values)
                   if t is not None)

    def set_length(self, length: int) -> None:
        for layer in self.cache.layers:
            layer.cumulative_length.fill_(length)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (old indices, in their new order). When every row that moves comes from
        past the kept range (:func:`filling_holes` orders them so), each is copied into its place and
        the rest is cut off as a view: one row copied per row that left, not the whole cache (the
        memory goes back at the next reallocation). Any other order gathers a new cache."""
        order = rows.tolist()
        kept = len(order)
        moves = [(target, source) for target, source in enumerate(order) if source != target]
        in_place = all(source >= kept for _, source in moves)
        for layer in self.cache.layers:
            if in_place:
                for target, source in moves:
                    layer.keys[target].copy_(layer.keys[source])
                    layer.values[target].copy_(layer.values[source])
                layer.keys, layer.values = layer.keys[:kept], layer.values[:kept]
            else:
                layer.keys, layer.values = layer.keys[rows], layer.values[rows]


def filling_holes(keep: list[int]) -> list[int]:
    """``keep`` (sorted row indices) reordered so the rows past ``len(keep)`` fill the places of the
    rows that left: :meth:`KVCache.keep_rows` then copies one row per row that left."""
    count = len(keep)
    movers = iter(index for index in keep if index >= count)
    kept = set(keep)
    return [index if index in kept else next(movers) for index in range(count)]
