"""``tarsier merge``: one JSONL file from a folder of output shards."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """examples:
  tarsier caption videos/ --output captions/ --engine ray      # writes captions/part-*.jsonl
  tarsier merge captions/ --output captions.jsonl

Each key appears once in the merged file (a key written again later, e.g. after --retry-errors,
keeps its latest record). The shards are left as they are.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge a folder of output shards into one JSONL file",
        description="Merge the part-*.jsonl shards of a caption output folder into one JSONL file.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", metavar="FOLDER", help="output folder holding part-*.jsonl shards")
    parser.add_argument("--output", "-o", required=True, help="JSONL file to write (replaced whole)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tarsier.errors import TarsierError
    from tarsier.jsonl import OutputLock, check_output_file
    from tarsier.scale.shards import merge_shards, shard_files

    folder = Path(args.folder)
    if not folder.is_dir():
        raise TarsierError(f"{folder}: not a folder")
    shards = shard_files(folder)
    if not shards:
        raise TarsierError(f"{folder}: no part-*.jsonl shards in this folder")
    if Path(args.output).suffix.lower() != ".jsonl":
        raise TarsierError(f"{args.output}: merge writes JSONL; name the output NAME.jsonl")
    check_output_file(args.output)
    with OutputLock(folder, folder=True):  # not while a job is still writing shards
        lines = merge_shards(folder, args.output)
    print(f"merged {len(shards)} shard(s) into {lines} line(s) -> {args.output}", file=sys.stderr)
    return 0
