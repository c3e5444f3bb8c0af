"""Multiple-choice parsing and accuracy, CIDEr against pycocoevalcap, open-ended QA arithmetic."""

import asyncio

import pytest
from eval_helpers import tvbench_line, write_jsonl
from pycocoevalcap.cider.cider import Cider

from tarsier.cli import main
from tarsier.eval import cider, multiple_choice, open_qa
from tarsier.eval.annotations import load_predictions
from tarsier.eval.benchmarks import get_benchmark
from tarsier.eval.judge import Judge, JudgeSettings, ReplyFormatError
from tarsier.eval.prompts import DEFAULT_PROMPTS


@pytest.mark.parametrize(
    "prediction, choice",
    [
        ("B", "B"),
        ("(C) a dog", "C"),
        ("C) because", "C"),
        ("  (D", "D"),
        ("1", "A"),
        ("5.", "E"),
        ("Answer: B", "A"),  # first character wins, as in the reference
        ("b", None),
        ("", None),
        ("()", None),
        ("6", None),
        ("0", None),
        ("?", None),
        ("É", None),
    ],
)
def test_parse_choice(prediction, choice):
    assert multiple_choice.parse_choice(prediction) == choice


def mc_line(dataset, idx, answer, prediction, **extra):
    return {
        "idx": idx,
        "dataset": dataset,
        "text": {"prompt": "USER: <video> Q\nASSISTANT: Answer: (", "response": answer, "prediction": prediction},
        "video_file": "<placeholder>",
        "vid": idx,
        "extra_info": extra,
    }


def evaluate_mc(tmp_path, lines, name):
    items = load_predictions([write_jsonl(tmp_path / "p.jsonl", lines)]).items[name]
    return multiple_choice.evaluate(get_benchmark(name), items)


def test_accuracy_excludes_failed_parses_and_lists_them(tmp_path):
    lines = [
        mc_line("Next-QA-val-multi_choice", i, a, p)
        for i, (a, p) in enumerate([("A", "A"), ("B", "(B)"), ("C", "D"), ("A", "1"), ("E", "none of them"), ("B", "")])
    ]
    records, summary = evaluate_mc(tmp_path, lines, "next-qa")
    assert summary["overall"] == {"accuracy": 75.0, "correct": 3, "success": 4, "failed": 2}
    failed = [r for r in records if not r["success"]]
    assert [r["key"] for r in failed] == ["Next-QA-val-multi_choice/4", "Next-QA-val-multi_choice/5"]
    assert failed[0]["error"] == "no option letter in the prediction"


def test_mvbench_overall_is_the_mean_of_subtasks(tmp_path):
    lines = [mc_line("MVBench/Action Sequence", i, "A", p) for i, p in enumerate("AAAB")]
    lines += [mc_line("MVBench/Object Shuffle", 10 + i, "A", p) for i, p in enumerate(["B", "?"])]
    _, summary = evaluate_mc(tmp_path, lines, "mvbench")
    rows = {r["group"]: r for r in summary["subsets"]}
    assert rows["Action Sequence"]["accuracy"] == 75.0 and rows["Object Shuffle"]["accuracy"] == 0.0
    assert rows["Object Shuffle"]["failed"] == 1
    assert summary["overall"]["accuracy"] == 37.5  # (75 + 0) / 2, not 3 / 5
    assert summary["overall"]["success"] == 5 and summary["overall"]["failed"] == 1


def test_reference_written_tvbench_predictions_score_as_ours(tmp_path):
    spec = [("Moving Direction", "B", "B"), ("Moving Direction", "A", "(B) Right."), ("Action Count", "A", "A")]
    release = [tvbench_line(i, answer, prediction, subset) for i, (subset, answer, prediction) in enumerate(spec)]
    ours = [mc_line(f"TVBench/{subset}", i, answer, prediction) for i, (subset, answer, prediction) in enumerate(spec)]
    records, summary = evaluate_mc(tmp_path, release, "tvbench")
    assert (records, summary) == evaluate_mc(tmp_path, ours, "tvbench")
    assert [(r["key"], r["choice"], r["correct"]) for r in records] == [
        ("TVBench/Moving Direction/0", "B", True),
        ("TVBench/Moving Direction/1", "B", False),
        ("TVBench/Action Count/2", "A", True),
    ]
    overall = {"accuracy": 75.0, "correct": 2, "success": 3, "failed": 0, "averaged": "mean of subsets"}
    assert summary["overall"] == overall  # (50 + 100) / 2


def test_video_mme_by_duration_and_domain(tmp_path):
    spec = [
        ("short", "Knowledge", "A", "A"),
        ("short", "Knowledge", "B", "C"),
        ("medium", "Sports Competition", "C", "C"),
        ("long", "Knowledge", "D", "D"),
        ("long", "Sports Competition", "A", "x"),
    ]
    lines = [mc_line("Video-MME", i, a, p, duration=d, domain=dom) for i, (d, dom, a, p) in enumerate(spec)]
    _, summary = evaluate_mc(tmp_path, lines, "video-mme")
    durations = {r["group"]: r for r in summary["durations"]}
    assert [r["group"] for r in summary["durations"]] == ["short", "medium", "long"]
    assert durations["short"]["accuracy"] == 50.0 and durations["medium"]["accuracy"] == 100.0
    assert durations["long"]["accuracy"] == 100.0 and durations["long"]["failed"] == 1
    domains = {r["group"]: r for r in summary["domains"]}
    assert domains["Knowledge"]["accuracy"] == pytest.approx(200 / 3)
    assert summary["overall"]["accuracy"] == 75.0


def test_ptb_tokenizer_rules():
    assert cider.ptb_tokenize("A man is singing.") == "a man is singing"
    # The reference drops "-LRB-" but -lowerCase prints "-lrb-", so brackets survive.
    assert cider.ptb_tokenize("The dog's ball isn't there, (really)!") == (
        "the dog 's ball is n't there -lrb- really -rrb-"
    )
    assert cider.ptb_tokenize("He cannot go -- she's gonna win $5.") == "he can not go she 's gon na win $ 5"
    assert cider.ptb_tokenize('1,000 people, 3.5 km... a high-five; "quoted" dogs\' toys') == (
        "1,000 people 3.5 km a high-five quoted dogs toys"
    )
    assert cider.ptb_tokenize("Mr. Smith met U.S. troops.\nThen left:") == "mr. smith met u.s. troops then left"


def test_cider_equals_pycocoevalcap_on_the_same_tokens():
    references = [
        ["A man is playing a guitar.", "Someone plays the guitar!", "a guy strums a guitar"],
        ["A woman is slicing an onion.", "A lady cuts onions."],
        ["Two dogs are running on the beach.", "Dogs run along the shore.", "Two dogs play."],
        ["A cat is sleeping."],
    ]
    predictions = ["A man plays the guitar.", "A woman is cutting an onion.", "Dogs are running.", "A dog sleeps"]
    score, scores = cider.cider(references, predictions)
    gts = {i: [cider.ptb_tokenize(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [cider.ptb_tokenize(p)] for i, p in enumerate(predictions)}
    expected, expected_scores = Cider().compute_score(gts, res)
    assert score == pytest.approx(expected) and scores == pytest.approx(list(expected_scores))
    assert 0 < score
    assert gts[0][0] == "a man is playing a guitar"


def test_caption_benchmark_reports_cider_x100_and_failed_items(tmp_path):
    lines = [
        {"idx": i, "dataset": "MSVD-Caption-test", "text": {"prompt": "p", "response": refs, "prediction": pred}}
        for i, (refs, pred) in enumerate(
            [
                (["A man is playing a guitar.", "Someone plays a guitar."], "A man plays a guitar."),
                ("A woman slices an onion.", "A woman is slicing an onion."),
                (["Dogs run."], "Dogs run."),
            ]
        )
    ]
    lines.append(
        {
            "idx": 9,
            "dataset": "MSVD-Caption-test",
            "error": "decode failed",
            "text": {"prompt": "p", "response": ["x"], "prediction": None},
        }
    )
    items = load_predictions([write_jsonl(tmp_path / "p.jsonl", lines)]).items["msvd-caption"]
    records, summary = cider.evaluate(items)
    # pycocoevalcap's scorer on the PTB tokens written out by hand: nothing of ours computes the expected value
    expected, _ = Cider().compute_score(
        {0: ["a man is playing a guitar", "someone plays a guitar"], 1: ["a woman slices an onion"], 2: ["dogs run"]},
        {0: ["a man plays a guitar"], 1: ["a woman is slicing an onion"], 2: ["dogs run"]},
    )
    assert expected > 0
    assert summary == {"cider": pytest.approx(100 * expected), "success": 3, "failed": 1}
    assert records[3]["error"] == "no prediction (inference failed: decode failed)"
    assert records[0]["tokens"] == "a man plays a guitar"


def test_parse_verdict():
    assert open_qa.parse_verdict("{'pred': 'yes', 'score': 4.8}") == {"pred": "yes", "score": 4.8}
    assert open_qa.parse_verdict('```json\n{"pred": " No", "score": "2"}\n```') == {"pred": "no", "score": 2.0}
    for bad in (
        '{"pred": "maybe", "score": 3}',
        '{"pred": "yes", "score": 6}',
        '{"pred": "yes"}',
        '{"pred": "yes", "score": true}',
        '{"pred": "yes", "score": "high"}',
    ):
        with pytest.raises(ReplyFormatError):
            open_qa.parse_verdict(bad)


def test_open_qa_summary_arithmetic():
    records = [
        {"success": True, "pred": "yes", "score": 5.0},
        {"success": True, "pred": "no", "score": 1.0},
        {"success": True, "pred": "yes", "score": 3.0},
        {"success": False},
    ]
    summary = open_qa.summarize(records)
    assert summary["accuracy"] == pytest.approx(200 / 3) and summary["score"] == pytest.approx(3.0)
    assert (summary["success"], summary["failed"]) == (3, 1)


def test_open_qa_judged_through_the_server(judge_server, tmp_path, monkeypatch):
    lines = [
        {"idx": i, "dataset": "MSVD-QA-val", "text": {"prompt": "p", "question": q, "response": a, "prediction": p}}
        for i, (q, a, p) in enumerate(
            [
                ("who sings?", "man", "A man is singing."),
                ("what is cut?", "onion", "Bread."),
                ("who runs?", "dog", "The dog runs."),
            ]
        )
    ]
    path = write_jsonl(tmp_path / "p.jsonl", lines)
    monkeypatch.setenv("TARSIER_JUDGE_API_KEY", "k")
    args = [
        "eval",
        str(path),
        "--judge-model",
        "j",
        "--judge-base-url",
        judge_server.url,
        "--no-progress",
        "--judge-cache",
        str(tmp_path / "c.sqlite"),
        "--judge-concurrency",
        "2",
    ]
    assert main(args) == 0
    import json

    summary = json.loads((tmp_path / "eval" / "msvd-qa_summary.json").read_text())
    assert summary["results"] == {
        "accuracy": pytest.approx(200 / 3),
        "score": pytest.approx(11 / 3),
        "success": 3,
        "failed": 0,
    }
    sent = [r["messages"] for r in judge_server.requests]
    assert all(m[0]["role"] == "system" for m in sent)
    assert any("Predicted answer: a man is singing.\n" in m[1]["content"] for m in sent)
    assert summary["judge"]["prompts"].keys() == {"open_qa"}


def test_open_qa_item_with_unusable_replies_fails():
    class Broken(Judge):
        async def _complete(self, request):
            return "yes"

    from tarsier.eval.annotations import Item

    item = Item(
        get_benchmark("msvd-qa"),
        {"idx": 1, "dataset": "MSVD-QA-val", "text": {"question": "q", "response": "a", "prediction": "b"}},
        None,
        1,
    )
    record = asyncio.run(
        open_qa.judge_item(item, Broken(JudgeSettings(model="m", parse_retries=0), client=object()), DEFAULT_PROMPTS)
    )
    assert not record["success"] and record["failed_replies"] == ["yes"]
