"""The shapes-world demos: small Tarsier and Tarsier2 models trained from scratch on CPU in minutes.

``tarsier train --recipe shapes-demo --output DIR`` (Tarsier: CLIP-style ViT -> projector -> Llama)
and ``tarsier train --recipe tarsier2-shapes-demo --output DIR`` (Tarsier2: Qwen2-VL vision tower
and patch merger -> Qwen2 with M-RoPE) run :func:`run_demo` with their :class:`Recipe`:

1. generate training clips and per-task JSONL files (:mod:`tarsier.shapes.world`), and
   held-out clips from another random stream;
2. build the start model ``DIR/init`` in the family's official layout: a BPE tokenizer trained on
   the world's text (a few hundred tokens plus the family's special tokens), a ~1M-parameter model
   whose vision tower is first pre-trained on single frames (stage 0, :func:`pretrain_vision`) and
   whose projector and LLM start random. Tarsier: 32 px frames, 8 px patches (21 positions per
   frame), Llama-style tokens and ``<image>``. Tarsier2: frames resized to 56 px, 14 px patches
   merged 2x2 (4 LLM positions per frame, each frame fed twice as one temporal patch, 16 frames
   per video as ``tarsier describe`` samples them), Qwen2's byte-level BPE form, its special
   tokens and a Qwen2-VL chat template;
3. stage 1 (multi-task: perception and event questions, short captions, multiple choice, action
   labels, still-pair comparisons, tracking, text-only) then stage 2 (detailed and short
   descriptions, questions), through the same trainer and data path as the real recipes;
4. score the start model and both stages on the held-out clips and write ``DIR/report.json``.

Both recipes share everything but the start model (:func:`build_start_model`,
:func:`build_tarsier2_start_model`) and the frames stage 0 sees (:class:`TarsierFrames`,
:class:`Tarsier2Frames`).

How much is generated follows the run's size (:func:`demo_sizes`): the default run (700 steps of
16 samples per stage) generates 2,000 training clips, 100 held-out clips and pre-trains the ViT
for 1,500 steps on frames of 600 clips; a shorter run (``--set train.max_steps=3``) gets
proportionally less, down to a small minimum, and ``--set demo.clips=N`` (``demo.held_out_clips``,
``demo.vision_steps``, ``demo.vision_clips``) sets a size directly.

Stage 0 stands in for the pretrained CLIP (Tarsier2: the pretrained Qwen2-VL vision tower and patch
merger) the real recipe starts from: each patch token of the tiny ViT (Tarsier2: each merged token,
for each of its 4 patches) learns the colour of the ball on it, which way its motion blur points and
whether the background is smeared, from generated frames only. Then the ViT is frozen, as in the
real recipe, and stages 1 and 2 train the projector (Tarsier2: the merger) and the LLM. With a
random ViT instead (frozen or trained with the rest) motion and camera stayed at the
most-common-answer level; with a Tarsier2 merger left random, the held-out fact F1 after 250 steps
per stage was 0.55 instead of 0.70.

:func:`export` copies a finished run's model into the package assets (``tarsier/assets/NAME``) and
records what it says about the bundled held-out sample clips (``tarsier/assets/samples``, shared
by both models).
"""

from __future__ import annotations

import functools
import json
import math
import re
import shutil
import string
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tarsier.errors import TarsierError
from tarsier.shapes import world
from tarsier.testing import Tarsier2Preset
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
# The Tarsier2 demo: the same widths and depths (ViT 2 x 64, LLM 4 x 128 with a 3x MLP), Qwen2's
# grouped KV heads and M-RoPE sections for its 32-wide heads (the real 16, 24, 24 of 128, scaled).
TARSIER2_ARCHITECTURE = Tarsier2Preset(vision_width=64, vision_layers=2, vision_heads=4, text_width=128, text_layers=4,
                                       text_heads=4, text_kv_heads=2, mrope_section=(4, 6, 6), text_mlp_ratio=3,
                                       vision_mlp_ratio=4)
TARSIER2_FRAME_PIXELS = 56 * 56  # every frame resized to about this (64 px world frames: 56 x 56, 4 x 4 patches)

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


def stage_configs(output: str | Path, overrides: list[str] = (), steps: tuple[int, int] = DEFAULT_STEPS,
                  recipe: Recipe | None = None) -> list[StageConfig]:
    """The two demo stages of ``recipe`` (default: the Tarsier one); ``overrides`` (``key=value``)
    apply to both (``demo.*`` ones are not stage settings: see :func:`demo_sizes`)."""
    recipe = recipe or SHAPES_DEMO
    output = Path(output)
    overrides, _ = split_overrides(overrides)
    data = output / "data"

    def stage(name: str, start: str, tasks: list[tuple[str, str, float]], lr: float, max_steps: int, save_dtype: str) -> StageConfig:
        config: dict[str, Any] = {
            "stage": f"{recipe.stage_prefix}{name}",
            "model": {"checkpoint": str(output / start)},
            "data": {
                "sources": [{"path": str(data / f"{file}.jsonl"), "adapter": adapter, "weight": weight} for file, adapter, weight in tasks],
                "n_frames": recipe.n_frames,
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
        return config_from_dict(config, f"{recipe.name} {name}")

    return [
        stage("stage1", "init", STAGE1_TASKS, 1e-3, steps[0], "fp32"),
        stage("stage2", "stage1", STAGE2_TASKS, 1e-3, steps[1], "fp16"),
    ]


def stage_folder(config: StageConfig, recipe: Recipe) -> str:
    """``stage1`` / ``stage2``: where a run writes the stage (``OUTPUT/stage1``)."""
    return config.stage.removeprefix(recipe.stage_prefix)


# -- the start model ------------------------------------------------------------------------------


def training_texts(data: Path, recipe: Recipe | None = None) -> list[str]:
    """Every conversation of the demo data as ``recipe``'s model will read it (its tokenizer's corpus)."""
    from tarsier.train.adapters import ADAPTERS

    render = (recipe or SHAPES_DEMO).render
    texts = [render([{"role": "user", "content": world.DETAILED_PROMPT}], False, True)]
    for file, adapter in dict.fromkeys((file, adapter) for file, adapter, _ in STAGE1_TASKS + STAGE2_TASKS):
        for number, line in enumerate((data / f"{file}.jsonl").read_text().splitlines()):
            record = ADAPTERS[adapter](json.loads(line), f"{file}:{number}", 4)
            texts.append(render(record["messages"], record.get("media") is not None, False))
    return texts


def render_tarsier(messages: list[dict[str, str]], media: bool, add_generation_prompt: bool) -> str:
    """A conversation in the Tarsier-7b prompt format (the placeholder left as written)."""
    from tarsier.models.tarsier.prompting_tarsier import CHAT_TEMPLATES

    return CHAT_TEMPLATES["tarsier-7b"].render(messages, 0, add_generation_prompt=add_generation_prompt)


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


def write_tarsier2_tokenizer(folder: Path, texts: list[str]) -> dict[str, int]:
    """A small BPE tokenizer in Qwen2's form (byte-level, Qwen2's pre-tokeniser, no BOS) with
    Qwen2's special tokens numbered right after its vocabulary, as Qwen2's follow its 151,643
    tokens; returns them with their ids.

    The texts are cut at special tokens before the merges are learnt, as encoding cuts them."""
    from tarsier.testing import QWEN2_SPECIAL_TOKENS, qwen2_bpe, write_qwen2_tokenizer_files

    special = re.compile("|".join(map(re.escape, QWEN2_SPECIAL_TOKENS)))
    tokenizer = qwen2_bpe([piece for text in texts for piece in special.split(text) if piece], 512)
    size = tokenizer.get_vocab_size()
    ids = {token: size + number for number, token in enumerate(QWEN2_SPECIAL_TOKENS)}
    folder.mkdir(parents=True, exist_ok=True)
    write_qwen2_tokenizer_files(folder, json.loads(tokenizer.to_str()), ids)
    return ids


@functools.cache
def _template_renderer() -> Any:
    """A tokenizer to render chat templates with (any tokenizer renders one; an empty one costs nothing)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()))


def render_tarsier2(messages: list[dict[str, str]], media: bool, add_generation_prompt: bool) -> str:
    """A conversation as the Tarsier2 demo's chat template renders it (the media block once, in the
    first user turn, where its placeholder is, as :class:`Tarsier2Processor` passes it)."""
    from tarsier.models.tarsier2.processing_tarsier2 import user_content
    from tarsier.testing import TARSIER2_CHAT_TEMPLATE

    rendered, first = [], media
    for message in messages:
        if message["role"] == "user":
            content = user_content(message["content"], "video" if first else None)
            first = False
        else:
            content = [{"type": "text", "text": message["content"]}]
        rendered.append({"role": message["role"], "content": content})
    return _template_renderer().apply_chat_template(rendered, chat_template=TARSIER2_CHAT_TEMPLATE, tokenize=False,
                                                    add_generation_prompt=add_generation_prompt)


def build_tarsier2_start_model(folder: Path, texts: list[str], seed: int = 0, vision_steps: int = 1500, vision_clips: int = 600,
                               progress: bool = False) -> Path:
    """The Tarsier2 start model in the official layout (config.json with the published keys,
    tokenizer, ``chat_template.json``, Qwen2-VL ``preprocessor_config.json``, ``generation_config.json``):
    the demo tokenizer, a Qwen2-VL vision tower and patch merger pre-trained on single frames
    (:func:`pretrain_vision` through :class:`Tarsier2Frames`), a random LLM."""
    from tarsier.models import auto
    from tarsier.models.weights import write_weights
    from tarsier.testing import (
        TARSIER2_CHAT_TEMPLATE,
        qwen2_generation_config,
        qwen2_vl_preprocessor,
        tarsier2_official_config,
    )

    ids = write_tarsier2_tokenizer(folder, texts)
    config = tarsier2_official_config(TARSIER2_ARCHITECTURE, ids, vocab_size=max(ids.values()) + 1)
    config["torch_dtype"] = "float32"
    files = {
        "config.json": config,
        "chat_template.json": {"chat_template": TARSIER2_CHAT_TEMPLATE},
        "preprocessor_config.json": qwen2_vl_preprocessor(TARSIER2_FRAME_PIXELS, TARSIER2_FRAME_PIXELS),
        "generation_config.json": qwen2_generation_config(ids),
    }
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=2) + "\n")
    checkpoint = auto.read_checkpoint(folder, weights=False)
    torch.manual_seed(seed)
    model = checkpoint.model_class(checkpoint.model_config)
    frames = Tarsier2Frames(model, auto.load_processor(checkpoint))
    scores = pretrain_vision(model, seed, steps=vision_steps, pool_clips=vision_clips, progress=progress, frames=frames)
    (folder / "vision_pretraining.json").write_text(json.dumps(scores, indent=2) + "\n")
    write_weights(folder, model.state_dict(), torch.float32)
    return folder


class TarsierFrames:
    """What stage 0 needs of a Tarsier vision tower: a frame as CLIP preprocessing gives it, and the
    patch features the projector reads (one token per patch, row-major, without the class token)."""

    per_token = 1  # patches a feature token stands for

    def __init__(self, model):
        from tarsier.models.tarsier.processing_tarsier import ImageSettings

        self.model = model
        config = model.config.vision_config
        self.grid, self.width = config.image_size // config.patch_size, config.hidden_size
        self.order = np.arange(self.grid * self.grid)  # the row-major cell of each patch, in token order
        self.settings = ImageSettings(size=config.image_size, crop_size=config.image_size)

    def pixels(self, image) -> np.ndarray:
        from tarsier.models.tarsier.processing_tarsier import clip_pixels

        return clip_pixels(image, self.settings)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.vision_tower.vision_model.parameters())

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.vision_tower.vision_model(pixels, self.model.vision_layers_used)[:, 1:]


class Tarsier2Frames:
    """What stage 0 needs of a Tarsier2 (Qwen2-VL) vision tower: a frame as the processor feeds an
    image (twice: one temporal patch; ``[patches, 3*2*14*14]``, ordered by 2 x 2 merge block), and
    the merged tokens the LLM reads, each standing for the 4 patches of its block.

    The real Tarsier2 starts from Qwen2-VL, whose vision tower and patch merger were pre-trained
    together, so stage 0 trains both: each merged token learns what each of its 4 patches shows."""

    def __init__(self, model, processor):
        from tarsier.models.tarsier2.processing_tarsier2 import cut_temporal_patches

        self.model, self.processor = model, processor
        self.width = model.config.vision_config.hidden_size  # the merger's output: the LLM width
        from PIL import Image

        _, rows, columns = self._inputs(Image.new("RGB", (world.SIZE, world.SIZE))).grid
        if rows != columns or world.SIZE % rows:
            raise TarsierError(f"the demo's frames should make a square grid of patches dividing {world.SIZE} px, got {rows} x {columns}")
        self.grid = rows
        patch, merge, temporal = (getattr(processor.image_processor, key) for key in ("patch_size", "merge_size", "temporal_patch_size"))
        self.per_token = merge * merge
        # The row-major cell of each patch in the processor's order: cut a picture of cell numbers.
        numbers = np.kron(np.arange(rows * columns, dtype=np.float32).reshape(rows, columns), np.ones((patch, patch), np.float32))
        cut, _ = cut_temporal_patches(np.repeat(numbers[None, None], temporal, axis=0), patch, merge, temporal)
        self.order = cut[:, 0].astype(np.int64)

    def _inputs(self, image):
        from tarsier.media import SampledFrames

        return self.processor.media_inputs(SampledFrames([image], [0], 1, None, "<frame>", "image"))

    def pixels(self, image) -> np.ndarray:
        return self._inputs(image).pixel_values.numpy()

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.vision_tower.parameters())

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        grids = torch.tensor([[1, self.grid, self.grid]] * len(pixels))
        tokens = self.model.vision_tower(pixels.flatten(0, 1), grid_thw=grids).pooler_output
        return tokens.view(len(pixels), -1, self.width)


def pretrain_vision(model, seed: int = 0, steps: int = 1500, batch_size: int = 64, pool_clips: int = 600,
                    progress: bool = False, frames: TarsierFrames | Tarsier2Frames | None = None) -> dict[str, float]:
    """Stage 0, the stand-in for CLIP pre-training: teach the tiny ViT what single frames show.

    The real recipe starts from a pretrained CLIP, whose patch features already say what is where
    and what is blurred; a random ViT does not, and a ~1M-parameter LLM cannot make up for it in
    minutes (motion and camera stayed at the most-common-answer level with a random ViT, frozen or
    trained). So each patch token learns, through linear heads dropped afterwards, the colour of
    the ball covering it, which way that ball moves in the picture (its motion-blur trail), and
    whether the background is smeared by a pan. Frames come from their own random stream, never
    from the training or held-out clips. ``frames`` says how the model's vision tower sees a frame
    and which tokens it gives (default: a Tarsier model's, :class:`TarsierFrames`; a Tarsier2 model's
    merged tokens each answer for their 4 patches). Returns held-out per-patch accuracies.
    """
    from tqdm import tqdm

    def bar(total: int, desc: str, unit: str) -> tqdm:
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not progress, dynamic_ncols=True)

    frames = frames or TarsierFrames(model)
    grid = frames.grid
    rng = np.random.default_rng(seed + 7_000_001)
    pixels, colours, motions, smeared = [], [], [], []
    with bar(pool_clips, "stage 0 frames", "clip") as rendering:
        for _ in range(pool_clips):
            clip = world.random_clip(rng)
            images = world.render(clip)
            for frame in rng.choice(world.FRAMES, 4, replace=False):
                pixels.append(frames.pixels(images[frame]))
                colour, motion = world.patch_truth(clip, int(frame), grid)
                colours.append(colour)
                motions.append(motion)
                smeared.append(np.full(grid * grid, int(clip.camera != "still")))
            rendering.update(1)
    pixels = torch.from_numpy(np.stack(pixels))
    # Targets in the order of the patches the feature tokens stand for.
    colours, motions, smeared = (torch.from_numpy(np.stack(x)[:, frames.order]) for x in (colours, motions, smeared))
    held_out = len(pixels) // 10
    sizes = (len(world.COLOURS) + 1, len(world.MOTIONS), 2)
    heads = torch.nn.Linear(frames.width, frames.per_token * sum(sizes))
    parameters = frames.parameters() + list(heads.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))

    def logits(index: torch.Tensor) -> list[torch.Tensor]:
        tokens = frames.features(pixels[index])  # what the LLM's input is made of
        return list(heads(tokens).view(len(index), -1, sum(sizes)).split(sizes, dim=-1))  # one row per patch

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


# -- the two recipes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """One shapes demo: the model family it trains and what only that family needs."""

    name: str  # --recipe NAME; also the bundled model's name and its folder under tarsier/assets
    family: str  # as people call it
    stage_prefix: str  # stage names: PREFIX + "stage1" / "stage2"
    n_frames: int  # frames per training video: what the family's processor samples at inference
    render: Callable[[list[dict[str, str]], bool, bool], str]  # (messages, has media, add_generation_prompt) -> text
    build: Callable[..., Path]  # (folder, texts, seed=, vision_steps=, vision_clips=, progress=) -> the start model
    shipped_files: tuple[str, ...]  # what export copies from RUN/stage2 (with train_config.yaml)
    writes_card: bool = False  # export writes README.md from the report (the Tarsier demo's is written by hand)


SHIPPED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", "preprocessor_config.json")
TARSIER2_SHIPPED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.json",
                          "preprocessor_config.json", "generation_config.json")


def _family_frames(name: str) -> int:
    from tarsier.models import auto

    return auto.family_named(name).default_n_frames


SHAPES_DEMO = Recipe("shapes-demo", "Tarsier", "shapes-", _family_frames("tarsier"), render_tarsier, build_start_model,
                     SHIPPED_FILES)
TARSIER2_SHAPES_DEMO = Recipe("tarsier2-shapes-demo", "Tarsier2", "tarsier2-shapes-", _family_frames("tarsier2"),
                              render_tarsier2, build_tarsier2_start_model, TARSIER2_SHIPPED_FILES, writes_card=True)
RECIPES = {recipe.name: recipe for recipe in (SHAPES_DEMO, TARSIER2_SHAPES_DEMO)}


# -- shipping -------------------------------------------------------------------------------------

SAMPLE_KINDS = (  # the bundled sample clips, in order: what each shows
    lambda c: c.camera == "still" and len(c.balls) == 2 and all(b.motion != "still" for b in c.balls),
    lambda c: c.camera != "still",
    lambda c: any(b.appears_at is not None for b in c.balls) and any(b.turns for b in c.balls),
)


def export(run: str | Path, assets: str | Path, samples: int = 3, new_samples: bool = False) -> dict[str, tuple[str, str]]:
    """Ship a finished demo run (of either recipe, as its report says) as package assets.

    Copies ``RUN/stage2`` (model, tokenizer, its ``train_config.yaml``) and ``RUN/report.json``
    (as ``evaluation.json``) into ``assets/NAME`` (``shapes-demo``, ``tarsier2-shapes-demo``). The
    sample clips ``assets/samples/shapes_N.mp4`` (truth in ``assets/samples/truth.jsonl``) are
    shared by the bundled models, so they are kept when there; without them, or with
    ``new_samples``, ``samples`` held-out clips of the run are picked (one with two moving balls,
    one with a camera pan, one where a ball appears and one changes colour) and every other bundled
    model's recording is redone. The model's own greedy descriptions of the samples go to
    ``NAME/samples.json`` and their token log-probabilities to ``NAME/samples_trace.json``, which
    the tests compare against, so a change that alters what a shipped model says, or how sure it
    is of it, is noticed. The Tarsier2 demo also gets its model card (``README.md``) from the
    report. Returns sample name -> (truth, model).
    """
    run, assets = Path(run), Path(assets)
    if not (run / "report.json").is_file() or not (run / "stage2").is_dir():
        raise TarsierError(f"{run}: not a finished shapes demo run (no report.json and stage2/ from "
                           "tarsier train --recipe shapes-demo or tarsier2-shapes-demo --output RUN)")
    report = json.loads((run / "report.json").read_text())
    recipe = RECIPES[report.get("recipe", SHAPES_DEMO.name)]
    model = assets / recipe.name
    model.mkdir(parents=True, exist_ok=True)
    for name in recipe.shipped_files + ("train_config.yaml",):
        shutil.copyfile(run / "stage2" / name, model / name)
    shutil.copyfile(run / "report.json", model / "evaluation.json")
    picked = new_samples or not (assets / "samples" / "truth.jsonl").is_file()
    if picked:
        pick_samples(world.read_clips(run / "held_out"), assets / "samples", samples)
    truth = sample_truth(assets)
    said = record_samples(model, assets)
    if picked:
        for other in RECIPES.values():
            if other is not recipe and (assets / other.name / "samples.json").is_file():
                record_samples(assets / other.name, assets)
    if recipe.writes_card:
        (model / "README.md").write_text(model_card(recipe, model, report, truth, said))
    return {name: (truth[name], said[name]) for name in truth}


def pick_samples(held_out: list[tuple[str, world.Clip]], folder: Path, samples: int = 3) -> None:
    """Copy the first held-out clip of each :data:`SAMPLE_KINDS` to ``folder/shapes_N.mp4``, truth in ``truth.jsonl``."""
    folder.mkdir(parents=True, exist_ok=True)
    truth: dict[str, str] = {}
    chosen: set[str] = set()
    for number, test in enumerate(SAMPLE_KINDS[:samples], start=1):
        path, clip = next((p, c) for p, c in held_out if test(c) and p not in chosen)
        chosen.add(path)
        truth[f"shapes_{number}.mp4"] = world.detailed(clip)
        shutil.copyfile(path, folder / f"shapes_{number}.mp4")
    lines = [json.dumps({"path": name, "description": text}) for name, text in truth.items()]
    (folder / "truth.jsonl").write_text("\n".join(lines) + "\n")


def sample_truth(assets: Path) -> dict[str, str]:
    """The bundled samples: file name -> true description."""
    records = [json.loads(line) for line in (assets / "samples" / "truth.jsonl").read_text().splitlines()]
    return {record["path"]: record["description"] for record in records}


def record_samples(model: Path, assets: Path) -> dict[str, str]:
    """What ``model`` says about the bundled samples (greedy), written to ``model/samples.json``, and
    its trace (:func:`sample_traces`) to ``model/samples_trace.json``."""
    names = list(sample_truth(assets))
    said = dict(zip(names, world.describe_clips(model, [(str(assets / "samples" / name), None) for name in names])))
    (model / "samples.json").write_text(json.dumps(said, indent=2) + "\n")
    (model / "samples_trace.json").write_text(json.dumps(sample_traces(model, assets, names)) + "\n")
    return said


def sample_traces(model_dir: Path, assets: Path, names: list[str], max_new_tokens: int = 96) -> dict[str, dict[str, list]]:
    """For each sample, the greedy reply's token ids and the log-probability of each under one uncached
    forward of the prompt and the reply. A reply's text hardly depends on positions (shifting every
    decode position by one left these models' replies unchanged, not their log-probabilities), so the
    tests compare the engine's log-probabilities with these."""
    from tarsier.engine.generation import generate_ids
    from tarsier.engine.loading import load_pretrained
    from tarsier.engine.settings import GenerationSettings

    model, processor = load_pretrained(str(model_dir), device="cpu", progress=False)
    traces = {}
    for name in names:
        ids, media = processor.encode_item(f"<video>\n{world.DETAILED_PROMPT}", processor.load_media(str(assets / "samples" / name)))
        reply = generate_ids(model, processor, processor.collate([(ids, media)]), GenerationSettings(max_new_tokens=max_new_tokens))[0].tolist()
        inputs = torch.tensor([ids + reply])
        media = {key: value.to(model.dtype) if value.is_floating_point() else value for key, value in media.items()}
        with torch.inference_mode():
            logits = model(input_ids=inputs, attention_mask=torch.ones_like(inputs), use_cache=False, **media).logits[0]
        chosen = logits[len(ids) - 1 : len(ids) - 1 + len(reply)].float().log_softmax(-1).gather(1, torch.tensor(reply)[:, None])
        traces[name] = {"ids": reply, "logprobs": [round(value, 6) for value in chosen[:, 0].tolist()]}
    return traces


CARD_ROWS = (
    ("exact_match", "whole description exact"),
    ("fact_f1", "fact F1 (balls, motions, appearing, colour changes, camera)"),
    ("colour_accuracy", "colour: true balls named by their colour"),
    ("motion_accuracy", "motion right, over balls named"),
    ("appears_accuracy", "appearing right, over balls named"),
    ("turns_accuracy", "colour change right, over balls named"),
    ("camera_accuracy", "camera right"),
    ("qa_accuracy", "open questions, exact answer"),
)


def model_card(recipe: Recipe, model: Path, report: dict[str, Any], truth: dict[str, str], said: dict[str, str]) -> str:
    """The bundled Tarsier2 demo's README: what it is, how it was made and what it scored, from its report."""
    import textwrap

    config = json.loads((model / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    vocab = len(json.loads((model / "tokenizer.json").read_text())["model"]["vocab"])
    frame = math.isqrt(TARSIER2_FRAME_PIXELS)
    training, stage0 = report["training"], report["vision_pretraining"]
    columns = [("always the most common answer", report["majority_reference"]),
               *((label, report["scores"][key]) for key, label in (("start", "untrained"), ("stage1", "after stage 1"),
                                                                   ("stage2", "after stage 2")))]
    table = ["| metric | " + " | ".join(label for label, _ in columns) + " |", "| --- |" + " --- |" * len(columns)]
    table += [f"| {label} | " + " | ".join("-" if key not in scores else f"{scores[key]:.2f}" for _, scores in columns) + " |"
              for key, label in CARD_ROWS]

    def wrap(paragraph: str, bullet: str = "") -> str:
        return textwrap.fill(paragraph, 100, initial_indent=bullet, subsequent_indent=" " * len(bullet))

    name = recipe.name
    blocks = [
        f"# {name}: a synthetic-world {recipe.family} demo model (not a video model)",
        wrap(f"A {report['parameters'] / 1e6:.1f}M-parameter {recipe.family} in the official Tarsier2 / Qwen2-VL layout "
             f"(a Qwen2-VL vision tower {vision['depth']} x {vision['embed_dim']} on frames resized to {frame} x {frame} px, "
             f"{vision['patch_size']} px patches, each frame fed twice as one temporal patch, merged 2 x 2 by the patch "
             f"merger: 4 LLM positions per frame, 16 frames per video; a Qwen2 LLM {text['num_hidden_layers']} x "
             f"{text['hidden_size']} with {text['num_key_value_heads']} KV heads and M-RoPE sections "
             f"{'/'.join(map(str, text['rope_scaling']['mrope_section']))}; a {vocab}-token byte-level BPE tokenizer "
             "plus Qwen2's special tokens; a Qwen2-VL chat template) trained **from scratch on CPU** on the synthetic "
             "ball world of `tarsier.shapes.world`. It only knows that world: one or two coloured balls that move "
             "(leaving a motion-blur trail), appear, change colour, under a still or panning camera. It is the "
             "Tarsier2 counterpart of `shapes-demo`: a model that works offline, whose recorded outputs catch "
             "changes in how Tarsier2 is run (M-RoPE positions, rope deltas, decode positions)."),
        "```bash\n"
        f"tarsier describe src/tarsier/assets/samples/shapes_1.mp4 --model {name}\n"
        f"tarsier train --recipe {name} --output runs/shapes2                     # reproduce it\n"
        "python -m tarsier.shapes.demo_model export runs/shapes2 src/tarsier/assets   # ship a run (writes this file)\n"
        f"python -m tarsier.shapes.world evaluate --model {name} --clips 100     # score it\n"
        "```",
        "## How it was made",
        f"`tarsier train --recipe {name}` (seed 0, the code of this commit):",
        "\n".join([
            wrap(f"data: {report['training_clips']:,} generated training clips with their task files; "
                 f"{report['held_out_clips']} held-out clips from another random stream "
                 f"({report['held_out_descriptions_unseen_in_training']:.0%} of their detailed descriptions never occur "
                 "in the training data);", "- "),
            wrap("stage 0, the stand-in for the pretrained Qwen2-VL vision tower and patch merger (pre-trained together, "
                 f"as Qwen2-VL's were): {stage0['steps']:,} steps of 64 single frames, from their own random stream, "
                 "teach each merged token, for each of its 4 patches, the colour of the ball on it, which way that "
                 "ball's motion blur points, and whether a pan smears the background. Held-out patches: colour "
                 f"{stage0['colour_accuracy_on_ball_patches']:.2f}, blur direction "
                 f"{stage0['motion_accuracy_on_moving_patches']:.2f} (on patches a moving ball or its trail covers), "
                 f"smeared background {stage0['smear_accuracy']:.2f};", "- "),
            wrap(f"stage 1, {training['stage1']['steps']} steps x {DEFAULT_BATCH} samples, multi-task (perception and "
                 "event questions, short captions, multiple choice, action labels, still pairs, tracking, text-only); "
                 f"stage 2, {training['stage2']['steps']} steps x {DEFAULT_BATCH}, detailed and short descriptions plus "
                 "questions. ViT frozen, patch merger and LLM trained, AdamW lr 1e-3 with warmup and cosine decay. "
                 "Weights stored in fp16.", "- "),
        ]),
        wrap(f"Time on the machine that trained it: data and stage 0 {report['data_and_init_seconds']:.0f} s, stage 1 "
             f"{training['stage1']['seconds']:.0f} s, stage 2 {training['stage2']['seconds']:.0f} s, plus scoring three "
             "models. `train_config.yaml` is the stage-2 config and `evaluation.json` the full report. CPU training is "
             "not bit-for-bit reproducible, so a rerun gives a slightly different model."),
        f"## What it learnt ({report['held_out_clips']} held-out clips)",
        "\n".join(table),
        "## The bundled samples",
        wrap("`samples.json` holds what this model says about the bundled held-out clips (`../samples/shapes_*.mp4`, "
             "truth in `../samples/truth.jsonl`); a test checks it still says it:"),
        "\n".join(f"- `{sample}`\n  - truth: {truth[sample]}\n  - model: {said[sample]}" for sample in truth),
    ]
    return "\n\n".join(blocks) + "\n"


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
    recipe: Recipe | None = None,
) -> dict[str, Any]:
    """Generate, build, train both stages, evaluate; returns (and writes) the report.

    ``recipe``: :data:`SHAPES_DEMO` (the default) or :data:`TARSIER2_SHAPES_DEMO`. Sizes left as
    None follow the run (:func:`demo_sizes`, with ``demo.*`` overrides); the default run generates
    :data:`DEMO_SIZES`.
    """
    from tarsier.train.trainer import train

    recipe = recipe or SHAPES_DEMO
    output = Path(output)
    configs = stage_configs(output, overrides, steps, recipe)  # checks every override before any work
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
    say(f"building the {recipe.family} start model; pre-training its vision tower on single frames (stage 0)")
    recipe.build(output / "init", training_texts(data, recipe), vision_steps=sizes["vision_steps"],
                 vision_clips=sizes["vision_clips"], progress=progress)
    generated = time.perf_counter() - started

    reports: dict[str, dict[str, Any]] = {}
    say("scoring the untrained start model on the held-out clips")
    reports["start"] = world.evaluate(output / "init", held_out)
    timings = {}
    for config in configs:
        name = stage_folder(config, recipe)
        result = train(config, output / name, progress=progress)
        timings[name] = {"seconds": round(result.seconds, 1), "steps": result.steps,
                         "first_loss": result.losses[0], "last_loss": sum(result.losses[-10:]) / len(result.losses[-10:])}
        say(f"scoring {name} on the held-out clips")
        reports[name] = world.evaluate(output / name, held_out)
    train_descriptions = {json.loads(line)["messages"][1]["content"] for line in (data / "detailed.jsonl").read_text().splitlines()}
    report = {
        "recipe": recipe.name,
        "parameters": parameter_count(output / "init"),
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


def parameter_count(folder: Path) -> int:
    """Parameters in a checkpoint folder's ``model.safetensors``."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        return sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tarsier.shapes.demo_model",
                                     description="Ship a finished shapes demo run (tarsier train --recipe shapes-demo or "
                                                 "tarsier2-shapes-demo) as package assets.")
    commands = parser.add_subparsers(dest="command", required=True)
    export_parser = commands.add_parser("export", help="copy RUN/stage2 into ASSETS/NAME and record what it says about the samples")
    export_parser.add_argument("run", help="the --output folder of a finished shapes demo run")
    export_parser.add_argument("assets", help="assets folder, e.g. src/tarsier/assets")
    export_parser.add_argument("--new-samples", action="store_true",
                               help="pick new sample clips from RUN's held-out clips (and re-record the other bundled models)")
    args = parser.parse_args(argv)
    try:
        shipped = export(args.run, args.assets, new_samples=args.new_samples)
    except TarsierError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, (truth, said) in shipped.items():
        print(f"{name}\n  truth: {truth}\n  model: {said}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
