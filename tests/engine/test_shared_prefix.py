"""Attention over a prefix held once equals attention over each row's whole sequence."""

from types import SimpleNamespace

import pytest
import torch

from tarsier.engine import shared_prefix
from tarsier.engine.shared_prefix import SharedPrefixes, grouped_order, shared_prefix_attention


def held_prefix(keys, values):
    """A stand-in for a one-row KVCache: what the attention reads of it."""
    return SimpleNamespace(cache=SimpleNamespace(layers=[SimpleNamespace(keys=keys, values=values)]))


def reference(query, keys, values, allowed, scale):
    """Plain attention of one row, its keys/values whole; ``allowed`` [Q, K]."""
    rep = query.shape[0] // keys.shape[0]
    keys, values = keys.repeat_interleave(rep, 0), values.repeat_interleave(rep, 0)
    scores = (query @ keys.transpose(-1, -2)) * scale
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ values


@pytest.mark.parametrize("queries", [1, 5, 300])  # a decode step, a short suffix, more than one query chunk
def test_grouped_rows_and_plain_rows_match_attention_over_the_whole_sequence(queries, monkeypatch):
    monkeypatch.setattr(shared_prefix, "QUERY_CHUNK", 128)
    torch.manual_seed(0)
    batch, heads, kv_heads, dim, own = 4, 4, 2, 8, queries + 3
    module = SimpleNamespace(layer_idx=0, num_key_value_groups=heads // kv_heads)
    query = torch.randn(batch, heads, queries, dim, dtype=torch.float64)
    key, value = torch.randn(batch, kv_heads, own, dim, dtype=torch.float64), torch.randn(batch, kv_heads, own, dim, dtype=torch.float64)
    prefixes = [(torch.randn(1, kv_heads, length, dim, dtype=torch.float64), torch.randn(1, kv_heads, length, dim, dtype=torch.float64))
                for length in (7, 11)]
    # row 0 has no prefix (and two padded columns), rows 1 and 2 continue prefix 0, row 3 prefix 1
    allowed = torch.ones(batch, 1, queries, own, dtype=torch.bool)
    allowed[..., torch.arange(queries)[:, None] + (own - queries) < torch.arange(own)[None, :]] = False  # causal
    allowed[0, :, :, :2] = False
    held = [held_prefix(*prefix) for prefix in prefixes]
    groups = SharedPrefixes.of_rows([None, held[0], held[0], held[1]])
    assert (groups.plain, [(a, b) for a, b, _ in groups.groups]) == (1, [(1, 3), (3, 4)])
    scale = 0.3
    out, _ = shared_prefix_attention(module, query, key, value, allowed, scaling=scale, shared_prefix=groups)
    assert out.shape == (batch, queries, heads, dim)
    for row, prefix in ((0, None), (1, 0), (2, 0), (3, 1)):
        keys, values, seen = key[row], value[row], allowed[row, 0]
        if prefix is not None:
            keys = torch.cat([prefixes[prefix][0][0], keys], 1)
            values = torch.cat([prefixes[prefix][1][0], values], 1)
            seen = torch.cat([torch.ones(queries, prefixes[prefix][0].shape[2], dtype=torch.bool), seen], 1)
        expected = reference(query[row], keys, values, seen, scale)
        torch.testing.assert_close(out[row].transpose(0, 1), expected, rtol=0, atol=1e-10)


def test_no_mask_means_causal_over_the_row_s_own_positions_and_an_additive_mask_works_too():
    torch.manual_seed(1)
    heads, dim, queries = 2, 4, 6
    module = SimpleNamespace(layer_idx=0, num_key_value_groups=1)
    query = torch.randn(1, heads, queries, dim, dtype=torch.float64)
    key, value = torch.randn(1, heads, queries, dim, dtype=torch.float64), torch.randn(1, heads, queries, dim, dtype=torch.float64)
    prefix = (torch.randn(1, heads, 5, dim, dtype=torch.float64), torch.randn(1, heads, 5, dim, dtype=torch.float64))
    groups = SharedPrefixes(0, [(0, 1, held_prefix(*prefix))])
    causal = torch.ones(queries, queries, dtype=torch.bool).tril()
    without, _ = shared_prefix_attention(module, query, key, value, None, scaling=0.5, shared_prefix=groups)
    additive = torch.zeros(1, 1, queries, queries, dtype=torch.float64).masked_fill(~causal, torch.finfo(torch.float64).min)
    with_additive, _ = shared_prefix_attention(module, query, key, value, additive, scaling=0.5, shared_prefix=groups)
    seen = torch.cat([torch.ones(queries, 5, dtype=torch.bool), causal], 1)
    expected = reference(query[0], torch.cat([prefix[0][0], key[0]], 1), torch.cat([prefix[1][0], value[0]], 1), seen, 0.5)
    torch.testing.assert_close(without[0].transpose(0, 1), expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(with_additive[0].transpose(0, 1), expected, rtol=0, atol=1e-10)


def test_without_shared_prefixes_it_is_transformers_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(2)
    module = SimpleNamespace(layer_idx=0, num_key_value_groups=1, is_causal=True)
    query, key, value = (torch.randn(2, 2, 3, 4) for _ in range(3))
    ours, _ = shared_prefix_attention(module, query, key, value, None, scaling=0.5)
    theirs, _ = sdpa_attention_forward(module, query, key, value, None, scaling=0.5)
    assert torch.equal(ours, theirs)


def test_a_window_over_the_grouped_rows_own_columns_gives_the_same_result():
    """A decode step: capacity 20, the grouped row's own positions in columns 14..16, the plain row's
    in 3..16, columns 17.. not written yet; the window (14, 17) is all the grouped row's share."""
    torch.manual_seed(3)
    heads, kv_heads, dim, capacity = 4, 2, 8, 20
    module = SimpleNamespace(layer_idx=0, num_key_value_groups=heads // kv_heads)
    query = torch.randn(2, heads, 1, dim, dtype=torch.float64)
    key, value = (torch.randn(2, kv_heads, capacity, dim, dtype=torch.float64) for _ in range(2))
    prefix = (torch.randn(1, kv_heads, 9, dim, dtype=torch.float64), torch.randn(1, kv_heads, 9, dim, dtype=torch.float64))
    allowed = torch.zeros(2, 1, 1, capacity, dtype=torch.bool)
    allowed[1, ..., 14:17] = True
    allowed[0, ..., 3:17] = True
    groups = SharedPrefixes(1, [(1, 2, held_prefix(*prefix))], window=(14, 17))
    out, _ = shared_prefix_attention(module, query, key, value, allowed, scaling=0.25, shared_prefix=groups)
    grouped = reference(query[1], torch.cat([prefix[0][0], key[1]], 1), torch.cat([prefix[1][0], value[1]], 1),
                        torch.cat([torch.ones(1, 9, dtype=torch.bool), allowed[1, 0]], 1), 0.25)
    plain = reference(query[0], key[0], value[0], allowed[0, 0], 0.25)
    torch.testing.assert_close(out[1].transpose(0, 1), grouped, rtol=0, atol=1e-10)
    torch.testing.assert_close(out[0].transpose(0, 1), plain, rtol=0, atol=1e-10)


def test_rows_are_ordered_plain_first_then_by_prefix():
    a, b = object(), object()
    assert grouped_order([a, None, b, a, None]) == [1, 4, 0, 3, 2]
