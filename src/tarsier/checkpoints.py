"""Where checkpoints come from (a local folder or a hub id, checked before anything loads) and
reading their JSON files.

Kept free of torch/transformers imports so the CLI can use it while staying quick to start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tarsier.errors import CheckpointError

DEFAULT_MODEL = "omni-research/Tarsier-7b"

# Models shipped inside the package, usable offline by name.
BUNDLED_MODELS = {name: Path(__file__).parent / "assets" / name for name in ("shapes-demo", "tarsier2-shapes-demo")}

# What a processor of either family reads (missing optional files are fine): Tarsier2 renders prompts
# with the checkpoint's chat template and stops at generation_config.json's EOS ids.
PROCESSOR_FILES = (
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "generation_config.json",
)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
MODEL_FILES = PROCESSOR_FILES + ("*.safetensors", "*.safetensors.index.json")


def bundled_or_given(name_or_path: str | os.PathLike) -> str | os.PathLike:
    """A bundled model's folder for its name (``shapes-demo``, ``tarsier2-shapes-demo``); anything else unchanged."""
    return BUNDLED_MODELS.get(str(name_or_path), name_or_path)


def resolve_checkpoint_dir(name_or_path: str | os.PathLike, files: Sequence[str], **hub_kwargs: Any) -> Path:
    """A bundled model's folder, a local folder as is, or ``files`` (those that exist) from the hub."""
    path = Path(bundled_or_given(name_or_path))
    if path.is_dir():
        return path
    if str(name_or_path) in BUNDLED_MODELS:
        raise CheckpointError(f"{name_or_path}: the bundled model is missing from this install ({path})")
    if path.exists() or str(name_or_path).count("/") != 1 or str(name_or_path).startswith((".", "/")):
        raise CheckpointError(f"{name_or_path}: not a checkpoint folder or a hub model id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=list(files), **hub_kwargs))
    except Exception as exc:  # network, auth, missing repo: one line for the user
        reason = " ".join(str(exc).split())
        raise CheckpointError(f"{name_or_path}: could not download from the hub ({type(exc).__name__}: {reason})") from None


def checkpoint_folder(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> Path:
    """A complete checkpoint folder (downloaded if a hub id) or a one-line CheckpointError."""
    folder = resolve_checkpoint_dir(name_or_path, MODEL_FILES, **hub_kwargs)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: missing config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(f"{folder}: no weights (model.safetensors or model.safetensors.index.json)")
    if not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()):
        raise CheckpointError(f"{folder}: no tokenizer (tokenizer.json or tokenizer.model)")
    return folder


def read_json_object(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON file, or a one-line CheckpointError naming it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def read_generation_config(folder: Path) -> dict[str, Any]:
    """The checkpoint's ``generation_config.json`` ({} without one): the reference's ``generate()``
    applies what it sets and a call leaves unset (EOS ids, a repetition penalty), so we do too."""
    path = folder / "generation_config.json"
    return read_json_object(path) if path.is_file() else {}

