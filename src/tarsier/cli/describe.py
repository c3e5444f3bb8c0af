"""``tarsier describe``: describe one or more videos, images or frame folders."""

from __future__ import annotations

import argparse
import json
import sys

from tarsier.cli.inputs import expand_paths
from tarsier.cli.options import (
    add_generation_options,
    add_model_options,
    add_prompt_option,
    add_window_options,
    check_model_options,
    generation_from_args,
    load_from_args,
)

EXAMPLES = """examples:
  tarsier describe clip.mp4
  tarsier describe clip.mp4 --prompt "<video>\\nWhat is the person holding?"   # \\n: a line break
  tarsier describe videos/ --json > descriptions.jsonl
  tarsier describe long.mp4 --start 30 --end 45 --max-frames 16
  tarsier describe frames_dir/ --frames --model ./my-checkpoint --device cpu

Exit status: 0 when every input was described, 1 when some failed (each is reported, and with
--json each still gets its line), 2 for bad options or when a lone input cannot be read, 130 on Ctrl-C.
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
    add_prompt_option(parser, 'instruction; <video> stands for the frames (default: "<video>\\nDescribe the video in detail.")')
    add_window_options(parser)
    parser.add_argument("--frames", action="store_true", help="treat each folder as one video of frame images")
    parser.add_argument("--recursive", action="store_true", help="look for media in sub-folders too")
    parser.add_argument("--batch-size", type=int, default=4, help="inputs generated together when there are several (default: 4)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per input instead of text")
    add_model_options(parser)
    add_generation_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tarsier.errors import MediaError

    check_model_options(args)
    items = expand_paths(args.paths, recursive=args.recursive, frame_folders=args.frames)
    if len(items) == 1:
        from tarsier.media import media_kind

        try:
            media_kind(items[0].path)  # a lone bad input fails before the model loads
        except MediaError as exc:
            if args.json:  # the record a script reading the JSON lines expects, then the usual exit code
                print(json.dumps(_record(items[0].path, args.prompt, None, [], str(exc)), ensure_ascii=False))
            raise
    from tarsier.engine.describer import Describer, DescribeRequest

    model, processor = load_from_args(args)
    describer = Describer(model, processor, generation=generation_from_args(args), batch_size=args.batch_size)
    requests = [DescribeRequest(item.path, item.path, args.prompt, args.start, args.end) for item in items]
    if len(requests) == 1 and not args.json:
        written = finished = False
        try:
            for piece in describer.stream(requests[0]):
                sys.stdout.write(piece)
                sys.stdout.flush()
                written = True
            finished = True
        finally:  # also after Ctrl-C: end the partial line; a reply that never came leaves stdout empty
            if written or finished:
                sys.stdout.write("\n")
                sys.stdout.flush()
        return 0
    failed = 0
    for result in describer.run(requests):
        if result.error:
            failed += 1
            print(f"tarsier: error: {result.error}", file=sys.stderr)
        if args.json:
            print(json.dumps(_record(result.key, result.prompt, result.text, result.frame_indices, result.error), ensure_ascii=False), flush=True)
        elif not result.error:
            print(f"== {result.key}\n{result.text}\n", flush=True)
    if failed and len(requests) == 1:
        return 2  # a lone input that cannot be read: the usual exit code for bad input, as without --json
    return 1 if failed else 0


def _record(path: str, prompt: str | None, text: str | None, frames: list[int], error: str | None) -> dict:
    return {"path": path, "prompt": prompt, "text": text, "frames": frames, "error": error}
