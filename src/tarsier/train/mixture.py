"""A mixture of JSONL sources with sampling weights, and the order samples are drawn in.

Loading reads every source through its adapter, resolves media paths and drops lines that
cannot be used (not JSON, not an object, bad fields, missing media files), counting them with
their ``file:line``; more than ``data.max_bad_fraction`` of all lines abort the run.

The draw order is a pure function of the seed: position ``p`` of the schedule names one item, the
source chosen with probability proportional to its weight, and items of a source taken in a
shuffled order that is reshuffled each time the source is exhausted. Position, not state, is
what a checkpoint records, so a resumed run (with any number of processes) continues with
exactly the samples an uninterrupted run would have used next.
"""

from __future__ import annotations

import dataclasses
import itertools
import pickle
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import Sampler

from tarsier.errors import TarsierError
from tarsier.jsonl import jsonl_lines
from tarsier.models.auto import DEFAULT_FAMILY
from tarsier.train.adapters import ADAPTERS
from tarsier.train.config import DataSettings, SourceSettings
from tarsier.train.data import TrainingItem, parse_item

ITEM_FIELDS = [spec.name for spec in dataclasses.fields(TrainingItem)]
# Schedule positions generated per random draw; any value gives the same schedule for a seed.
BLOCK = 4096


class PackedItems(Sequence[TrainingItem]):
    """Training items kept pickled in one byte buffer, unpickled on access.

    A stage-1 mixture has millions of lines. As Python objects they cost kilobytes each in every
    process, and forked DataLoader workers slowly copy them all: merely reading an object writes
    its reference count, which un-shares its memory page. One buffer plus an offset array is a
    few hundred bytes per item and is never written after loading.
    """

    def __init__(self, items: Iterable[TrainingItem] = ()):
        self._buffer = bytearray()
        self._ends: list[int] | np.ndarray = []
        for item in items:
            self.append(item)

    def append(self, item: TrainingItem) -> None:
        fields = tuple(getattr(item, name) for name in ITEM_FIELDS)  # values only: no class path or names
        self._buffer += pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)
        self._ends.append(len(self._buffer))

    def freeze(self) -> PackedItems:
        """Done appending: keep the offsets as one array (lists hold an object per number)."""
        self._ends = np.asarray(self._ends, dtype=np.int64)
        return self

    @property
    def nbytes(self) -> int:
        return len(self._buffer) + 8 * len(self._ends)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> TrainingItem:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        start = int(self._ends[index - 1]) if index else 0
        return TrainingItem(*pickle.loads(self._buffer[start : int(self._ends[index])]))


@dataclass
class LoadedSource:
    name: str
    weight: float
    n_frames: int
    size: int  # usable items (stored in the mixture's ``items``)
    lines: int  # non-blank lines read
    bad: list[str] = field(default_factory=list)  # "file:line: reason" for each dropped line
    text_only: bool = False  # has items without media


@dataclass
class Mixture:
    sources: list[LoadedSource]
    items: PackedItems  # every source's items, one source after the other (see ``ranges``)

    @property
    def ranges(self) -> list[tuple[int, int]]:
        bounds = list(itertools.accumulate([s.size for s in self.sources], initial=0))
        return list(zip(bounds[:-1], bounds[1:]))

    @property
    def has_text_only(self) -> bool:
        return any(source.text_only for source in self.sources)

    def summary(self) -> list[str]:
        total = sum(s.weight for s in self.sources)
        return [
            f"{s.name}: {s.size} items ({len(s.bad)} skipped), weight {s.weight:g} -> {100 * s.weight / total:.1f}% of samples"
            for s in self.sources
        ]

    def skipped(self, limit: int = 5) -> list[str]:
        """``file:line: reason`` of the lines dropped at load, the first ``limit`` of each source."""
        lines = []
        for source in self.sources:
            lines += source.bad[:limit]
            if len(source.bad) > limit:
                lines.append(f"... and {len(source.bad) - limit} more lines of {source.name}")
        return lines


def load_source(settings: SourceSettings, default_frames: int, items: PackedItems) -> LoadedSource:
    """Read one source, appending its usable items to ``items``."""
    path = Path(settings.path)
    if not path.is_file():
        raise TarsierError(f"{path}: data file not found")
    media_root = Path(settings.media_root) if settings.media_root else path.parent
    adapter = ADAPTERS[settings.adapter]
    n_frames = settings.n_frames or default_frames
    source = LoadedSource(settings.name or path.stem, settings.weight, n_frames, 0, 0)
    try:
        path.open("rb").close()
    except OSError as exc:
        raise TarsierError(f"{path}: cannot read the data file ({exc.strerror or exc})") from None
    for number, record, problem in jsonl_lines(path):  # a bad line counts against the cap, reading goes on
        where = f"{path}:{number}"
        source.lines += 1
        if problem is not None:
            source.bad.append(f"{where}: {problem}")
            continue
        try:
            item = parse_item(adapter(record, where, n_frames), where, media_root)
        except TarsierError as exc:
            source.bad.append(f"{where}: {exc}")
            continue
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:  # a field of the wrong kind
            source.bad.append(f"{where}: unusable for the {settings.adapter} adapter ({type(exc).__name__}: {exc})")
            continue
        missing = item.missing_media()
        if missing is not None:
            source.bad.append(f"{where}: media {missing} not found")
            continue
        items.append(item)
        source.size += 1
        source.text_only |= item.media is None
    if not source.size:
        first = f"; first problem: {source.bad[0]}" if source.bad else ""
        raise TarsierError(f"{path}: no usable lines ({source.lines} read){first}")
    return source


def load_mixture(settings: DataSettings, model_frames: int = DEFAULT_FAMILY.default_n_frames) -> Mixture:
    """All sources, with unusable lines counted; more than ``max_bad_fraction`` of them aborts.

    ``model_frames`` is the start model's frame count, used where neither an item, its source nor
    ``data.n_frames`` sets one."""
    items = PackedItems()
    default_frames = settings.n_frames or model_frames
    mixture = Mixture([load_source(source, default_frames, items) for source in settings.sources], items.freeze())
    lines = sum(s.lines for s in mixture.sources)
    bad = [problem for s in mixture.sources for problem in s.bad]
    if len(bad) > settings.max_bad_fraction * lines:
        raise TarsierError(
            f"{len(bad)} of {lines} data lines are unusable ({100 * len(bad) / lines:.1f}%), more than "
            f"data.max_bad_fraction={settings.max_bad_fraction:g}; first: {bad[0]}"
        )
    return mixture


class MixtureSchedule:
    """The infinite, seeded sequence of item ids the run draws (see the module docstring)."""

    def __init__(self, sizes: list[int], weights: list[float], seed: int):
        self.sizes = sizes
        self.offsets = list(itertools.accumulate(sizes, initial=0))[:-1]
        self.probabilities = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.seed = seed

    def _sources(self, block: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 0, block])
        return rng.choice(len(self.sizes), size=BLOCK, p=self.probabilities)

    def _order(self, source: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 1, source, epoch]).permutation(self.sizes[source])

    def ids(self, start: int = 0) -> Iterator[int]:
        """Item ids from schedule position ``start`` on."""
        drawn = np.zeros(len(self.sizes), dtype=np.int64)  # how often each source was drawn so far
        orders: dict[int, tuple[int, np.ndarray]] = {}
        for block in itertools.count():
            sources = self._sources(block)
            if (block + 1) * BLOCK <= start:  # only the counts of skipped blocks matter
                drawn += np.bincount(sources, minlength=len(self.sizes))
                continue
            for position, source in enumerate(sources.tolist(), start=block * BLOCK):
                epoch, within = divmod(int(drawn[source]), self.sizes[source])
                drawn[source] += 1
                if position < start:
                    continue
                if orders.get(source, (None,))[0] != epoch:
                    orders[source] = (epoch, self._order(source, epoch))
                yield self.offsets[source] + int(orders[source][1][within])


class RankBatchSampler(Sampler[list[int]]):
    """Micro-batches of one process: micro-step ``k`` of the run takes schedule positions
    ``[k * world * micro, (k + 1) * world * micro)`` and process ``rank`` its ``micro``-long slice."""

    def __init__(self, schedule: MixtureSchedule, micro_batch: int, rank: int, world: int, first_microstep: int, microsteps: int):
        self.schedule = schedule
        self.micro_batch, self.rank, self.world = micro_batch, rank, world
        self.first_microstep, self.microsteps = first_microstep, microsteps

    def __len__(self) -> int:
        return self.microsteps

    def __iter__(self) -> Iterator[list[int]]:
        group = self.world * self.micro_batch
        ids = self.schedule.ids(self.first_microstep * group)
        for _ in range(self.microsteps):
            chunk = list(itertools.islice(ids, group))
            yield chunk[self.rank * self.micro_batch : (self.rank + 1) * self.micro_batch]
