"""``tarsier train``: run a stage of the Tarsier recipe, or a synthetic shapes-world demo (Tarsier or Tarsier2).

Also runnable as ``python -m tarsier.cli.train ARGS`` so launchers that start a module per
process (``torchrun -m``) can start it.
"""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """examples:
  tarsier train --recipe stage1 --print-config > stage1.yaml       # start from a built-in recipe
  tarsier train --config stage1.yaml --output runs/stage1
  tarsier train --recipe stage1 --set model.llava=llava-v1.6-vicuna-7b-hf --output runs/stage1
  tarsier train --recipe stage2 --set model.checkpoint=runs/stage1 --output runs/stage2
  tarsier train --recipe stage2 --set model.checkpoint=omni-research/Tarsier2-Recap-7b \\
      --set 'data.sources=[{path: captions.jsonl, adapter: caption}]' --set model.lora.enabled=true --output runs/t2
  tarsier train --config stage1.yaml --output runs/stage1 --resume auto   # continue after a stop
  torchrun --nproc_per_node 8 -m tarsier.cli.train --config stage1.yaml --output runs/stage1
  tarsier train --recipe shapes-demo --output runs/shapes             # tiny model, CPU, minutes
  tarsier train --recipe shapes-demo --output runs/try --set train.max_steps=3   # smoke run, well under a minute
  tarsier train --recipe tarsier2-shapes-demo --output runs/shapes2   # the same world, a tiny Tarsier2 (Qwen2-VL)

Training needs a start model: model.llava, model.checkpoint or model.vision + model.language (stage1
leaves model.llava to you). A Tarsier2 checkpoint trains its merger and LLM (ViT frozen), with labels
from its own chat template and 16 frames per video unless data.n_frames says otherwise. --print-config prints a commented template even before it is set.
shapes-demo (a ~1M-parameter Tarsier) and tarsier2-shapes-demo (a ~1.2M-parameter Tarsier2) run end to end:
data, start model, stage 0, stages 1 and 2, held-out scores in OUTPUT/report.json. They generate data sized
to the run (the default: 2000 training and 100 held-out clips, stage 0: 1500 steps on frames of 600 clips;
fewer steps, less data); set sizes with --set demo.clips=N, demo.held_out_clips=N, demo.vision_steps=N,
demo.vision_clips=N. python -m tarsier.shapes.demo_model export OUTPUT src/tarsier/assets ships a finished
run as the bundled model of its name (tarsier describe --model tarsier2-shapes-demo).

Data: JSONL, one conversation per line, e.g.
  {"media": "clips/a.mp4", "task": "caption", "messages": [{"role": "user", "content": "<video>\\nDescribe the video."},
   {"role": "assistant", "content": "A man opens a door."}]}
Task files in their own shape (captions, QA, actions, tracking, ...) are read by the source's adapter.
Unusable lines (not JSON, bad fields, missing media) are skipped and reported as FILE:LINE; more than
data.max_bad_fraction of them (default 0.01) stops the run.
The final model is written to OUTPUT in the official layout (tarsier describe --model OUTPUT);
OUTPUT/checkpoint-N/ hold resumable checkpoints, OUTPUT/train_log.jsonl the loss and throughput.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune a Tarsier or Tarsier2 model (stage 1 / stage 2 recipes, or the shapes-world demos)",
        description="Train one stage of the Tarsier recipe (or fine-tune a Tarsier2 checkpoint): frozen ViT, "
        "projector (Tarsier2: merger) and LLM trained, on a "
        "weighted mixture of JSONL sources; one CPU, one GPU, or many GPUs with torchrun/accelerate "
        "(FSDP by default). Checkpoints are in the official layout and resumable.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="stage config (YAML)")
    source.add_argument("--recipe", help="built-in recipe: stage1, stage2, shapes-demo or tarsier2-shapes-demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-5 (repeatable; values are YAML)")
    parser.add_argument("--output", "-o", help="folder for the final model, checkpoints and logs")
    parser.add_argument("--resume", metavar="auto|CHECKPOINT", help="continue from OUTPUT's newest checkpoint (auto) or from CHECKPOINT")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as a commented YAML template (the start model may still be unset) and exit")
    parser.add_argument("--init-only", action="store_true", help="only assemble the start model (OUTPUT/init) and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tarsier.errors import TarsierError

    if args.no_progress and not args.print_config:  # also the bars transformers shows while loading weights
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    from tarsier.shapes import DEMO_RECIPES

    if args.recipe in DEMO_RECIPES:
        return run_shapes_demo(args)
    from tarsier.train.config import load_config

    # A printed config is a template: the start model and data may still be left to fill in.
    config = load_config(args.config, args.recipe, args.overrides, complete=not args.print_config)
    if args.print_config:
        sys.stdout.write(config.to_template())
        return 0
    if not args.output:
        raise TarsierError("--output is required: the folder for the model, checkpoints and logs")
    from pathlib import Path

    if args.init_only:
        from tarsier.train.init import start_folder

        print(f"start model: {start_folder(config.model, Path(args.output))}", file=sys.stderr)
        return 0
    from tarsier.train.trainer import train

    train(config, args.output, resume=args.resume, progress=not args.no_progress)
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """A process launched by torchrun leaves its process group once training is done: left to the
    interpreter's exit, gloo's threads now and then abort it ("terminate called without an active
    exception", exit -6) after a finished run, and torchrun reports the run as failed."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def run_shapes_demo(args: argparse.Namespace) -> int:
    from tarsier.errors import TarsierError
    from tarsier.shapes import demo_model

    recipe = demo_model.RECIPES[args.recipe]
    if args.init_only or args.resume:
        raise TarsierError(f"the {recipe.name} recipe always runs end to end (no --init-only / --resume)")
    if args.print_config:
        configs = demo_model.stage_configs(args.output or "OUTPUT", args.overrides, recipe=recipe)
        sizes = demo_model.demo_sizes(configs, demo_model.split_overrides(args.overrides)[1])
        sys.stdout.write(f"# {recipe.name} data: {demo_model.describe_sizes(sizes)} (--set demo.clips=N, ...)\n")
        for config in configs:
            sys.stdout.write(f"# --- {config.stage} ---\n{config.to_yaml()}")
        return 0
    if not args.output:
        raise TarsierError("--output is required: the folder for the data, both stages and the report")
    from pathlib import Path

    demo_model.stage_configs(args.output, args.overrides, recipe=recipe)  # a bad --set is reported before anything is written
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise TarsierError(f"{args.output}: is a file; --output names a folder")
    try:
        Path(args.output).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TarsierError(f"{args.output}: cannot create the output folder ({exc.strerror or exc})") from None
    demo_model.run_demo(args.output, overrides=args.overrides, progress=not args.no_progress, recipe=recipe)
    return 0


if __name__ == "__main__":
    from tarsier.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
