"""Attention over a prefix held once for every row that continues it (cascade attention).

Every question about one video starts with the same few thousand positions (the prompt up to its
last media token). Copying that KV into each row of a batch costs a copy per row and, at every
decode step, reads each copy again. Here a row's own cache holds only what follows the prefix; the
prefix stays in its one :class:`~tarsier.engine.kv_cache.KVCache` (a prefix-cache entry), and each
layer attends to it once per group of rows: one batched product of the group's queries with the
prefix keys, one softmax over the prefix and the row's own positions together, so the result is the
attention over the whole sequence (Hydragen, FlashInfer's cascade attention).

It is an attention implementation registered with transformers (``tarsier_shared_prefix``): a
forward given ``shared_prefix=SharedPrefixes(...)`` attends this way, any other forward runs
transformers' ``sdpa`` unchanged, so a model switched to it (:func:`use_shared_prefix_attention`)
behaves as before for every caller that does not pass one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tarsier.engine.kv_cache import KVCache
    from tarsier.models.interface import FamilyModel

ATTENTION_NAME = "tarsier_shared_prefix"
QUERY_CHUNK = 256  # queries scored at once: a long prompt after a prefix never holds all its scores


@dataclass
class SharedPrefixes:
    """How the rows of a forward are laid out: the first ``plain`` rows continue no prefix; then each
    group ``(first, end, prefix)`` is the rows ``first .. end`` that continue the one-row cache
    ``prefix``, filled to its capacity (a prefix-cache entry is exactly its prefix's length).
    ``window`` (start, end) holds every own column a grouped row attends in this forward (None: all
    of them), so their share is computed from those columns only."""

    plain: int
    groups: list[tuple[int, int, KVCache]]
    window: tuple[int, int] | None = None

    @classmethod
    def of_rows(cls, prefixes: list[KVCache | None]) -> SharedPrefixes | None:
        """The layout of rows already ordered by :func:`grouped_order`; None when no row has a prefix."""
        plain = sum(prefix is None for prefix in prefixes)
        if plain == len(prefixes):
            return None
        groups: list[tuple[int, int, KVCache]] = []
        for index in range(plain, len(prefixes)):
            if groups and prefixes[index] is groups[-1][2]:
                groups[-1] = (groups[-1][0], index + 1, groups[-1][2])
            else:
                groups.append((index, index + 1, prefixes[index]))
        return cls(plain, groups)


def grouped_order(prefixes: list[KVCache | None]) -> list[int]:
    """An order of rows that :class:`SharedPrefixes` can describe: rows without a prefix first, then
    the rows of each prefix together (in order of first appearance)."""
    rank: dict[int, int] = {}
    for prefix in prefixes:
        if prefix is not None:
            rank.setdefault(id(prefix), len(rank) + 1)
    return sorted(range(len(prefixes)), key=lambda index: 0 if prefixes[index] is None else rank[id(prefixes[index])])


def shared_prefix_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    shared_prefix: SharedPrefixes | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """``[B, Q, heads, D]`` attention outputs; ``key``/``value`` are each row's own positions, which
    follow its group's prefix. Without ``shared_prefix`` this is transformers' sdpa attention.

    Rows without a prefix run sdpa. A group's rows attend their own columns (the window) and the
    prefix separately, and the two parts are merged, each weighed by its softmax denominator
    (log-sum-exp), as flash-decoding merges the splits of a long sequence: the prefix is read once
    per group, and the rows' slices are views, never gathered copies.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if shared_prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    batch, heads, queries, dim = query.shape
    out = torch.empty(batch, queries, heads, dim, dtype=query.dtype, device=query.device)
    plain = shared_prefix.plain
    if plain:
        mask = attention_mask[:plain] if attention_mask is not None and attention_mask.shape[0] > 1 else attention_mask
        out[:plain] = sdpa_attention_forward(module, query[:plain], key[:plain], value[:plain], mask, dropout=dropout,
                                             scaling=scaling, **kwargs)[0]
    scale = dim**-0.5 if scaling is None else scaling
    start, end = shared_prefix.window or (0, key.shape[2])
    allowed = _allowed(attention_mask, batch, queries, key.shape[2], query.device)[..., start:end]
    for first, stop, prefix in shared_prefix.groups:
        layer = prefix.cache.layers[module.layer_idx]
        seen = allowed[first:stop] if allowed.shape[0] > 1 else allowed
        for at in range(0, queries, QUERY_CHUNK):
            chunk = slice(at, at + QUERY_CHUNK)
            out[first:stop, chunk] = _prefix_and_own(query[first:stop, :, chunk], key[first:stop, :, start:end],
                                                     value[first:stop, :, start:end], seen[:, :, chunk],
                                                     layer.keys[0], layer.values[0], scale)
    return out, None


def _prefix_and_own(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor,
                    prefix_keys: torch.Tensor, prefix_values: torch.Tensor, scale: float) -> torch.Tensor:
    """``[n, Q, heads, D]``: ``n`` rows' queries over a common prefix (``[kv_heads, P, D]``) and
    their own allowed columns (``key``/``value`` ``[n, kv_heads, W, D]``)."""
    n, heads, queries, dim = query.shape
    kv_heads, own = key.shape[1], key.shape[2]
    per_kv = heads // kv_heads * queries  # query rows per key/value head (grouped-query attention)
    exact = torch.promote_types(query.dtype, torch.float32)  # scores and log-sum-exps at least in float32
    q = query.reshape(n, kv_heads, per_kv, dim)
    mask = allowed.expand(n, 1, queries, own).repeat(1, 1, heads // kv_heads, 1)  # ordered as q's rows
    own_scores = (torch.matmul(q, key.transpose(-1, -2)).to(exact) * scale).masked_fill(~mask, float("-inf"))
    own_total = own_scores.logsumexp(-1, keepdim=True)  # [n, kv_heads, per_kv, 1]; -inf for a padding query
    own_out = torch.matmul((own_scores - own_total.clamp(min=torch.finfo(exact).min)).exp().to(value.dtype), value).to(exact)
    grouped = q.transpose(0, 1).reshape(kv_heads, n * per_kv, dim)  # all the rows' queries, per kv head
    prefix_scores = torch.bmm(grouped, prefix_keys.transpose(1, 2)).to(exact) * scale  # [kv_heads, n*per_kv, P]
    prefix_total = prefix_scores.logsumexp(-1, keepdim=True)
    prefix_out = torch.bmm((prefix_scores - prefix_total).exp().to(value.dtype), prefix_values).to(exact)
    prefix_out = prefix_out.reshape(kv_heads, n, per_kv, dim).transpose(0, 1)
    prefix_total = prefix_total.reshape(kv_heads, n, per_kv, 1).transpose(0, 1)
    own_share = torch.sigmoid(own_total - prefix_total)  # the own part's softmax mass against the prefix's
    merged = own_out * own_share + prefix_out * (1 - own_share)
    return merged.reshape(n, heads, queries, dim).transpose(1, 2).to(query.dtype)


def _allowed(mask: torch.Tensor | None, batch: int, queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """``[B or 1, 1, Q, K]`` booleans: which own positions each query attends (a causal mask when
    transformers passed none, which it does for a plain causal prompt)."""
    if mask is None:
        query_at = torch.arange(queries, device=device)[:, None] + (keys - queries)
        return (torch.arange(keys, device=device)[None, :] <= query_at)[None, None]
    if mask.dtype != torch.bool:
        mask = mask == 0  # an additive mask: 0 where attended
    return mask[..., -queries:, -keys:]


def use_shared_prefix_attention(model: FamilyModel) -> None:
    """Switch the model's language model to :func:`shared_prefix_attention` (sdpa for every forward
    without ``shared_prefix``). Only from sdpa: another kernel the user chose is kept."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    text = model.config.text_config
    if text._attn_implementation not in ("sdpa", ATTENTION_NAME):
        return
    AttentionInterface.register(ATTENTION_NAME, shared_prefix_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)
    text._attn_implementation = ATTENTION_NAME


def uses_shared_prefix_attention(model: FamilyModel) -> bool:
    return model.config.text_config._attn_implementation == ATTENTION_NAME
