"""``tarsier serve``: the OpenAI-compatible HTTP API (chat completions with video)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tarsier.cli.options import (
    add_bind_options,
    add_model_options,
    cache_bytes,
    check_model_options,
    load_from_args,
    warn_if_exposed,
)

EXAMPLES = """examples:
  tarsier serve --model shapes-demo                       # http://127.0.0.1:8000/v1
  tarsier serve --model omni-research/Tarsier-7b --media-root ~/videos --api-key-env TARSIER_KEY
  curl -s http://127.0.0.1:8000/health

Ask with any OpenAI client (base_url http://127.0.0.1:8000/v1): a message's content parts are text
and one video_url or image_url whose url is a data: URL (base64), a path or file:// URL under
--media-root, or http(s) with --allow-remote-media. temperature defaults to 0 (greedy, as the
reference). Extra body fields: max_frames, start_time, end_time (seconds), top_k, repetition_penalty,
return_token_ids.
Stop with Ctrl-C or SIGTERM: requests in progress finish first, new ones get 503.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the model over an OpenAI-compatible HTTP API",
        description="Serve chat completions about videos and images over HTTP, in the OpenAI format, "
        "batching requests continuously (a request joins the batch that is decoding) and reusing a video's prefill for "
        "later questions about it.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bind_options(parser, port=8000)
    parser.add_argument("--served-model-name", default=None, help="the model id clients send (default: the --model value)")
    parser.add_argument("--api-key-env", metavar="NAME", default=None,
                        help="require 'Authorization: Bearer KEY' where KEY is this environment variable's value")
    media = parser.add_argument_group("media")
    media.add_argument("--media-root", type=Path, default=None,
                       help="folder that local paths and file:// URLs are read from (default: local paths refused)")
    media.add_argument("--allow-remote-media", action="store_true", help="let requests name http(s) media URLs")
    media.add_argument("--max-media-mb", type=float, default=64, help="largest video or image a request may bring (default: 64)")
    limits = parser.add_argument_group("batching and limits")
    limits.add_argument("--max-batch-size", type=int, default=8, help="requests decoded together; a request that arrives while others decode joins them between steps (default: 8)")
    limits.add_argument("--batch-wait-ms", type=float, default=10, help="how long a request to an idle model waits for others to start with (default: 10)")
    limits.add_argument("--max-queue", type=int, default=64, help="requests that may wait; more get 503 (default: 64)")
    limits.add_argument("--max-tokens", type=int, default=2048, help="most new tokens a request may ask for (default: 2048)")
    limits.add_argument("--media-workers", type=int, default=2, help="threads decoding media (default: 2)")
    limits.add_argument("--prefill-chunk", type=int, default=0, metavar="POSITIONS",
                        help="while requests stream, prefill a new video's prompt this many positions between two of "
                             "their tokens, so they pause for a chunk, not a whole video; first tokens come later under "
                             "load (2048: pauses halved, p50 first token 1.5x later on CPU). 0: whole prompts (default)")
    add_model_options(parser)
    parser.set_defaults(run=run)


def check_server_options(args: argparse.Namespace) -> str | None:
    """Validate options before anything heavy loads; returns the API key (or None)."""
    from tarsier.errors import TarsierError

    check_model_options(args)
    for name in ("max_batch_size", "max_queue", "max_tokens", "media_workers"):
        if getattr(args, name) < 1:
            raise TarsierError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.prefill_chunk < 0:
        raise TarsierError(f"--prefill-chunk must be 0 (off) or a number of positions, got {args.prefill_chunk}")
    if args.batch_wait_ms < 0 or args.max_media_mb <= 0:
        raise TarsierError("--batch-wait-ms must be 0 or more and --max-media-mb more than 0")
    if args.media_root is not None and not args.media_root.is_dir():
        raise TarsierError(f"{args.media_root}: --media-root is not a folder")
    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise TarsierError(f"--api-key-env {args.api_key_env}: that environment variable is empty or not set")
    return key


def run(args: argparse.Namespace) -> int:
    key = check_server_options(args)
    from tarsier.serve.server import check_port_free

    check_port_free(args.host, args.port)  # before a hub download or model load, not after
    from tarsier.checkpoints import checkpoint_folder
    from tarsier.serve.api import ServeConfig, create_app
    from tarsier.serve.media_sources import MediaPolicy
    from tarsier.serve.server import run_server

    checkpoint_folder(args.model)  # an unknown model fails here, before the server starts
    config = ServeConfig(
        model_name=args.served_model_name or args.model,
        api_key=key,
        media=MediaPolicy(args.media_root, args.allow_remote_media, int(args.max_media_mb * 1024 * 1024)),
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_queue=args.max_queue,
        media_workers=args.media_workers,
        cache_bytes=cache_bytes(args),
        prefill_chunk=args.prefill_chunk,
        max_tokens=args.max_tokens,
        default_max_tokens=min(512, args.max_tokens),
    )

    def load():
        return load_from_args(args)

    warn_if_exposed(args.host, "the server", "" if key else "; consider --api-key-env")
    print(f"tarsier: serving {config.model_name} at http://{args.host}:{args.port}/v1 (loading the model; "
          f"GET /health says when it is ready)", file=sys.stderr)
    return run_server(create_app(load, config), args.host, args.port)
