"""``tarsier eval`` end to end against the scripted judge on 127.0.0.1: scores, records, cache,
resume after a killed run, dry run, failures, prompt overrides and bad input."""

import json
import subprocess
import sys

import pytest
from eval_helpers import Reply, dream_line, write_jsonl

from tarsier.cli import main

# Hand-computed from the dream_predictions fixture (see its docstring), in percent.
SUBSET_A = {"recall": 200 / 3, "precision": 500 / 6, "f1": 2000 / 27}
SUBSET_B = {"recall": 200 / 3, "precision": 100 / 3, "f1": 400 / 9}
OVERALL = {"recall": 200 / 3, "precision": 700 / 12, "f1": 2800 / 45}
JUDGE_CALLS = 18


@pytest.fixture
def judge_args(judge_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TARSIER_JUDGE_API_KEY", "test-key")
    return [
        "--judge-model",
        "judge-test",
        "--judge-base-url",
        judge_server.url,
        "--judge-cache",
        str(tmp_path / "cache.sqlite"),
        "--judge-backoff",
        "0.01",
        "--no-progress",
    ]


def read_summary(folder, name="dream"):
    return json.loads((folder / f"{name}_summary.json").read_text())


def read_items(folder, name="dream"):
    return [json.loads(line) for line in (folder / f"{name}_items.jsonl").read_text().splitlines()]


def test_autodq_matches_hand_computed_scores_and_records_everything(
    dream_predictions, judge_args, judge_server, capsys
):
    assert main(["eval", str(dream_predictions), "-b", "dream", *judge_args]) == 0
    out = dream_predictions.parent / "eval"
    summary = read_summary(out)
    a, b = summary["results"]["subsets"]
    for row, expected in ((a, SUBSET_A), (b, SUBSET_B), (summary["results"]["overall"], OVERALL)):
        for metric, value in expected.items():
            assert row[metric] == pytest.approx(value)
    shots = {c["bucket"]: c for c in summary["results"]["buckets"]["shots"]}
    assert shots["<=1"]["count"] == 3 and shots["<=1"]["recall"] == pytest.approx(100 / 3)
    assert shots["<=1"]["precision"] == pytest.approx(50)
    assert shots[">=4"] == {"bucket": ">=4", "f1": 0.0, "recall": 100.0, "precision": 0.0, "count": 1}
    events = {c["bucket"]: c for c in summary["results"]["buckets"]["events"]}
    assert events["<=3"]["recall"] == pytest.approx(500 / 6) and events["6-7"]["f1"] == 0.0
    judge = summary["judge"]
    assert judge["model"] == "judge-test" and judge["base_url"] == judge_server.url
    assert set(judge["prompts"]) == {"extract_events", "entailment"} and judge["temperature"] == 0.0
    assert judge["stats"]["replies"] == JUDGE_CALLS and "api_key" not in judge
    assert len(judge_server.requests) == JUDGE_CALLS
    items = read_items(out)
    assert [i["key"] for i in items] == [f"DREAM/{s}/{n}" for s, n in zip("aaabbb", range(1, 7))]
    first = items[0]
    assert first["recall"]["hits"] == 1 and first["recall"]["relationships"][1]["relationship"] == "neutral"
    assert set(first["judge_replies"]) == {"prediction_events", "recall", "precision"}
    printed = capsys.readouterr().out
    assert "OVERALL" in printed and "62.2" in printed and "by number of subjects" in printed

    # A rerun is answered from the cache: same numbers, no request.
    assert main(["eval", str(dream_predictions), "-b", "dream", *judge_args]) == 0
    assert len(judge_server.requests) == JUDGE_CALLS
    again = read_summary(out)
    assert again["results"] == summary["results"] and again["judge"]["stats"]["cache_hits"] == JUDGE_CALLS


def test_dry_run_counts_calls_and_cached_ones(dream_predictions, judge_args, judge_server, capsys):
    assert main(["eval", str(dream_predictions), "--dry-run", *judge_args]) == 0
    assert "18" in capsys.readouterr().out and not judge_server.requests
    assert not (dream_predictions.parent / "eval").exists()
    assert main(["eval", str(dream_predictions), "--limit", "2", *judge_args]) == 0  # caches items 1-2
    capsys.readouterr()
    assert main(["eval", str(dream_predictions), "--dry-run", *judge_args]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.strip("│ ").startswith("dream"))
    assert [cell.strip() for cell in row.split("│") if cell.strip()] == ["dream", "6", "6", "12"]


def test_killed_run_resumes_from_the_cache(dream_predictions, judge_args, judge_server, tmp_path):
    done_before_kill = 7
    judge_server.script.extend([Reply()] * done_before_kill + [Reply(hang=True)])
    command = [
        sys.executable,
        "-c",
        "import sys; from tarsier.cli import main; sys.exit(main(sys.argv[1:]))",
        "eval",
        str(dream_predictions),
        *judge_args,
        "--judge-concurrency",
        "1",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert judge_server.hanging.wait(120), (
            process.stderr.read().decode() if process.poll() is not None else "no hang"
        )
    finally:
        process.kill()
        process.wait(30)
    judge_server.release.set()
    assert len(judge_server.requests) == done_before_kill + 1
    assert main(["eval", str(dream_predictions), *judge_args]) == 0
    # Only the calls that had not finished are made again.
    assert len(judge_server.requests) == done_before_kill + 1 + (JUDGE_CALLS - done_before_kill)
    summary = read_summary(dream_predictions.parent / "eval")
    assert summary["results"]["overall"]["f1"] == pytest.approx(OVERALL["f1"])
    assert summary["judge"]["stats"]["cache_hits"] == done_before_kill


def test_replies_that_never_parse_fail_the_item_and_are_listed(dream_predictions, judge_args, judge_server, capsys):
    judge_server.script.extend([Reply(content="I'd rather not.")] * 3)
    assert main(["eval", str(dream_predictions), *judge_args, "--judge-concurrency", "1"]) == 0
    out = dream_predictions.parent / "eval"
    summary = read_summary(out)
    assert summary["failed"] == [{"key": "DREAM/a/1", "error": summary["failed"][0]["error"]}]
    assert "no usable judge reply after 3 attempts" in summary["failed"][0]["error"]
    assert summary["results"]["subsets"][0]["failed"] == 1 and summary["results"]["subsets"][0]["success"] == 2
    assert summary["results"]["overall"]["failed"] == 1
    failed = read_items(out)[0]
    assert not failed["success"] and failed["failed_replies"] == ["I'd rather not."] * 3
    printed = capsys.readouterr().out
    assert "1 dream items failed" in printed and "DREAM/a/1" in printed


def test_judge_down_is_one_clear_line_and_keeps_finished_work(dream_predictions, judge_args, closed_port_url, capsys):
    assert main(["eval", str(dream_predictions), "--limit", "1", *judge_args]) == 0  # 3 replies cached
    capsys.readouterr()
    args = [*judge_args, "--judge-base-url", closed_port_url, "--judge-max-retries", "1"]
    assert main(["eval", str(dream_predictions), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tarsier: error: judge 'judge-test' at http://127.0.0.1:")
    assert "unavailable after 2 attempts: last error: connection failed" in err[-1]
    assert "; 3 finished judge replies are kept in" in err[-1], err[-1]
    assert err[-1].endswith("run the same command again to resume")


def test_prompt_override_changes_requests_digest_and_cache_key(dream_predictions, judge_args, judge_server, tmp_path):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(
        "extract_events:\n  system: You extract events.\n  user: |\n    CUSTOM\n    Description:\n    {description}\n\n    JSON please.\n"
    )
    assert main(["eval", str(dream_predictions), "--limit", "1", *judge_args]) == 0
    default_digest = read_summary(dream_predictions.parent / "eval")["judge"]["prompts"]["extract_events"]
    before = len(judge_server.requests)
    assert main(["eval", str(dream_predictions), "--limit", "1", "--judge-prompts", str(prompts), *judge_args]) == 0
    custom = [r for r in judge_server.requests[before:] if "CUSTOM" in r["messages"][-1]["content"]]
    assert len(custom) == 1 and custom[0]["messages"][0] == {"role": "system", "content": "You extract events."}
    summary = read_summary(dream_predictions.parent / "eval")
    assert summary["judge"]["prompts"]["extract_events"] != default_digest
    assert summary["judge"]["prompt_file"] == str(prompts)
    assert len(judge_server.requests) == before + 1  # entailment prompts unchanged: cached


@pytest.mark.parametrize(
    "content, message",
    [
        ("nope: [", "prompts.yaml:1: not valid YAML/JSON"),
        ("extract: hi", "unknown prompt 'extract'"),
        ("entailment: 'no placeholders here'", "lacks the placeholder {description}"),
        ("open_qa: {user: 5}", "must be a string or a mapping"),
    ],
)
def test_bad_prompt_file(dream_predictions, judge_args, tmp_path, capsys, content, message):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(content)
    assert main(["eval", str(dream_predictions), "--judge-prompts", str(prompts), *judge_args]) == 2
    assert message in capsys.readouterr().err


def test_bad_input_is_reported_with_file_and_line(tmp_path, judge_args, capsys):
    good = dream_line(1, "a", "A man walks.", "A man walks.", ["a man walks"])
    cases = [
        ([json.dumps(good), "{not json"], "predictions.jsonl:2: not valid JSON"),
        ([json.dumps({**good, "text": {"response": "x"}})], "predictions.jsonl:1: no prediction"),
        ([json.dumps({**good, "idx": None})], "predictions.jsonl:1: missing or invalid 'idx'"),
        (
            [json.dumps({**good, "text": {"prediction": "x"}})],
            "predictions.jsonl:1: missing or invalid 'text.response'",
        ),
        ([json.dumps({**good, "extra_info": {"events": "a man walks"}})], "'extra_info.events' must be a list"),
        ([json.dumps({**good, "text": {"response": "x", "prediction": None}})], "prediction is null and no 'error'"),
    ]
    for lines, message in cases:
        path = tmp_path / "predictions.jsonl"
        path.write_text("\n".join(lines) + "\n")
        assert main(["eval", str(path), *judge_args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_unknown_benchmark_zero_items_and_missing_judge(dream_predictions, judge_args, capsys, monkeypatch):
    assert main(["eval", str(dream_predictions), "-b", "dreem", *judge_args]) == 2
    assert "unknown benchmark 'dreem'; known: dream, msvd-caption" in capsys.readouterr().err
    assert main(["eval", str(dream_predictions), "-b", "mvbench", *judge_args]) == 2
    err = capsys.readouterr().err
    assert "no predictions for mvbench" in err and "DREAM/a (3)" in err
    assert main(["eval", str(dream_predictions), "-b", "dream", "mvbench", "--limit", "1", *judge_args]) == 0
    assert "warning: no predictions for mvbench in these files" in capsys.readouterr().err
    monkeypatch.delenv("TARSIER_JUDGE_MODEL", raising=False)
    assert main(["eval", str(dream_predictions), "--no-progress"]) == 2
    assert "need an LLM judge: give --judge-model" in capsys.readouterr().err


def test_inference_errors_count_as_failed(tmp_path, judge_args, judge_server):
    lines = [
        dream_line(1, "a", "A man walks.", "A man walks.", ["a man walks"]),
        {**dream_line(2, "a", "A dog runs.", None, ["a dog runs"]), "error": "video.mp4: cannot decode"},
    ]
    path = write_jsonl(tmp_path / "predictions.jsonl", lines)
    assert main(["eval", str(path), *judge_args]) == 0
    summary = read_summary(tmp_path / "eval")
    assert summary["failed"] == [
        {"key": "DREAM/a/2", "error": "no prediction (inference failed: video.mp4: cannot decode)"}
    ]
    assert summary["results"]["overall"]["f1"] == pytest.approx(100)
