"""The model thread: batches formed on arrival, rows that end on their own, exclusive work, draining."""

import threading
import time

import pytest

from tarsier.engine.generation import generate_ids
from tarsier.engine.loading import load_pretrained
from tarsier.engine.scheduler import Job, QueueFull, Scheduler, ShuttingDown
from tarsier.engine.settings import GenerationSettings


@pytest.fixture(scope="module")
def loaded(fast_checkpoint):
    return load_pretrained(fast_checkpoint, device="cpu", max_n_frames=4, progress=False)


class Recorder:
    """A job's tokens and end, with the time each arrived."""

    def __init__(self):
        self.tokens, self.ended, self.error, self.end_time = [], threading.Event(), None, None

    def job(self, loaded, prompt, max_new_tokens):
        _, processor = loaded
        ids = processor.encode_prompt(processor.format_prompt(prompt, 0), 0)
        return Job(ids, None, GenerationSettings(max_new_tokens=max_new_tokens), self.tokens.append, self.end)

    def end(self, error):
        self.error, self.end_time = error, time.monotonic()
        self.ended.set()


def alone(loaded, prompt, max_new_tokens):
    model, processor = loaded
    inputs = processor(text=prompt)
    return generate_ids(model, processor, inputs, GenerationSettings(max_new_tokens=max_new_tokens))[0].tolist()


def test_jobs_that_arrive_together_share_a_batch_and_each_ends_with_its_own_row(loaded):
    scheduler = Scheduler(*loaded, max_batch_size=4, batch_wait_ms=500)
    try:
        prompts = [("Hello there", 3), ("What is in the video?", 40), ("Tell me a story", 12)]
        records = [Recorder() for _ in prompts]
        for record, (prompt, tokens) in zip(records, prompts):
            scheduler.submit(record.job(loaded, prompt, tokens))
        for record in records:
            assert record.ended.wait(60) and record.error is None
        assert scheduler.stats.batch_sizes == {3: 1}
        for record, (prompt, tokens) in zip(records, prompts):
            assert record.tokens == alone(loaded, prompt, tokens)
        # the 3-token row was answered before the 40-token row finished
        assert records[0].end_time < records[1].end_time
    finally:
        scheduler.close()


def test_a_request_that_arrives_mid_batch_joins_it_and_answers_before_the_batch_ends(loaded):
    """Continuous batching: the late request's first token comes while the long row still decodes,
    and both replies are the greedy replies each gets alone."""
    scheduler = Scheduler(*loaded, max_batch_size=4, batch_wait_ms=0)
    try:
        long, late = Recorder(), Recorder()
        first_token = threading.Event()
        late_job = late.job(loaded, "Tell me a story", 6)
        on_token = late_job.on_token
        late_job.on_token = lambda token: (on_token(token), first_token.set())
        scheduler.submit(long.job(loaded, "What is in the video?", 60))
        while len(long.tokens) < 3:
            time.sleep(0.005)
        scheduler.submit(late_job)
        assert first_token.wait(60)
        assert not long.ended.is_set()  # the long row was still decoding when the late one answered
        for record in (long, late):
            assert record.ended.wait(60) and record.error is None
        assert late.end_time < long.end_time
        assert scheduler.stats.batch_sizes == {1: 1} and scheduler.stats.joined == 1
        assert long.tokens == alone(loaded, "What is in the video?", 60)
        assert late.tokens == alone(loaded, "Tell me a story", 6)
    finally:
        scheduler.close()


def test_full_queue_cancelled_jobs_and_draining(loaded):
    scheduler = Scheduler(*loaded, max_batch_size=1, batch_wait_ms=0, max_queue=2)
    gate, started = threading.Event(), threading.Event()
    blocker = Recorder().job(loaded, "Hello", 3)
    blocker.on_token = lambda token: (started.set(), gate.wait(30))  # holds the model thread
    scheduler.submit(blocker)
    assert started.wait(30)
    waiting = [Recorder() for _ in range(2)]
    for record in waiting:
        scheduler.submit(record.job(loaded, "Hi", 5))
    with pytest.raises(QueueFull):
        scheduler.submit(Recorder().job(loaded, "Hi", 5))
    assert scheduler.queue_depth == 2
    scheduler._waiting[0].cancelled = True  # as a client that left while queued
    gate.set()
    scheduler.close(drain=True)  # drains: the queued job still runs
    assert waiting[0].ended.is_set() and waiting[0].error == "cancelled" and waiting[0].tokens == []
    assert waiting[1].ended.is_set() and waiting[1].error is None and len(waiting[1].tokens) == 5
    with pytest.raises(ShuttingDown):
        scheduler.submit(Recorder().job(loaded, "Hi", 5))


def test_settings_are_checked(loaded):
    for bad in ({"max_batch_size": 0}, {"batch_wait_ms": -1}, {"max_queue": 0}):
        with pytest.raises(Exception, match="must be"):
            Scheduler(*loaded, **bad)


def test_a_batch_waits_for_requests_still_decoding_their_media(loaded):
    """A burst is one batch even when the later requests need longer to prepare than batch_wait."""
    scheduler = Scheduler(*loaded, max_batch_size=4, batch_wait_ms=0, prepare_wait_ms=3000)
    try:
        records = [Recorder() for _ in range(3)]
        started = threading.Barrier(3)

        def arrive(index):
            with scheduler.preparing():
                started.wait()
                time.sleep(0.3 * index)  # media decoding of different lengths
                scheduler.submit(records[index].job(loaded, f"Question {index}", 3))

        threads = [threading.Thread(target=arrive, args=(n,)) for n in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for record in records:
            assert record.ended.wait(60) and record.error is None
        assert scheduler.stats.batch_sizes == {3: 1}
        assert scheduler.in_flight == 0 and scheduler.preparing_count == 0
    finally:
        scheduler.close()


def test_a_failing_row_ends_alone_and_the_others_finish_as_they_would_have(loaded, monkeypatch):
    """A batch that fails mid-decode: each unfinished row goes on alone from the tokens it has sent;
    the row that fails alone too gets its own error, the others their full greedy replies."""
    model, processor = loaded
    prompts = [("Hello there", 12), ("Tell me about zebras", 12), ("What is in the video?", 12), ("Tell me a story", 12)]
    ids = [set(processor.encode_prompt(processor.format_prompt(prompt, 0), 0)) for prompt, _ in prompts]
    poison = next(iter(ids[1] - ids[0] - ids[2] - ids[3]))  # a token only the second prompt holds
    expected = [alone(loaded, prompt, tokens) for prompt, tokens in prompts]
    forward, steps = model.forward, [0]

    def failing(*args, input_ids=None, **kwargs):
        if input_ids is not None and input_ids.shape[0] > 1 and input_ids.shape[1] == 1:
            steps[0] += 1
            if steps[0] == 5:
                raise RuntimeError("boom in the batch")
        alone_prefill = input_ids is not None and input_ids.shape[0] == 1 and input_ids.shape[1] > 1
        if steps[0] >= 5 and alone_prefill and (input_ids == poison).any():  # after the batch failed
            raise RuntimeError("boom in the poisoned row")
        return forward(*args, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(model, "forward", failing)
    scheduler = Scheduler(*loaded, max_batch_size=4, batch_wait_ms=500)
    try:
        records = [Recorder() for _ in prompts]
        for record, (prompt, tokens) in zip(records, prompts):
            scheduler.submit(record.job(loaded, prompt, tokens))
        for record in records:
            assert record.ended.wait(60)
    finally:
        scheduler.close()
    assert scheduler.stats.batch_sizes[4] == 1 and steps[0] == 5
    assert records[1].error == "RuntimeError: boom in the poisoned row"
    assert len(records[1].tokens) == 5  # what it had sent before the batch failed
    for row in (0, 2, 3):
        assert records[row].error is None
        assert records[row].tokens == expected[row]
