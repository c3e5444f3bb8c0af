"""Printing results as tables and writing them as a JSON summary plus per-item JSONL.

For each benchmark, ``OUTPUT_DIR/NAME_summary.json`` holds the numbers, the failed items, and for
judged metrics the judge model, its settings, prompt hashes and call statistics;
``OUTPUT_DIR/NAME_items.jsonl`` holds one record per item (for AutoDQ: events, relationships with
the judge's reasons, hits, the raw judge replies).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tarsier.eval.benchmarks import AUTODQ, CIDER, MULTIPLE_CHOICE
from tarsier.eval.evaluate import BenchmarkResult
from tarsier.jsonl import JsonlAppender

SHOW_FAILED = 10


def write_outputs(result: BenchmarkResult, output_dir: str | Path) -> tuple[Path, Path]:
    """Write ``NAME_summary.json`` and ``NAME_items.jsonl`` (replacing earlier ones)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    items_path = output_dir / f"{result.benchmark.name}_items.jsonl"
    summary_path = output_dir / f"{result.benchmark.name}_summary.json"
    items_path.unlink(missing_ok=True)
    with JsonlAppender(items_path) as out:
        for record in result.records:
            out.write(record)
    tmp = summary_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result.summary(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(summary_path)
    return summary_path, items_path


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _accuracy_table(title: str, rows: Sequence[dict[str, Any]], first: str, overall: dict[str, Any] | None) -> Table:
    table = Table(title=title, title_justify="left")
    for column in (first, "Accuracy", "Correct", "Parsed", "Failed"):
        table.add_column(column, justify="left" if column == first else "right")
    for row in rows:
        table.add_row(row["group"], _num(row["accuracy"]), str(row["correct"]), str(row["success"]), str(row["failed"]))
    if overall is not None:
        table.add_row(
            "OVERALL",
            _num(overall["accuracy"]),
            str(overall["correct"]),
            str(overall["success"]),
            str(overall["failed"]),
            style="bold",
        )
    return table


def tables(result: BenchmarkResult) -> list[Table]:
    """Rich tables for one benchmark's results."""
    benchmark, results = result.benchmark, result.results
    judge = f" — judge {result.judge['model']}" if result.judge else ""
    if benchmark.metric == AUTODQ:
        main = Table(title=f"{benchmark.title} (AutoDQ){judge}", title_justify="left")
        for column in ("Subset", "F1", "Recall", "Precision", "Success", "Failed"):
            main.add_column(column, justify="left" if column == "Subset" else "right")
        for row in results["subsets"]:
            main.add_row(
                row["subset"],
                _num(row["f1"]),
                _num(row["recall"]),
                _num(row["precision"]),
                str(row["success"]),
                str(row["failed"]),
            )
        o = results["overall"]
        main.add_row(
            "OVERALL",
            _num(o["f1"]),
            _num(o["recall"]),
            _num(o["precision"]),
            str(o["success"]),
            str(o["failed"]),
            style="bold",
        )
        out = [main]
        for name, columns in results["buckets"].items():
            bucket = Table(title=f"{benchmark.title} by number of {name}", title_justify="left")
            bucket.add_column("Score")
            for column in columns:
                bucket.add_column(column["bucket"], justify="right")
            for label, key in (("Recall", "recall"), ("Precision", "precision"), ("F1", "f1")):
                bucket.add_row(label, *[_num(c[key]) for c in columns])
            bucket.add_row("Count", *[str(c["count"]) for c in columns])
            out.append(bucket)
        return out
    if benchmark.metric == CIDER:
        table = Table(title=f"{benchmark.title} (CIDEr)", title_justify="left")
        for column in ("Benchmark", "CIDEr", "Success", "Failed"):
            table.add_column(column, justify="left" if column == "Benchmark" else "right")
        table.add_row(benchmark.title, _num(results["cider"]), str(results["success"]), str(results["failed"]))
        return [table]
    if benchmark.metric == MULTIPLE_CHOICE:
        overall = results["overall"]
        if "subsets" in results:
            note = " (overall = mean of subtasks)"
            return [_accuracy_table(f"{benchmark.title} accuracy{note}", results["subsets"], "Subtask", overall)]
        if "durations" in results:
            return [
                _accuracy_table(f"{benchmark.title} accuracy by duration", results["durations"], "Duration", overall),
                _accuracy_table(f"{benchmark.title} accuracy by domain", results["domains"], "Domain", None),
            ]
        return [_accuracy_table(f"{benchmark.title} accuracy", [], "Benchmark", overall)]
    table = Table(title=f"{benchmark.title} (judged QA){judge}", title_justify="left")
    for column in ("Benchmark", "Accuracy", "Score (0-5)", "Success", "Failed"):
        table.add_column(column, justify="left" if column == "Benchmark" else "right")
    table.add_row(
        benchmark.title,
        _num(results["accuracy"]),
        _num(results["score"], 2),
        str(results["success"]),
        str(results["failed"]),
    )
    return [table]


def print_result(result: BenchmarkResult, console: Console, items_path: Path | None = None) -> None:
    for table in tables(result):
        console.print(table)
    failed = result.failed
    if failed:
        console.print(f"[yellow]{len(failed)} {result.benchmark.name} items failed[/yellow] (not in the scores):")
        for entry in failed[:SHOW_FAILED]:
            console.print(f"  {entry['key']}: {entry['error']}", highlight=False, markup=False)
        if len(failed) > SHOW_FAILED:
            where = f" (all listed in {items_path})" if items_path else ""
            console.print(f"  ... and {len(failed) - SHOW_FAILED} more{where}", highlight=False)
    if result.stats is not None:
        s = result.stats
        console.print(
            f"judge: {s.replies} calls, {s.cache_hits} cached, {s.retries} retries, {s.malformed} malformed replies",
            highlight=False,
        )


def print_plan(results: Sequence[BenchmarkResult], console: Console) -> None:
    """The dry run's estimate of judge calls, per benchmark."""
    table = Table(title="Judge calls (dry run)", title_justify="left")
    for column in ("Benchmark", "Items", "Cached", "To call"):
        table.add_column(column, justify="left" if column == "Benchmark" else "right")
    total = 0
    for result in results:
        if result.stats is None:
            table.add_row(result.benchmark.name, str(len(result.records)), "-", "0 (no judge)")
            continue
        total += result.stats.planned
        table.add_row(
            result.benchmark.name, str(len(result.records)), str(result.stats.cache_hits), str(result.stats.planned)
        )
    console.print(table)
    console.print(
        f"about {total} judge calls to make (not counting retries; AutoDQ assumes every prediction has events)",
        highlight=False,
    )
