"""Options shared by the commands that load a model and generate."""

from __future__ import annotations

import argparse

from tarsier.checkpoints import DEFAULT_MODEL


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"hub id, local checkpoint folder, or shapes-demo (the bundled synthetic-world demo; default: {DEFAULT_MODEL})",
    )
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps or auto (default: cuda if available, else cpu)")
    group.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: bf16 on GPU, fp32 on CPU)")
    group.add_argument("--max-frames", type=int, default=8, help="frames sampled per video, first and last included (default: 8)")


def add_window_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", type=float, default=None, help="start of the clip to sample, in seconds")
    parser.add_argument("--end", type=float, default=None, help="end of the clip to sample, in seconds")


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=int, default=512, help="longest reply in tokens (default: 512)")
    group.add_argument("--temperature", type=float, default=0.0, help="0 decodes greedily, as the reference (default: 0)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass when temperature > 0 (default: 1)")


def generation_from_args(args: argparse.Namespace):
    from tarsier.generation import GenerationSettings

    return GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)


def check_model_options(args: argparse.Namespace) -> None:
    """Reject a bad --device/--dtype/--max-frames before spending time loading a model."""
    from tarsier.errors import TarsierError
    from tarsier.runtime import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    resolve_dtype(args.dtype, "cuda" if device == "auto" else device)
    if args.max_frames < 1:
        raise TarsierError(f"--max-frames must be at least 1, got {args.max_frames}")
