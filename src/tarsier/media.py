"""Media loading: turn a video, GIF, image or folder of frames into a few upright RGB frames.

Sampling follows the reference Tarsier code (which read videos with decord): ``n`` frames spread
evenly over the clip, first and last always included, after optional start/end times clip the range.

How a video is read without decoding all of it
----------------------------------------------
1. Index. Demux every packet of the video stream once, without decoding (no pixels are touched, so
   this costs little more than reading the file). The sorted packet timestamps give the exact frame
   count and the timestamp of frame ``i`` in presentation order, whatever the header claims and
   however B-frames reorder the stream or the frame rate varies. Keyframe packets mark where
   decoding can start.
2. Decode. Visit the wanted frames in ascending order. Keep decoding forward while the next target
   is in the current GOP or only a few frames past it; otherwise seek to the keyframe at or before
   the target and decode from there. Each distinct frame is converted to an image once.
3. Damage. If a target does not come out of the decoder (damaged data, an imprecise seek, an open
   GOP), retry from the keyframe before; failing that, use the nearest frame that did decode and
   report its index in ``SampledFrames.indices``. A video never yields fewer frames than asked for.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps

from tarsier.errors import MediaError

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mov", ".mkv", ".wmv")
GIF_EXTENSIONS = (".gif",)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp")

# Decoding forward through this many unneeded frames costs about as much as one seek (demuxer jump,
# decoder flush, refilling the decoder's threads), so shorter gaps are decoded through.
_SEEK_COST_FRAMES = 8
# Seek points tried per target: its nearest keyframe, then the one before.
_SEEK_ATTEMPTS = 2
# What Pillow raises for unreadable, truncated or absurdly large images.
_PIL_ERRORS = (OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError)
# PIL transposes turning an image 1, 2 or 3 quarter turns counterclockwise.
_CCW_TURNS = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}


@dataclass(frozen=True)
class SampledFrames:
    """Frames sampled from one source, with where they came from."""

    images: list[Image.Image]  # RGB, in sampling order
    indices: list[int]  # index of each image in the source's decode order (absolute, not clip-relative)
    total_frames: int  # frames in the whole source, not just the clipped window
    fps: float | None
    source: str  # the path as given; for a list of files, the first file's folder
    kind: str  # as media_kind


def media_kind(source: str | os.PathLike | Sequence[str | os.PathLike]) -> str:
    """Return "video", "gif", "image" or "frames" (a folder, or a list of image files).

    Raises MediaError for a missing path or an unsupported extension (matched case-insensitively).
    """
    if not isinstance(source, (str, os.PathLike)):
        _frame_files(source)  # validates every file in the list
        return "frames"
    path = Path(source)
    if path.is_dir():
        return "frames"
    if not path.exists():
        raise MediaError(f"{source}: file not found")
    suffix = path.suffix.lower()
    for kind, extensions in (("video", VIDEO_EXTENSIONS), ("gif", GIF_EXTENSIONS), ("image", IMAGE_EXTENSIONS)):
        if suffix in extensions:
            return kind
    raise MediaError(f"{source}: unsupported file type {suffix or '(no extension)'!r}; {_SUPPORTED}")


def sample_frame_indices(total: int, n: int) -> list[int]:
    """Indices of ``n`` frames spread evenly over ``total``, first and last included (the reference rule).

    Python's round (ties to even) is used on purpose: it is what the reference does, and a tie going
    the other way would pick a different frame. When ``total < n`` indices repeat.
    """
    if total < 1 or n < 1:
        raise ValueError(f"need at least one frame to sample and to take, got total={total}, n={n}")
    if n == 1:
        return [0]
    return [round(i * (total - 1) / (n - 1)) for i in range(n)]


def load_frames(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    n_frames: int = 8,
    start_time: float | None = None,
    end_time: float | None = None,
) -> SampledFrames:
    """Sample ``n_frames`` upright RGB frames from a video, GIF, image, frame folder or list of frame files.

    ``start_time``/``end_time`` (seconds) clip videos and GIFs before sampling. As in the reference,
    None, zero or a negative value means "not clipped" (its defaults were 0 and -1). Images give their
    one frame whatever ``n_frames``, start and end are. Frame folders and lists are sorted by name
    (naturally: frame2 before frame10) and have no timing, so clipping them is an error.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be at least 1, got {n_frames}")
    kind = media_kind(source)
    start, end = _clip_request(source, start_time, end_time)
    if kind == "video":
        return _load_video(os.fspath(source), n_frames, start, end)
    if kind == "gif":
        return _load_gif(os.fspath(source), n_frames, start, end)
    if kind == "image":
        path = os.fspath(source)
        return SampledFrames([_open_rgb(path)], [0], 1, None, path, "image")
    files = _frame_files(source)
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else str(files[0].parent)
    if start is not None or end is not None:
        raise MediaError(f"{name}: start_time/end_time need a video or GIF; frame images carry no timing")
    indices = sample_frame_indices(len(files), n_frames)
    images = {index: _open_rgb(files[index]) for index in sorted(set(indices))}
    return SampledFrames([images[i] for i in indices], indices, len(files), None, name, "frames")


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray | Image.Image],
    fps: float = 25,
    codec: str | None = None,
    *,
    rotation: int = 0,
    timestamps: Sequence[float] | None = None,
    **options: object,
) -> None:
    """Encode RGB frames (HxWx3 uint8 arrays or PIL images) into a video file with PyAV.

    Used to make test clips, benchmark inputs and synthetic training videos. The codec defaults by
    extension: libx264 (yuv420p) for .mp4/.mkv/.mov, mpeg4 for .avi, VP9 (else VP8) for .webm, wmv2
    for .wmv. ``options`` go to the encoder (e.g. ``crf=18``, ``g=12`` for the GOP length, ``bf=0``).
    ``rotation`` stores a display rotation (degrees counterclockwise, FFmpeg's convention) in
    containers that carry one (mp4, mov, mkv). ``timestamps`` (seconds, increasing, one per frame)
    give a variable frame rate; ``fps`` then only sets the nominal rate.
    """
    path = Path(path)
    codec = codec or _default_codec(path)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{path}: write_video needs at least one frame")
    try:
        with av.open(str(path), "w") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            first_frame = _video_frame(first)
            stream.width, stream.height = first_frame.width, first_frame.height
            stream.pix_fmt = "yuv420p"
            stream.options = {key: str(value) for key, value in options.items()}
            if timestamps is not None:
                stream.codec_context.time_base = Fraction(1, 1000)
            if rotation:
                stream.set_display_rotation(rotation)
            for number, frame in enumerate(itertools.chain([first_frame], map(_video_frame, frames))):
                if timestamps is not None:
                    frame.pts, frame.time_base = round(timestamps[number] * 1000), Fraction(1, 1000)
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    except (av.FFmpegError, ValueError) as error:  # PyAV raises ValueError for formats and arrays it cannot take
        raise MediaError(f"{path}: cannot write video ({_reason(error)})") from error


# --- videos ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _VideoIndex:
    """Where every frame of a video stream is, learnt by demuxing without decoding."""

    pts: list[int]  # pts[i] is the timestamp of frame i, frames in presentation order
    keyframes: list[int]  # frames decoding can start from, ascending

    def seek_points(self, target: int) -> list[int]:
        """Frames to start decoding from for ``target``: keyframes at or before it, nearest first
        (the first frame if none precedes it)."""
        return self.keyframes[: bisect.bisect_right(self.keyframes, target)][::-1] or [0]


def _load_video(path: str, n_frames: int, start: float | None, end: float | None) -> SampledFrames:
    try:
        # Titles and tags in old files are often not UTF-8; they must not stop the frames being read.
        container = av.open(path, metadata_errors="replace")
    except (av.FFmpegError, OSError) as error:
        raise MediaError(f"{path}: cannot open as a video ({_reason(error)})") from error
    with container:
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            index = _index_video(container, stream)
            if not index.pts:
                raise MediaError(f"{path}: the video has no frames")
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else None
            first, last = 0, len(index.pts) - 1
            if start is not None or end is not None:
                if fps is None:
                    raise MediaError(f"{path}: cannot clip by time, the video has no frame rate")
                total = len(index.pts)
                length = f"{total} frames at {fps:g} fps = {total / fps:.2f}s"
                first, last = _clip_window(path, total, start, end, lambda t: int(fps * t), length)
            # The reference returned frame 0 for n_frames=1 even when clipped; we take the window's start.
            targets = [first + i for i in sample_frame_indices(last - first + 1, n_frames)]
            chosen = _VideoDecoder(path, container, stream, index).read(targets)
        except av.FFmpegError as error:
            raise MediaError(f"{path}: cannot decode the video ({_reason(error)})") from error
    return SampledFrames(
        images=[chosen[t][1] for t in targets],
        indices=[chosen[t][0] for t in targets],
        total_frames=len(index.pts),
        fps=fps,
        source=path,
        kind="video",
    )


def _index_video(container: av.container.InputContainer, stream: av.VideoStream) -> _VideoIndex:
    timestamps, key_timestamps = [], set()
    try:
        for packet in container.demux(stream):
            # Skip the end-of-stream marker, packets the container says to drop (edit lists), and
            # packets without a timestamp: they have no place in presentation order.
            if packet.size == 0 or packet.is_discard or packet.pts is None:
                continue
            timestamps.append(packet.pts)
            if packet.is_keyframe:
                key_timestamps.add(packet.pts)
    except av.FFmpegError:
        pass  # a damaged or truncated tail: index what could be read
    timestamps.sort()
    keyframes = [frame for frame, pts in enumerate(timestamps) if pts in key_timestamps]
    return _VideoIndex(timestamps, keyframes)


def _decode_packet(stream: av.VideoStream, packet: av.Packet) -> list[av.VideoFrame]:
    """Decode one packet. All video decoding goes through here (tests count the calls)."""
    return stream.decode(packet)


class _VideoDecoder:
    """Decodes chosen frames of one stream, seeking only when that beats decoding forward."""

    def __init__(self, path: str, container: av.container.InputContainer, stream: av.VideoStream, index: _VideoIndex):
        self._path, self._container, self._stream, self._index = path, container, stream, index
        self._frame_at_pts = {pts: frame for frame, pts in enumerate(index.pts)}
        self._images: dict[int, Image.Image] = {}
        self._frames: Iterator[av.VideoFrame] | None = None  # decoder output since the last seek; None: must seek
        self._position = -1  # presentation index of the last frame taken from _frames

    def read(self, targets: Sequence[int]) -> dict[int, tuple[int, Image.Image]]:
        """Map each target frame to (index of the frame actually used, its image).

        The decoder is released before this returns: its frame generator refers back to it, and
        that cycle would otherwise keep the decoder and its frames (tens of MB at 720p) alive
        until the garbage collector happens to run.
        """
        wanted = set(targets)
        used = {}
        try:
            for target in sorted(wanted):
                used[target] = target if target in self._images else self._read(target, wanted)
            return {target: (frame, self._images[frame]) for target, frame in used.items()}
        finally:
            if self._frames is not None:
                self._frames.close()
            self._frames = None
            self._images = {}

    def _read(self, target: int, wanted: set[int]) -> int:
        nearest = None
        for attempt, keyframe in enumerate(self._index.seek_points(target)[:_SEEK_ATTEMPTS]):
            if attempt or not self._can_continue_to(target, keyframe):
                self._seek(keyframe)
            nearest = self._decode_up_to(target, wanted) or nearest
            if target in self._images:
                return target
        if nearest is not None:
            frame_index, frame = nearest
            self._images.setdefault(frame_index, _upright_rgb(frame))
        elif self._images:  # nothing decodes near the target: the closest frame already read
            frame_index = min(self._images, key=lambda index: abs(index - target))
        else:
            raise MediaError(f"{self._path}: no frame can be decoded")
        logger.warning("%s: frame %d cannot be decoded; using frame %d", self._path, target, frame_index)
        return frame_index

    def _can_continue_to(self, target: int, keyframe: int) -> bool:
        return self._frames is not None and self._position < target and keyframe - self._position <= _SEEK_COST_FRAMES

    def _seek(self, keyframe: int) -> None:
        self._container.seek(self._index.pts[keyframe], stream=self._stream, backward=True, any_frame=False)
        self._frames = self._decoded_frames()
        self._position = -1

    def _decode_up_to(self, target: int, wanted: set[int]) -> tuple[int, av.VideoFrame] | None:
        """Decode until frame ``target`` or later, keeping images of wanted frames on the way.

        Returns the first frame at or after ``target``, or the last one before it if the stream ends.
        """
        before = None
        for frame in self._frames:
            position = self._frame_at_pts.get(frame.pts)
            if position is None:
                continue
            self._position = position
            if position in wanted and position not in self._images:
                self._images[position] = _upright_rgb(frame)
            if position >= target:
                return position, frame
            before = position, frame
        self._frames = None  # end of stream: the next read has to seek
        return before

    def _decoded_frames(self) -> Iterator[av.VideoFrame]:
        """Decoder output from the demuxer's position on; a damaged packet is skipped, a damaged tail ends it."""
        try:
            for packet in self._container.demux(self._stream):
                try:
                    frames = _decode_packet(self._stream, packet)
                except av.FFmpegError:
                    continue
                yield from frames
        except av.FFmpegError:
            return


def _upright_rgb(frame: av.VideoFrame) -> Image.Image:
    """The frame as a player shows it: RGB, turned by the stream's display rotation (flips are ignored)."""
    image = frame.to_image()
    quarter_turns = round(frame.rotation / 90) % 4  # rotation: degrees counterclockwise
    return image.transpose(_CCW_TURNS[quarter_turns]) if quarter_turns else image


# --- GIFs, images, frame folders ------------------------------------------------------------------


def _load_gif(path: str, n_frames: int, start: float | None, end: float | None) -> SampledFrames:
    """Sample a GIF frame by frame.

    Reference quirk kept on purpose: the reference walked the GIF keeping each frame whose index is
    in the sample, so a GIF (or clipped window) shorter than ``n_frames`` yields each frame once,
    i.e. fewer than ``n_frames`` images, and ``indices`` lists the unique indices (videos repeat
    frames instead).
    The reference ignored start/end for GIFs; we clip by the frames' display durations.
    """
    try:
        with _open_image(path) as gif:
            total = getattr(gif, "n_frames", 1)  # a still image misnamed .gif has no n_frames
            first, last = 0, total - 1
            if start is not None or end is not None:
                starts = _gif_frame_starts(gif)
                first, last = _clip_window(
                    path, total, start, end, lambda t: bisect.bisect_right(starts, t) - 1, f"{starts[-1]:.2f}s"
                )
            indices = sorted({first + i for i in sample_frame_indices(last - first + 1, n_frames)})
            images = []
            for index in indices:
                gif.seek(index)
                images.append(gif.convert("RGB"))
    except _PIL_ERRORS as error:
        raise MediaError(f"{path}: cannot read the GIF ({_reason(error)})") from error
    return SampledFrames(images, indices, total, None, path, "gif")


def _gif_frame_starts(gif: Image.Image) -> list[float]:
    """Second at which each frame appears, then the end; no or zero duration counts 100 ms, as browsers do."""
    starts = [0.0]
    for index in range(getattr(gif, "n_frames", 1)):
        gif.seek(index)
        starts.append(starts[-1] + (gif.info.get("duration") or 100) / 1000)
    return starts


def _open_rgb(path: str | os.PathLike) -> Image.Image:
    """An image file as RGB, EXIF orientation applied so it is upright as a viewer shows it."""
    try:
        with _open_image(path) as image:
            return ImageOps.exif_transpose(image).convert("RGB")
    except _PIL_ERRORS as error:
        raise MediaError(f"{path}: cannot read the image ({_reason(error)})") from error


@contextlib.contextmanager
def _open_image(path: str | os.PathLike) -> Iterator[Image.Image]:
    """``Image.open`` with our own handling of huge images.

    PIL's limit ``Image.MAX_IMAGE_PIXELS`` (about 89.5 megapixels by default; None turns the checks
    off) decides, as in PIL: an image over twice the limit raises DecompressionBombError, which
    callers report as a one-line MediaError naming the file and its pixel count; one over the limit is
    decoded in full, as the reference did, with one logged line from us naming the file (PIL's own
    raw warning is filtered out at import, below).
    """
    with Image.open(path) as image:  # PIL raises DecompressionBombError over twice its limit
        limit = Image.MAX_IMAGE_PIXELS
        width, height = image.size
        if limit is not None and width * height > limit:
            logger.warning(
                "%s: very large image, %dx%d = %s pixels (over PIL.Image.MAX_IMAGE_PIXELS = %s); decoding it in full",
                path, width, height, f"{width * height:,}", f"{limit:,}",
            )
        yield image


# PIL's DecompressionBombWarning names neither our file nor what happens next; _open_image says both.
# Warning filters are process-wide, and toggling them per call is not thread-safe (decoding runs in
# worker threads), so PIL's warning is filtered once here.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _bomb_reason(error: Image.DecompressionBombError) -> str:
    """PIL's decompression-bomb error as our one-line reason: the pixel count against the limit."""
    pixels = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
    limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None
    over = f" of {limit:,} = 2 x PIL.Image.MAX_IMAGE_PIXELS" if limit else ""
    return f"{size}, over the decompression-bomb limit{over}; raise PIL.Image.MAX_IMAGE_PIXELS to allow it"


def _frame_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The frame images of a folder or list, in natural name order (frame2 before frame10)."""
    if isinstance(source, (str, os.PathLike)):
        try:
            entries = list(Path(source).iterdir())
        except OSError as error:
            raise MediaError(f"{source}: cannot list the folder ({_reason(error)})") from error
        # Hidden files such as macOS "._frame1.jpg" companions are not frames.
        files = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
        if not files:
            raise MediaError(f"{source}: no frame images ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
    else:
        files = [Path(p) for p in source]
        if not files:
            raise MediaError("empty list of frame files")
        for file in files:
            if not file.is_file():
                raise MediaError(f"{file}: file not found")
            if file.suffix.lower() not in IMAGE_EXTENSIONS:
                raise MediaError(f"{file}: not a frame image; frame lists take {', '.join(IMAGE_EXTENSIONS)}")
    return sorted(files, key=_natural_key)


def _natural_key(path: Path) -> tuple[list[str | int], str]:
    # re.split with a group alternates text and digit runs, so ints only ever meet ints.
    parts = re.split(r"(\d+)", str(path))
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(parts)], str(path)


# --- shared helpers -------------------------------------------------------------------------------

_SUPPORTED = (
    f"supported: videos {' '.join(VIDEO_EXTENSIONS)}, GIFs {' '.join(GIF_EXTENSIONS)}, "
    f"images {' '.join(IMAGE_EXTENSIONS)}, or a folder of frame images"
)


def _clip_request(
    source: object, start_time: float | None, end_time: float | None
) -> tuple[float | None, float | None]:
    """The clip times that count (positive ones), checked for order."""
    start = start_time if start_time is not None and start_time > 0 else None
    end = end_time if end_time is not None and end_time > 0 else None
    if end is not None and end <= (start or 0):
        name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "frame list"
        raise MediaError(f"{name}: end_time {end:g}s must be after start_time {start or 0:g}s")
    return start, end


def _clip_window(
    path: str, total: int, start: float | None, end: float | None, frame_at: Callable[[float], int], length: str
) -> tuple[int, int]:
    """First and last frame of the clip, by the reference's rule: the frames shown at start and end."""
    first = 0
    if start is not None:
        first = frame_at(start)
        if first > total - 1:
            raise MediaError(f"{path}: start_time {start:g}s is beyond the end ({length})")
    last = total - 1
    if end is not None:
        last = min(total - 1, max(first, frame_at(end)))
    return first, last


def _default_codec(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".webm":
        return "libvpx-vp9" if "libvpx-vp9" in av.codecs_available else "libvpx"
    codecs = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".avi": "mpeg4", ".wmv": "wmv2"}
    if suffix not in codecs:
        raise MediaError(f"{path}: no default codec for {suffix or '(no extension)'!r}; pass codec=")
    return codecs[suffix]


def _video_frame(image: np.ndarray | Image.Image) -> av.VideoFrame:
    if isinstance(image, Image.Image):
        return av.VideoFrame.from_image(image.convert("RGB"))
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(image, dtype=np.uint8), format="rgb24")


def _reason(error: BaseException) -> str:
    """An exception's message on one line, without the file name FFmpeg errors repeat."""
    if isinstance(error, Image.DecompressionBombError):
        return _bomb_reason(error)
    message = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(message.split())
