"""Multiple-choice accuracy (NeXT-QA, EgoSchema, MVBench, TVBench, Video-MME).

Parse rule, as in the reference: drop parentheses, take the first character of what is left;
digits 1-5 stand for options A-E; anything that is then not a capital letter is a failed parse.
Failed parses are counted and listed, and left out of the accuracy. MVBench and TVBench report one
accuracy per subtask and their mean; Video-MME reports accuracy per duration (short/medium/long) and
per domain besides the overall one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tarsier.eval.annotations import Item
from tarsier.eval.benchmarks import Benchmark, subset_of

DURATIONS = ("short", "medium", "long")


def parse_choice(prediction: str) -> str | None:
    """The option letter a prediction names, or None when it names none."""
    text = prediction.replace("(", "").replace(")", "").strip()
    if not text:
        return None
    first = text[0]
    if "1" <= first <= "5":
        first = chr(ord("A") + int(first) - 1)
    return first if "A" <= first <= "Z" else None


def score_item(item: Item) -> dict[str, Any]:
    record: dict[str, Any] = {
        "key": item.key,
        "dataset": item.dataset,
        "idx": item.idx,
        "answer": item.response,
        "prediction": item.prediction,
    }
    if item.prediction is None:
        return {**record, "success": False, "error": f"no prediction (inference failed: {item.error})"}
    choice = parse_choice(item.prediction)
    if choice is None:
        return {**record, "success": False, "error": "no option letter in the prediction"}
    return {**record, "success": True, "choice": choice, "correct": choice == item.response.strip()}


def _accuracy(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in records if r["success"]]
    correct = sum(r["correct"] for r in done)
    return {
        "accuracy": 100 * correct / len(done) if done else None,
        "correct": correct,
        "success": len(done),
        "failed": len(records) - len(done),
    }


def _table(
    records: Sequence[dict[str, Any]], label: Callable[[dict[str, Any]], str], order: Sequence[str] = ()
) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(label(record), []).append(record)
    names = [n for n in order if n in groups] + sorted(n for n in groups if n not in order)
    return [{"group": name, **_accuracy(groups[name])} for name in names]


def evaluate(benchmark: Benchmark, items: Sequence[Item]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-item records and the summary for a multiple-choice benchmark."""
    records = [score_item(item) for item in items]
    extra = {item.key: item.extra_info for item in items}
    summary: dict[str, Any] = {"overall": _accuracy(records)}
    if benchmark.breakdown == "subset":
        rows = _table(records, lambda r: subset_of(r["dataset"]))
        summary["subsets"] = rows
        scored = [row["accuracy"] for row in rows if row["accuracy"] is not None]
        # The reference's overall MVBench/TVBench number is the mean of the per-subtask accuracies.
        summary["overall"]["accuracy"] = sum(scored) / len(scored) if scored else None
        summary["overall"]["averaged"] = "mean of subsets"
    elif benchmark.breakdown == "duration":
        summary["durations"] = _table(records, lambda r: str(extra[r["key"]].get("duration", "unknown")), DURATIONS)
        summary["domains"] = _table(records, lambda r: str(extra[r["key"]].get("domain", "unknown")))
    return records, summary
