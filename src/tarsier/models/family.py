"""What the registry knows of a model family, and a checkpoint read once.

A :class:`Family` names its classes by import path, so describing a family (and recognising its
``config.json``) costs no torch or transformers import; :class:`Checkpoint` is one checkpoint's
folder and JSON files, read once and handed to every loader.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from tarsier.errors import CheckpointError


@dataclass(frozen=True)
class Family:
    """One model family: how its ``config.json`` looks, where its classes live, its defaults."""

    name: str  # "tarsier", "tarsier2": what configs and resume keys record
    title: str  # for people: "Tarsier-7b/34b"
    recognises: Callable[[Mapping[str, Any]], bool]  # a config.json mapping -> is it ours?
    config_class: str  # "module:Class"
    model_class: str
    processor_class: str
    default_n_frames: int  # frames per video its processor samples unless told otherwise
    training_max_length: int  # tokens per training sample unless the data settings say
    # (checkpoint, frames asked or None) -> None; raises TarsierError for a count that cannot work
    check_frames: Callable[[Checkpoint, int | None], None]
    assembler: str | None = None  # "module:function" that builds a start model from LLaVA-style parts

    def load(self, dotted: str) -> Any:
        """The object a ``"module:name"`` field names (imported on first use)."""
        module, _, name = dotted.partition(":")
        return getattr(importlib.import_module(module), name)


@dataclass
class Checkpoint:
    """A checkpoint folder with its ``config.json`` and ``generation_config.json``, read once."""

    source: str  # as the user gave it: a hub id, a folder, a bundled name
    folder: Path
    config: dict[str, Any] = field(repr=False)
    generation_config: dict[str, Any] = field(repr=False)
    family: Family

    @cached_property
    def model_config(self) -> Any:
        """The family's config object, built from the mapping already read (no second read)."""
        try:
            config = self.family.load(self.family.config_class).from_dict(dict(self.config))
        except CheckpointError:
            raise
        except Exception as exc:  # a config the family's class cannot take: one line naming the file
            raise CheckpointError(f"{self.folder}/config.json: unreadable ({exc})") from None
        config._name_or_path = str(self.folder)
        return config

    @cached_property
    def generation_defaults(self) -> Any:
        """transformers' ``GenerationConfig`` as ``from_pretrained`` would build it (from
        generation_config.json, else from config.json), from the mappings already read."""
        from transformers import GenerationConfig

        if self.generation_config:
            return GenerationConfig.from_dict(dict(self.generation_config))
        return GenerationConfig.from_dict(dict(self.config), _from_model_config=True)

    @property
    def model_class(self) -> type:
        return self.family.load(self.family.model_class)

    @property
    def processor_class(self) -> type:
        return self.family.load(self.family.processor_class)
