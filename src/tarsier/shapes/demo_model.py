"""The shapes-world demo: a small Tarsier trained from scratch on CPU in minutes, both stages.

``tarsier train --recipe shapes-demo --output DIR`` runs :func:`run_demo`:

1. generate training clips and per-task JSONL files (:mod:`tarsier.shapes.world`), and
   held-out clips from another random stream;
2. build the start model ``DIR/init``: a BPE tokenizer trained on the world's text (a few hundred
   tokens, ``<image>`` added, Llama-style special tokens) and a ~1M-parameter Tarsier (32 px
   frames, 8 px patches: 21 positions per frame) in the official layout, whose vision tower is
   first pre-trained on single frames (stage 0, :func:`pretrain_vision`) and whose projector and
   LLM start random;
3. stage 1 (multi-task: perception and event questions, short captions, multiple choice, action
   labels, still-pair comparisons, tracking, text-only) then stage 2 (detailed and short
   descriptions, questions), through the same trainer and data path as the real recipes;
4. score the start model and both stages on the held-out clips and write ``DIR/report.json``.

How much is generated follows the run's size (:func:`demo_sizes`): the default run (700 steps of
16 samples per stage) generates 2,000 training clips, 100 held-out clips and pre-trains the ViT
for 1,500 steps on frames of 600 clips; a shorter run (``--set train.max_steps=3``) gets
proportionally less, down to a small minimum, and ``--set demo.clips=N`` (``demo.held_out_clips``,
``demo.vision_steps``, ``demo.vision_clips``) sets a size directly.

Stage 0 stands in for the pretrained CLIP the real recipe starts from: each patch token of the
tiny ViT learns the colour of the ball on it, which way its motion blur points and whether the
background is smeared, from generated frames only. Then the ViT is frozen, as in the real recipe,
and stages 1 and 2 train the projector and the LLM. With a random ViT instead (frozen or trained
with the rest) motion and camera stayed at the most-common-answer level.

:func:`export` copies a finished run's model and a few held-out clips into the package assets
(``tarsier/assets/shapes-demo``).
"""

from __future__ import annotations

import json
import math
import shutil
import string
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tarsier.errors import TarsierError
from tarsier.shapes import world
from tarsier.train.config import StageConfig, apply_override, config_from_dict

# Tokenizer pieces: a word or any other character, each with the space that follows it. Spaces
# travel with the piece before them, so "ASSISTANT: " (the prompt's trailing space) tokenises the
# same at inference as inside a training conversation, where a reply follows it.
PIECES = r"[A-Za-z]+ ?|[^A-Za-z\s] ?|\s"
SPECIAL = ["<unk>", "<s>", "</s>"]
IMAGE_TOKEN = "<image>"
ARCHITECTURE = {
    "image_size": 32,
    "patch_size": 8,
    "vision_width": 64,
    "vision_layers": 2,
    "vision_heads": 4,
    "text_width": 128,
    "text_layers": 4,
    "text_heads": 4,
}

# Stage 1 leans on questions only the pixels answer (which balls, their colours, how they move): a
# model learning from scratch first has to find the few patches that matter among 168, and short
# answers decided by the frames are what teach it to look; with too few of them the language prior
# wins and the model ignores its frames (we measured no loss difference between true and shuffled
# frames after 800 steps of a caption-heavy mixture).
STAGE1_TASKS = [  # (file, adapter, weight)
    ("perception_qa", "open_qa", 3.0),
    ("open_qa", "open_qa", 3.0),
    ("captions", "caption", 2.0),
    ("multiple_choice", "multiple_choice", 1.0),
    ("actions", "action", 1.0),
    ("multi_image", "multi_image", 0.5),
    ("tracking", "tracking", 0.25),
    ("text", "text", 0.1),
]
STAGE2_TASKS = [("detailed", "chat", 4.0), ("short", "chat", 1.0), ("open_qa", "open_qa", 1.0), ("perception_qa", "open_qa", 1.0)]


DEFAULT_STEPS = (700, 700)  # optimizer steps of stage 1 and stage 2
DEFAULT_BATCH = 16  # samples per step (train.micro_batch_size, no accumulation)
# What the full demo generates (the shipped model was made with these) and the least a small run gets.
DEMO_SIZES = {"clips": 2000, "held_out_clips": 100, "vision_steps": 1500, "vision_clips": 600}
MIN_SIZES = {"clips": 32, "held_out_clips": 8, "vision_steps": 30, "vision_clips": 40}
LEAST = {"clips": 8, "held_out_clips": 1, "vision_steps": 1, "vision_clips": 10}  # what --set demo.KEY accepts
DEMO_KEYS = {
    "clips": "training clips generated",
    "held_out_clips": "held-out clips the models are scored on",
    "vision_steps": "stage-0 steps pre-training the ViT",
    "vision_clips": "clips whose frames stage 0 learns from",
}


def split_overrides(overrides: list[str] = ()) -> tuple[list[str], dict[str, int]]:
    """Stage-config overrides, and the demo's own sizes (``demo.clips=N``, ...) as a mapping."""
    import yaml

    stage, demo = [], {}
    for override in overrides:
        key, _, raw = override.partition("=")
        if not key.strip().startswith("demo."):
            stage.append(override)
            continue
        name = key.strip().removeprefix("demo.")
        if name not in DEMO_KEYS:
            raise TarsierError(f"--set {key.strip()}: unknown demo setting; the shapes demo takes: "
                               + ", ".join(f"demo.{k}" for k in DEMO_KEYS))
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, bool) or not isinstance(value, int) or value < LEAST[name]:
            raise TarsierError(f"--set demo.{name}: must be an integer >= {LEAST[name]} ({DEMO_KEYS[name]}), got {raw.strip()!r}")
        demo[name] = value
    return stage, demo


def demo_sizes(configs: list[StageConfig], settings: dict[str, int] | None = None) -> dict[str, int]:
    """How much the demo generates for a run of these stages.

    The full sizes (:data:`DEMO_SIZES`) when the longer stage draws at least as many samples as a
    default stage (700 steps of 16), else that share of them, at least :data:`MIN_SIZES`: a
    3-step smoke run does not wait for 2,000 clips. ``settings`` (``demo.KEY``) are used as given.
    """
    full = max(DEFAULT_STEPS) * DEFAULT_BATCH
    samples = max(config.train.max_steps * config.global_batch for config in configs)
    share = min(1.0, samples / full)
    sizes = {key: max(MIN_SIZES[key], math.ceil(value * share)) for key, value in DEMO_SIZES.items()}
    sizes.update(settings or {})
    return sizes


def describe_sizes(sizes: dict[str, int]) -> str:
    return (f"{sizes['clips']} training clips, {sizes['held_out_clips']} held-out clips, stage 0: "
            f"{sizes['vision_steps']} steps on frames of {sizes['vision_clips']} clips")


def stage_configs(output: str | Path, overrides: list[str] = (), steps: tuple[int, int] = DEFAULT_STEPS) -> list[StageConfig]:
    """The two demo stages; ``overrides`` (``key=value``) apply to both (``demo.*`` ones are not
    stage settings: see :func:`demo_sizes`)."""
    output = Path(output)
    overrides, _ = split_overrides(overrides)
    data = output / "data"

    def stage(name: str, start: str, tasks: list[tuple[str, str, float]], lr: float, max_steps: int, save_dtype: str) -> StageConfig:
        config: dict[str, Any] = {
            "stage": name,
            "model": {"checkpoint": str(output / start)},
            "data": {
                "sources": [{"path": str(data / f"{file}.jsonl"), "adapter": adapter, "weight": weight} for file, adapter, weight in tasks],
                "n_frames": 8,
                "max_length": 512,
                "num_workers": 1,
            },
            "optim": {"lr": lr, "warmup_ratio": 0.05, "min_lr_ratio": 0.1, "max_grad_norm": 1.0},
            "train": {"max_steps": max_steps, "micro_batch_size": DEFAULT_BATCH, "gradient_accumulation": 1, "seed": 0,
                      "save_dtype": save_dtype, "log_every": 25, "save_every": 0, "keep_checkpoints": 1},
            "distributed": {"strategy": "ddp"},
        }
        for override in overrides:
            apply_override(config, override)
        return config_from_dict(config, f"shapes-demo {name}")

    return [
        stage("shapes-stage1", "init", STAGE1_TASKS, 1e-3, steps[0], "fp32"),
        stage("shapes-stage2", "stage1", STAGE2_TASKS, 1e-3, steps[1], "fp16"),
    ]


# -- the start model ------------------------------------------------------------------------------


def training_texts(data: Path) -> list[str]:
    """Every conversation of the demo data as the model will read it (the tokenizer's corpus)."""
    from tarsier.models.tarsier.prompting_tarsier import CHAT_TEMPLATES
    from tarsier.train.adapters import ADAPTERS

    template = CHAT_TEMPLATES["tarsier-7b"]
    texts = [template.render([{"role": "user", "content": world.DETAILED_PROMPT}], 0)]
    for file, adapter in dict.fromkeys((file, adapter) for file, adapter, _ in STAGE1_TASKS + STAGE2_TASKS):
        for number, line in enumerate((data / f"{file}.jsonl").read_text().splitlines()):
            record = ADAPTERS[adapter](json.loads(line), f"{file}:{number}", 4)
            texts.append(template.render(record["messages"], 0, add_generation_prompt=False))
    return texts


def write_tokenizer(folder: Path, texts: list[str]) -> int:
    """A small BPE tokenizer in the Llama file layout; returns the id of ``<image>``.

    Ids 0-2 are ``<unk> <s> </s>`` as in Llama; every printable ASCII character is in the
    alphabet, so any prompt can be encoded; ``<image>`` is added last.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(PIECES), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL, initial_alphabet=list(string.printable), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.add_special_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)])
    image_id = tokenizer.token_to_id(IMAGE_TOKEN)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": True, "add_eos_token": False,
                "model_max_length": 1024, "padding_side": "left", "clean_up_tokenization_spaces": False, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    (folder / "added_tokens.json").write_text(json.dumps({IMAGE_TOKEN: image_id}) + "\n")
    return image_id


def build_start_model(folder: Path, texts: list[str], seed: int = 0, vision_steps: int = 1500, vision_clips: int = 600,
                      progress: bool = False) -> Path:
    """The start model in the official layout: the demo tokenizer, a vision tower pre-trained on
    single frames (:func:`pretrain_vision`), a random projector and LLM."""
    from tarsier.models.tarsier.configuration_tarsier import TarsierConfig
    from tarsier.models.tarsier.modeling_tarsier import TarsierForConditionalGeneration
    from tarsier.models.tarsier.processing_tarsier import ImageSettings
    from tarsier.models.weights import write_weights

    image_id = write_tokenizer(folder, texts)
    arch = ARCHITECTURE
    vocab = -(-(image_id + 3) // 8) * 8  # <image>, then the two separator rows, padded to a multiple of 8
    config = {
        "architectures": ["TarsierForConditionalGeneration"],
        "model_type": "llava",
        "ignore_index": -100,
        "image_token_index": image_id,
        "image_newline_idx": image_id + 1,
        "image_new_idx": image_id + 2,
        "pad_token_id": 0,
        "projector_hidden_act": "gelu",
        "text_config": {
            "model_type": "llama", "hidden_size": arch["text_width"], "intermediate_size": 3 * arch["text_width"],
            "num_hidden_layers": arch["text_layers"], "num_attention_heads": arch["text_heads"],
            "num_key_value_heads": arch["text_heads"], "max_position_embeddings": 1024, "rms_norm_eps": 1e-5,
            "vocab_size": vocab, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": arch["vision_width"], "intermediate_size": 4 * arch["vision_width"],
            "num_hidden_layers": arch["vision_layers"], "num_attention_heads": arch["vision_heads"],
            "image_size": arch["image_size"], "patch_size": arch["patch_size"],
        },
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "vocab_size": vocab,
        "torch_dtype": "float32",
    }
    torch.manual_seed(seed)
    model = TarsierForConditionalGeneration(TarsierConfig(**config))
    scores = pretrain_vision(model, seed, steps=vision_steps, pool_clips=vision_clips, progress=progress)
    (folder / "vision_pretraining.json").write_text(json.dumps(scores, indent=2) + "\n")
    write_weights(folder, model.state_dict(), torch.float32)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    settings = ImageSettings(size=arch["image_size"], crop_size=arch["image_size"])
    (folder / "preprocessor_config.json").write_text(json.dumps(settings.to_dict(), indent=2) + "\n")
    return folder


def pretrain_vision(model, seed: int = 0, steps: int = 1500, batch_size: int = 64, pool_clips: int = 600,
                    progress: bool = False) -> dict[str, float]:
    """Stage 0, the stand-in for CLIP pre-training: teach the tiny ViT what single frames show.

    The real recipe starts from a pretrained CLIP, whose patch features already say what is where
    and what is blurred; a random ViT does not, and a ~1M-parameter LLM cannot make up for it in
    minutes (motion and camera stayed at the most-common-answer level with a random ViT, frozen or
    trained). So each patch token learns, through linear heads dropped afterwards, the colour of
    the ball covering it, which way that ball moves in the picture (its motion-blur trail), and
    whether the background is smeared by a pan. Frames come from their own random stream, never
    from the training or held-out clips. Returns held-out per-patch accuracies.
    """
    import numpy as np
    from tqdm import tqdm

    from tarsier.models.tarsier.processing_tarsier import ImageSettings, clip_pixels

    def bar(total: int, desc: str, unit: str) -> tqdm:
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not progress, dynamic_ncols=True)

    vision = model.vision_tower.vision_model
    config = model.config.vision_config
    grid = config.image_size // config.patch_size
    settings = ImageSettings(size=config.image_size, crop_size=config.image_size)
    rng = np.random.default_rng(seed + 7_000_001)
    pixels, colours, motions, smeared = [], [], [], []
    with bar(pool_clips, "stage 0 frames", "clip") as rendering:
        for _ in range(pool_clips):
            clip = world.random_clip(rng)
            frames = world.render(clip)
            for frame in rng.choice(world.FRAMES, 4, replace=False):
                pixels.append(clip_pixels(frames[frame], settings))
                colour, motion = world.patch_truth(clip, int(frame), grid)
                colours.append(colour)
                motions.append(motion)
                smeared.append(np.full(grid * grid, int(clip.camera != "still")))
            rendering.update(1)
    pixels, colours, motions, smeared = (torch.from_numpy(np.stack(x)) for x in (pixels, colours, motions, smeared))
    held_out = len(pixels) // 10
    sizes = (len(world.COLOURS) + 1, len(world.MOTIONS), 2)
    heads = torch.nn.Linear(config.hidden_size, sum(sizes))
    parameters = list(vision.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))

    def logits(index: torch.Tensor) -> list[torch.Tensor]:
        tokens = vision(pixels[index], model.vision_layers_used)[:, 1:]  # the features the LLM will see
        return list(heads(tokens).split(sizes, dim=-1))

    targets = (colours, motions, smeared)
    generator = torch.Generator().manual_seed(seed)
    with bar(steps, "stage 0 training", "step") as training:
        for _ in range(steps):
            index = torch.randint(held_out, len(pixels), (batch_size,), generator=generator)
            loss = sum(torch.nn.functional.cross_entropy(out.flatten(0, 1), target[index].flatten())
                       for out, target in zip(logits(index), targets))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            training.update(1)
    with torch.no_grad():
        colour, motion, smear = (out.argmax(-1) for out in logits(torch.arange(held_out)))
    balls, moving = colours[:held_out] > 0, motions[:held_out] != world.MOTIONS.index("still")
    return {
        "frames": len(pixels), "steps": steps,
        "colour_accuracy_on_ball_patches": float((colour == colours[:held_out])[balls].float().mean()),
        "motion_accuracy_on_moving_patches": float((motion == motions[:held_out])[moving].float().mean()),
        "background_accuracy": float((colour == 0)[~balls].float().mean()),
        "smear_accuracy": float((smear == smeared[:held_out]).float().mean()),
    }


# -- shipping -------------------------------------------------------------------------------------

SHIPPED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", "preprocessor_config.json")


def export(run: str | Path, assets: str | Path, samples: int = 3) -> dict[str, tuple[str, str]]:
    """Ship a finished demo run as package assets.

    Copies ``RUN/stage2`` (model, tokenizer, its ``train_config.yaml``) and ``RUN/report.json``
    (as ``evaluation.json``) into ``assets/shapes-demo``, and ``samples`` held-out clips (one with
    two moving balls, one with a camera pan, one where a ball appears and one changes colour) into
    ``assets/samples/shapes_N.mp4`` with their truth in ``assets/samples/truth.jsonl``. The model's
    own descriptions of them go to ``shapes-demo/samples.json``, which the tests compare against,
    so a change that alters what the shipped model says is noticed. Returns name -> (truth, model).
    """

    run, assets = Path(run), Path(assets)
    model = assets / "shapes-demo"
    model.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_FILES + ("train_config.yaml",):
        shutil.copyfile(run / "stage2" / name, model / name)
    shutil.copyfile(run / "report.json", model / "evaluation.json")
    wanted = [
        lambda c: c.camera == "still" and len(c.balls) == 2 and all(b.motion != "still" for b in c.balls),
        lambda c: c.camera != "still",
        lambda c: any(b.appears_at is not None for b in c.balls) and any(b.turns for b in c.balls),
    ][:samples]
    held_out = world.read_clips(run / "held_out")
    (assets / "samples").mkdir(parents=True, exist_ok=True)
    truth: dict[str, str] = {}
    chosen: set[str] = set()
    for number, test in enumerate(wanted, start=1):
        path, clip = next((p, c) for p, c in held_out if test(c) and p not in chosen)
        chosen.add(path)
        truth[f"shapes_{number}.mp4"] = world.detailed(clip)
        shutil.copyfile(path, assets / "samples" / f"shapes_{number}.mp4")
    lines = [json.dumps({"path": name, "description": text}) for name, text in truth.items()]
    (assets / "samples" / "truth.jsonl").write_text("\n".join(lines) + "\n")
    said = world.describe_clips(model, [(str(assets / "samples" / name), None) for name in truth])
    (model / "samples.json").write_text(json.dumps(dict(zip(truth, said)), indent=2) + "\n")
    return {name: (truth[name], text) for name, text in zip(truth, said)}


# -- the whole demo -------------------------------------------------------------------------------


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_demo(
    output: str | Path,
    overrides: list[str] = (),
    progress: bool = True,
    train_clips: int | None = None,
    held_out_clips: int | None = None,
    steps: tuple[int, int] = DEFAULT_STEPS,
    vision_steps: int | None = None,
    vision_clips: int | None = None,
) -> dict[str, Any]:
    """Generate, build, train both stages, evaluate; returns (and writes) the report.

    Sizes left as None follow the run (:func:`demo_sizes`, with ``demo.*`` overrides); the default
    run generates :data:`DEMO_SIZES`.
    """
    from tarsier.train.trainer import train

    output = Path(output)
    configs = stage_configs(output, overrides, steps)  # checks every override before any work
    given = {"clips": train_clips, "held_out_clips": held_out_clips, "vision_steps": vision_steps, "vision_clips": vision_clips}
    sizes = demo_sizes(configs, {**split_overrides(overrides)[1], **{k: v for k, v in given.items() if v is not None}})
    world.one_thread()
    started = time.perf_counter()
    data = output / "data"
    truth = data / "clips" / "clips.jsonl"
    have = len(truth.read_text().splitlines()) if (data / "detailed.jsonl").is_file() and truth.is_file() else 0
    if have != sizes["clips"]:  # the same seed and count give the same clips: reuse those of an earlier try
        scaled = "" if sizes["clips"] == DEMO_SIZES["clips"] else " (sized to the run; --set demo.clips=N to change)"
        say(f"generating {describe_sizes(sizes)}{scaled}; data in {data}")
        world.write_training_data(data, sizes["clips"], seed=0, progress=progress)
    else:
        say(f"using the {have} training clips already in {data}")
    held_out_folder = output / "held_out"
    held_out = [(str(held_out_folder / name), clip) for name, clip in
                world.write_clips(held_out_folder, sizes["held_out_clips"], world.HELD_OUT_SEED, prefix="held_out",
                                         progress=progress, label="held-out clips")]
    say("pre-training the vision tower on single frames (stage 0)")
    build_start_model(output / "init", training_texts(data), vision_steps=sizes["vision_steps"], vision_clips=sizes["vision_clips"],
                      progress=progress)
    generated = time.perf_counter() - started

    reports: dict[str, dict[str, Any]] = {}
    say("scoring the untrained start model on the held-out clips")
    reports["start"] = world.evaluate(output / "init", held_out)
    timings = {}
    for config in configs:
        name = config.stage.removeprefix("shapes-")
        result = train(config, output / name, progress=progress)
        timings[name] = {"seconds": round(result.seconds, 1), "steps": result.steps,
                         "first_loss": result.losses[0], "last_loss": sum(result.losses[-10:]) / len(result.losses[-10:])}
        say(f"scoring {name} on the held-out clips")
        reports[name] = world.evaluate(output / name, held_out)
    train_descriptions = {json.loads(line)["messages"][1]["content"] for line in (data / "detailed.jsonl").read_text().splitlines()}
    report = {
        "held_out_clips": len(held_out),
        "majority_reference": world.majority_reference([clip for _, clip in held_out]),
        "held_out_descriptions_unseen_in_training": sum(world.detailed(c) not in train_descriptions for _, c in held_out) / len(held_out),
        "training_clips": sizes["clips"],
        "data_and_init_seconds": round(generated, 1),
        "vision_pretraining": json.loads((output / "init" / "vision_pretraining.json").read_text()),
        "training": timings,
        "scores": reports,
        "model": str(output / "stage2"),
    }
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    say("\n" + world.format_report({"majority": report["majority_reference"], **reports}))
    for example in reports["stage2"]["examples"]:
        say(f"{example['media']}\n  truth: {example['truth']}\n  model: {example['model']}")
    say(f"\nfinal model: {output / 'stage2'} (report: {output / 'report.json'})")
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tarsier.shapes.demo_model",
                                     description="Ship a finished shapes-demo run (tarsier train --recipe shapes-demo) as package assets.")
    commands = parser.add_subparsers(dest="command", required=True)
    export_parser = commands.add_parser("export", help="copy RUN/stage2 and three held-out clips into ASSETS")
    export_parser.add_argument("run", help="the --output folder of a finished shapes-demo run")
    export_parser.add_argument("assets", help="assets folder, e.g. src/tarsier/assets")
    args = parser.parse_args(argv)
    for name, (truth, said) in export(args.run, args.assets).items():
        print(f"{name}\n  truth: {truth}\n  model: {said}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
