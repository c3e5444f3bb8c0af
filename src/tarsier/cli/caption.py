"""``tarsier caption``: caption many videos into a JSONL file, batched and resumable."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tarsier.cli.inputs import MANIFEST_SUFFIXES, MediaInput, canonical_path, expand_paths, read_input_list
from tarsier.cli.options import (
    add_engine_options,
    add_generation_options,
    add_model_options,
    add_prompt_option,
    check_model_options,
    generation_from_args,
    make_describer,
    settle_max_frames,
)
from tarsier.errors import TarsierError

EXAMPLES = """examples:
  tarsier caption videos/ --output captions.jsonl --batch-size 8
  tarsier caption list.txt --output captions.jsonl          # one path per line
  tarsier caption items.jsonl --output captions.jsonl       # {"path": ..., "prompt": ..., "start_time": ..., "end_time": ..., "id": ...}
  tarsier caption videos/ --output captions.jsonl --retry-errors
  tarsier caption manifest.parquet --output captions/ --engine ray --replicas 2   # a folder of shards
  tarsier merge captions/ --output captions.jsonl                                  # one file of the shards

Each output line: {"key", "path", "id", "prompt", "start_time", "end_time", "text", "frames",
"total_frames", "decode_seconds", "generate_seconds", "error", "model"}. "key" identifies the item by
everything that changes its caption (path, prompt, time window, --max-frames), so one video listed
with three windows or two prompts is three or two items. Rerunning with the same --output skips every
key already written, so an interrupted job continues where it stopped; a crash never leaves a torn
line, and a second process on the same output is refused while the first runs.

Manifests: .txt (one path per line), .jsonl, .csv or .parquet (columns path, prompt, start_time,
end_time, id), local or at a URI (file://, s3://, gs://, hdfs://); relative paths are taken from the
manifest's folder. A file is one item however its path is spelled. An --output that is a folder (an
existing one, or a path ending in /) holds part-*.jsonl shards, each written whole (for --engine ray
and large jobs); any other name than NAME.jsonl is refused.
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
    parser.add_argument("input", metavar="INPUT", help="folder of media, or a .txt/.jsonl/.csv/.parquet manifest (path or URI)")
    parser.add_argument("--output", "-o", required=True, help="JSONL file to append results to, or a folder of shards")
    add_prompt_option(parser, "instruction for every item that has none (default: describe in detail)")
    parser.add_argument("--batch-size", type=int, default=4, help="videos generated together (default: 4; see README Performance)")
    parser.add_argument("--num-workers", type=int, default=2, help="background threads decoding frames (default: 2)")
    parser.add_argument("--recursive", action="store_true", help="include media in sub-folders of INPUT")
    parser.add_argument("--retry-errors", action="store_true", help="drop failed items from OUTPUT and try them again")
    parser.add_argument("--limit", type=int, default=None, help="caption at most N new items")
    parser.add_argument("--shard-size", type=int, default=500, help="records per shard when OUTPUT is a folder (default: 500)")
    add_model_options(parser)
    add_generation_options(parser)
    add_engine_options(parser)
    parser.set_defaults(run=run)


def collect_inputs(source: str, recursive: bool) -> list[MediaInput]:
    path = Path(source)
    if path.is_dir():
        return expand_paths([source], recursive=recursive)
    if "://" in source or (path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES):
        return read_input_list(source)
    if not path.exists():
        raise TarsierError(f"{source}: no such file or folder")
    raise TarsierError(f"{source}: expected a folder or a .txt/.jsonl/.csv/.parquet manifest of media paths")


def unique_items(items: list[MediaInput], max_frames: int) -> dict[str, MediaInput]:
    """Items by key, first occurrence kept: a repeated line is the same work, captioned once."""
    by_key: dict[str, MediaInput] = {}
    for item in items:
        by_key.setdefault(item.key(max_frames), item)
    if len(by_key) < len(items):
        repeated = len(items) - len(by_key)
        print(f"{repeated} input line(s) repeat an earlier one (same path, prompt and window); each is captioned once", file=sys.stderr)
    return by_key


def record_key(record: dict, items: dict[str, MediaInput], max_frames: int) -> str | None:
    """The key of the item in ``items`` that ``record`` holds, if any.

    Records written before keys took the path as a file carry a key of the path as spelled then:
    their item is recomputed from the record (path, prompt, window), and taken only if that gives
    the record's own key under this run's ``max_frames``.
    """
    key = record.get("key")
    if key in items or key is None or not isinstance(record.get("path"), str):
        return key
    for prompt in (None, record.get("prompt")):  # the item's prompt: none (the default) or the one recorded
        item = MediaInput(record["path"], prompt, record.get("start_time"), record.get("end_time"))
        if item.spelled_key(item.path, max_frames) == key:
            return item.key(max_frames)
    return key


def done_in(records: list[dict], keys: list[str | None], items: dict[str, MediaInput]) -> set[str]:
    """Keys of ``items`` that ``records`` (whose :func:`record_key` are ``keys``) already hold.

    Records written before keys existed carry only a path: such a record stands for an item only
    when exactly one input has that path (the one case the old path-keyed resume got right).
    """
    done = {key for key in keys if key in items}
    legacy_paths = {canonical_path(record["path"]) for record in records
                    if "key" not in record and isinstance(record.get("path"), str)}
    if legacy_paths:
        per_path: dict[str, list[str]] = {}
        for key, item in items.items():
            per_path.setdefault(canonical_path(item.path), []).append(key)
        done |= {keys[0] for path, keys in per_path.items() if path in legacy_paths and len(keys) == 1}
    return done


def run(args: argparse.Namespace) -> int:
    from tarsier.jsonl import OutputLock
    from tarsier.scale.shards import is_shard_folder

    check_model_options(args)
    if args.limit is not None and args.limit < 1:
        raise TarsierError(f"--limit must be at least 1, got {args.limit}")
    if args.shard_size < 1:
        raise TarsierError(f"--shard-size must be at least 1, got {args.shard_size}")
    output = Path(args.output)
    sharded = is_shard_folder(args.output)
    items = collect_inputs(args.input, args.recursive)
    for item in items:
        item.prompt = item.prompt if item.prompt is not None else args.prompt
    with OutputLock(output, folder=sharded):  # also proves OUTPUT is writable before the model loads
        return caption(args, output, sharded, unique_items(items, settle_max_frames(args)))


def caption(args: argparse.Namespace, output: Path, sharded: bool, by_key: dict[str, MediaInput]) -> int:
    """The captioning run proper; the caller holds the output's lock."""
    from tqdm import tqdm

    from tarsier.engine.describer import DescribeRequest, grouped_by_media

    output_file = OutputFile(output, sharded, args.shard_size)
    if args.retry_errors:
        dropped = output_file.drop(lambda record: bool(record.get("error")))
        print(f"retrying {dropped} failed item(s)", file=sys.stderr)
    records = output_file.records()
    keys = [record_key(record, by_key, args.max_frames) for record in records]
    done = done_in(records, keys, by_key)
    todo = [key for key in by_key if key not in done]
    if args.limit is not None:
        todo = todo[: args.limit]
    print(f"{len(by_key)} inputs, {len(done)} already in {output}, {len(todo)} to caption", file=sys.stderr)
    failed_before = sum(1 for record, key in zip(records, keys) if record.get("error") and key in done)
    if failed_before:
        print(
            f"{failed_before} of them failed in an earlier run (their errors are in {output}); "
            "rerun with --retry-errors to try them again",
            file=sys.stderr,
        )
    if not todo:
        return 0
    describer = make_describer(args, generation_from_args(args))
    requests = [
        DescribeRequest(key, by_key[key].path, by_key[key].prompt, by_key[key].start_time, by_key[key].end_time)
        for key in todo
    ]
    requests = grouped_by_media(requests)  # one video's prompts together: decoded and prefilled once
    failed = 0
    with (
        output_file.writer() as sink,
        tqdm(total=len(requests), unit="video", desc="captioning", file=sys.stderr, disable=args.no_progress) as bar,
    ):
        for result in describer.run(requests):
            item = by_key[result.key]
            sink.write(
                {
                    "key": result.key,
                    "path": item.path,
                    "id": item.id,
                    "prompt": result.prompt,
                    "start_time": item.start_time,
                    "end_time": item.end_time,
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
                where = "" if item.path in result.error else f"{item.path}: "
                bar.write(f"tarsier: error: {where}{result.error}", file=sys.stderr)
                bar.set_postfix(failed=failed, refresh=False)
            bar.update(1)
    print(f"captioned {len(requests) - failed}, failed {failed} -> {output}", file=sys.stderr)
    summary = getattr(describer, "cache_summary", lambda: None)()
    if summary:
        print(summary, file=sys.stderr)
    return 1 if failed else 0


class OutputFile:
    """A caption output: one JSONL file appended line by line, or a folder of whole shards."""

    def __init__(self, path: Path, sharded: bool, shard_size: int = 500):
        from tarsier.scale.shards import remove_pending

        self.path = path
        self.shard_size = shard_size
        self.sharded = sharded
        if self.sharded and path.is_dir():
            remove_pending(path)  # shards a killed run left half-written: their items run again

    def records(self) -> list[dict]:
        from tarsier.jsonl import read_records
        from tarsier.scale.shards import read_shard_records

        return read_shard_records(self.path) if self.sharded else read_records(self.path)

    def drop(self, unwanted) -> int:
        from tarsier.jsonl import drop_records
        from tarsier.scale.shards import drop_shard_records

        if not self.path.exists():
            return 0
        return drop_shard_records(self.path, unwanted) if self.sharded else drop_records(self.path, unwanted)

    def writer(self):
        from tarsier.jsonl import JsonlAppender
        from tarsier.scale.shards import ShardWriter

        return ShardWriter(self.path, rows=self.shard_size) if self.sharded else JsonlAppender(self.path)
