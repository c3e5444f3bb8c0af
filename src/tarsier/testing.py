"""Random Tarsier checkpoints in the official on-disk layout, for tests, benchmarks and demos.

Nothing may be downloaded at test time, so tests build a checkpoint folder that looks exactly like
``omni-research/Tarsier-7b`` (config.json with ``model_type: llava`` and the Tarsier fields,
sharded safetensors with an index, a Llama SentencePiece tokenizer with ``<image>`` = 32000, a CLIP
``preprocessor_config.json``) but with tiny random weights, and load it through the same
``from_pretrained`` path as the real model.

The tokenizer is the real 32k Llama-style SentencePiece model that ``mistral-common`` ships,
converted to a ``tokenizer.json`` in the format of Llama-2/Vicuna checkpoints.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tarsier.errors import TarsierError


@dataclass(frozen=True)
class Preset:
    """Widths and depths of a random checkpoint; geometry decides tokens per frame."""

    vision_width: int
    vision_layers: int
    vision_heads: int
    text_width: int
    text_layers: int
    text_heads: int
    image_size: int = 336
    patch_size: int = 14

    @property
    def tokens_per_frame(self) -> int:
        grid = self.image_size // self.patch_size
        return grid * (grid + 1) + 1


PRESETS = {
    # Real geometry (336 px, patch 14 -> 601 positions per frame), tiny widths.
    "tiny": Preset(vision_width=32, vision_layers=3, vision_heads=4, text_width=64, text_layers=2, text_heads=4),
    # Small frames (56 px -> 4x4 patches -> 21 positions per frame) for fast generation tests.
    "tiny-fast": Preset(
        vision_width=32, vision_layers=3, vision_heads=4, text_width=64, text_layers=2, text_heads=4, image_size=56
    ),
    # Benchmark size: ViT 6 x 256, LLM 6 x 512, real geometry.
    "small": Preset(vision_width=256, vision_layers=6, vision_heads=4, text_width=512, text_layers=6, text_heads=8),
}

VOCAB_SIZE = 32064  # the padded embedding matrix of the official checkpoints
IMAGE_TOKEN_ID = 32000


def sentencepiece_model_path() -> Path:
    """The Llama-style 32k SentencePiece model shipped inside ``mistral-common``."""
    try:
        import mistral_common
    except ImportError:
        raise TarsierError("random checkpoints need the 'mistral-common' package: pip install mistral-common") from None
    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise TarsierError(f"{path}: expected mistral-common to ship this SentencePiece model")
    return path


def official_config(preset: Preset) -> dict[str, Any]:
    """A config.json shaped like the published one, including keys we must ignore."""
    return {
        "architectures": ["TarsierForConditionalGeneration"],
        "ignore_index": -100,
        "image_new_idx": 32003,
        "image_newline_idx": 32002,
        "image_token_index": IMAGE_TOKEN_ID,
        "model_type": "llava",
        "pad_token_id": 0,
        "projector_hidden_act": "gelu",
        "text_config": {
            "_name_or_path": "vicuna-7b-v1.5",
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": preset.text_width,
            "intermediate_size": preset.text_width * 2,
            "max_position_embeddings": 4096,
            "model_type": "llama",
            "num_attention_heads": preset.text_heads,
            "num_hidden_layers": preset.text_layers,
            "num_key_value_heads": preset.text_heads,
            "pad_token_id": 0,
            "rms_norm_eps": 1e-05,
            "torch_dtype": "bfloat16",
            "use_bpex_rmsnorm": True,
            "vocab_size": VOCAB_SIZE,
        },
        "torch_dtype": "bfloat16",
        "transformers_version": "4.37.2",
        "vision_config": {
            "hidden_size": preset.vision_width,
            "image_size": preset.image_size,
            "intermediate_size": preset.vision_width * 4,
            "model_type": "clip_vision_model",
            "num_attention_heads": preset.vision_heads,
            "num_hidden_layers": preset.vision_layers,
            "patch_size": preset.patch_size,
            "projection_dim": 768,
            "vocab_size": 32000,
        },
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": VOCAB_SIZE,
    }


def write_llama_tokenizer(folder: Path, sentencepiece_model: Path) -> None:
    """Tokenizer files as Vicuna/LLaVA checkpoints ship them, plus ``<image>`` = 32000."""
    import tempfile

    from transformers import LlamaTokenizer

    shutil.copyfile(sentencepiece_model, folder / "tokenizer.model")
    with tempfile.TemporaryDirectory() as scratch:  # convert the SentencePiece model on its own
        shutil.copyfile(sentencepiece_model, Path(scratch) / "tokenizer.model")
        converted = LlamaTokenizer.from_pretrained(scratch, legacy=False)
        spec = json.loads(converted.backend_tokenizer.to_str())
    # The format transformers 4.x wrote for Llama-2 and Vicuna: normaliser-based "legacy" spaces.
    spec["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ],
    }
    spec["pre_tokenizer"] = None
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": {"id": "<s>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "<s>", "type_id": 1}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
    }
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < IMAGE_TOKEN_ID] + [
        {
            "id": IMAGE_TOKEN_ID,
            "content": "<image>",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
    ]
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    (folder / "added_tokens.json").write_text(json.dumps({"<image>": IMAGE_TOKEN_ID}) + "\n")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "model_max_length": 4096,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def build_random_checkpoint(
    folder: str | Path,
    preset: str | Preset = "tiny",
    *,
    seed: int = 0,
    max_shard_size: str = "2MB",
) -> Path:
    """Write a random Tarsier checkpoint to ``folder`` in the official layout and return the path."""
    from tarsier.models.tarsier.configuration_tarsier import TarsierConfig
    from tarsier.models.tarsier.modeling_tarsier import TarsierForConditionalGeneration
    from tarsier.models.tarsier.processing_tarsier import ImageSettings

    if isinstance(preset, str):
        if preset not in PRESETS:
            raise TarsierError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config_dict = official_config(preset)
    torch.manual_seed(seed)
    model = TarsierForConditionalGeneration(TarsierConfig(**config_dict))
    model.save_pretrained(str(folder), max_shard_size=max_shard_size)
    # Replace transformers' re-serialised config with the published shape (torch_dtype, extra keys).
    (folder / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
    (folder / "generation_config.json").unlink(missing_ok=True)
    write_llama_tokenizer(folder, sentencepiece_model_path())
    settings = ImageSettings(size=preset.image_size, crop_size=preset.image_size)
    (folder / "preprocessor_config.json").write_text(json.dumps(settings.to_dict(), indent=2) + "\n")
    return folder


# --- Tarsier2 ------------------------------------------------------------------------------------

# Qwen2's special tokens at their real ids; the embedding matrix ends right after the last one.
QWEN2_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN2_FIRST_SPECIAL_ID = 151643
TARSIER2_VOCAB_SIZE = QWEN2_FIRST_SPECIAL_ID + len(QWEN2_SPECIAL_TOKENS)  # 151,657
QWEN2_SPECIAL_IDS = {token: QWEN2_FIRST_SPECIAL_ID + i for i, token in enumerate(QWEN2_SPECIAL_TOKENS)}

# Qwen2's pre-tokenisation pattern: contractions, letter runs, single digits, punctuation, spaces.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# What the tiny BPE learns its merges from: the words our prompts use.
_BPE_CORPUS = (
    "You are a helpful assistant. Describe the video in detail. Describe the image in detail. "
    "What is the person doing? Question: Which object moves first?\n(A) the ball\n(B) the cup\nAnswer: ("
)

# A Qwen2-VL-style processor template (written for these tests): a default system turn, media
# parts as <|vision_start|> pad <|vision_end|>, text parts verbatim.
TARSIER2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Tarsier2Preset:
    """Widths and depths of a random Tarsier2 checkpoint; the vision geometry is always the real one."""

    vision_width: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    text_width: int = 32
    text_layers: int = 2
    text_heads: int = 2
    text_kv_heads: int = 1
    mrope_section: tuple[int, int, int] = (2, 3, 3)  # sums to head_dim / 2 (real: 16, 24, 24 of 64)
    text_mlp_ratio: int = 2  # intermediate_size / hidden_size of the LLM
    vision_mlp_ratio: int = 2


def tarsier2_official_config(
    preset: Tarsier2Preset, special_ids: dict[str, int] = QWEN2_SPECIAL_IDS, vocab_size: int = TARSIER2_VOCAB_SIZE
) -> dict[str, Any]:
    """A Tarsier2 config.json shaped like the published one, including keys that must be ignored.

    ``special_ids`` and ``vocab_size``: the real Qwen2 ones unless a smaller tokenizer says otherwise."""
    ids = special_ids
    return {
        "architectures": ["TarsierForConditionalGeneration"],
        "auto_map": {"AutoConfig": "models--modeling_tarsier.LlavaConfig"},
        "ignore_index": -100,
        "image_new_idx": 32003,
        "image_newline_idx": 32002,
        "image_token_index": ids["<|image_pad|>"],
        "model_type": "llava",
        "projection_head": None,
        "projector_hidden_act": "gelu",
        "text_config": {
            "architectures": ["Qwen2VLForCausalLM"],
            "attention_dropout": 0.0,
            "auto_map": {"AutoConfig": "models--modeling_qwen2_vl_fast.Qwen2VLConfig"},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "hidden_act": "silu",
            "hidden_size": preset.text_width,
            "image_token_id": ids["<|image_pad|>"],
            "initializer_range": 0.02,
            "intermediate_size": preset.text_width * preset.text_mlp_ratio,
            "max_position_embeddings": 32768,
            "max_window_layers": preset.text_layers,
            "model_type": "qwen2_vl",
            "num_attention_heads": preset.text_heads,
            "num_hidden_layers": preset.text_layers,
            "num_key_value_heads": preset.text_kv_heads,
            "rms_norm_eps": 1e-06,
            "rope_scaling": {"mrope_section": list(preset.mrope_section), "type": "mrope"},
            "rope_theta": 1000000.0,
            "sliding_window": 32768,
            "spatial_merge_size": 2,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "use_cache": True,
            "use_sliding_window": False,
            "video_token_id": ids["<|video_pad|>"],
            "vision_end_token_id": ids["<|vision_end|>"],
            "vision_start_token_id": ids["<|vision_start|>"],
            "vision_token_id": ids["<|vision_pad|>"],
            "vocab_size": vocab_size,
        },
        "torch_dtype": "bfloat16",
        "transformers_version": "4.46.2",
        "vision_config": {
            "auto_map": {"AutoConfig": "models--modeling_qwen2_vl_fast.Qwen2VLVisionConfig"},
            "depth": preset.vision_layers,
            "embed_dim": preset.vision_width,
            "hidden_act": "quick_gelu",
            "hidden_size": preset.text_width,  # the merger's output: the LLM width
            "in_chans": 3,
            "mlp_ratio": preset.vision_mlp_ratio,
            "model_type": "qwen2_vl",
            "num_heads": preset.vision_heads,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
    }


def qwen2_bpe(corpus: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE (a ``tokenizers.Tokenizer``) with Qwen2's normaliser, pre-tokeniser and
    decoder, its merges learnt from ``corpus``; no special tokens yet."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def write_qwen2_tokenizer_files(folder: Path, spec: dict[str, Any], special_ids: dict[str, int]) -> None:
    """``tokenizer.json`` (``spec``, a tokenizer's JSON form, with ``special_ids`` as its added special
    tokens) and ``tokenizer_config.json`` as Qwen2 checkpoints ship them."""
    spec["added_tokens"] = [
        {"id": token_id, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for token, token_id in special_ids.items()
    ]
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    tokenizer_config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": {str(i): entry for i, entry in ((t["id"], t) for t in spec["added_tokens"])},
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "model_max_length": 32768,
        "padding_side": "left",
        "split_special_tokens": False,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def write_qwen2_tokenizer(folder: Path) -> None:
    """A small byte-level BPE with Qwen2's pre-tokeniser, decoder and special tokens at their real ids.

    The tokenizers library numbers added tokens after the model's vocabulary, so the special tokens
    also enter the BPE vocabulary with their ids; ``added_tokens`` then keeps those ids.
    """
    spec = json.loads(qwen2_bpe([_BPE_CORPUS], 400).to_str())
    spec["model"]["vocab"].update(QWEN2_SPECIAL_IDS)
    write_qwen2_tokenizer_files(folder, spec, QWEN2_SPECIAL_IDS)


def qwen2_vl_preprocessor(min_pixels: int = 3136, max_pixels: int = 12845056) -> dict[str, Any]:
    """``preprocessor_config.json`` of a Qwen2-VL checkpoint: patch 14, temporal patch 2, merge 2,
    CLIP's mean and std; frames resized to multiples of 28 within ``[min_pixels, max_pixels]``."""
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
    }


def qwen2_generation_config(special_ids: dict[str, int] = QWEN2_SPECIAL_IDS) -> dict[str, Any]:
    """``generation_config.json`` as published: greedy, stopping at ``<|im_end|>`` or ``<|endoftext|>``."""
    return {
        "bos_token_id": special_ids["<|endoftext|>"],
        "do_sample": False,
        "eos_token_id": [special_ids["<|im_end|>"], special_ids["<|endoftext|>"]],
        "max_new_tokens": 512,
        "pad_token_id": special_ids["<|endoftext|>"],
    }


def build_random_tarsier2_checkpoint(
    folder: str | Path,
    *,
    seed: int = 0,
    preset: Tarsier2Preset = Tarsier2Preset(),
    max_shard_size: str = "8MB",
) -> Path:
    """Write a random Tarsier2 checkpoint to ``folder`` in the official layout and return the path.

    Tiny widths, real vision geometry (patch 14, spatial merge 2, temporal patch 2) and the real
    token ids, so the embedding has 151,657 rows. Files: config.json (published shape, with
    ``auto_map`` entries that must be ignored), sharded safetensors with an index, tokenizer.json and
    tokenizer_config.json, chat_template.json, preprocessor_config.json, generation_config.json.
    """
    from tarsier.models.tarsier2.configuration_tarsier2 import Tarsier2Config
    from tarsier.models.tarsier2.modeling_tarsier2 import Tarsier2ForConditionalGeneration

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config_dict = tarsier2_official_config(preset)
    torch.manual_seed(seed)
    model = Tarsier2ForConditionalGeneration(Tarsier2Config(**json.loads(json.dumps(config_dict))))
    model.to(torch.bfloat16).save_pretrained(str(folder), max_shard_size=max_shard_size)  # stored as published
    (folder / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
    write_qwen2_tokenizer(folder)
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": TARSIER2_CHAT_TEMPLATE}, indent=2) + "\n")
    (folder / "preprocessor_config.json").write_text(json.dumps(qwen2_vl_preprocessor(), indent=2) + "\n")
    generation = qwen2_generation_config()
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return folder
