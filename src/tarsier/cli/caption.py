"""``tarsier caption``: caption many videos into a JSONL file, batched and resumable."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tarsier.cli.inputs import MediaInput, expand_paths, read_input_list
from tarsier.cli.options import add_generation_options, add_model_options, check_model_options, generation_from_args
from tarsier.errors import TarsierError

EXAMPLES = """examples:
  tarsier caption videos/ --output captions.jsonl --batch-size 8
  tarsier caption list.txt --output captions.jsonl          # one path per line
  tarsier caption items.jsonl --output captions.jsonl       # {"path": ..., "prompt": ..., "start_time": ..., "end_time": ...}
  tarsier caption videos/ --output captions.jsonl --retry-errors

Each output line: {"path", "prompt", "text", "frames", "total_frames", "decode_seconds",
"generate_seconds", "error", "model"}. Rerunning with the same --output skips every path already
written, so an interrupted job continues where it stopped; a crash never leaves a torn line.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "caption",
        help="caption a folder or list of videos into JSONL (batched, resumable)",
        description="Caption many videos: frames are decoded by background workers while the model "
        "generates in batches; progress and ETA on stderr; one JSON line per video.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="INPUT_DIR_OR_LIST", help="folder of media, or a .txt / .jsonl list of paths")
    parser.add_argument("--output", "-o", required=True, help="JSONL file to append results to")
    parser.add_argument("--prompt", default=None, help="instruction for every item that has none (default: describe in detail)")
    parser.add_argument("--batch-size", type=int, default=4, help="videos generated together (default: 4)")
    parser.add_argument("--num-workers", type=int, default=2, help="background threads decoding frames (default: 2)")
    parser.add_argument("--recursive", action="store_true", help="include media in sub-folders of INPUT")
    parser.add_argument("--retry-errors", action="store_true", help="drop failed items from OUTPUT and try them again")
    parser.add_argument("--limit", type=int, default=None, help="caption at most N new items")
    add_model_options(parser)
    add_generation_options(parser)
    parser.set_defaults(run=run)


def collect_inputs(source: str, recursive: bool) -> list[MediaInput]:
    path = Path(source)
    if path.is_dir():
        return expand_paths([source], recursive=recursive)
    if path.is_file() and path.suffix.lower() in (".txt", ".jsonl", ".list"):
        return read_input_list(path)
    if not path.exists():
        raise TarsierError(f"{source}: no such file or folder")
    raise TarsierError(f"{source}: expected a folder or a .txt/.jsonl list of media paths")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tarsier.inference import DescribeRequest, Describer
    from tarsier.jsonl import JsonlAppender, done_keys, drop_records

    check_model_options(args)
    settings = generation_from_args(args)
    output = Path(args.output)
    items = collect_inputs(args.input, args.recursive)
    if args.retry_errors and output.exists():
        dropped = drop_records(output, lambda record: bool(record.get("error")))
        print(f"retrying {dropped} failed item(s)", file=sys.stderr)
    done = done_keys(output, "path")
    todo = [item for item in items if item.path not in done]
    if args.limit is not None:
        todo = todo[: args.limit]
    already = sum(item.path in done for item in items)
    print(f"{len(items)} inputs, {already} already in {output}, {len(todo)} to caption", file=sys.stderr)
    if not todo:
        return 0
    describer = Describer.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, max_n_frames=args.max_frames,
        batch_size=args.batch_size, num_workers=args.num_workers, generation=settings,
    )
    requests = [DescribeRequest(i.path, i.path, i.prompt or args.prompt, i.start_time, i.end_time) for i in todo]
    failed = 0
    with JsonlAppender(output) as sink, tqdm(total=len(requests), unit="video", desc="captioning", file=sys.stderr) as bar:
        for result in describer.run(requests):
            sink.write(
                {
                    "path": result.key,
                    "prompt": result.prompt,
                    "text": result.text,
                    "frames": result.frame_indices,
                    "total_frames": result.total_frames,
                    "decode_seconds": round(result.decode_seconds, 3),
                    "generate_seconds": round(result.generate_seconds, 3),
                    "error": result.error,
                    "model": args.model,
                }
            )
            if result.error:
                failed += 1
                bar.write(f"tarsier: error: {result.error}")
            bar.update(1)
    print(f"captioned {len(requests) - failed}, failed {failed} -> {output}", file=sys.stderr)
    return 1 if failed else 0
