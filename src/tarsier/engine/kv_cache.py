"""The KV cache the engine writes: allocated once, with room for rows to join and positions to grow.

transformers' ``StaticCache`` underneath: ``generate``'s default cache grows by concatenation, which
copies the whole cache every step (79% of a batch-8 decode step on CPU at ~4,800 positions per row).

An allocated cache keeps its memory (the *store*, ``[rows, kv_heads, capacity, head_dim]`` per layer)
and shows the model a view of it: the rows in use, and the columns attended so far (:meth:`attend`).
So a row that leaves frees its place for a row that joins (:meth:`add_rows`) without moving the
others, and a decode step attends the columns written so far rather than the whole capacity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tarsier.models.interface import FamilyModel


class KVCache:
    """transformers' ``StaticCache`` plus what the engine needs: capacity, spare rows, row copies,
    views of positions, dropping rows."""

    def __init__(self, model: FamilyModel, batch_size: int, capacity: int, *, allocate: bool = False,
                 spare_rows: int = 0):
        """``allocate``: allocate the memory now (needed before rows are copied in; otherwise each layer
        allocates its own on the first forward), with ``spare_rows`` rows more than ``batch_size`` for
        rows that join later."""
        from transformers import StaticCache

        self._text = model.config.text_config
        self.cache = StaticCache(config=self._text, max_cache_len=capacity)
        self.capacity = capacity
        self._rows = batch_size
        self._store: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if allocate:
            for index in range(len(self.cache.layers)):
                self._allocate_layer(index, model, batch_size + spare_rows)
            self._show(batch_size, capacity)

    def _allocate_layer(self, index: int, model: FamilyModel, rows: int) -> None:
        text = self._text
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        shape = (rows, text.num_key_value_heads, 0, head_dim)
        layer = self.cache.layers[index]
        layer.lazy_initialization(torch.empty(shape, dtype=model.dtype, device=model.device),
                                  torch.empty(shape, dtype=model.dtype, device=model.device))
        if self._store is None:
            self._store = []
        self._store.append((layer.keys, layer.values))

    def _show(self, rows: int, width: int) -> None:
        """Let the model see rows ``0 .. rows`` and columns ``0 .. width`` of the store (the store itself
        when that is all of it: a compiled step needs its static address)."""
        self._rows = rows
        for layer, (keys, values) in zip(self.cache.layers, self._store):
            whole = rows == keys.shape[0] and width == keys.shape[2]
            layer.keys = keys if whole else keys[:rows, :, :width]
            layer.values = values if whole else values[:rows, :, :width]
            layer.max_cache_len = width

    def _tensors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's keys and values: the whole store when allocated (spare rows and columns too)."""
        return self._store or [(layer.keys, layer.values) for layer in self.cache.layers]

    @property
    def length(self) -> int:
        """Positions filled so far."""
        return int(self.cache.get_seq_length())

    @property
    def rows(self) -> int:
        """Rows in use."""
        return self._rows

    @property
    def spare_rows(self) -> int:
        """Rows allocated beyond those in use: places for rows that join."""
        return 0 if self._store is None else self._store[0][0].shape[0] - self._rows

    @property
    def width(self) -> int:
        """Columns the model attends (the capacity unless :meth:`attend` narrowed them)."""
        return self.cache.layers[0].max_cache_len

    def attend(self, width: int) -> None:
        """Attend columns ``0 .. width`` only (every position written so far must be among them):
        a decode step then scores the positions written, not the empty rest of the capacity."""
        self._show(self._rows, width)

    def add_rows(self, count: int) -> None:
        """Take ``count`` spare rows into use (filled beforehand through :meth:`positions_view`)."""
        if count > self.spare_rows:
            raise ValueError(f"{count} rows do not fit: {self.spare_rows} spare")
        self._show(self._rows + count, self.width)

    def copy_row(self, row: int, source: KVCache, length: int, offset: int = 0, *, source_row: int = 0,
                 source_offset: int = 0) -> None:
        """Positions ``offset .. offset+length`` of row ``row`` take ``length`` positions of ``source``'s
        row ``source_row`` from ``source_offset``."""
        for target, layer in zip(self.cache.layers, source.cache.layers):
            _copy_positions(target, layer, row, source_row, length, offset, source_offset)

    @classmethod
    def moved(cls, model: FamilyModel, source: KVCache, rows: int, capacity: int, moves: list[tuple[int, int]],
              length: int, offset: int, source_offset: int, *, spare_rows: int = 0) -> KVCache:
        """A new allocated cache whose row ``target`` holds, at ``offset``, ``length`` positions of
        ``source``'s row ``from`` (from ``source_offset``), for each ``(target, from)`` of ``moves``.

        Built a layer at a time, each of ``source``'s layers let go once copied (``source`` is left
        empty): the memory this takes at its peak is one cache and a layer, not two caches."""
        cache = cls(model, rows, capacity)
        for index, (target, layer) in enumerate(zip(cache.cache.layers, source.cache.layers)):
            cache._allocate_layer(index, model, rows + spare_rows)
            for row, source_row in moves:
                _copy_positions(target, layer, row, source_row, length, offset, source_offset)
            layer.keys = layer.values = None
            if source._store is not None:
                source._store[index] = (None, None)
        source._store = None
        cache._show(rows, capacity)
        return cache

    def positions_view(self, model: FamilyModel, row: int, start: int, length: int, rows: int = 1) -> KVCache:
        """A cache of ``rows`` rows from ``row`` over positions ``start .. start+length``, sharing its
        memory (spare rows included): a forward into the view writes this cache in place (prompts
        prefilled where they belong)."""
        view = KVCache(model, rows, length)
        layers = self._tensors()
        for target, (keys, values) in zip(view.cache.layers, layers):
            target.keys = keys[row : row + rows, :, start : start + length]
            target.values = values[row : row + rows, :, start : start + length]
            target.device = keys.device
            target.batch_size, target.num_heads = rows, keys.shape[1]
            target.k_head_dim, target.v_head_dim = keys.shape[-1], values.shape[-1]
            target.cumulative_length = torch.zeros((), dtype=torch.long, device=keys.device)
            target.is_initialized = True
        return view

    @property
    def nbytes(self) -> int:
        """Bytes the keys and values take (spare rows and columns included)."""
        layers = self._tensors()
        return sum(t.numel() * t.element_size() for pair in layers for t in pair if t is not None)

    def set_length(self, length: int) -> None:
        for layer in self.cache.layers:
            layer.cumulative_length.fill_(length)

    def keep_rows(self, rows: torch.Tensor, *, in_place: bool = True) -> None:
        """Keep only ``rows`` (old indices, in their new order). When every row that moves comes from
        past the kept range (:func:`filling_holes` orders them so), each is copied into its place and
        the rows past them become spare: one row copied per row that left, not the whole cache. Any
        other order, or ``in_place=False``, gathers a new cache (without spare rows)."""
        order = rows.tolist()
        kept = len(order)
        moves = [(target, source) for target, source in enumerate(order) if source != target]
        in_place = in_place and all(source >= kept for _, source in moves)
        width = self.width
        for index, (keys, values) in enumerate(self._store):
            if in_place:
                for target, source in moves:
                    keys[target, :, :width].copy_(keys[source, :, :width])
                    values[target, :, :width].copy_(values[source, :, :width])
            else:
                self._store[index] = (keys[rows], values[rows])
                for tensor in self._store[index]:  # a compiled step's CUDA graphs read it where it is
                    torch._dynamo.mark_static_address(tensor)
        self._show(kept, width)


def _copy_positions(target, source, row: int, source_row: int, length: int, offset: int, source_offset: int) -> None:
    """One layer: ``length`` positions of ``source``'s row ``source_row`` from ``source_offset`` into
    ``target``'s row ``row`` from ``offset``, keys and values."""
    target.keys[row, :, offset : offset + length].copy_(source.keys[source_row, :, source_offset : source_offset + length])
    target.values[row, :, offset : offset + length].copy_(source.values[source_row, :, source_offset : source_offset + length])


def filling_holes(keep: list[int]) -> list[int]:
    """``keep`` (sorted row indices) reordered so the rows past ``len(keep)`` fill the places of the
    rows that left: :meth:`KVCache.keep_rows` then copies one row per row that left."""
    count = len(keep)
    movers = iter(index for index in keep if index >= count)
    kept = set(keep)
    return [index if index in kept else next(movers) for index in range(count)]
