"""Where training starts: a checkpoint as published, or one assembled once from LLaVA-style
components by the family that can (:func:`tarsier.models.auto.assembler`)."""

from __future__ import annotations

import json
from pathlib import Path

from tarsier.models import auto
from tarsier.train.config import ModelSettings


def start_folder(settings: ModelSettings, output: Path) -> Path:
    """The checkpoint folder training loads: the given one, or ``OUTPUT/init`` assembled once."""
    from tarsier.checkpoints import checkpoint_folder

    if settings.checkpoint:
        return checkpoint_folder(settings.checkpoint)
    target = output / "init"
    sources = {"llava": settings.llava, "vision": settings.vision, "language": settings.language}
    manifest = target / "init_sources.json"
    if manifest.is_file() and json.loads(manifest.read_text()) == sources:
        return target  # assembled by an earlier (or resumed) run from the same components
    auto.assembler()(target, llava=settings.llava, vision=settings.vision, language=settings.language)
    manifest.write_text(json.dumps(sources, indent=2) + "\n")
    return target
