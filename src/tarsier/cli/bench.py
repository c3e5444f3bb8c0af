"""``tarsier bench``: list the benchmarks, and run a model over them into predictions JSONL."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tarsier.cli.options import (
    add_engine_options,
    add_generation_options,
    add_model_options,
    check_model_options,
    generation_from_args,
    make_describer,
    settle_max_frames,
)

if TYPE_CHECKING:
    from tarsier.eval.annotations import Selection, VideoResolver
    from tarsier.eval.runner import RunSettings

EXAMPLES = """examples:
  tarsier bench list

  # DREAM-1K: annotations from the release, videos named after "vid" in one folder
  tarsier bench run --benchmarks dream --annotations data/annotations/DREAM-1k.jsonl \\
      --video-root /data/DREAM-1K/videos --output-dir runs/tarsier-7b --model omni-research/Tarsier-7b
  tarsier eval runs/tarsier-7b --benchmarks dream --judge-model gpt-3.5-turbo-0125

  # a quick look: 20 items per benchmark
  tarsier bench run -b dream --annotations data/annotations --video-root /data/DREAM-1K/videos \\
      --output-dir runs/quick --limit 20

  # several benchmarks, one video folder each, 4 GPUs (one process per shard)
  for i in 0 1 2 3; do
    CUDA_VISIBLE_DEVICES=$i tarsier bench run -b mc_qa --annotations data/annotations \\
        --video-root next-qa=/data/NExTVideo --video-root egoschema=/data/egoschema \\
        --video-root mvbench=/data/MVBench/video --video-root video-mme=/data/Video-MME/videos \\
        --output-dir runs/mc --num-shards 4 --shard-index $i &
  done; wait
  tarsier eval runs/mc                      # reads every shard file in the folder

  # check annotations and videos without loading a model
  tarsier bench run -b dream --annotations DREAM-1k.jsonl --video-root /data/DREAM --output-dir runs/x --dry-run

Video paths: a "video_file" of "<placeholder>" is replaced by VIDEO_ROOT/VID (a file or a folder of
frames) or the media file VIDEO_ROOT/VID.* (mp4, webm, mkv, gif, ...); relative paths and MVBench's
lists of frame files are taken from the video root. Missing videos stop the run before the model is
loaded (with a count and examples) unless --skip-missing is given.
Output: OUTPUT_DIR/predictions.jsonl (or predictions.shard-K-of-N.jsonl): each annotation line with
"text.prediction", "key", "fingerprint", "error", "frame_indices", "seconds". A rerun resumes:
items already predicted are skipped unless their video, prompt, window or --max-frames changed
(the fingerprint), in which case they run again and the new line replaces the old one; failed items
are recorded and skipped on resume unless --retry-errors. A second process on the same output file
is refused while the first runs.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="list benchmarks, or run a model over them into predictions JSONL",
        description="Benchmarks: DREAM-1K, MSVD/MSR-VTT/VATEX captioning, NeXT-QA, EgoSchema, MVBench, "
        "TVBench, Video-MME, MSVD/MSR-VTT/TGIF/ActivityNet-QA. 'bench run' writes predictions; 'tarsier eval' scores them.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="bench_command", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="the known benchmarks, their metrics and annotation files")
    listing.set_defaults(run=run_list)

    runner = actions.add_parser(
        "run",
        help="run a model over benchmark items, writing predictions JSONL (sharded, resumable)",
        description="Run a model over benchmark annotations and write predictions JSONL for 'tarsier eval'.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    runner.add_argument(
        "--benchmarks",
        "-b",
        nargs="+",
        default=None,
        metavar="NAME",
        help="benchmarks, groups (caption, mc_qa, oe_qa) or all (default: every benchmark in the annotations)",
    )
    runner.add_argument(
        "--annotations",
        "-a",
        nargs="+",
        required=True,
        metavar="PATH",
        help="annotation JSONL files, or a folder with the release's file names (DREAM-1k.jsonl, ...)",
    )
    runner.add_argument(
        "--video-root",
        action="append",
        default=[],
        metavar="[NAME=]FOLDER",
        help="folder of the videos; NAME=FOLDER for one benchmark (repeatable)",
    )
    runner.add_argument("--output-dir", "-o", required=True, help="folder for predictions JSONL")
    runner.add_argument("--num-shards", type=int, default=1, help="split the items into N shards (default: 1)")
    runner.add_argument("--shard-index", type=int, default=0, help="the shard this process runs, 0..N-1 (default: 0)")
    runner.add_argument("--limit", type=int, default=None, help="only the first N items of each benchmark")
    runner.add_argument("--skip-missing", action="store_true", help="run without items whose video is missing")
    runner.add_argument("--retry-errors", action="store_true", help="run items that failed last time again")
    runner.add_argument(
        "--dry-run", action="store_true", help="check annotations and videos, report the work, load no model"
    )
    runner.add_argument("--batch-size", type=int, default=4, help="items generated together (default: 4; batching pays off on CPU and GPU, see README Performance)")
    runner.add_argument("--num-workers", type=int, default=2, help="background threads decoding videos (default: 2)")
    add_model_options(runner)
    add_generation_options(runner)
    add_engine_options(runner)
    runner.set_defaults(run=run_bench)


def run_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from tarsier.eval.benchmarks import BENCHMARKS, GROUPS

    table = Table(title="Benchmarks", title_justify="left")
    for column in ("Name", "Metric", "Lines with dataset", "Annotation file"):
        table.add_column(column, no_wrap=column == "Name")
    for b in BENCHMARKS:
        metric = f"{b.metric} (judge)" if b.judged else b.metric
        dataset = f"{b.dataset}/SUBSET" if b.breakdown == "subset" else b.dataset
        table.add_row(b.name, metric, escape(dataset), " or ".join(b.annotation_files))
    console = Console(width=None if sys.stdout.isatty() else 1000)  # piped: whole lines, no 80-column cut
    console.print(table, highlight=False)
    aliases = "; ".join(f"{b.name}: {', '.join(b.aliases)}" for b in BENCHMARKS if b.aliases)
    groups = "; ".join(f"{g} = {', '.join(n)}" for g, n in GROUPS.items() if g != "dream")
    console.print(f"groups: {groups}; all = every benchmark", highlight=False)
    console.print(f"aliases: {aliases}", highlight=False)
    return 0


def video_roots(values: list[str]) -> dict[str | None, Path]:
    """``--video-root FOLDER`` (every benchmark) and ``--video-root NAME=FOLDER`` (one benchmark)."""
    from tarsier.errors import TarsierError
    from tarsier.eval.benchmarks import get_benchmark

    roots: dict[str | None, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if sep and name and "/" not in name:
            key: str | None = get_benchmark(name).name
        else:
            key, folder = None, value
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise TarsierError(f"--video-root {value}: {path} is not a folder")
        if key in roots:
            raise TarsierError(f"--video-root given twice for {key or 'all benchmarks'}")
        roots[key] = path
    return roots


def run_bench(args: argparse.Namespace) -> int:
    from tarsier.eval import runner
    from tarsier.eval.annotations import VideoResolver, load_annotations, require_items
    from tarsier.eval.benchmarks import resolve_benchmarks
    from tarsier.jsonl import OutputLock

    check_model_options(args)
    settings = runner.RunSettings(
        output_dir=Path(args.output_dir),
        num_shards=args.num_shards,
        shard_index=args.shard_index,
        limit=args.limit,
        skip_missing=args.skip_missing,
        retry_errors=args.retry_errors and not args.dry_run,
        progress=not args.no_progress,
    )
    benchmarks = resolve_benchmarks(args.benchmarks) if args.benchmarks else None
    selection = load_annotations(args.annotations, benchmarks)
    for name in require_items(selection, "annotation items"):
        print(f"warning: no annotation items for {name} in these files", file=sys.stderr)
    resolver = VideoResolver(video_roots(args.video_root))
    if args.dry_run:
        return bench(args, settings, selection, resolver)
    with OutputLock(settings.output):  # one process per output; also proves it is writable before loading
        return bench(args, settings, selection, resolver)


def bench(args: argparse.Namespace, settings: RunSettings, selection: Selection, resolver: VideoResolver) -> int:
    """Plan and run; the caller holds the output's lock (except for a dry run, which writes nothing)."""
    import datetime

    from tarsier.eval import runner

    settings = dataclasses.replace(settings, max_frames=settle_max_frames(args))  # recorded with each prediction
    work = runner.plan(selection, resolver, settings)
    for counts_name, counts in work.counts.items():
        shard = f" in shard {args.shard_index}/{args.num_shards}" if args.num_shards > 1 else ""
        print(
            f"{counts_name}: {counts['shard']} items{shard}, {counts['done']} already done, "
            f"{counts['missing']} without video, {counts['todo']} to run",
            file=sys.stderr,
        )
    for missing in work.missing:
        print(
            f"skipping {len(missing.items)} {missing.benchmark} items without video, e.g. "
            + "; ".join(f"{k} -> {p}" for k, p in missing.items[:3]),
            file=sys.stderr,
        )
    if work.retried:
        print(f"retrying {work.retried} failed item(s)", file=sys.stderr)
    if work.changed:
        print(
            f"{work.changed} item(s) were predicted before with another video, prompt, window or --max-frames; "
            "running them again (the new prediction replaces the old one)",
            file=sys.stderr,
        )
    if work.failed_before:
        print(
            f"{work.failed_before} done item(s) failed in an earlier run (their errors are in {settings.output}); "
            "rerun with --retry-errors to try them again",
            file=sys.stderr,
        )
    if args.dry_run or not work.todo:
        if not work.todo:
            print(f"nothing to run; predictions are in {settings.output}", file=sys.stderr)
        return 0
    generation = generation_from_args(args)
    describer = make_describer(args, generation)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat()
    ok, failed = runner.run(work, describer, settings)
    meta = runner.write_meta(
        settings,
        {
            "model": args.model,
            "max_frames": args.max_frames,
            "dtype": args.dtype,
            "device": args.device,
            "batch_size": args.batch_size,
            "engine": args.engine,
            "generation": vars(generation),
            "benchmarks": list(selection.items),
            "annotations": [str(f) for f in selection.files],
            "video_roots": {k or "*": str(v) for k, v in resolver.roots.items()},
            "num_shards": args.num_shards,
            "shard_index": args.shard_index,
            "limit": args.limit,
            "started": started,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "last_run": {"ok": ok, "failed": failed},
            "counts": work.counts,
        },
    )
    print(f"predicted {ok}, failed {failed} -> {settings.output} (run info: {meta})", file=sys.stderr)
    summary = getattr(describer, "cache_summary", lambda: None)()
    if summary:
        print(summary, file=sys.stderr)
    return 1 if failed else 0
