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
    from tarsier.model import TarsierConfig, TarsierForConditionalGeneration
    from tarsier.processor import ImageSettings

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
