"""KVCache row surgery: a finished row's place is taken by the last rows, in place; spare rows take
joining rows; a decode step sees the columns written so far; a cache is moved a layer at a time."""

import pytest
import torch

from tarsier.engine.kv_cache import KVCache, filling_holes
from tarsier.engine.loading import load_pretrained


@pytest.fixture(scope="module")
def model(fast_checkpoint):
    return load_pretrained(fast_checkpoint, device="cpu", progress=False)[0]


def numbered(model, rows, capacity, spare_rows=0):
    cache = KVCache(model, rows, capacity, allocate=True, spare_rows=spare_rows)
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


def test_spare_rows_are_filled_through_a_view_then_taken_into_use(model):
    cache = numbered(model, 2, 6, spare_rows=2)
    assert (cache.rows, cache.spare_rows) == (2, 2)
    assert all(layer.keys.shape[0] == 2 for layer in cache.cache.layers)  # the model sees the rows in use
    view = cache.positions_view(model, 2, 4, 2)  # the first spare row, its last two columns
    for layer in view.cache.layers:
        layer.keys.fill_(7)
    cache.add_rows(1)
    assert (cache.rows, cache.spare_rows) == (3, 1)
    for layer in cache.cache.layers:
        assert layer.keys.shape[0] == 3 and layer.keys[2, 0, 4:, 0].tolist() == [7, 7]
    with pytest.raises(ValueError, match="do not fit"):
        cache.add_rows(2)


def test_rows_that_leave_in_place_become_spare(model):
    cache = numbered(model, 4, 6)
    cache.keep_rows(torch.tensor(filling_holes([0, 2])))
    assert (cache.rows, cache.spare_rows) == (2, 2)
    cache.keep_rows(torch.tensor([1, 0]))  # gathered: a new cache with no spare rows
    assert (cache.rows, cache.spare_rows) == (2, 0)


def test_attend_shows_the_first_columns_and_writes_land_in_the_store(model):
    cache = numbered(model, 3, 8)
    for layer in cache.cache.layers:  # as in use: nothing written past the columns attended
        layer.keys[:, :, 3:] = 0
    cache.attend(3)
    assert cache.width == 3 and cache.capacity == 8
    for layer in cache.cache.layers:
        assert layer.keys.shape[2] == 3 and layer.max_cache_len == 3
    cache.keep_rows(torch.tensor([2]))  # row 2 moves into row 0's place
    cache.attend(8)
    for layer in cache.cache.layers:
        assert layer.keys.shape == (1, layer.keys.shape[1], 8, layer.keys.shape[3])
        assert layer.keys[0, 0, :, 0].tolist() == [2] * 3 + [0] * 5


def test_moved_copies_rows_a_layer_at_a_time_and_empties_the_source(model):
    source = numbered(model, 3, 5)
    moved = KVCache.moved(model, source, 2, 7, [(0, 2), (1, 0)], length=4, offset=3, source_offset=1, spare_rows=1)
    assert (moved.rows, moved.spare_rows, moved.capacity) == (2, 1, 7)
    for layer in moved.cache.layers:
        assert layer.keys[0, 0, :, 0].tolist() == [0, 0, 0, 2, 2, 2, 2]
        assert layer.values[1, 0, :, 0].tolist() == [0, 0, 0, 0, 0, 0, 0]  # row 0 was numbered 0
    assert all(layer.keys is None and layer.values is None for layer in source.cache.layers)
