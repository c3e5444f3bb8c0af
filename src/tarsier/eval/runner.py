"""``tarsier bench run``: a model over benchmark items, into a predictions JSONL that resumes.

Each output line is the annotation line with its video path filled in, ``text.prediction`` (the
reference's layout, so files from either tool evaluate the same), and ``key``, ``error``, frame
indices and timings. Items are split into contiguous shards per benchmark (so several GPUs or
machines each take one, with disjoint outputs that together cover everything); a rerun skips the
items its output already holds, and ``--retry-errors`` gives failed ones another go.
"""

from __future__ import annotations

import copy
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tarsier.errors import TarsierError
from tarsier.eval.annotations import Item, Missing, Selection, VideoResolver
from tarsier.jsonl import JsonlAppender, drop_records, fingerprint, read_records

T = TypeVar("T")
SHARD_NAME = re.compile(r"\.shard-(\d+)-of-(\d+)\.jsonl$")
SHOW_MISSING = 3


class DescriberLike(Protocol):
    """What the runner needs from :class:`tarsier.engine.describer.Describer`."""

    def run(self, requests: Iterable[Any]) -> Iterable[Any]: ...


@dataclass
class RunSettings:
    """Where predictions go and which part of the items this process handles."""

    output_dir: Path
    num_shards: int = 1
    shard_index: int = 0
    limit: int | None = None  # first N items per benchmark (before sharding)
    skip_missing: bool = False  # run without items whose video is missing instead of stopping
    retry_errors: bool = False  # drop failed records from the output and run those items again
    progress: bool = True
    max_frames: int = 8  # part of each item's fingerprint: predictions made with other frames are redone

    def __post_init__(self) -> None:
        if self.num_shards < 1:
            raise TarsierError(f"--num-shards must be at least 1, got {self.num_shards}")
        if not 0 <= self.shard_index < self.num_shards:
            raise TarsierError(f"--shard-index must be in 0..{self.num_shards - 1}, got {self.shard_index}")
        if self.limit is not None and self.limit < 1:
            raise TarsierError(f"--limit must be at least 1, got {self.limit}")

    @property
    def output(self) -> Path:
        return predictions_path(self.output_dir, self.num_shards, self.shard_index)


def predictions_path(output_dir: str | Path, num_shards: int = 1, shard_index: int = 0) -> Path:
    name = "predictions.jsonl" if num_shards == 1 else f"predictions.shard-{shard_index}-of-{num_shards}.jsonl"
    return Path(output_dir) / name


def shard(items: Sequence[T], num_shards: int, shard_index: int) -> list[T]:
    """Contiguous chunk ``shard_index`` of ``num_shards`` (questions on one video stay together)."""
    size = math.ceil(len(items) / num_shards) if items else 0
    return list(items[shard_index * size : (shard_index + 1) * size])


def missing_shards(files: Iterable[Path]) -> list[str]:
    """Warnings for shard sets that are incomplete (e.g. shard 2 of 4 was never copied over)."""
    sets: dict[tuple[Path, int], set[int]] = {}
    for path in files:
        match = SHARD_NAME.search(path.name)
        if match:
            sets.setdefault((path.parent, int(match.group(2))), set()).add(int(match.group(1)))
    warnings = []
    for (folder, total), present in sorted(sets.items()):
        absent = sorted(set(range(total)) - present)
        if absent:
            warnings.append(f"{folder}: shards {', '.join(map(str, absent))} of {total} are missing")
    return warnings


@dataclass
class Plan:
    """The work of one run: items to do (with their media), and what is already done or skipped."""

    todo: list[tuple[Item, str | list[str]]] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # benchmark -> shard/done/missing/todo
    missing: list[Missing] = field(default_factory=list)
    retried: int = 0
    changed: int = 0  # predicted before with another video, prompt, window or frame count: run again
    failed_before: int = 0  # done, but recorded as failed (``--retry-errors`` runs them again)


def _missing_line(missing: list[Missing], total: int) -> str:
    count = sum(len(m.items) for m in missing)
    per_benchmark = ", ".join(f"{m.benchmark}: {len(m.items)} of {m.total}" for m in missing)
    examples = "; ".join(f"{key} -> {path}" for m in missing for key, path in m.items[:SHOW_MISSING])
    return f"{count} of {total} videos not found ({per_benchmark}; e.g. {examples})"


def item_fingerprint(item: Item, media: str | list[str], max_frames: int) -> str:
    """Everything besides the model that changes an item's prediction; stored with the prediction."""
    return fingerprint(
        media=media,
        prompt=item.prompt,
        start_time=item.record.get("start_time"),
        end_time=item.record.get("end_time"),
        max_frames=max_frames,
    )


def plan(selection: Selection, resolver: VideoResolver, settings: RunSettings) -> Plan:
    """Which items this shard still has to run; stops on missing videos unless told to skip them."""
    result = Plan()
    for name, items in selection.items.items():
        if items and any(resolver.needs_root(i) for i in items) and resolver.root_for(items[0].benchmark) is None:
            raise TarsierError(
                f"{items[0].where}: {name} annotations hold placeholders for video paths; "
                f"give the video folder with --video-root FOLDER (or --video-root {name}=FOLDER)"
            )
    if settings.retry_errors and settings.output.exists():
        result.retried = drop_records(settings.output, lambda record: bool(record.get("error")))
    # The last record of an item wins, as when predictions are read for evaluation.
    recorded = {record["key"]: record for record in read_records(settings.output) if "key" in record}
    total = 0
    for name, items in selection.items.items():
        if settings.limit is not None:
            items = items[: settings.limit]
        mine = shard(items, settings.num_shards, settings.shard_index)
        total += len(mine)
        missing = Missing(name, len(mine))
        counts = {"shard": len(mine), "done": 0, "missing": 0, "todo": 0}
        for item in mine:
            media, looked_for = resolver.resolve(item)
            record = recorded.get(item.key)
            if record is not None:
                stored = record.get("fingerprint")  # absent in files written before fingerprints
                if media is None or stored is None or stored == item_fingerprint(item, media, settings.max_frames):
                    counts["done"] += 1
                    result.failed_before += bool(record.get("error"))
                    continue
                result.changed += 1
            if media is None:
                missing.items.append((item.key, looked_for))
                counts["missing"] += 1
                continue
            result.todo.append((item, media))
            counts["todo"] += 1
        result.counts[name] = counts
        if missing.items:
            result.missing.append(missing)
    if result.missing and not settings.skip_missing:
        raise TarsierError(
            f"{_missing_line(result.missing, total)}; check --video-root, or pass --skip-missing to run without them"
        )
    return result


def prediction_record(item: Item, media: str | list[str], result: Any, max_frames: int) -> dict[str, Any]:
    """The annotation line plus what inference produced for it."""
    record = dict(item.record)
    record["video_file"] = media
    record["text"] = {**item.text, "prompt": item.prompt, "prediction": result.text if not result.error else None}
    record["key"] = item.key
    record["fingerprint"] = item_fingerprint(item, media, max_frames)
    record["error"] = result.error or (None if result.text is not None else "the model returned no text")
    record["frame_indices"] = list(result.frame_indices)
    record["total_frames"] = getattr(result, "total_frames", None)
    record["seconds"] = round(float(result.seconds), 3)
    if "messages" in record:  # a Tarsier2-release line: the reference's scorer reads the prediction there
        record["messages"] = with_prediction(record["messages"], record["text"]["prediction"])
    return record


def with_prediction(messages: list[dict[str, Any]], prediction: str | None) -> list[dict[str, Any]]:
    """A copy of a release line's ``messages`` whose last assistant part holds the prediction as its
    ``text`` (``<error>`` for none, as the reference writes it), so its own scorer reads our files."""
    messages = copy.deepcopy(messages)
    assistant = next(turn for turn in reversed(messages) if turn.get("role") == "assistant")
    assistant["content"][-1]["text"] = "<error>" if prediction is None else prediction
    return messages


def run(work: Plan, describer: DescriberLike, settings: RunSettings) -> tuple[int, int]:
    """Run the planned items through ``describer`` and append their records; returns (ok, failed)."""
    from tqdm.auto import tqdm

    from tarsier.engine.describer import DescribeRequest, grouped_by_media

    if not work.todo:
        return 0, 0
    by_key = {item.key: (item, media) for item, media in work.todo}
    requests = [
        DescribeRequest(
            key=item.key,
            media=media,
            prompt=item.prompt,
            start_time=item.record.get("start_time"),
            end_time=item.record.get("end_time"),
        )
        for item, media in work.todo
    ]
    requests = grouped_by_media(requests)  # each video's questions together: decoded and prefilled once
    ok = failed = 0
    with (
        JsonlAppender(settings.output) as sink,
        tqdm(total=len(requests), desc="inference", unit="item", disable=not settings.progress, file=sys.stderr) as bar,
    ):
        for result in describer.run(requests):
            item, media = by_key[result.key]
            record = prediction_record(item, media, result, settings.max_frames)
            sink.write(record)
            if record["error"]:
                failed += 1
                bar.write(f"tarsier: {item.key}: {record['error']}", file=sys.stderr)
            else:
                ok += 1
            bar.update(1)
            bar.set_postfix(failed=failed, refresh=False)
    return ok, failed


def write_meta(settings: RunSettings, info: dict[str, Any]) -> Path:
    """``predictions[.shard-K-of-N].meta.json``: the model and settings that produced the file."""
    path = settings.output.with_name(settings.output.name[: -len(".jsonl")] + ".meta.json")
    path.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
