"""``tarsier eval``: benchmark metrics from predictions JSONL files, with any OpenAI-compatible judge."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

EXAMPLES = """examples:
  # DREAM-1K AutoDQ with OpenAI (the paper's judge was gpt-3.5-turbo-0125)
  export OPENAI_API_KEY=sk-...
  tarsier eval runs/tarsier-7b/ --benchmarks dream --judge-model gpt-3.5-turbo-0125

  # the same with a local vLLM / Ollama / llama.cpp server (any OpenAI-compatible endpoint)
  tarsier eval runs/tarsier-7b/predictions.jsonl --benchmarks dream \\
      --judge-model Qwen/Qwen2.5-7B-Instruct --judge-base-url http://localhost:8000/v1

  # Azure OpenAI: the model is your deployment name; key from AZURE_OPENAI_API_KEY
  tarsier eval preds.jsonl -b dream --judge-model my-gpt35 \\
      --judge-base-url https://RESOURCE.openai.azure.com --judge-api-version 2024-06-01

  # metrics that need no judge (CIDEr, multiple choice), several prediction shards at once
  tarsier eval runs/tarsier-7b/ --benchmarks caption mc_qa

  # how many judge calls would a run make (and how many are cached)?
  tarsier eval runs/tarsier-7b/ -b dream oe_qa --judge-model gpt-4o-mini --dry-run

Predictions are JSONL lines of the annotation format plus the model's answer in "text.prediction"
(or a top-level "prediction"), e.g. {"idx": 1, "dataset": "DREAM/shorts", "text": {"prompt": ...,
"response": ..., "prediction": ...}, "extra_info": {...}}; any model's predictions work.
Results go to OUTPUT_DIR/NAME_summary.json (numbers, failed items, judge model and settings) and
OUTPUT_DIR/NAME_items.jsonl (per item: events, relationships, hits, judge replies, ...).
Judge replies are cached (SQLite) by model + prompt: a rerun costs nothing, and an interrupted
evaluation resumes where it stopped when the same command is run again.

environment:
  TARSIER_JUDGE_MODEL, TARSIER_JUDGE_BASE_URL   defaults for --judge-model, --judge-base-url
  TARSIER_JUDGE_API_KEY, then OPENAI_API_KEY     the judge's API key (AZURE_OPENAI_API_KEY for Azure)
  TARSIER_JUDGE_CACHE                            default for --judge-cache
"""


def default_cache_path() -> Path:
    if os.environ.get("TARSIER_JUDGE_CACHE"):
        return Path(os.environ["TARSIER_JUDGE_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tarsier" / "judge_cache.sqlite"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="compute benchmark metrics from predictions (AutoDQ, CIDEr, accuracy, judged QA)",
        description="Score predictions files (from 'tarsier bench run' or any other model) on DREAM-1K "
        "(AutoDQ), captioning (CIDEr), multiple-choice QA (accuracy) and open-ended QA (judged). "
        "AutoDQ and open-ended QA use an LLM judge behind any OpenAI-compatible endpoint.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "predictions",
        nargs="+",
        metavar="PREDICTIONS",
        help="predictions JSONL files, or folders (every *.jsonl directly inside)",
    )
    parser.add_argument(
        "--benchmarks",
        "-b",
        nargs="+",
        default=None,
        metavar="NAME",
        help="benchmarks, groups (caption, mc_qa, oe_qa) or all (default: every benchmark in the files)",
    )
    parser.add_argument(
        "--output-dir", "-o", default=None, help="where results go (default: eval/ beside the first predictions)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="evaluate only the first N items of each benchmark (a quick look)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="judge nothing: count the judge calls a run would make and how many are cached",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    judge = parser.add_argument_group("judge (AutoDQ and open-ended QA)")
    judge.add_argument(
        "--judge-model",
        default=os.environ.get("TARSIER_JUDGE_MODEL"),
        help="judge model name (Azure: deployment name); scores depend on it (default: $TARSIER_JUDGE_MODEL)",
    )
    judge.add_argument(
        "--judge-base-url",
        default=os.environ.get("TARSIER_JUDGE_BASE_URL"),
        help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 "
        "(default: $TARSIER_JUDGE_BASE_URL, else $OPENAI_BASE_URL, else OpenAI)",
    )
    judge.add_argument(
        "--judge-api-key-env",
        default=None,
        metavar="VAR",
        help="environment variable holding the API key (default: TARSIER_JUDGE_API_KEY, then OPENAI_API_KEY)",
    )
    judge.add_argument(
        "--judge-api-version", default=None, help="Azure OpenAI API version (selects Azure; base URL = Azure endpoint)"
    )
    judge.add_argument("--judge-temperature", type=float, default=0.0, help="sampling temperature (default: 0)")
    judge.add_argument(
        "--judge-max-tokens", type=int, default=None, help="longest judge reply in tokens (default: server's)"
    )
    judge.add_argument("--judge-seed", type=int, default=None, help="seed passed to servers that support one")
    judge.add_argument("--judge-concurrency", type=int, default=8, help="judge requests in flight at once (default: 8)")
    judge.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per judge request (default: 60)")
    judge.add_argument(
        "--judge-max-retries",
        type=int,
        default=5,
        help="retries on 429/5xx/timeouts/connection errors, with exponential backoff (default: 5)",
    )
    judge.add_argument(
        "--judge-backoff", type=float, default=1.0, help="first backoff wait in seconds, doubled per retry (default: 1)"
    )
    judge.add_argument(
        "--judge-parse-retries",
        type=int,
        default=2,
        help="times to ask again when a reply is not the JSON asked for (default: 2)",
    )
    judge.add_argument(
        "--judge-prompts",
        default=None,
        metavar="FILE",
        help="YAML/JSON file replacing prompts extract_events, entailment, open_qa (see README)",
    )
    judge.add_argument(
        "--judge-cache", default=None, metavar="PATH", help=f"reply cache (default: {default_cache_path()})"
    )
    judge.add_argument("--no-judge-cache", action="store_true", help="neither read nor write the reply cache")
    parser.set_defaults(run=run)


def judge_settings(args: argparse.Namespace):
    """Judge settings from flags and environment; the key is read from the environment only."""
    from tarsier.errors import TarsierError
    from tarsier.eval.judge import JudgeSettings

    if not args.judge_model:
        raise TarsierError(
            "these benchmarks need an LLM judge: give --judge-model (or TARSIER_JUDGE_MODEL); "
            "the paper used gpt-3.5-turbo-0125, and scores change with the judge"
        )
    for flag, value, low in (
        ("--judge-concurrency", args.judge_concurrency, 1),
        ("--judge-max-retries", args.judge_max_retries, 0),
        ("--judge-parse-retries", args.judge_parse_retries, 0),
    ):
        if value < low:
            raise TarsierError(f"{flag} must be at least {low}, got {value}")
    if args.judge_timeout <= 0:
        raise TarsierError(f"--judge-timeout must be positive, got {args.judge_timeout}")
    if args.judge_api_key_env:
        if args.judge_api_key_env not in os.environ:
            raise TarsierError(f"--judge-api-key-env {args.judge_api_key_env}: that environment variable is not set")
        api_key = os.environ[args.judge_api_key_env]
    else:
        names = (
            ["TARSIER_JUDGE_API_KEY"]
            + (["AZURE_OPENAI_API_KEY"] if args.judge_api_version else [])
            + ["OPENAI_API_KEY"]
        )
        api_key = next((os.environ[n] for n in names if os.environ.get(n)), None)
    return JudgeSettings(
        model=args.judge_model,
        base_url=args.judge_base_url,
        api_key=api_key,
        api_version=args.judge_api_version,
        temperature=args.judge_temperature,
        max_tokens=args.judge_max_tokens,
        seed=args.judge_seed,
        timeout=args.judge_timeout,
        concurrency=args.judge_concurrency,
        max_retries=args.judge_max_retries,
        backoff_base=args.judge_backoff,
        parse_retries=args.judge_parse_retries,
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tarsier.errors import TarsierError
    from tarsier.eval.annotations import load_predictions, require_items
    from tarsier.eval.benchmarks import resolve_benchmarks
    from tarsier.eval.evaluate import EvalOptions, evaluate
    from tarsier.eval.prompts import load_prompts
    from tarsier.eval.report import print_plan, print_result, write_outputs
    from tarsier.eval.runner import missing_shards

    console, notes = Console(), Console(stderr=True, soft_wrap=True)
    if args.limit is not None and args.limit < 1:
        raise TarsierError(f"--limit must be at least 1, got {args.limit}")
    benchmarks = resolve_benchmarks(args.benchmarks) if args.benchmarks else None
    selection = load_predictions(args.predictions, benchmarks)
    for name in require_items(selection, "predictions"):
        notes.print(f"warning: no predictions for {name} in these files", style="yellow", highlight=False)
    for warning in missing_shards(selection.files):
        notes.print(f"warning: {warning}", style="yellow", highlight=False)
    if selection.ignored and benchmarks is None:
        other = ", ".join(f"{name} ({n})" for name, n in selection.ignored.most_common(5))
        notes.print(f"note: ignored lines of unknown datasets: {other}", highlight=False)
    counts = ", ".join(f"{name} ({len(items)})" for name, items in selection.items.items())
    notes.print(f"evaluating {counts} from {len(selection.files)} file(s)", highlight=False)
    needs_judge = any(items[0].benchmark.judged for items in selection.items.values())
    settings = judge_settings(args) if needs_judge else None
    prompts = load_prompts(args.judge_prompts)
    cache = None if args.no_judge_cache else Path(args.judge_cache) if args.judge_cache else default_cache_path()
    options = EvalOptions(
        limit=args.limit, dry_run=args.dry_run, progress=not args.no_progress, prompt_file=args.judge_prompts
    )
    results = evaluate(selection, judge=settings, prompts=prompts, cache_path=cache, options=options)
    if args.dry_run:
        print_plan(results, console)
        return 0
    first = Path(args.predictions[0])
    output_dir = Path(args.output_dir) if args.output_dir else (first if first.is_dir() else first.parent) / "eval"
    for result in results:
        summary_path, items_path = write_outputs(result, output_dir)
        print_result(result, console, items_path)
        notes.print(f"wrote {summary_path} and {items_path}", highlight=False)
    return 0
