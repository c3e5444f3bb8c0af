"""AutoDQ: reply parsing, per-item judging, and the summary arithmetic against hand-computed values."""

import asyncio

import pytest

from tarsier.eval import autodq
from tarsier.eval.annotations import load_predictions
from tarsier.eval.judge import Judge, JudgeReplyError, JudgeSettings, ReplyFormatError
from tarsier.eval.prompts import DEFAULT_PROMPTS


def record(subset, recall, precision, **extra):
    return {
        "subset": subset,
        "success": True,
        "recall": {"score": recall},
        "precision": {"score": precision},
        "extra_info": extra,
    }


def test_f1_of_means_per_subset_and_overall():
    records = [
        record("a", 0.5, 1.0, n_subjects=1, n_shots=1, n_events=3),
        record("a", 1.0, 0.5, n_subjects=2, n_shots=2, n_events=4),
        record("b", 0.0, 0.0, n_subjects=4, n_shots=7, n_events=9),
        {"subset": "b", "success": False, "extra_info": {"n_subjects": 1}},
    ]
    summary = autodq.summarize(records)
    a, b = summary["subsets"]
    assert a["subset"] == "a" and a["recall"] == pytest.approx(75) and a["precision"] == pytest.approx(75)
    assert a["f1"] == pytest.approx(75) and (a["success"], a["failed"]) == (2, 0)
    assert b["f1"] == 0 and (b["success"], b["failed"]) == (1, 1)  # R + P = 0 gives F1 0, not a crash
    overall = summary["overall"]
    # Overall: means of the per-subset means (0.375, 0.375), not of the items.
    assert overall["recall"] == pytest.approx(37.5) and overall["precision"] == pytest.approx(37.5)
    assert overall["f1"] == pytest.approx(37.5) and (overall["success"], overall["failed"]) == (3, 1)
    subjects = {c["bucket"]: c for c in summary["buckets"]["subjects"]}
    assert subjects["<=1"]["count"] == 1 and subjects[">=4"]["count"] == 1 and subjects["3"]["count"] == 0
    assert subjects["3"]["f1"] is None  # an empty bucket has no score
    events = {c["bucket"]: c for c in summary["buckets"]["events"]}
    assert [events[k]["count"] for k in ("<=3", "4-5", "6-7", ">=8")] == [1, 1, 0, 1]
    shots = {c["bucket"]: c for c in summary["buckets"]["shots"]}
    assert shots[">=4"]["count"] == 1 and shots[">=4"]["recall"] == 0


def test_uneven_subsets_weigh_equally_in_overall():
    records = [record("a", 1.0, 1.0)] * 3 + [record("b", 0.0, 1.0)]
    overall = autodq.summarize(records)["overall"]
    assert overall["recall"] == pytest.approx(50)  # (1 + 0) / 2, not 3 / 4
    assert overall["f1"] == pytest.approx(100 * 2 * 0.5 * 1 / 1.5)


def test_parse_events_tolerates_fences_and_rejects_wrong_shapes():
    assert autodq.parse_events('```json\n{"events": ["A runs.", " ", "B sits"],}\n```') == ["A runs.", "B sits"]
    assert autodq.parse_events("{'events': []}") == []
    for bad in ('{"events": "A runs"}', '{"event": []}', '{"events": [1, 2]}', "no json here"):
        with pytest.raises(ReplyFormatError):
            autodq.parse_events(bad)


def test_relationship_parser_checks_count_and_labels():
    parse = autodq.relationship_parser(["e1", "e2"])
    reply = '{"events": [{"event": "x", "relationship": "Entailment.", "reason": "ok"}, {"relationship": "neutral"}]}'
    assert [r["relationship"] for r in parse(reply)] == ["entailment", "neutral"]
    assert parse(reply)[0]["event"] == "e1"  # our event text is kept, not the judge's copy
    with pytest.raises(ReplyFormatError, match="expected 2"):
        parse('{"events": [{"relationship": "entailment"}]}')
    with pytest.raises(ReplyFormatError, match="unknown relationship"):
        parse('{"events": [{"relationship": "yes"}, {"relationship": "no"}]}')


class ScriptedJudge(Judge):
    """A Judge whose replies come from a function of the messages (no HTTP)."""

    def __init__(self, answer):
        super().__init__(JudgeSettings(model="m", parse_retries=1), client=object())
        self.answer = answer
        self.prompts_seen = []

    async def _complete(self, request):
        self.prompts_seen.append(request["messages"][-1]["content"])
        return self.answer(request["messages"])


def test_judge_item_uses_annotated_events_and_counts_only_entailment(dream_predictions):
    from eval_helpers import default_answer

    items = load_predictions([dream_predictions]).items["dream"]
    judge = ScriptedJudge(default_answer)
    first = asyncio.run(autodq.judge_item(items[0], judge, DEFAULT_PROMPTS))
    assert first["success"] and first["reference_events_from"] == "annotation"
    assert first["reference_events"] == ["a man walks", "a dog runs"]
    assert first["prediction_events"] == ["a man walks", "a cat sleeps"]
    assert (first["recall"]["hits"], first["recall"]["total"], first["recall"]["score"]) == (1, 2, 0.5)
    assert first["precision"]["score"] == 0.5
    assert len(judge.prompts_seen) == 3  # one extraction, two entailment calls
    # The prediction is lower-cased and double quotes become single ones before extraction.
    assert all("A man walks" not in p for p in judge.prompts_seen)
    empty = asyncio.run(autodq.judge_item(items[3], ScriptedJudge(default_answer), DEFAULT_PROMPTS))
    assert empty["recall"] == {"score": 1.0, "hits": 0, "total": 0, "relationships": []}
    extracted = asyncio.run(autodq.judge_item(items[2], ScriptedJudge(default_answer), DEFAULT_PROMPTS))
    assert extracted["reference_events_from"] == "judge"
    assert extracted["reference_events"] == ["a car stops", "a man exits"]


def test_judge_item_failure_is_recorded_not_raised(dream_predictions):
    items = load_predictions([dream_predictions]).items["dream"]
    judge = ScriptedJudge(lambda messages: "I cannot answer that.")
    result = asyncio.run(autodq.judge_item(items[0], judge, DEFAULT_PROMPTS))
    assert not result["success"] and "no usable judge reply after 2 attempts" in result["error"]
    assert result["failed_replies"] == ["I cannot answer that."] * 2
    assert issubclass(JudgeReplyError, Exception)
