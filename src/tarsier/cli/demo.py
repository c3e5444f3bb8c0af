"""``tarsier demo``: the Gradio web page (upload a video, see its frames, chat about it)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from tarsier.cli.options import (
    add_bind_options,
    add_generation_options,
    add_model_options,
    cache_bytes,
    check_model_options,
    generation_from_args,
    load_from_args,
    warn_if_exposed,
)
from tarsier.serve.server import check_port_free

EXAMPLES = """examples:
  tarsier demo --model shapes-demo                 # offline, then open http://127.0.0.1:7860
  tarsier demo --model omni-research/Tarsier-7b --max-frames 16 --port 8080
  tarsier demo --model ./my-checkpoint --host 0.0.0.0   # reachable from other machines

Upload a video, GIF or image (or pick a bundled sample) to see the frames the model gets, then ask
questions; answers stream in, and later turns reuse the encoded video. The generation options set the
sliders' starting values (--max-frames is the frame slider's end). The page is only on this machine
(or your network, with --host) unless --share asks Gradio for a public link. Stop with Ctrl-C.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="a web page to upload a video and chat about it",
        description="Serve a Gradio web page: upload a video, GIF or image, see the sampled frames, "
        "and chat about it with streamed answers.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bind_options(parser, port=7860)
    parser.add_argument("--share", action="store_true", help="also make a public *.gradio.live link (needs internet)")
    add_model_options(parser)
    add_generation_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_model_options(args)
    settings = generation_from_args(args)
    check_port_free(args.host, args.port)  # before minutes of loading a large model, not after
    from tarsier.engine.scheduler import Scheduler
    from tarsier.serve.demo import build_demo, launch_demo

    model, processor = load_from_args(args)
    warn_if_exposed(args.host, "the demo")
    scheduler = Scheduler(model, processor, cache_bytes=cache_bytes(args))
    demo = build_demo(scheduler, processor, model_name=args.model, settings=settings)
    try:
        url, share_url = launch_demo(demo, args.host, args.port, share=args.share)
        public = f" and {share_url}" if share_url else ""
        print(f"tarsier: demo of {args.model} at {url}{public} (Ctrl-C stops it)", file=sys.stderr, flush=True)
        signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop ends it like Ctrl-C
        threading.Event().wait()  # the server runs on its own threads until Ctrl-C
    except KeyboardInterrupt:
        print("tarsier: demo stopped", file=sys.stderr)
    finally:
        demo.close()
        scheduler.close(drain=False, timeout=5)
    return 0



def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
