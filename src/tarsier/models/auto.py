"""The registry: the only code that knows which model families exist.

:func:`read_checkpoint` reads a checkpoint once (folder or hub id, ``config.json``,
``generation_config.json``, family) into a :class:`~tarsier.models.family.Checkpoint`;
:func:`load_model` and :func:`load_processor` build the family's classes from it. Applications and
the engine reach a family only through here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tarsier.checkpoints import (
    PROCESSOR_FILES,
    checkpoint_folder,
    read_generation_config,
    read_json_object,
    resolve_checkpoint_dir,
)
from tarsier.errors import CheckpointError
from tarsier.models.family import Checkpoint, Family
from tarsier.models.tarsier.family import TARSIER
from tarsier.models.tarsier2.family import TARSIER2

# Most specific first: the first family that recognises a config.json is its family.
FAMILIES: tuple[Family, ...] = (TARSIER2, TARSIER)

# The published checkpoints' families, so planning a job (``bench run --dry-run``) needs no network.
PUBLISHED_FAMILIES = {
    "omni-research/Tarsier-7b": TARSIER,
    "omni-research/Tarsier-34b": TARSIER,
    "omni-research/Tarsier2-Recap-7b": TARSIER2,
    "omni-research/Tarsier2-7b-0115": TARSIER2,
}

# The family a model assembled from LLaVA-style components (training's stage 1) belongs to.
DEFAULT_FAMILY = TARSIER


def family_named(name: str) -> Family:
    """A family by its name (``"tarsier"``, ``"tarsier2"``)."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise CheckpointError(f"unknown model family {name!r}; known: {', '.join(f.name for f in FAMILIES)}")


def family_of_config(config: Mapping[str, Any]) -> Family:
    """The family a ``config.json`` mapping describes."""
    return next((family for family in FAMILIES if family.recognises(config)), DEFAULT_FAMILY)


def read_checkpoint(
    name_or_path: str | os.PathLike | Checkpoint, *, weights: bool = True, **hub_kwargs: Any
) -> Checkpoint:
    """A checkpoint read once: its folder (downloaded if a hub id), JSON files and family.

    ``weights=False`` fetches only what a processor reads. A :class:`Checkpoint` is returned as is,
    so every loader takes either.
    """
    if isinstance(name_or_path, Checkpoint):
        return name_or_path
    if weights:
        folder = checkpoint_folder(name_or_path, **hub_kwargs)
    else:
        folder = resolve_checkpoint_dir(name_or_path, PROCESSOR_FILES, **hub_kwargs)
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder}: missing config.json")
    config = read_json_object(folder / "config.json")
    return Checkpoint(
        source=str(name_or_path),
        folder=folder,
        config=config,
        generation_config=read_generation_config(folder),
        family=family_of_config(config),
    )


def family_of(name_or_path: str | os.PathLike | Checkpoint, **hub_kwargs: Any) -> Family:
    """A checkpoint's family from ``config.json`` alone, so settings that depend on it (frames,
    training lengths, resume keys) are settled before weights are loaded or downloaded."""
    if isinstance(name_or_path, Checkpoint):
        return name_or_path.family
    if str(name_or_path) in PUBLISHED_FAMILIES and not Path(name_or_path).exists():
        return PUBLISHED_FAMILIES[str(name_or_path)]
    folder = resolve_checkpoint_dir(name_or_path, ("config.json",), **hub_kwargs)
    return family_of_config(read_json_object(folder / "config.json"))


def default_frame_count(name_or_path: str | os.PathLike | Checkpoint, **hub_kwargs: Any) -> int:
    """Frames per video the checkpoint's processor samples unless told otherwise (8 or 16)."""
    return family_of(name_or_path, **hub_kwargs).default_n_frames


def check_frames(checkpoint: str | os.PathLike | Checkpoint, n_frames: int | None) -> None:
    """Refuse (or warn about, with the numbers) a frame count the checkpoint's model cannot sensibly
    take; ``None`` is the family's default. Runs on config.json alone, before any weight loads."""
    checkpoint = read_checkpoint(checkpoint, weights=False)
    checkpoint.family.check_frames(checkpoint, n_frames)


def load_model(checkpoint: str | os.PathLike | Checkpoint, **kwargs: Any) -> Any:
    """The family's model class ``from_pretrained`` the checkpoint, its config not read again."""
    checkpoint = read_checkpoint(checkpoint)
    return checkpoint.model_class.from_pretrained(
        str(checkpoint.folder), config=checkpoint.model_config, generation_config=checkpoint.generation_defaults, **kwargs
    )


def load_processor(checkpoint: str | os.PathLike | Checkpoint, **settings: Any) -> Any:
    """The family's processor for the checkpoint (``max_n_frames`` and family settings passed on)."""
    checkpoint = read_checkpoint(checkpoint, weights=False)
    return checkpoint.processor_class.from_checkpoint(checkpoint, **settings)


def assembler() -> Any:
    """The function that writes a start model from LLaVA-style components (training's stage 1)."""
    return DEFAULT_FAMILY.load(DEFAULT_FAMILY.assembler)

