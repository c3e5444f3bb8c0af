"""Test media whose every frame shows its own index, so a test can tell which frame it got back.

The index is drawn as 16 bits on a 4x4 grid of black/white cells (bit 0 top-left, row by row). Cells
are a quarter of the frame wide and high, large enough to survive lossy H.264/MPEG-4/VP9 coding and
GIF palettes; ``read_frame_index`` reads each cell's centre. Keep sizes small (64x48 by default) so
encoding and decoding stay fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
from PIL import Image

from tarsier.media import write_video

GRID = 4  # cells per side: GRID * GRID bits of index
SIZE = (64, 48)  # (width, height)


def index_frame(index: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """An HxWx3 uint8 RGB frame showing ``index`` as black/white cells."""
    if not 0 <= index < 2 ** (GRID * GRID):
        raise ValueError(f"index {index} does not fit in {GRID * GRID} bits")
    width, height = size
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    for bit in range(GRID * GRID):
        if index >> bit & 1:
            row, col = divmod(bit, GRID)
            frame[_span(row, height), _span(col, width)] = 255
    return frame


def read_frame_index(image: Image.Image | np.ndarray) -> int:
    """Decode the index drawn by ``index_frame`` from a (possibly lossy) frame."""
    gray = np.asarray(image.convert("L") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if gray.ndim == 3:
        gray = gray.mean(axis=2)
    height, width = gray.shape
    index = 0
    for bit in range(GRID * GRID):
        row, col = divmod(bit, GRID)
        rows, cols = _span(row, height), _span(col, width)
        # The middle half of the cell: block edges are where compression smears.
        quarter_h, quarter_w = (rows.stop - rows.start) // 4, (cols.stop - cols.start) // 4
        centre = gray[rows.start + quarter_h : rows.stop - quarter_h, cols.start + quarter_w : cols.stop - quarter_w]
        if centre.mean() > 127:
            index |= 1 << bit
    return index


def make_video(
    path: str | os.PathLike,
    n_frames: int,
    fps: float = 25,
    size: tuple[int, int] = SIZE,
    codec: str | None = None,
    **options: object,
) -> Path:
    """A video whose frame i shows i; ``options`` go to ``write_video`` (encoder options, rotation, timestamps)."""
    write_video(path, (index_frame(i, size) for i in range(n_frames)), fps=fps, codec=codec, **options)
    return Path(path)


def make_gif(
    path: str | os.PathLike, n_frames: int, durations_ms: int | list[int] = 100, size: tuple[int, int] = SIZE
) -> Path:
    """An animated GIF whose frame i shows i, each shown for ``durations_ms`` (one value or one per frame)."""
    frames = [Image.fromarray(index_frame(i, size)) for i in range(n_frames)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations_ms, loop=0)
    return Path(path)


def make_image(path: str | os.PathLike, index: int, size: tuple[int, int] = SIZE) -> Path:
    """A still image showing ``index`` (format from the extension)."""
    Image.fromarray(index_frame(index, size)).save(path)
    return Path(path)


def make_frame_folder(
    directory: str | os.PathLike, n_frames: int, ext: str = ".png", size: tuple[int, int] = SIZE
) -> list[Path]:
    """Files frame0, frame1, ... frame{n-1} (no zero padding, so only a natural sort orders them right)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return [make_image(directory / f"frame{i}{ext}", i, size) for i in range(n_frames)]


def make_empty_video(path: str | os.PathLike, size: tuple[int, int] = SIZE) -> Path:
    """A video file with a video stream but no frames (AVI keeps such a stream; MP4 drops it)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height = size
        container.start_encoding()
    return Path(path)


def make_audio_only(path: str | os.PathLike) -> Path:
    """A media file with a short silent audio stream and no video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for number in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, number * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return Path(path)


def _span(cell: int, length: int) -> slice:
    return slice(cell * length // GRID, (cell + 1) * length // GRID)
