"""The ``tarsier`` command line: one module per sub-command, each with ``register(subparsers)``.

Heavy imports (torch, transformers) happen inside the commands, so ``tarsier --help`` is instant.
A :class:`~tarsier.errors.TarsierError` becomes one ``tarsier: error: ...`` line and exit code 2.
Imports the engine, eval, train, serve and scale packages, and models only through :mod:`tarsier.models.auto`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Sub-command modules under tarsier.cli, in the order `tarsier --help` lists them.
COMMANDS = ["describe", "chat", "caption", "merge", "bench", "eval", "train", "serve", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tarsier",
        description="Describe videos with Tarsier video-language models, evaluate them, and train them.",
        epilog="Run 'tarsier COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"tarsier {package_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"tarsier.cli.{name}").register(subparsers)
    return parser


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tarsier-vlm")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    from tarsier.errors import TarsierError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except TarsierError as exc:
        print(f"tarsier: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tarsier: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`tarsier ... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when exiting
        return 141


if __name__ == "__main__":
    sys.exit(main())
