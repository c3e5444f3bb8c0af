"""``tarsier describe``: describe one or more videos, images or frame folders."""

from __future__ import annotations

import argparse
import json
import sys

from tarsier.cli.inputs import expand_paths
from tarsier.cli.options import (
    add_generation_options,
    add_model_options,
    add_window_options,
    check_model_options,
    generation_from_args,
)

EXAMPLES = """examples:
  tarsier describe clip.mp4
  tarsier describe clip.mp4 --prompt "<video>\\nWhat is the person holding?"
  tarsier describe videos/ --json > descriptions.jsonl
  tarsier describe long.mp4 --start 30 --end 45 --max-frames 16
  tarsier describe frames_dir/ --frames --model ./my-checkpoint --device cpu
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "describe",
        help="describe videos, GIFs, images or frame folders",
        description="Describe each input in detail. One input streams its text as it is generated; "
        "several are batched. A folder means the media files inside it (use --frames to treat "
        "each folder as one video made of its frame images).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="video (.mp4 .avi .webm .mov .mkv .wmv), .gif, image, or folder")
    parser.add_argument("--prompt", default=None, help='instruction; <video> stands for the frames (default: "<video>\\nDescribe the video in detail.")')
    add_window_options(parser)
    parser.add_argument("--frames", action="store_true", help="treat each folder as one video of frame images")
    parser.add_argument("--recursive", action="store_true", help="look for media in sub-folders too")
    parser.add_argument("--batch-size", type=int, default=1, help="inputs generated together (default: 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per input instead of text")
    add_model_options(parser)
    add_generation_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tarsier.inference import DescribeRequest, Describer
    from tarsier.media import media_kind

    check_model_options(args)
    settings = generation_from_args(args)
    items = expand_paths(args.paths, recursive=args.recursive, frame_folders=args.frames)
    if len(items) == 1:
        media_kind(items[0].path)  # a lone bad input fails before the model loads
    describer = Describer.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, max_n_frames=args.max_frames,
        batch_size=args.batch_size, generation=settings,
    )
    requests = [DescribeRequest(item.path, item.path, args.prompt, args.start, args.end) for item in items]
    if len(requests) == 1 and not args.json:
        for piece in describer.stream(requests[0]):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    failed = 0
    for result in describer.run(requests):
        if result.error:
            failed += 1
            print(f"tarsier: error: {result.error}", file=sys.stderr)
        if args.json:
            record = {"path": result.key, "prompt": result.prompt, "text": result.text, "frames": result.frame_indices, "error": result.error}
            print(json.dumps(record, ensure_ascii=False), flush=True)
        elif not result.error:
            print(f"== {result.key}\n{result.text}\n", flush=True)
    return 1 if failed else 0

