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
    load_from_args,
)

EXAMPLES = """examples:
  tarsier chat clip.mp4
  tarsier chat clip.mp4 --model ./my-checkpoint --max-new-tokens 128
  printf 'What happens?\\nWhat colour is the car?\\n' | tarsier chat clip.mp4

Type a question and press Enter (arrow keys and history work in a terminal). Commands:
/help lists them, /reset starts over, /exit (or an empty line, or Ctrl-D) ends the chat; Ctrl-C
stops a reply and ends the chat. The video is encoded once: later turns reuse the model's cache
instead of re-reading it.
"""

COMMANDS = {
    "/help": "this list",
    "/reset": "forget the conversation and start over (the video stays loaded)",
    "/exit": "end the chat (so do an empty line and Ctrl-D)",
}


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
    check_model_options(args)
    from tarsier.media import media_kind

    media_kind(args.path)  # a bad path fails before the model loads
    from tarsier.engine.chat import ChatSession

    settings = generation_from_args(args)
    model, processor = load_from_args(args)
    frames = processor.load_media(args.path, None, args.start, args.end)
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401  (line editing and history for input())
    print(f"Chatting about {args.path} ({len(frames.images)} frames). /help for commands, empty line or /exit to quit.")
    session = ChatSession(model, processor, frames, settings)
    while True:
        question = read_question(interactive)
        if question is None or question in ("", "/exit", "/quit"):
            return 0
        if question == "/help":
            print("\n".join(f"  {name:<7} {text}" for name, text in COMMANDS.items()))
            continue
        if question == "/reset":
            session = ChatSession(model, processor, frames, settings)
            print("(conversation reset)")
            continue
        if question.startswith("/") and " " not in question:
            print(f"unknown command {question}; /help lists the commands")
            continue
        if not interactive:
            print(f"you> {question}")
        sys.stdout.write("tarsier> ")
        try:
            for piece in session.ask(question):
                sys.stdout.write(piece)
                sys.stdout.flush()
        finally:  # also after Ctrl-C: end the partial reply's line
            sys.stdout.write("\n")
            sys.stdout.flush()


def read_question(interactive: bool) -> str | None:
    """The next question, stripped; None at end of input."""
    if interactive:
        try:
            return input("you> ").strip()
        except EOFError:
            print()
            return None
        except KeyboardInterrupt:
            print()  # end the half-typed line before the "interrupted" message
            raise
    line = sys.stdin.readline()
    return line.strip() if line else None
