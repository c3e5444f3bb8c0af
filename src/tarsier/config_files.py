"""Reading user-written YAML (or JSON) files with one-line errors that name the file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tarsier.errors import TarsierError


def read_yaml_mapping(path: str | Path, expected: str) -> dict[str, Any]:
    """The mapping in ``path``; ``expected`` says what the mapping should hold, for the error."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TarsierError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise TarsierError(f"{path}{line}: not valid YAML/JSON ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise TarsierError(f"{path}: expected a mapping {expected}")
    return data
