"""``tarsier eval``: metrics from predictions files, ours or any other model's.

Metrics that need no judge (CIDEr, multiple choice) are computed directly. Judged ones (AutoDQ,
open-ended QA) run their items through bounded async workers; every judge reply is cached the
moment it arrives, so an interrupted evaluation is resumed by running the same command again, and
a dry run can say from the cache how many calls a real run would still make.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tarsier.eval import autodq, cider, multiple_choice, open_qa
from tarsier.eval.annotations import Item, Selection
from tarsier.eval.benchmarks import AUTODQ, CIDER, MULTIPLE_CHOICE, OPEN_QA, Benchmark, get_benchmark
from tarsier.eval.judge import Judge, JudgeSettings, JudgeStats, JudgeUnavailableError
from tarsier.eval.judge_cache import JudgeCache
from tarsier.eval.prompts import Prompt

ItemJudgeFn = Callable[[Item, Judge, dict[str, Prompt]], Awaitable[dict[str, Any]]]
JUDGE_FUNCTIONS: dict[str, ItemJudgeFn] = {AUTODQ: autodq.judge_item, OPEN_QA: open_qa.judge_item}
PROMPTS_USED: dict[str, tuple[str, ...]] = {AUTODQ: ("extract_events", "entailment"), OPEN_QA: ("open_qa",)}


@dataclass
class EvalOptions:
    """How to run an evaluation (what to evaluate comes from the predictions)."""

    limit: int | None = None  # first N items per benchmark, for a quick look
    dry_run: bool = False  # judge nothing; count the calls a real run would make
    progress: bool = True
    prompt_file: str | None = None  # recorded with the results when prompts were overridden


@dataclass
class BenchmarkResult:
    """Everything one benchmark's evaluation produced."""

    benchmark: Benchmark
    records: list[dict[str, Any]]
    results: dict[str, Any]
    files: list[str]
    judge: dict[str, Any] | None = None
    stats: JudgeStats | None = None
    replaced: int = 0
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat())

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [{"key": r["key"], "error": r.get("error", "")} for r in self.records if not r["success"]]

    def summary(self) -> dict[str, Any]:
        """The JSON summary written beside the per-item records."""
        return {
            "benchmark": self.benchmark.name,
            "title": self.benchmark.title,
            "metric": self.benchmark.metric,
            "predictions": self.files,
            "items": len(self.records),
            "duplicates_replaced": self.replaced,
            "results": self.results,
            "failed": self.failed,
            "judge": self.judge,
            "created": self.created,
            "tarsier_version": _version(),
        }


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tarsier-vlm")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return None


def _judge_record(
    settings: JudgeSettings,
    prompts: dict[str, Prompt],
    metric: str,
    stats: JudgeStats,
    cache: str | None,
    prompt_file: str | None,
) -> dict[str, Any]:
    return {
        **settings.describe(),
        "prompts": {name: prompts[name].digest for name in PROMPTS_USED[metric]},
        "prompt_file": prompt_file,
        "cache": cache,
        "stats": stats.as_dict(),
    }


async def judge_items(
    items: Sequence[Item],
    fn: ItemJudgeFn,
    judge: Judge,
    prompts: dict[str, Prompt],
    *,
    workers: int,
    description: str,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Per-item records in input order; a few items in flight at a time so progress is steady."""
    from tqdm.auto import tqdm

    records: list[dict[str, Any] | None] = [None] * len(items)
    pending = iter(enumerate(items))
    bar = tqdm(total=len(items), desc=description, unit="item", disable=not progress, dynamic_ncols=True)

    async def work() -> None:
        for index, item in pending:
            records[index] = await fn(item, judge, prompts)
            bar.update(1)
            bar.set_postfix(calls=judge.stats.replies, cached=judge.stats.cache_hits, refresh=False)

    tasks = [asyncio.ensure_future(work()) for _ in range(max(1, min(workers, len(items))))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        bar.close()
    return [r for r in records if r is not None]


def _summarize(benchmark: Benchmark, records: list[dict[str, Any]]) -> dict[str, Any]:
    if benchmark.metric == AUTODQ:
        return autodq.summarize(records)
    return open_qa.summarize(records)


async def _evaluate_judged(
    work: list[tuple[Benchmark, list[Item]]],
    settings: JudgeSettings,
    prompts: dict[str, Prompt],
    cache: JudgeCache | None,
    options: EvalOptions,
) -> list[tuple[Benchmark, list[dict[str, Any]], JudgeStats]]:
    done = []
    for benchmark, items in work:
        judge = Judge(settings, cache=cache, dry_run=options.dry_run)
        try:
            records = await judge_items(
                items,
                JUDGE_FUNCTIONS[benchmark.metric],
                judge,
                prompts,
                workers=settings.concurrency,
                description=f"{'planning' if options.dry_run else 'judging'} {benchmark.name}",
                progress=options.progress,
            )
        except JudgeUnavailableError as exc:
            if cache is None:
                raise
            raise JudgeUnavailableError(
                f"{exc}; {len(cache)} finished judge replies are kept in {cache.path}: "
                "run the same command again to resume"
            ) from None
        finally:
            await judge.aclose()
        for record in records:
            record["judge_model"] = settings.model  # every result line says which judge produced it
        done.append((benchmark, records, judge.stats))
    return done


def evaluate(
    selection: Selection,
    *,
    judge: JudgeSettings | None,
    prompts: dict[str, Prompt],
    cache_path: str | Path | None,
    options: EvalOptions,
) -> list[BenchmarkResult]:
    """Evaluate every benchmark in ``selection``; judged ones need ``judge`` settings."""
    files = [str(f) for f in selection.files]
    results: dict[str, BenchmarkResult] = {}
    judged: list[tuple[Benchmark, list[Item]]] = []
    for name, items in selection.items.items():
        benchmark = get_benchmark(name)
        if options.limit is not None:
            items = items[: options.limit]
        if benchmark.metric == CIDER:
            records, summary = cider.evaluate(items)
        elif benchmark.metric == MULTIPLE_CHOICE:
            records, summary = multiple_choice.evaluate(benchmark, items)
        else:
            judged.append((benchmark, items))
            continue
        results[name] = BenchmarkResult(benchmark, records, summary, files, replaced=selection.replaced)
    if judged:
        if judge is None:
            raise ValueError("judged benchmarks need judge settings")
        cache = JudgeCache(cache_path) if cache_path is not None else None
        try:
            outcomes = asyncio.run(_evaluate_judged(judged, judge, prompts, cache, options))
        finally:
            if cache is not None:
                cache.close()
        for benchmark, records, stats in outcomes:
            record = _judge_record(
                judge, prompts, benchmark.metric, stats, str(cache_path) if cache_path else None, options.prompt_file
            )
            results[benchmark.name] = BenchmarkResult(
                benchmark, records, _summarize(benchmark, records), files, record, stats, selection.replaced
            )
    return [results[name] for name in selection.items if name in results]
