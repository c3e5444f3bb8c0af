"""Reading annotation and predictions JSONL files, and finding each item's video.

Annotations and predictions share one line format (a predictions line is the annotation line with a
prediction added), so both are read here, checked field by field, and every problem is reported as
``file:line: problem``. Video paths are usually placeholders in the released annotations; they are
filled from ``vid`` and a video root the user gives, and missing videos are counted up front so a
long run does not discover them one by one. Lines of the Tarsier2 release, which keep prompt and
reference as parts of a chat (``messages``), are read into the same shape first.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tarsier.errors import TarsierError
from tarsier.eval.benchmarks import BENCHMARKS, Benchmark, benchmark_for_dataset
from tarsier.jsonl import iter_jsonl

PLACEHOLDER = "<placeholder>"
MEDIA_PLACEHOLDERS = {"video": "<video>", "image": "<image>"}  # part type -> prompt placeholder
MEDIA_EXTENSIONS = (".mp4", ".avi", ".webm", ".mov", ".mkv", ".wmv", ".gif", ".jpg", ".jpeg", ".png", ".tif")


@dataclass
class Item:
    """One annotation or prediction line, with its benchmark and where it came from."""

    benchmark: Benchmark
    record: dict[str, Any]
    path: Path
    line: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def dataset(self) -> str:
        return self.record["dataset"]

    @property
    def idx(self) -> Any:
        return self.record["idx"]

    @property
    def key(self) -> str:
        return item_key(self.record)

    @property
    def text(self) -> dict[str, Any]:
        return self.record["text"]

    @property
    def prompt(self) -> str:
        return self.text.get("prompt") or self.benchmark.default_prompt or ""

    @property
    def response(self) -> Any:
        return self.text.get("response")

    @property
    def question(self) -> str | None:
        return self.text.get("question")

    @property
    def extra_info(self) -> dict[str, Any]:
        return self.record.get("extra_info") or {}

    @property
    def prediction(self) -> str | None:
        """The model's answer: ``text.prediction`` (the reference layout) or a top-level ``prediction``."""
        if "prediction" in self.text:
            return self.text["prediction"]
        return self.record.get("prediction")

    @property
    def error(self) -> str | None:
        """Why inference produced no prediction for this item (written by ``tarsier bench run``)."""
        return self.record.get("error")


def item_key(record: Mapping[str, Any]) -> str:
    """Identity of an item across annotations, predictions and results: ``dataset/idx``."""
    return f"{record['dataset']}/{record['idx']}"


@dataclass
class Selection:
    """Items per benchmark (registry order) plus what was left out and why."""

    items: dict[str, list[Item]] = field(default_factory=dict)  # only benchmarks that have items
    requested: list[str] = field(default_factory=list)  # benchmarks asked for (empty: any)
    files: list[Path] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)  # dataset -> lines of no selected benchmark
    replaced: int = 0  # prediction lines superseded by a later line for the same item

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.items.values())


def _get(record: Mapping[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _check_common(record: dict[str, Any], where: str) -> None:
    idx = record.get("idx")
    if idx is None or isinstance(idx, bool) or not isinstance(idx, (int, str)):
        raise TarsierError(f"{where}: missing or invalid 'idx' (expected an integer or a string)")
    dataset = record.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise TarsierError(f"{where}: missing or invalid 'dataset' (expected a string such as 'DREAM/shorts')")


def _check_text(record: dict[str, Any], where: str) -> None:
    if not isinstance(record.get("text"), dict):
        raise TarsierError(f"{where}: missing or invalid 'text' (expected an object with 'prompt' and 'response')")


def _parts(turn: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    content = turn.get("content")
    if not isinstance(content, list) or not all(isinstance(part, dict) for part in content):
        raise TarsierError(f"{where}: the {turn.get('role')} turn's 'content' must be a list of parts (objects)")
    return content


def _part_text(part: Mapping[str, Any], where: str) -> str:
    text = part.get("text")
    if text is not None and not isinstance(text, str):
        raise TarsierError(f"{where}: a text part's 'text' must be a string")
    return text or ""


def messages_to_v1(record: dict[str, Any], where: str, *, predictions: bool) -> dict[str, Any]:
    """The v1 shape (``text.prompt``, ``text.response``, ``video_file``) of a Tarsier2-release line.

    That release keeps a benchmark item as a chat: the first user turn is the prompt (a media part and
    the question), assistant text before the last part is a pre-fill the model continues (``Answer: (``),
    and the last assistant part holds the reference and, in the reference's prediction files, the
    prediction as its ``text``. Reading it into the v1 shape lets the checks, the runner and the metrics
    serve both releases unchanged; every other key, ``messages`` included, is kept.
    """
    messages = record["messages"]
    if not isinstance(messages, list) or not all(isinstance(turn, dict) for turn in messages):
        raise TarsierError(f"{where}: 'messages' must be a list of turns (objects with 'role' and 'content')")
    user = next((turn for turn in messages if turn.get("role") == "user"), None)
    assistant = next((turn for turn in reversed(messages) if turn.get("role") == "assistant"), None)
    if user is None:
        raise TarsierError(f"{where}: 'messages' has no user turn (it holds the prompt)")
    if assistant is None:
        raise TarsierError(f"{where}: 'messages' has no assistant turn (it holds the reference answer)")
    asked = _parts(user, where)
    media = [part for part in asked if part.get("type") in MEDIA_PLACEHOLDERS]
    if len(media) != 1:
        raise TarsierError(f"{where}: the user turn has {len(media)} video/image parts (expected one)")
    pieces, question = [], []
    for part in asked:
        kind = part.get("type")
        if kind in MEDIA_PLACEHOLDERS:
            pieces.append(MEDIA_PLACEHOLDERS[kind])
        elif kind == "text":
            if text := _part_text(part, where):
                pieces.append(text)
                question.append(text)
        else:
            raise TarsierError(f"{where}: unknown part type {kind!r} in the user turn (expected video, image or text)")
    answer = _parts(assistant, where)
    if not answer or answer[-1].get("reference") is None:
        raise TarsierError(f"{where}: the last assistant part has no 'reference' (the expected answer)")
    prompt = "\n".join(pieces)
    prefill = "".join(_part_text(part, where) for part in answer[:-1])
    text: dict[str, Any] = {
        "prompt": f"USER: {prompt} ASSISTANT:{prefill}" if prefill else prompt,
        "response": answer[-1]["reference"],
    }
    if question:
        text["question"] = "\n".join(question)
    if predictions:
        text["prediction"] = answer[-1].get("text")
    normalised = {**record, "text": text}
    spec = media[0].get(media[0]["type"])
    if isinstance(spec, Mapping):
        path = spec.get("video_file", spec.get("image_file"))
        for key in ("start_time", "end_time"):
            if spec.get(key) is not None:
                normalised[key] = spec[key]
    else:
        path = spec
    if path is not None:
        normalised["video_file"] = path
    return normalised


def _check_annotation(record: dict[str, Any], benchmark: Benchmark, where: str) -> None:
    prompt = record["text"].get("prompt")
    if prompt is None and benchmark.default_prompt is None:
        raise TarsierError(f"{where}: missing 'text.prompt' ({benchmark.name} has no default prompt)")
    if prompt is not None and not isinstance(prompt, str):
        raise TarsierError(f"{where}: 'text.prompt' must be a string")
    video = record.get("video_file")
    if video is not None and not isinstance(video, (str, list)):
        raise TarsierError(f"{where}: 'video_file' must be a path or a list of frame files")
    if isinstance(video, list) and not all(isinstance(v, str) for v in video):
        raise TarsierError(f"{where}: 'video_file' list must hold file paths (strings)")
    if (video is None or (isinstance(video, str) and _is_placeholder(video))) and record.get("vid") is None:
        raise TarsierError(f"{where}: no 'video_file' and no 'vid' to find the video by")


def _check_prediction(record: dict[str, Any], benchmark: Benchmark, where: str) -> None:
    response = record["text"].get("response")
    if benchmark.response == "texts":
        ok = isinstance(response, str) or (
            isinstance(response, list) and response and all(isinstance(r, str) for r in response)
        )
        expected = "a string or a non-empty list of reference captions"
    else:
        ok = isinstance(response, str)
        expected = "an option letter" if benchmark.response == "letter" else "a string"
    if not ok:
        raise TarsierError(f"{where}: missing or invalid 'text.response' (expected {expected})")
    for dotted in benchmark.required:
        if not isinstance(_get(record, dotted), str):
            raise TarsierError(f"{where}: missing '{dotted}' (needed by {benchmark.name})")
    text = record["text"]
    has_prediction = "prediction" in text or "prediction" in record
    prediction = text["prediction"] if "prediction" in text else record.get("prediction")
    if not has_prediction:
        raise TarsierError(f"{where}: no prediction (expected 'text.prediction' or 'prediction')")
    if prediction is None and not record.get("error"):
        raise TarsierError(f"{where}: prediction is null and no 'error' says why")
    if prediction is not None and not isinstance(prediction, str):
        raise TarsierError(f"{where}: prediction must be a string")
    events = _get(record, "extra_info.events")
    if events is not None and not (isinstance(events, list) and all(isinstance(e, str) for e in events)):
        raise TarsierError(f"{where}: 'extra_info.events' must be a list of strings")


def _is_placeholder(video_file: str) -> bool:
    return not video_file.strip() or PLACEHOLDER in video_file


def annotation_files(paths: Sequence[str | Path], benchmarks: Sequence[Benchmark]) -> list[Path]:
    """Files to read: given files as they are; in a folder, the reference file names of ``benchmarks``."""

    def in_folder(folder: Path) -> list[Path]:
        found = []
        for benchmark in benchmarks or BENCHMARKS:
            for name in benchmark.annotation_files:
                if (folder / name).is_file():
                    found.append(folder / name)
                    break
            else:
                if benchmarks:
                    raise TarsierError(
                        f"{folder}: no annotation file for {benchmark.name} "
                        f"(looked for {', '.join(benchmark.annotation_files)}); pass the file itself"
                    )
        if not found:
            raise TarsierError(f"{folder}: no known annotation files in this folder; pass the files themselves")
        return found

    return _files(paths, in_folder)


def prediction_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files to read: given files as they are; in a folder, every ``*.jsonl`` directly inside it."""

    def in_folder(folder: Path) -> list[Path]:
        found = sorted(p for p in folder.glob("*.jsonl") if p.is_file())
        if not found:
            raise TarsierError(f"{folder}: no .jsonl files in this folder")
        return found

    return _files(paths, in_folder)


def _files(paths: Sequence[str | Path], in_folder: Callable[[Path], list[Path]]) -> list[Path]:
    """Each path that is a file, or the files ``in_folder`` picks from a folder; anything else is an error."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(in_folder(path))
        elif path.is_file():
            files.append(path)
        else:
            raise TarsierError(f"{path}: file not found")
    return files


def _read(files: Iterable[Path], benchmarks: Sequence[Benchmark] | None, *, predictions: bool) -> Selection:
    among = list(benchmarks) if benchmarks else list(BENCHMARKS)
    selection = Selection(items={b.name: [] for b in among})
    seen: dict[str, int] = {}  # key -> position in its benchmark's list
    for path in files:
        selection.files.append(path)
        for line, record in iter_jsonl(path):
            where = f"{path}:{line}"
            _check_common(record, where)
            benchmark = benchmark_for_dataset(record["dataset"], among)
            if benchmark is None:
                selection.ignored[record["dataset"]] += 1
                continue
            if "messages" in record and "text" not in record:
                record = messages_to_v1(record, where, predictions=predictions)
            _check_text(record, where)
            if predictions:
                _check_prediction(record, benchmark, where)
            else:
                _check_annotation(record, benchmark, where)
            item = Item(benchmark, record, path, line)
            bucket = selection.items[benchmark.name]
            if item.key in seen:
                if not predictions:
                    first = bucket[seen[item.key]]
                    raise TarsierError(f"{where}: duplicate item {item.key} (first at {first.where})")
                # A later line for the same item (a resumed run that retried it) supersedes the earlier one.
                bucket[seen[item.key]] = item
                selection.replaced += 1
                continue
            seen[item.key] = len(bucket)
            bucket.append(item)
    selection.requested = [b.name for b in benchmarks or []]
    selection.items = {name: items for name, items in selection.items.items() if items}
    return selection


def load_annotations(paths: Sequence[str | Path], benchmarks: Sequence[Benchmark] | None = None) -> Selection:
    """Annotation items of ``benchmarks`` (all known ones when None) from files or annotation folders."""
    return _read(annotation_files(paths, benchmarks or []), benchmarks, predictions=False)


def load_predictions(paths: Sequence[str | Path], benchmarks: Sequence[Benchmark] | None = None) -> Selection:
    """Prediction items of ``benchmarks`` (all present when None); a later line for an item wins."""
    return _read(prediction_files(paths), benchmarks, predictions=True)


def require_items(selection: Selection, what: str) -> list[str]:
    """Zero selected items is an error that says what the files did contain; otherwise the
    requested benchmarks that have no items (for a warning)."""
    if selection.total:
        return [name for name in selection.requested if name not in selection.items]
    files = ", ".join(str(f) for f in selection.files) or "(no files)"
    found = ", ".join(f"{name} ({n})" for name, n in selection.ignored.most_common(8))
    wanted = ", ".join(selection.requested) or "any known benchmark"
    hint = f"; the files hold: {found}" if found else "; the files hold no items"
    raise TarsierError(f"{files}: no {what} for {wanted}{hint}")


@dataclass
class Missing:
    """Videos that could not be found for one benchmark."""

    benchmark: str
    total: int
    items: list[tuple[str, str]] = field(default_factory=list)  # (item key, path looked for)


class VideoResolver:
    """Fills ``video_file`` from ``vid`` and a video root, and checks that the files exist.

    Rules, in order: a list of frame files (MVBench) keeps its order, each relative path taken from the
    root; a real path is used as is (relative ones from the root); a placeholder is replaced by
    ``ROOT/VID`` when that exists (a file or a frame folder) or else by the media file in that folder
    whose name without extension is ``VID`` (``ROOT/VID.mp4``, ``.webm``, ...).
    """

    def __init__(self, roots: Mapping[str | None, str | Path]):
        self.roots = {name: Path(root) for name, root in roots.items()}
        self._stems: dict[Path, dict[str, Path]] = {}

    def root_for(self, benchmark: Benchmark) -> Path | None:
        return self.roots.get(benchmark.name, self.roots.get(None))

    def needs_root(self, item: Item) -> bool:
        video = item.record.get("video_file")
        return video is None or (isinstance(video, str) and _is_placeholder(video))

    def _stem_index(self, folder: Path) -> dict[str, Path]:
        if folder not in self._stems:
            index: dict[str, Path] = {}
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                entries = []
            for entry in entries:
                stem, ext = os.path.splitext(entry.name)
                if ext.lower() in MEDIA_EXTENSIONS:
                    index.setdefault(stem, Path(entry.path))
            self._stems[folder] = index
        return self._stems[folder]

    def _under_root(self, path: str, root: Path | None) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() or root is None else root / p

    def resolve(self, item: Item) -> tuple[str | list[str] | None, str]:
        """``(media, looked_for)``: media is None when the video is missing."""
        root = self.root_for(item.benchmark)
        video = item.record.get("video_file")
        if isinstance(video, list):
            frames = [self._under_root(v, root) for v in video]
            if not frames:
                return None, "an empty list of frame files"
            for frame in frames:
                if not frame.is_file():
                    return None, str(frame)
            return [str(f) for f in frames], str(frames[0].parent)
        if isinstance(video, str) and not _is_placeholder(video):
            path = self._under_root(video, root)
            return (str(path) if path.exists() else None), str(path)
        if root is None:
            return None, f"vid {item.record.get('vid')!r} (no video root given)"
        direct = root / str(item.record["vid"])
        if direct.exists():
            return str(direct), str(direct)
        found = self._stem_index(direct.parent).get(direct.name)
        if found is not None:
            return str(found), str(found)
        return None, f"{direct}.*"
