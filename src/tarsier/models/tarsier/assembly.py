"""A new Tarsier checkpoint assembled from LLaVA-style components (training's stage 1 start).

:func:`assemble_from_components` writes the components out as a Tarsier checkpoint in the official
layout (so the rest of training, and every tool that reads a checkpoint, has one code path):

* ``llava``: one LLaVA or LLaVA-NeXT folder in the HF layout, e.g. ``llava-hf/llava-v1.6-vicuna-7b-hf``.
  CLIP, projector and LLM are copied; LLaVA-NeXT's learned ``image_newline`` vector becomes the
  row-separator embedding.
* ``vision`` + ``language``: a CLIP model folder (``openai/clip-vit-large-patch14-336``; its text
  half is ignored) and a Llama/Vicuna folder. The projector is new (normal, std =
  ``initializer_range``, zero bias).

Either way, ``<image>`` is added to the tokenizer if missing, the two separators take the next two
ids (32002/32003 for the Vicuna tokenizer with ``<image>`` and ``<pad>``, as in Tarsier-7b), the
embedding matrix grows to a multiple of 64 rows, and new rows start at the mean of the existing
ones (the usual choice: the new tokens start "average" rather than random).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from tarsier.errors import CheckpointError, TarsierError
from tarsier.models.tarsier.processing_tarsier import ImageSettings, load_tokenizer
from tarsier.models.weights import SAVE_DTYPES, write_weights

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
IMAGE_TOKEN = "<image>"
# Where state-dict keys of the published layouts (transformers 4 and 5) go in ours.
LLAVA_PREFIXES = (
    ("model.vision_tower.", "vision_tower."),
    ("vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("language_model.model.", "language_model.model."),
    ("language_model.lm_head.", "language_model.lm_head."),
    ("lm_head.", "language_model.lm_head."),
)
CLIP_PREFIXES = (("vision_model.", "vision_tower.vision_model."), ("", "vision_tower.vision_model."))
CLIP_TOP_LEVEL = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")
LLAMA_PREFIXES = (("model.", "language_model.model."), ("lm_head.", "language_model.lm_head."))


def assemble_from_components(
    output: str | Path,
    *,
    llava: str | Path | None = None,
    vision: str | Path | None = None,
    language: str | Path | None = None,
    save_dtype: str = "bf16",
) -> Path:
    """Write a Tarsier checkpoint in the official layout from LLaVA-style components."""
    output = Path(output)
    if (llava is not None) == (vision is not None or language is not None) or (vision is None) != (language is None):
        raise TarsierError("assemble a start model from either a LLaVA folder, or a CLIP folder plus a Llama folder")
    if llava is not None:
        folder = _folder(llava, "model.llava")
        config = _read_config(folder)
        vision_config, text_config = dict(config.get("vision_config") or {}), dict(config.get("text_config") or {})
        weights = _map_keys(_load_weights(folder), LLAVA_PREFIXES)
        newline_vector = weights.pop("image_newline", None)
        if newline_vector is None:
            newline_vector = weights.pop("model.image_newline", None)
        token_folder, image_folder = folder, folder
        extra = {k: config[k] for k in ("vision_feature_layer", "projector_hidden_act") if k in config}
    else:
        vision_folder, language_folder = _folder(vision, "model.vision"), _folder(language, "model.language")
        clip_config = _read_config(vision_folder)
        vision_config = dict(clip_config.get("vision_config") or {}) if clip_config.get("model_type") == "clip" else clip_config
        text_config = _read_config(language_folder)
        weights = _map_keys(_clip_weights(_load_weights(vision_folder)), CLIP_PREFIXES)
        weights.update(_map_keys(_load_weights(language_folder), LLAMA_PREFIXES))
        newline_vector = None
        token_folder, image_folder = language_folder, vision_folder
        extra = {}
    vision_config.setdefault("model_type", "clip_vision_model")
    text_config.setdefault("model_type", "llama")
    if text_config["model_type"] != "llama":
        raise CheckpointError(f"the language model is {text_config['model_type']!r}; Tarsier training supports Llama/Vicuna")

    tokenizer = load_tokenizer(token_folder)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    added_image = image_id is None or image_id == tokenizer.unk_token_id
    if added_image:
        image_id = len(tokenizer)
    newline_id = max(len(tokenizer) + added_image, image_id + 1)
    frame_end_id = newline_id + 1

    embed_key, head_key = "language_model.model.embed_tokens.weight", "language_model.lm_head.weight"
    if embed_key not in weights:
        raise CheckpointError(f"{token_folder}: no embed_tokens weight among the language model's weights")
    if head_key not in weights:  # tied embeddings
        weights[head_key] = weights[embed_key].clone()
    rows = -(-max(weights[embed_key].shape[0], frame_end_id + 1) // 64) * 64
    new_ids = [image_id] * added_image + [newline_id, frame_end_id]
    for key in (embed_key, head_key):
        weights[key] = _grow_rows(weights[key], rows)
        weights[key][new_ids] = weights[key][: len(tokenizer)].float().mean(dim=0).to(weights[key].dtype)
    if newline_vector is not None:
        weights[embed_key][newline_id] = newline_vector.to(weights[embed_key].dtype)
    text_config["vocab_size"] = rows

    width, vision_width = weights[embed_key].shape[1], weights["vision_tower.vision_model.pre_layrnorm.weight"].shape[0]
    std = float(text_config.get("initializer_range", 0.02))
    for name, shape in (("linear_1", (width, vision_width)), ("linear_2", (width, width))):
        if f"multi_modal_projector.{name}.weight" not in weights:
            weights[f"multi_modal_projector.{name}.weight"] = torch.randn(shape) * std
            weights[f"multi_modal_projector.{name}.bias"] = torch.zeros(shape[0])

    output.mkdir(parents=True, exist_ok=True)
    write_weights(output, weights, SAVE_DTYPES[save_dtype])
    config = {
        "architectures": ["TarsierForConditionalGeneration"],
        "model_type": "llava",
        "ignore_index": -100,
        "image_token_index": image_id,
        "image_newline_idx": newline_id,
        "image_new_idx": frame_end_id,
        "pad_token_id": text_config.get("pad_token_id", 0) or 0,
        "projector_hidden_act": extra.get("projector_hidden_act", "gelu"),
        "vision_feature_layer": extra.get("vision_feature_layer", -2),
        "vision_feature_select_strategy": "default",
        "text_config": text_config,
        "vision_config": vision_config,
        "vocab_size": rows,
        "torch_dtype": {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[save_dtype],
    }
    (output / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (token_folder / name).is_file():
            shutil.copyfile(token_folder / name, output / name)
    if added_image:
        added = json.loads((output / "added_tokens.json").read_text()) if (output / "added_tokens.json").is_file() else {}
        added[IMAGE_TOKEN] = image_id
        (output / "added_tokens.json").write_text(json.dumps(added) + "\n")
    preprocessor = image_folder / "preprocessor_config.json"
    image_size = int(vision_config.get("image_size", 224))
    settings = ImageSettings.from_file(preprocessor) if preprocessor.is_file() else ImageSettings(size=image_size, crop_size=image_size)
    (output / "preprocessor_config.json").write_text(json.dumps(settings.to_dict(), indent=2) + "\n")
    return output


def _folder(path: str | Path | None, key: str) -> Path:
    folder = Path(path) if path is not None else None
    if folder is None or not folder.is_dir():
        raise CheckpointError(f"{key}: {path} is not a folder (download it first, e.g. with huggingface-cli download)")
    return folder


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: missing config.json") from None


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no .safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        weights.update(load_file(str(file)))
    # Old CLIP checkpoints stored the position-id buffer, which is recomputed on load.
    return {k: v for k, v in weights.items() if not k.endswith("position_ids")}


def _clip_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vision half of a CLIP checkpoint (transformers 4 writes ``vision_model.``, 5 top-level names)."""
    return {k: v for k, v in weights.items() if k.startswith("vision_model.") or k.startswith(CLIP_TOP_LEVEL)}


def _map_keys(weights: dict[str, torch.Tensor], prefixes: tuple[tuple[str, str], ...]) -> dict[str, torch.Tensor]:
    mapped = {}
    for key, value in weights.items():
        for old, new in prefixes:
            if key.startswith(old):
                mapped[new + key[len(old) :]] = value
                break
        else:
            mapped[key] = value
    return mapped


def _grow_rows(matrix: torch.Tensor, rows: int) -> torch.Tensor:
    """``matrix`` with at least ``rows`` rows; added rows are the mean of the existing ones."""
    if matrix.shape[0] >= rows:
        return matrix.clone()
    mean = matrix.float().mean(dim=0, keepdim=True).to(matrix.dtype)
    return torch.cat([matrix, mean.expand(rows - matrix.shape[0], -1)])
