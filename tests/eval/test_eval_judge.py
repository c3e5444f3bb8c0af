"""The judge through the real ``openai`` client against a scripted server on 127.0.0.1:
tolerant parsing, retries, timeouts, repair turns, failures, cache, concurrency."""

import asyncio
import json
import sqlite3

import pytest
from eval_helpers import Reply

from tarsier.eval import autodq
from tarsier.eval.judge import (
    Judge,
    JudgeReplyError,
    JudgeSettings,
    JudgeUnavailableError,
    ReplyFormatError,
    parse_json_object,
)
from tarsier.eval.judge_cache import JudgeCache, request_key

MESSAGES = [{"role": "user", "content": "Description:\nA man walks. A dog runs.\n\nList the events."}]


def settings(url, **overrides):
    values = dict(
        model="judge-test",
        base_url=url,
        api_key="test-key",
        timeout=2.0,
        backoff_base=0.01,
        backoff_max=0.05,
        max_retries=3,
        parse_retries=2,
        concurrency=4,
    )
    values.update(overrides)
    return JudgeSettings(**values)


def ask(judge_settings, cache=None, messages=MESSAGES, parse=autodq.parse_events):
    async def go():
        judge = Judge(judge_settings, cache=cache)
        try:
            return await judge.ask(messages, parse, placeholder=[]), judge.stats
        finally:
            await judge.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('{"events": ["a"]}', {"events": ["a"]}),
        ('```json\n{"events": ["a", "b",],}\n```', {"events": ["a", "b"]}),
        (
            "Sure! Here it is:\n```\n{'events': ['a dog\\'s tail wags']}\n```\nHope this helps.",
            {"events": ["a dog's tail wags"]},
        ),
        ("{'pred': 'yes', 'score': 4, 'ok': true, 'x': null}", {"pred": "yes", "score": 4, "ok": True, "x": None}),
        ('prefix {"a": "text, ]with, } brackets",} suffix', {"a": "text, ]with, } brackets"}),
        ('```json\n{"events": ["cut off"]}', {"events": ["cut off"]}),
    ],
)
def test_parse_json_object_is_tolerant(reply, expected):
    assert parse_json_object(reply) == expected


@pytest.mark.parametrize("reply", ["", "no json", "[1, 2]", '{"events": [', "{'a': undefined_name}"])
def test_parse_json_object_rejects_what_is_not_an_object(reply):
    with pytest.raises(ReplyFormatError):
        parse_json_object(reply)


def test_retries_429_500_and_timeouts_then_succeeds(judge_server):
    judge_server.script.extend(
        [
            Reply(status=429, headers={"Retry-After": "0.01"}),
            Reply(status=503),
            Reply(delay=1.0),
            Reply(content='```json\n{"events": ["x"]}\n```'),
        ]
    )
    answer, stats = ask(settings(judge_server.url, timeout=0.3))
    assert answer.value == ["x"] and not answer.cached
    assert len(judge_server.requests) == 4
    assert (stats.requests, stats.replies, stats.retries) == (4, 1, 3)
    assert judge_server.requests[0]["model"] == "judge-test" and judge_server.requests[0]["temperature"] == 0.0


def test_endpoint_that_stays_down_fails_after_bounded_retries(judge_server, closed_port_url):
    judge_server.script.extend([Reply(status=500)] * 10)
    with pytest.raises(JudgeUnavailableError, match=r"unavailable after 3 attempts: last error: HTTP 500"):
        ask(settings(judge_server.url, max_retries=2))
    assert len(judge_server.requests) == 3
    with pytest.raises(JudgeUnavailableError, match="unavailable after 2 attempts: last error: connection failed"):
        ask(settings(closed_port_url, max_retries=1))


def test_rejected_key_stops_at_once_and_bad_request_fails_only_the_item(judge_server):
    judge_server.script.append(Reply(status=401))
    with pytest.raises(JudgeUnavailableError, match="refused the request: HTTP 401"):
        ask(settings(judge_server.url))
    judge_server.script.append(Reply(status=400))
    with pytest.raises(JudgeReplyError, match="rejected this request: HTTP 400"):
        ask(settings(judge_server.url))
    assert len(judge_server.requests) == 2  # neither was retried


def test_malformed_reply_gets_a_repair_turn_then_fails_with_all_replies(judge_server):
    judge_server.script.extend([Reply(content="the events are: walking"), Reply(content='{"events": ["ok"]}')])
    answer, stats = ask(settings(judge_server.url))
    assert answer.value == ["ok"] and stats.malformed == 1
    repair = judge_server.requests[1]["messages"]
    assert [m["role"] for m in repair] == ["user", "assistant", "user"]
    assert repair[1]["content"] == "the events are: walking" and "could not be used" in repair[2]["content"]

    judge_server.script.extend([Reply(content="{broken")] * 3)
    with pytest.raises(JudgeReplyError, match="after 3 attempts") as info:
        ask(settings(judge_server.url))
    assert info.value.replies == ["{broken"] * 3


def test_cache_hits_cost_nothing_and_key_covers_model_and_prompt(judge_server, tmp_path):
    cache = JudgeCache(tmp_path / "cache.sqlite")
    first, _ = ask(settings(judge_server.url), cache)
    second, stats = ask(settings(judge_server.url), cache)
    assert second.cached and second.value == first.value and stats.requests == 0
    assert len(judge_server.requests) == 1
    ask(settings(judge_server.url, model="other-judge"), cache)
    ask(settings(judge_server.url), cache, messages=[{"role": "user", "content": "Description:\nX.\n\n"}])
    assert len(judge_server.requests) == 3 and len(cache) == 3
    # The base URL is not part of the key: the same model served elsewhere reuses the replies.
    third, _ = ask(settings("http://127.0.0.1:9/v1"), cache)
    assert third.cached
    cache.close()
    rows = sqlite3.connect(tmp_path / "cache.sqlite").execute("SELECT model, request, reply FROM replies").fetchall()
    assert {r[0] for r in rows} == {"judge-test", "other-judge"}
    assert all(json.loads(r[1])["messages"] for r in rows)


def test_only_valid_replies_are_cached(judge_server, tmp_path):
    cache = JudgeCache(tmp_path / "cache.sqlite")
    judge_server.script.extend([Reply(content="nope")] * 3)
    with pytest.raises(JudgeReplyError):
        ask(settings(judge_server.url), cache)
    assert len(cache) == 0
    answer, _ = ask(settings(judge_server.url), cache)  # a rerun asks again, and succeeds
    assert answer.value == ["A man walks", "A dog runs"] and len(cache) == 1
    key = request_key({"model": "judge-test", "messages": MESSAGES, "temperature": 0.0})
    assert json.loads(cache.get(key)) == {"events": ["A man walks", "A dog runs"]}


def test_concurrency_limit_is_respected(judge_server):
    judge_server.script.extend([Reply(delay=0.1)] * 12)
    judge_settings = settings(judge_server.url, concurrency=3)

    async def go():
        judge = Judge(judge_settings)
        try:
            messages = [[{"role": "user", "content": f"Description:\nEvent {i}.\n\n"}] for i in range(12)]
            return await asyncio.gather(*(judge.ask(m, autodq.parse_events, []) for m in messages))
        finally:
            await judge.aclose()

    answers = asyncio.run(go())
    assert [a.value for a in answers] == [[f"Event {i}"] for i in range(12)]
    assert judge_server.max_in_flight == 3


def test_dry_run_sends_nothing_and_counts_calls(tmp_path):
    judge = Judge(JudgeSettings(model="m"), dry_run=True)
    answer = asyncio.run(judge.ask(MESSAGES, autodq.parse_events, placeholder=["(event)"]))
    assert answer.value == ["(event)"] and judge.stats.planned == 1


def test_unusable_cache_file_is_a_clear_error(tmp_path):
    from tarsier.errors import TarsierError

    bad = tmp_path / "cache.sqlite"
    bad.write_text("this is not sqlite" * 100)
    with pytest.raises(TarsierError, match="not a usable judge cache"):
        JudgeCache(bad)
