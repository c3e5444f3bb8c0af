"""KVCache row surgery: a finished row's place is taken by the last rows, in place."""

import pytest
import torch

from tarsier.engine.kv_cache import KVCache, filling_holes
from tarsier.engine.loading import load_pretrained


@pytest.fixture(scope="module")
def model(fast_checkpoint):
    return load_pretrained(fast_checkpoint, device="cpu", progress=False)[0]


def numbered(model, rows, capacity):
    cache = KVCache(model, rows, capacity, allocate=True)
    for layer in cache.cache.layers:
        for row in range(rows):
            layer.keys[row].fill_(row)
            layer.values[row].fill_(-row)
    return cache


@pytest.mark.parametrize(("keep", "order"), [([0, 2, 3], [0, 3, 2]), ([1, 2], [2, 1]), ([0, 1], [0, 1]), ([3], [3])])
def test_the_last_rows_fill_the_holes(keep, order):
    """Rows past the kept count move into the places of the rows that left, in order."""
    assert filling_holes(keep) == order
    assert sorted(order) == keep


def test_keep_rows_moves_rows_in_place_when_they_fill_holes(model):
    cache = numbered(model, 4, 6)
    before = [layer.keys.data_ptr() for layer in cache.cache.layers]
    cache.keep_rows(torch.tensor(filling_holes([0, 2, 3])))  # row 1 left: row 3 takes its place
    for layer, pointer in zip(cache.cache.layers, before):
        assert layer.keys.shape[0] == layer.values.shape[0] == 3
        assert layer.keys.data_ptr() == pointer  # the same memory, cut to three rows
        assert [int(layer.keys[row, 0, 0, 0]) for row in range(3)] == [0, 3, 2]
        assert [int(layer.values[row, 0, 0, 0]) for row in range(3)] == [0, -3, -2]


def test_keep_rows_in_any_other_order_gathers(model):
    cache = numbered(model, 4, 6)
    before = [layer.keys.data_ptr() for layer in cache.cache.layers]
    cache.keep_rows(torch.tensor([2, 0]))  # row 0 moves after row 2: not a hole being filled
    for layer, pointer in zip(cache.cache.layers, before):
        assert layer.keys.data_ptr() != pointer
        assert [int(layer.keys[row, 0, 0, 0]) for row in range(2)] == [2, 0]
