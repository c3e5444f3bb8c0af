"""Options shared by the commands that load a model and generate.

Everything here is checked without importing torch, so a mistyped option fails in a fraction of a
second instead of after the multi-second import of torch and transformers.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from tarsier.checkpoints import DEFAULT_MODEL


def prompt_text(value: str) -> str:
    """``--prompt`` value with ``\\n`` read as a line break, as the reference prompts need it.

    In bash, ``"<video>\\nWhat ..."`` passes a backslash and an ``n``; without this the model would
    see different text from the reference prompt. (A literal backslash-n is written ``\\\\n``.)
    """
    out, index = [], 0
    while index < len(value):
        pair = value[index : index + 2]
        if pair == "\\n":
            out.append("\n")
            index += 2
        elif pair == "\\\\":
            out.append("\\")
            index += 2
        else:
            out.append(value[index])
            index += 1
    return "".join(out)


def add_prompt_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--prompt", type=prompt_text, default=None, help=help_text + r" (\n in the text is a line break)")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="hub id, local checkpoint folder, or a bundled synthetic-world demo: shapes-demo (Tarsier), "
        f"tarsier2-shapes-demo (Tarsier2) (default: {DEFAULT_MODEL})",
    )
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps or auto (default: cuda if available, else cpu)")
    group.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: bf16 on GPU, fp32 on CPU)")
    group.add_argument("--max-frames", type=int, default=None,
                       help="frames sampled per video, first and last included (default: the model's, "
                            "8 for Tarsier-7b/34b and 16 for Tarsier2)")
    group.add_argument("--compile", action="store_true",
                       help="compile the decode step (torch.compile with CUDA graphs): on an H200, 4x faster steps for "
                            "a 7B model after about 45 s of compiling per batch size; for long jobs on a GPU")
    group.add_argument("--cache-gb", type=float, default=None, metavar="GB",
                       help="memory for the prefix cache: a video's frames and prompt prefix are prefilled once and "
                            "reused by later questions and chat turns; 0 turns it off (default: 4 on CPU, a fifth "
                            "of the GPU's memory)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars (model loading, batches)")


def load_from_args(args: argparse.Namespace) -> tuple[Any, Any]:
    """Model and processor as the model options say."""
    from tarsier.engine.loading import load_pretrained

    return load_pretrained(args.model, device=args.device, dtype=args.dtype, max_n_frames=args.max_frames,
                           progress=not args.no_progress, compile=args.compile)


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_bind_options(parser: argparse.ArgumentParser, port: int) -> None:
    """--host (this machine only by default) and --port, for the commands that listen."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=port, help=f"port (default: {port})")


def warn_if_exposed(host: str, what: str, advice: str = "") -> None:
    """One warning line when ``host`` lets other machines reach ``what``."""
    import sys

    if host not in LOCAL_HOSTS:
        print(f"tarsier: warning: binding {host} exposes {what} beyond this machine{advice}", file=sys.stderr)


def add_window_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", type=float, default=None, help="start of the clip to sample, in seconds")
    parser.add_argument("--end", type=float, default=None, help="end of the clip to sample, in seconds")


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=int, default=512, help="longest reply in tokens (default: 512)")
    group.add_argument("--temperature", type=float, default=0.0, help="0 decodes greedily, as the reference (default: 0)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass when temperature > 0 (default: 1)")
    group.add_argument("--top-k", type=int, default=None,
                       help="when temperature > 0, sample among the k likeliest tokens; 0: all "
                            "(default: the checkpoint's generation_config.json, else 50, as transformers' generate)")
    group.add_argument("--repetition-penalty", type=float, default=None,
                       help="over 1 discourages repeating ids already in the prompt or reply "
                            "(default: the checkpoint's generation_config.json, else 1: none)")


def generation_from_args(args: argparse.Namespace):
    from tarsier.engine.settings import GenerationSettings

    return GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              top_k=args.top_k, repetition_penalty=args.repetition_penalty)


def check_model_options(args: argparse.Namespace) -> None:
    """Reject bad model and generation options before anything heavy is imported or loaded."""
    from tarsier.engine.device import check_device_name, check_dtype_name
    from tarsier.errors import TarsierError

    check_device_name(args.device)
    check_dtype_name(args.dtype)
    if args.max_frames is not None and args.max_frames < 1:
        raise TarsierError(f"--max-frames must be at least 1, got {args.max_frames}")
    if args.cache_gb is not None and not (math.isfinite(args.cache_gb) and args.cache_gb >= 0):
        raise TarsierError(f"--cache-gb must be 0 (no cache) or more, got {args.cache_gb}")
    for name in ("start", "end"):
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise TarsierError(f"--{name} must be 0 or more seconds, got {value}")
    if getattr(args, "start", None) is not None and getattr(args, "end", None) is not None and args.end <= args.start:
        raise TarsierError(f"--end ({args.end}) must be after --start ({args.start})")
    if getattr(args, "batch_size", 1) < 1:
        raise TarsierError(f"--batch-size must be at least 1, got {args.batch_size}")
    if getattr(args, "num_workers", 0) < 0:
        raise TarsierError(f"--num-workers must be 0 or more, got {args.num_workers}")
    if hasattr(args, "max_new_tokens"):
        generation_from_args(args)  # validates the numbers
    if getattr(args, "engine", "local") == "ray":
        from tarsier.scale.local_ray import RaySettings, require_ray

        RaySettings(replicas=args.replicas, gpus_per_replica=args.gpus_per_replica or 0, decode_workers=args.decode_workers)
        require_ray()


def settle_max_frames(args: argparse.Namespace) -> int:
    """``--max-frames``, or the model family's default read from its config.json (8 or 16).

    Jobs that resume record the frame count with each result, so it must be a number before the
    first result is compared, not only once the model has loaded."""
    if args.max_frames is None:
        from tarsier.models.auto import default_frame_count

        args.max_frames = default_frame_count(args.model)
    return args.max_frames


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine (scale-out with Ray; see docs/scale.md)")
    group.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: this process (default); ray: Ray Data on this machine or a cluster (pip install -e \".[ray]\")")
    group.add_argument("--ray-address", default=None, metavar="ADDRESS",
                       help="with --engine ray: 'auto' or ray://HOST:10001 to join a cluster (default: start Ray on this machine)")
    group.add_argument("--replicas", type=int, default=1, help="with --engine ray: model actors, one loaded model each (default: 1)")
    group.add_argument("--gpus-per-replica", type=float, default=None,
                       help="with --engine ray: GPUs per model actor (default: 1 if this machine has a GPU, else 0)")
    group.add_argument("--decode-workers", type=int, default=2, help="with --engine ray: CPU tasks decoding media (default: 2)")


def make_describer(args: argparse.Namespace, generation: Any) -> Any:
    """The in-process :class:`Describer`, or the Ray one with the same ``run`` (``--engine``)."""
    if getattr(args, "engine", "local") == "ray":
        from tarsier.scale.local_ray import RaySettings, require_ray
        from tarsier.scale.ray_describer import RayDescriber

        require_ray()
        gpus = args.gpus_per_replica
        if gpus is None:  # on a cluster whose driver has no GPU, say --gpus-per-replica 1
            import torch

            on_gpu = str(args.device).startswith("cuda") or (args.device in (None, "auto") and torch.cuda.is_available())
            gpus = 1.0 if on_gpu else 0.0
        settings = RaySettings(address=args.ray_address, replicas=args.replicas, gpus_per_replica=gpus,
                               decode_workers=args.decode_workers)
        return RayDescriber(args.model, device=args.device, dtype=args.dtype, max_n_frames=args.max_frames,
                            batch_size=args.batch_size, generation=generation, settings=settings, compile=args.compile)
    from tarsier.engine.describer import Describer

    model, processor = load_from_args(args)
    return Describer(model, processor, generation=generation, batch_size=args.batch_size, num_workers=args.num_workers,
                     cache_bytes=cache_bytes(args))


def cache_bytes(args: argparse.Namespace) -> int | None:
    """``--cache-gb`` in bytes (None: the device's default)."""
    gb = getattr(args, "cache_gb", None)
    return None if gb is None else int(gb * (1 << 30))
