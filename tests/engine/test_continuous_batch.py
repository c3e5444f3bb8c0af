"""Continuous batching and the prefix cache, checked where they can fail: every step's logits
against one uncached forward of the same sequence, with requests joining mid-decode and a
cached prefix reused, for both families (Tarsier2's M-RoPE positions and deltas included)."""

import pytest
import torch

from tarsier.engine.continuous_batch import ContinuousBatch, Job
from tarsier.engine.generation import generate_ids
from tarsier.engine.kv_cache import KVCache
from tarsier.engine.loading import load_pretrained
from tarsier.engine.prefix_cache import PrefixCache
from tarsier.engine.settings import GenerationSettings
from tarsier.media import write_video

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("continuous")
    paths = []
    for index, colour in enumerate(((200, 30, 30), (30, 60, 220))):
        frames = []
        for step in range(8):
            frame = torch.full((48, 64, 3), 90, dtype=torch.uint8)
            frame[10:30, 4 + 6 * step : 16 + 6 * step] = torch.tensor(colour, dtype=torch.uint8)
            frames.append(frame.numpy())
        write_video(folder / f"clip{index}.mp4", frames, fps=8)
        paths.append(folder / f"clip{index}.mp4")
    return paths


@pytest.fixture(params=[True, False], ids=["shared-prefix", "copied-prefix"])
def share(request):
    """Rows attend a cached prefix where it is held (one copy), or each row gets a copy of it."""
    return request.param


@pytest.fixture(scope="module", params=["tarsier", "tarsier2"])
def loaded(request, fast_checkpoint, tarsier2_checkpoint):
    checkpoint = fast_checkpoint if request.param == "tarsier" else tarsier2_checkpoint
    return load_pretrained(checkpoint, device="cpu", max_n_frames=4, progress=False)


class Recorded:
    """A job whose tokens are collected; the engine's logits for each are recorded by ``recording``."""

    def __init__(self, processor, question, frames, max_new_tokens, remember=False, ids=None, media=None):
        if ids is None:
            ids, media = processor.encode_item(question, frames)
        self.tokens, self.ended, self.logits = [], [], []
        self.job = Job(list(ids), media, GenerationSettings(max_new_tokens=max_new_tokens), self.tokens.append,
                       self.ended.append, remember_reply=remember)


@pytest.fixture
def recording(monkeypatch):
    """Record, for every row at every step, the logits its token was chosen from."""
    emit = ContinuousBatch._emit
    jobs = {}

    def recorded_emit(self):
        for row, logits in zip(self._rows, self._logits):
            if id(row.job) in jobs:
                jobs[id(row.job)].logits.append(logits.clone())
        emit(self)

    monkeypatch.setattr(ContinuousBatch, "_emit", recorded_emit)
    return jobs


def full_forward_logits(model, ids, media):
    """Logits at every position of one uncached forward of the whole sequence."""
    inputs = torch.tensor([ids])
    media = {k: v.to(model.dtype) if v.is_floating_point() else v for k, v in (media or {}).items()}
    with torch.inference_mode():
        return model(input_ids=inputs, attention_mask=torch.ones_like(inputs), use_cache=False, **media).logits[0]


def check_against_full_forward(model, record):
    """Each generated token's logits == the uncached forward's at the position before it."""
    full = full_forward_logits(model, record.job.ids + record.tokens, record.job.media)
    prompt = len(record.job.ids)
    assert len(record.logits) == len(record.tokens) > 0
    for step, logits in enumerate(record.logits):
        expected = full[prompt - 1 + step]
        assert torch.allclose(logits, expected, atol=TOLERANCE, rtol=0), (step, (logits - expected).abs().max())


def check_as_alone(model, processor, record):
    """The request ended normally, each step equals a full forward, and the reply is the request's alone."""
    assert record.ended == [None]
    check_against_full_forward(model, record)
    alone = generate_ids(model, processor, processor.collate([(record.job.ids, record.job.media or {})]),
                         GenerationSettings(max_new_tokens=record.job.settings.max_new_tokens))[0].tolist()
    assert record.tokens == alone[: len(record.tokens)]


def run(engine, arrivals):
    """Step the engine; ``arrivals`` maps a step number to the jobs that arrive before it."""
    step = 0
    while engine.busy() or any(at >= step for at in arrivals):
        for record in arrivals.get(step, []):
            engine.add(record.job)
        if engine.busy():
            engine.step()
        step += 1


def test_staggered_requests_and_a_reused_prefix_match_one_full_forward(loaded, videos, recording, share):
    model, processor = loaded
    first, second = (processor.load_media(str(path)) for path in videos)
    cache = PrefixCache(budget_bytes=1 << 30)
    engine = ContinuousBatch(model, processor, max_batch_size=4, prefix_cache=cache, share_prefixes=share)
    assert engine.shares_prefixes == share
    records = [
        Recorded(processor, "Describe the video.", first, 9),
        Recorded(processor, "What colour is the block?", first, 6),  # joins mid-decode; the first one's prefix
        Recorded(processor, "Describe the video.", second, 7),  # another video: a miss
        Recorded(processor, "Hello there", None, 5),  # text only
    ]
    for record in records:
        recording[id(record.job)] = record
    run(engine, {0: records[:1], 3: records[1:3], 5: records[3:]})
    assert engine.stats.batch_sizes == {1: 1} and engine.stats.joined == 3
    assert (cache.stats.hits, cache.stats.misses) == (1, 3)
    assert cache.stats.reused_positions == _through_last_media_id(processor, records[1])
    for record in records:
        check_as_alone(model, processor, record)


def _through_last_media_id(processor, record):
    """The prompt's length up to and including its last media id: the shared prefix."""
    media_ids = processor.media_token_ids
    return 1 + max(i for i, token in enumerate(record.job.ids) if token in media_ids)


def test_a_follow_up_turn_continues_the_conversation_s_cached_kv(loaded, videos, recording, share):
    model, processor = loaded
    frames = processor.load_media(str(videos[0]))
    cache = PrefixCache(budget_bytes=1 << 30)
    engine = ContinuousBatch(model, processor, max_batch_size=4, prefix_cache=cache, share_prefixes=share)
    ids, media = processor.encode_conversation([{"role": "user", "content": "What happens?"}], frames)
    first = Recorded(processor, None, None, 6, remember=True, ids=ids, media=media)
    recording[id(first.job)] = first
    run(engine, {0: [first]})
    follow_ids = ids + processor.close_reply(first.tokens) + processor.follow_up_ids("And then?")
    second = Recorded(processor, None, None, 5, remember=True, ids=follow_ids, media=media)
    recording[id(second.job)] = second
    prefilled_before = cache.stats.prefilled_positions
    run(engine, {0: [second]})
    assert cache.stats.hits == 1
    # only the reply's last token, the turn's end and the question were prefilled
    assert cache.stats.prefilled_positions - prefilled_before == len(follow_ids) - (len(ids) + len(first.tokens) - 1)
    for record in (first, second):
        check_against_full_forward(model, record)


def test_the_cache_stays_within_its_budget_and_evicts_the_least_recently_used(loaded, videos, share):
    model, processor = loaded
    clips = [processor.load_media(str(path)) for path in videos]
    probe = PrefixCache(budget_bytes=1 << 30)
    engine = ContinuousBatch(model, processor, prefix_cache=probe, share_prefixes=share)
    engine.add(Recorded(processor, "Describe the video.", clips[0], 1).job)
    run(engine, {})
    one_entry = probe.nbytes
    cache = PrefixCache(budget_bytes=one_entry + one_entry // 2)  # room for one video's prefix
    engine = ContinuousBatch(model, processor, prefix_cache=cache, share_prefixes=share)
    for clip in (clips[0], clips[1], clips[0]):
        engine.add(Recorded(processor, "Describe the video.", clip, 1).job)
        run(engine, {})
    assert (cache.stats.hits, cache.stats.misses, cache.stats.evictions) == (0, 3, 2)
    assert len(cache) == 1 and cache.nbytes == one_entry <= cache.budget_bytes


def test_rows_asking_about_one_video_hold_its_prefix_once(loaded, videos, recording, monkeypatch):
    """Three questions about one video in one batch: the prefix is prefilled once, held once (the
    batch's cache holds only each row's own positions), the three questions (of different lengths)
    are prefilled together in one forward, and every step still equals a full forward."""
    model, processor = loaded
    frames = processor.load_media(str(videos[0]))
    cache = PrefixCache(budget_bytes=1 << 30)
    engine = ContinuousBatch(model, processor, max_batch_size=4, prefix_cache=cache, prefills_per_step=3)
    prefills = []
    for name in ("_prefill", "_prefill_together"):
        method = getattr(ContinuousBatch, name)
        monkeypatch.setattr(ContinuousBatch, name, lambda self, *args, method=method, name=name: prefills.append(name)
                            or method(self, *args))
    records = [Recorded(processor, question, frames, 6) for question in ("Describe the video.", "What moves?", "Colours?")]
    for record in records:
        recording[id(record.job)] = record
        engine.add(record.job)
    engine.step()
    prefix = _through_last_media_id(processor, records[0])
    (entry,) = cache._entries.values()
    assert len(entry.ids) == prefix and entry.users == 3
    assert engine._cache.capacity < prefix  # no row holds a copy of the video's positions
    assert engine._shared.plain == 0 and engine._shared.groups == [(0, 3, entry.cache)]
    assert (cache.stats.hits, cache.stats.misses) == (2, 1)
    assert prefills == ["_prefill_together"]
    run(engine, {})
    assert entry.users == 0
    for record in records:
        assert record.ended == [None]
        check_against_full_forward(model, record)


def test_a_row_alone_with_its_prefix_gets_a_copy_and_rows_sharing_one_attend_it_where_held(loaded, videos, recording):
    """Two videos, one question about the first and two about the second: the lone row holds a copy
    of its prefix (no group of one in every decode step), the two share theirs; all equal a full forward."""
    model, processor = loaded
    clips = [processor.load_media(str(path)) for path in videos]
    cache = PrefixCache(budget_bytes=1 << 30)
    engine = ContinuousBatch(model, processor, max_batch_size=3, prefix_cache=cache)
    records = [Recorded(processor, "Describe the video.", clips[0], 5), Recorded(processor, "Describe the video.", clips[1], 6),
               Recorded(processor, "What moves?", clips[1], 4)]
    for record in records:
        recording[id(record.job)] = record
        engine.add(record.job)
    engine.step()
    assert [row.shared for row in engine._rows] == [False, True, True]  # laid out: plain rows first
    assert engine._shared.plain == 1 and [(first, end) for first, end, _ in engine._shared.groups] == [(1, 3)]
    lone = _through_last_media_id(processor, records[0])
    assert engine._cache.capacity >= lone  # the lone row's prefix is copied into its row
    assert sorted(entry.users for entry in cache._entries.values()) == [0, 2]  # only shared rows pin an entry
    run(engine, {})
    for record in records:
        assert record.ended == [None]
        check_against_full_forward(model, record)


def test_questions_about_one_video_joining_one_by_one_share_its_prefix_from_the_second(loaded, videos, recording):
    """The first question about a video runs alone with a copy of its prefix; the ones that join later
    attend the prefix where the cache holds it, together (as a window of ``bench run`` refills its batch)."""
    model, processor = loaded
    frames = processor.load_media(str(videos[0]))
    cache = PrefixCache(budget_bytes=1 << 30)
    engine = ContinuousBatch(model, processor, max_batch_size=3, prefix_cache=cache)
    records = [Recorded(processor, question, frames, 8) for question in ("Describe the video.", "What moves?", "Colours?")]
    for record in records:
        recording[id(record.job)] = record
    for record in records:
        engine.add(record.job)
        engine.step()
    by_job = {id(row.job): row for row in engine._rows}
    assert [by_job[id(record.job)].shared for record in records] == [False, True, True]
    assert (cache.stats.hits, cache.stats.misses) == (2, 1)
    run(engine, {})
    for record in records:
        assert record.ended == [None]
        check_against_full_forward(model, record)


def test_a_prefix_in_use_is_not_evicted(loaded, videos, recording):
    """With room for one video's prefix, a second video's prefix does not push out the one two running
    rows attend: it is used by its own row without being kept, and all answer as alone."""
    model, processor = loaded
    clips = [processor.load_media(str(path)) for path in videos]
    probe = PrefixCache(budget_bytes=1 << 30)
    engine = ContinuousBatch(model, processor, prefix_cache=probe)
    engine.add(Recorded(processor, "Describe the video.", clips[0], 1).job)
    run(engine, {})
    cache = PrefixCache(budget_bytes=probe.nbytes + probe.nbytes // 2)
    engine = ContinuousBatch(model, processor, max_batch_size=3, prefix_cache=cache, prefills_per_step=2)
    records = [Recorded(processor, "Describe the video.", clips[0], 8), Recorded(processor, "What moves?", clips[0], 7),
               Recorded(processor, "Describe the video.", clips[1], 4)]
    for record in records:
        recording[id(record.job)] = record
    run(engine, {0: records[:2], 2: records[2:]})
    assert (cache.stats.misses, cache.stats.evictions, len(cache)) == (2, 0, 1)
    assert next(iter(cache._entries.values())).ids == tuple(records[0].job.ids[: _through_last_media_id(processor, records[0])])
    for record in records:
        assert record.ended == [None]
        check_against_full_forward(model, record)


@pytest.mark.parametrize("cache_on", [True, False], ids=["prefix-cache", "no-prefix-cache"])
def test_a_long_prompt_joining_a_stream_is_prefilled_a_chunk_per_step(loaded, videos, recording, cache_on):
    """A video's prompt arriving while a row streams is prefilled a chunk per step: the streaming row
    gets a token between chunks, and both rows' every step still equals a full forward."""
    model, processor = loaded
    first, second = (processor.load_media(str(path)) for path in videos)
    cache = PrefixCache(budget_bytes=1 << 30) if cache_on else None
    engine = ContinuousBatch(model, processor, max_batch_size=2, prefix_cache=cache, prefill_chunk=16)
    joining = Recorded(processor, "What moves?", second, 5)
    media_end = _through_last_media_id(processor, joining)
    chunks = -(-media_end // 16)
    streaming = Recorded(processor, "Describe the video.", first, chunks + 6)
    for record in (streaming, joining):
        recording[id(record.job)] = record
    engine.add(streaming.job)
    engine.step()
    engine.add(joining.job)
    filling_steps = []
    while engine.busy():
        before = len(streaming.tokens)
        engine.step()
        if engine.filling is not None:
            filling_steps.append(len(streaming.tokens) - before)
    # a step that encodes the media, then one chunk per step; the streaming row gets a token each step
    assert len(filling_steps) == chunks and all(tokens == 1 for tokens in filling_steps)
    if cache_on:
        assert len(cache) == 2 and cache.stats.misses == 2  # the chunked prefix is kept for later questions
    for record in (streaming, joining):
        assert record.ended == [None]
        check_against_full_forward(model, record)


def test_a_filling_request_can_be_cancelled_and_a_bad_one_ends_alone(loaded, videos, recording):
    model, processor = loaded
    first, second = (processor.load_media(str(path)) for path in videos)
    engine = ContinuousBatch(model, processor, max_batch_size=3, prefix_cache=PrefixCache(budget_bytes=1 << 30),
                             prefill_chunk=16)
    streaming = Recorded(processor, "Describe the video.", first, 10)
    cancelled = Recorded(processor, "What moves?", second, 5)
    ids, media = processor.encode_item("Colours?", second)
    broken = Recorded(processor, None, None, 5, ids=ids, media={name: value[:1] for name, value in media.items()})
    recording[id(streaming.job)] = streaming
    engine.add(streaming.job)
    engine.step()
    engine.add(cancelled.job)
    engine.step()
    assert engine.filling is cancelled.job
    cancelled.job.cancelled = True
    engine.add(broken.job)  # media that does not fill its slots: an error of its own
    run(engine, {})
    assert cancelled.ended == ["cancelled"] and cancelled.tokens == []
    assert len(broken.ended) == 1 and broken.ended[0] and broken.tokens == []
    assert streaming.ended == [None] and len(streaming.tokens) == 10
    check_against_full_forward(model, streaming)


def test_rows_join_spare_rows_of_the_running_cache_without_moving_the_others(loaded, videos, recording, monkeypatch):
    """The first join lays the cache out again, with spare rows and columns; later joins take spare
    rows (one of them the place of a row that left, its old positions masked) and nothing is moved.
    Each step attends only the columns written so far (a narrow step, so the view grows several
    times); every step still equals a full forward and each reply its own alone."""
    model, processor = loaded
    first, second = (processor.load_media(str(path)) for path in videos)
    monkeypatch.setattr("tarsier.engine.continuous_batch.ATTENDED_COLUMNS_STEP", 3)
    moved = []
    original = KVCache.moved
    monkeypatch.setattr(KVCache, "moved", classmethod(lambda cls, *args, **kwargs: moved.append(1) or original(*args, **kwargs)))
    widths = []
    decode = ContinuousBatch._decode
    monkeypatch.setattr(ContinuousBatch, "_decode", lambda self: (decode(self), widths.append((self._cache.width, self._cache.capacity))))
    engine = ContinuousBatch(model, processor, max_batch_size=4)
    records = [Recorded(processor, "Describe the video.", first, 14),
               Recorded(processor, "What moves?", second, 10),  # joins: laid out again, with room
               Recorded(processor, "Colours?", first, 2),  # joins in place, and leaves
               Recorded(processor, "Describe the video.", second, 6),  # in place: the row that left
               Recorded(processor, "What moves?", first, 5)]  # in place: a spare row
    for record in records:
        recording[id(record.job)] = record
    steps = {}
    engine.add(records[0].job)
    engine.step()
    for at, record in ((1, records[1]), (2, records[2]), (5, records[3]), (6, records[4])):
        while len(records[0].tokens) < at + 1:
            engine.step()
        engine.add(record.job)
        engine.step()
        steps[at] = (id(engine._cache), engine._cache.rows, engine._cache.spare_rows)
    run(engine, {})
    assert len(moved) == 1  # only the first join moved the running row
    assert steps[2][0] == steps[5][0] == steps[6][0] == steps[1][0]  # one cache from the first join on
    assert [steps[at][1] for at in (1, 2, 5, 6)] == [2, 3, 3, 4]  # the third row left before the fourth joined
    assert steps[6][2] == 0
    assert engine.stats.joined == 4
    assert any(width < capacity for width, capacity in widths)  # the empty columns were not attended
    assert len({width for width, _ in widths}) > 3
    for record in records:
        check_as_alone(model, processor, record)


def test_prompts_admitted_together_are_prefilled_in_one_forward_where_asked(loaded, videos, recording, monkeypatch):
    """``batch_prefills`` (the default on accelerators): prompts of different lengths, with and without
    media, admitted together are prefilled in one left-padded forward, at the start and when joining
    spare rows; every step still equals a full forward and each reply its own alone."""
    model, processor = loaded
    first, second = (processor.load_media(str(path)) for path in videos)
    prefills = []
    for name in ("_prefill", "_prefill_together"):
        method = getattr(ContinuousBatch, name)
        monkeypatch.setattr(ContinuousBatch, name, lambda self, rows, *args, method=method, name=name:
                            prefills.append((name, len(rows) if isinstance(rows, list) else 1)) or method(self, rows, *args))
    joins = []
    join = ContinuousBatch._join
    monkeypatch.setattr(ContinuousBatch, "_join", lambda self, admitted: joins.append(len(admitted)) or join(self, admitted))
    engine = ContinuousBatch(model, processor, max_batch_size=8, prefills_per_step=2, batch_prefills=True)
    assert not ContinuousBatch(model, processor).batch_prefills  # one at a time on CPU by default
    records = [Recorded(processor, "Describe the video.", first, 9), Recorded(processor, "Hello there", None, 6),
               Recorded(processor, "What colour is the block?", second, 8),
               Recorded(processor, "What moves?", second, 6), Recorded(processor, "Describe the video.", first, 7),
               Recorded(processor, "Hi", None, 5), Recorded(processor, "Colours?", first, 4)]
    for record in records:
        recording[id(record.job)] = record
    run(engine, {0: records[:3], 2: records[3:5], 4: records[5:]})
    assert prefills == [("_prefill_together", 3), ("_prefill_together", 2), ("_prefill_together", 2)]
    assert engine.stats.joined == 4 and joins == [2]  # the second pair took spare rows
    for record in records:
        check_as_alone(model, processor, record)
