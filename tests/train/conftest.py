"""Fixtures for the training tests: tiny clips, a small JSONL mixture, and stage configs."""

import json

import numpy as np
import pytest

from tarsier.media import write_video
from tarsier.prompting import IGNORE_INDEX
from tarsier.train.config import apply_override, config_from_dict


def coloured_clip(path, colour, frames=6, size=(48, 48)):
    """A short clip of a coloured block sliding right over black (each clip looks different)."""
    width, height = size
    images = []
    for i in range(frames):
        frame = np.zeros((height, width, 3), dtype=np.uint8)
        left = 4 + i * 4
        frame[16:32, left : left + 12] = colour
        images.append(frame)
    write_video(path, images, fps=6)
    return path


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train-clips")
    for name, colour in (("red", (230, 20, 20)), ("green", (20, 210, 40)), ("blue", (30, 60, 240)), ("yellow", (240, 220, 30))):
        coloured_clip(folder / f"{name}.mp4", colour)
    return folder


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def chat(media, question, answer, **extra):
    return {"media": media, "messages": [{"role": "user", "content": f"<video>\n{question}"}, {"role": "assistant", "content": answer}], **extra}


@pytest.fixture
def mixture_files(tmp_path, clip_folder):
    """Two sources: descriptions in the common format, and captions through the caption adapter."""
    descriptions = write_jsonl(tmp_path / "descriptions.jsonl", [
        chat(str(clip_folder / f"{c}.mp4"), "Describe the video.", f"A {c} block slides to the right.") for c in ("red", "green", "blue", "yellow")
    ])
    captions = write_jsonl(tmp_path / "captions.jsonl", [
        {"media": str(clip_folder / f"{c}.mp4"), "caption": f"{c} block"} for c in ("red", "blue")
    ])
    return {"path": str(descriptions)}, {"path": str(captions), "adapter": "caption"}


def target_runs(ids, labels):
    """Maximal runs of consecutive target tokens (each label equal to its token)."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def make_config(checkpoint, sources, *overrides, **sections):
    """A stage config for a few fast CPU steps (2 frames, no workers) with ``key=value`` overrides."""
    data = {
        "stage": "test",
        "model": {"checkpoint": str(checkpoint)},
        "data": {"sources": [s if isinstance(s, dict) else {"path": str(s)} for s in sources],
                 "n_frames": 2, "num_workers": 0, "max_length": 512},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0},
        "train": {"max_steps": 4, "micro_batch_size": 2, "gradient_accumulation": 1, "log_every": 1,
                  "save_every": 0, "save_dtype": "fp32"},
        "distributed": {"strategy": "ddp"},
    }
    for key, value in sections.items():
        data[key].update(value)
    for override in overrides:
        apply_override(data, override)
    return config_from_dict(data, "test config")
