"""AutoDQ, the DREAM-1K metric: how many events of a video a description gets right.

A judge extracts the atomic action events of a description. Recall: the share of reference events
(from ``extra_info.events`` when the annotation has that list, else extracted from the reference
description) that the prediction entails. Precision: the share of the prediction's events that the
reference description entails. Only "entailment" counts as a hit; an empty event list scores 1.
Per subset the means of recall and precision give F1 = 2RP/(R+P); overall is the F1 of the means
of the per-subset means; bucket tables group items by subjects, shots and events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tarsier.eval.annotations import Item
from tarsier.eval.benchmarks import subset_of
from tarsier.eval.judge import Judge, JudgeReplyError, ReplyFormatError, parse_json_object
from tarsier.eval.prompts import Prompt

RELATIONSHIPS = ("entailment", "neutral", "contradiction")
HIT = "entailment"

# Bucket tables: (field of extra_info, [(label, lowest, highest)]) with None for an open end.
BUCKETS: dict[str, tuple[str, list[tuple[str, int | None, int | None]]]] = {
    "subjects": ("n_subjects", [("<=1", None, 1), ("2", 2, 2), ("3", 3, 3), (">=4", 4, None)]),
    "shots": ("n_shots", [("<=1", None, 1), ("2", 2, 2), ("3", 3, 3), (">=4", 4, None)]),
    "events": ("n_events", [("<=3", None, 3), ("4-5", 4, 5), ("6-7", 6, 7), (">=8", 8, None)]),
}


def f1(recall: float, precision: float) -> float:
    return 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)


def parse_events(reply: str) -> list[str]:
    """``{"events": [str, ...]}`` from an extraction reply."""
    events = parse_json_object(reply).get("events")
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise ReplyFormatError('"events" must be a list of strings')
    return [e.strip() for e in events if e.strip()]


def relationship_parser(events: Sequence[str]) -> Callable[[str], list[dict[str, str]]]:
    """A parser for an entailment reply that must classify exactly these events, in order."""

    def parse(reply: str) -> list[dict[str, str]]:
        entries = parse_json_object(reply).get("events")
        if not isinstance(entries, list):
            raise ReplyFormatError('"events" must be a list')
        if len(entries) != len(events):
            raise ReplyFormatError(f"expected {len(events)} classified events, got {len(entries)}")
        classified = []
        for event, entry in zip(events, entries, strict=True):
            label, reason = (entry.get("relationship"), entry.get("reason")) if isinstance(entry, dict) else (entry, "")
            label = str(label).strip().strip(".\"'").lower()
            if label not in RELATIONSHIPS:
                raise ReplyFormatError(f"unknown relationship {label!r} (expected one of {', '.join(RELATIONSHIPS)})")
            classified.append(
                {"event": event, "relationship": label, "reason": reason if isinstance(reason, str) else ""}
            )
        return classified

    return parse


def numbered(events: Sequence[str]) -> str:
    return "\n".join(f"{i}. {event}" for i, event in enumerate(events, start=1))


async def _both(first: Awaitable[Any], second: Awaitable[Any]) -> tuple[Any, Any]:
    """Run two steps at once; if one fails the other is cancelled, not left running."""
    tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    try:
        a, b = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return a, b


async def judge_item(item: Item, judge: Judge, prompts: dict[str, Prompt]) -> dict[str, Any]:
    """The per-item record: events, relationships, hits, recall and precision (or the failure)."""
    record: dict[str, Any] = {
        "key": item.key,
        "dataset": item.dataset,
        "idx": item.idx,
        "subset": subset_of(item.dataset),
        "extra_info": {k: v for k, v in item.extra_info.items() if k != "events"},
    }
    if item.prediction is None:
        error = f"no prediction (inference failed: {item.error})"
        return {**record, "success": False, "error": error, "reference": item.response, "prediction": None}
    # As the reference does: texts are lower-cased, and double quotes become single ones for extraction.
    reference, prediction = item.response.lower(), item.prediction.lower()
    replies: dict[str, str] = {}

    async def extract(name: str, text: str) -> list[str]:
        messages = prompts["extract_events"].render(description=text.replace('"', "'"))
        answer = await judge.ask(messages, parse_events, placeholder=["(event)"])
        replies[name] = answer.reply
        return answer.value

    async def classify(name: str, events: list[str], description: str) -> list[dict[str, str]]:
        if not events:
            return []
        messages = prompts["entailment"].render(description=description, events=numbered(events))
        placeholder = [{"event": e, "relationship": "neutral", "reason": ""} for e in events]
        answer = await judge.ask(messages, relationship_parser(events), placeholder=placeholder)
        replies[name] = answer.reply
        return answer.value

    annotated = item.extra_info.get("events")
    try:
        if isinstance(annotated, list):
            reference_events = list(annotated)
            prediction_events = await extract("prediction_events", prediction)
        else:
            reference_events, prediction_events = await _both(
                extract("reference_events", reference), extract("prediction_events", prediction)
            )
        recall_rel, precision_rel = await _both(
            classify("recall", reference_events, prediction), classify("precision", prediction_events, reference)
        )
    except JudgeReplyError as exc:
        return {
            **record,
            "success": False,
            "error": str(exc),
            "reference": item.response,
            "prediction": item.prediction,
            "failed_replies": exc.replies,
            "judge_replies": replies,
        }

    def score(events: list[str], relationships: list[dict[str, str]]) -> dict[str, Any]:
        hits = sum(r["relationship"] == HIT for r in relationships)
        return {
            "score": hits / len(events) if events else 1.0,
            "hits": hits,
            "total": len(events),
            "relationships": relationships,
        }

    return {
        **record,
        "success": True,
        "reference": item.response,
        "prediction": item.prediction,
        "reference_events": reference_events,
        "reference_events_from": "annotation" if isinstance(annotated, list) else "judge",
        "prediction_events": prediction_events,
        "recall": score(reference_events, recall_rel),
        "precision": score(prediction_events, precision_rel),
        "judge_replies": replies,
    }


def _means(rows: Sequence[dict[str, Any]]) -> tuple[float, float] | None:
    """Mean recall and mean precision (fractions) of these items; None for no items."""
    if not rows:
        return None
    return (
        sum(r["recall"]["score"] for r in rows) / len(rows),
        sum(r["precision"]["score"] for r in rows) / len(rows),
    )


def _percent(means: tuple[float, float] | None) -> dict[str, float | None]:
    if means is None:
        return {"f1": None, "recall": None, "precision": None}
    recall, precision = means
    return {"f1": 100 * f1(recall, precision), "recall": 100 * recall, "precision": 100 * precision}


def _in_bucket(value: Any, low: int | None, high: int | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-subset table, overall row and the three bucket tables, from per-item records."""
    subsets: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        subsets.setdefault(record["subset"], []).append(record)
    rows = []
    subset_means = []
    for name in sorted(subsets):
        done = [r for r in subsets[name] if r["success"]]
        means = _means(done)
        rows.append({"subset": name, **_percent(means), "success": len(done), "failed": len(subsets[name]) - len(done)})
        if means is not None:
            subset_means.append(means)
    overall: dict[str, Any] = _percent(
        (sum(m[0] for m in subset_means) / len(subset_means), sum(m[1] for m in subset_means) / len(subset_means))
        if subset_means
        else None
    )
    succeeded = [r for r in records if r["success"]]
    overall.update(success=len(succeeded), failed=len(records) - len(succeeded))
    buckets = {}
    for table, (field_name, ranges) in BUCKETS.items():
        columns = []
        for label, low, high in ranges:
            members = [
                r
                for r in succeeded
                if isinstance(r["extra_info"].get(field_name), (int, float))
                and not isinstance(r["extra_info"].get(field_name), bool)
                and _in_bucket(r["extra_info"][field_name], low, high)
            ]
            columns.append({"bucket": label, **_percent(_means(members)), "count": len(members)})
        buckets[table] = columns
    return {"subsets": rows, "overall": overall, "buckets": buckets}
