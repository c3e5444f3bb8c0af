"""``tarsier chat``: a multi-turn conversation about one video in the terminal."""

from __future__ import annotations

import argparse
import sys

from tarsier.cli.options import (
    add_generation_options,
    add_model_options,
    add_window_options,
    check_model_options,
    generation_from_args,
)

EXAMPLES = """examples:
  tarsier chat clip.mp4
  tarsier chat clip.mp4 --model ./my-checkpoint --max-new-tokens 128
  printf 'What happens?\\nWhat colour is the car?\\n' | tarsier chat clip.mp4

Type a question and press Enter; an empty line or /exit (or Ctrl-D) ends the chat, /reset starts over.
The video is encoded once: later turns reuse the model's cache instead of re-reading it.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="talk about one video, turn after turn",
        description="Ask questions about one video (or GIF, image, frame folder) in a multi-turn conversation.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", metavar="PATH", help="video, .gif, image or frame folder")
    add_window_options(parser)
    add_model_options(parser)
    add_generation_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tarsier.generation import ChatSession
    from tarsier.media import media_kind
    from tarsier.runtime import load_pretrained

    check_model_options(args)
    media_kind(args.path)  # a bad path fails before the model loads
    settings = generation_from_args(args)
    model, processor = load_pretrained(args.model, device=args.device, dtype=args.dtype, max_n_frames=args.max_frames)
    frames = processor.load_media(args.path, None, args.start, args.end)
    interactive = sys.stdin.isatty()
    print(f"Chatting about {args.path} ({len(frames.images)} frames). Empty line or /exit to quit, /reset to start over.")
    session = ChatSession(model, processor, frames, settings)
    while True:
        if interactive:
            sys.stdout.write("you> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        question = line.strip()
        if not line or not question or question == "/exit":
            return 0
        if question == "/reset":
            session = ChatSession(model, processor, frames, settings)
            print("(conversation reset)")
            continue
        if not interactive:
            print(f"you> {question}")
        sys.stdout.write("tarsier> ")
        for piece in session.ask(question):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
