"""The benchmark registry: each benchmark is data (annotation format, prompt, metric), not a script.

An annotation line is ``{"idx", "dataset", "text": {"prompt", "response", ...}, "video_file", "vid",
"extra_info"?}``. The ``dataset`` field says which benchmark an item belongs to (``DREAM/shorts``
belongs to ``DREAM``), so one predictions file can hold several benchmarks and be split again at
evaluation time. The Tarsier2 release's chat layout (``messages``) is read into this shape
(:func:`tarsier.eval.annotations.messages_to_v1`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tarsier.errors import TarsierError

# Metric names, implemented in tarsier.eval.{autodq, cider, multiple_choice, open_qa}.
AUTODQ = "autodq"
CIDER = "cider"
MULTIPLE_CHOICE = "multiple_choice"
OPEN_QA = "open_qa"

# Metrics that need an LLM judge (and therefore --judge-model and an API endpoint).
JUDGED_METRICS = frozenset({AUTODQ, OPEN_QA})

DESCRIBE_VIDEO = "<video>\nDescribe the video in detail."
SHORT_CAPTION = "<video>\nDescribe the video in one short sentence with simple words."


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: which annotation lines are its own, what they hold, and how they are scored."""

    name: str  # what users type: `--benchmarks dream`
    title: str  # what tables show
    dataset: str  # `dataset` field of its lines, or the part before "/" (then the rest is a subset)
    group: str  # dream | caption | mc_qa | oe_qa, selectable as a whole
    metric: str
    annotation_files: tuple[str, ...]  # file names of the reference release, looked up in a folder
    response: str  # what text.response holds: "text", "texts" (caption references) or "letter"
    default_prompt: str | None = None  # used when a line has no text.prompt
    aliases: tuple[str, ...] = ()
    breakdown: str | None = None  # "subset" (per `dataset` suffix) or "duration" (extra_info.duration)
    required: tuple[str, ...] = ()  # further fields every line needs, as dotted paths

    def matches(self, dataset: str) -> bool:
        return dataset == self.dataset or dataset.startswith(self.dataset + "/")

    @property
    def judged(self) -> bool:
        return self.metric in JUDGED_METRICS


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        name="dream",
        title="DREAM-1K",
        dataset="DREAM",
        group="dream",
        metric=AUTODQ,
        annotation_files=("DREAM-1k.jsonl",),
        response="text",
        default_prompt=DESCRIBE_VIDEO,
        aliases=("dream-1k", "dream1k"),
        breakdown="subset",
    ),
    Benchmark(
        name="msvd-caption",
        title="MSVD caption",
        dataset="MSVD-Caption-test",
        group="caption",
        metric=CIDER,
        annotation_files=("MSVD-Caption-test.jsonl",),
        response="texts",
        default_prompt=SHORT_CAPTION,
    ),
    Benchmark(
        name="msr-vtt-caption",
        title="MSR-VTT caption",
        dataset="MSR-VTT-Caption-test",
        group="caption",
        metric=CIDER,
        annotation_files=("MSR-VTT-Caption-test.jsonl",),
        response="texts",
        default_prompt=SHORT_CAPTION,
        aliases=("msrvtt-caption",),
    ),
    Benchmark(
        name="vatex-caption",
        title="VATEX caption",
        dataset="VATEX-test",
        group="caption",
        metric=CIDER,
        annotation_files=("VATEX-test.jsonl",),
        response="texts",
        default_prompt=SHORT_CAPTION,
        aliases=("vatex",),
    ),
    Benchmark(
        name="next-qa",
        title="NeXT-QA (MC)",
        dataset="Next-QA-val-multi_choice",
        group="mc_qa",
        metric=MULTIPLE_CHOICE,
        annotation_files=("Next-QA-val-multi_choice.jsonl",),
        response="letter",
        aliases=("nextqa",),
    ),
    Benchmark(
        name="egoschema",
        title="EgoSchema",
        dataset="EgoSchema",
        group="mc_qa",
        metric=MULTIPLE_CHOICE,
        annotation_files=("EgoSchema_subset.jsonl", "EgoSchema_fullset.jsonl"),
        response="letter",
    ),
    Benchmark(
        name="mvbench",
        title="MVBench",
        dataset="MVBench",
        group="mc_qa",
        metric=MULTIPLE_CHOICE,
        annotation_files=("MVBench.jsonl",),
        response="letter",
        breakdown="subset",
    ),
    Benchmark(
        name="tvbench",
        title="TVBench",
        dataset="TVBench",
        group="mc_qa",
        metric=MULTIPLE_CHOICE,
        annotation_files=("TVBench.jsonl",),
        response="letter",
        breakdown="subset",
    ),
    Benchmark(
        name="video-mme",
        title="Video-MME",
        dataset="Video-MME",
        group="mc_qa",
        metric=MULTIPLE_CHOICE,
        annotation_files=("Video-MME.jsonl",),
        response="letter",
        aliases=("videomme",),
        breakdown="duration",
    ),
    Benchmark(
        name="msvd-qa",
        title="MSVD-QA",
        dataset="MSVD-QA-val",
        group="oe_qa",
        metric=OPEN_QA,
        annotation_files=("MSVD-QA-val.jsonl",),
        response="text",
        required=("text.question",),
    ),
    Benchmark(
        name="msr-vtt-qa",
        title="MSR-VTT-QA",
        dataset="MSR-VTT-QA-val",
        group="oe_qa",
        metric=OPEN_QA,
        annotation_files=("MSR-VTT-QA-val.jsonl",),
        response="text",
        aliases=("msrvtt-qa",),
        required=("text.question",),
    ),
    Benchmark(
        name="tgif-qa",
        title="TGIF-QA",
        dataset="TGIF-QA-test",
        group="oe_qa",
        metric=OPEN_QA,
        annotation_files=("TGIF-QA-test.jsonl",),
        response="text",
        required=("text.question",),
    ),
    Benchmark(
        name="anet-qa",
        title="ActivityNet-QA",
        dataset="ActivityNet-QA-test",
        group="oe_qa",
        metric=OPEN_QA,
        annotation_files=("ActivityNet-QA-test.jsonl",),
        response="text",
        aliases=("activitynet-qa",),
        required=("text.question",),
    ),
)

GROUPS: dict[str, tuple[str, ...]] = {
    group: tuple(b.name for b in BENCHMARKS if b.group == group) for group in ("dream", "caption", "mc_qa", "oe_qa")
}


def _by_name() -> dict[str, Benchmark]:
    names: dict[str, Benchmark] = {}
    for benchmark in BENCHMARKS:
        for name in (benchmark.name, *benchmark.aliases):
            names[name] = benchmark
    return names


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name`` (or one of its aliases); an unknown name lists the known ones."""
    benchmark = _by_name().get(name.strip().lower())
    if benchmark is None:
        raise TarsierError(f"unknown benchmark {name!r}; known: {known_names()}")
    return benchmark


def known_names() -> str:
    return ", ".join([b.name for b in BENCHMARKS] + ["all"] + [g for g in GROUPS if g != "dream"])


def resolve_benchmarks(names: Iterable[str]) -> list[Benchmark]:
    """Benchmarks for names, groups (``caption``, ``mc_qa``, ``oe_qa``) or ``all``, in registry order."""
    chosen: set[str] = set()
    for raw in names:
        for name in raw.split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name == "all":
                chosen.update(b.name for b in BENCHMARKS)
            elif name in GROUPS and name not in _by_name():
                chosen.update(GROUPS[name])
            else:
                chosen.add(get_benchmark(name).name)
    return [b for b in BENCHMARKS if b.name in chosen]


def benchmark_for_dataset(dataset: str, among: Iterable[Benchmark] = BENCHMARKS) -> Benchmark | None:
    """The benchmark whose lines carry this ``dataset`` value, if any."""
    for benchmark in among:
        if benchmark.matches(dataset):
            return benchmark
    return None


def subset_of(dataset: str) -> str:
    """``DREAM/shorts`` -> ``shorts``; a dataset without subsets is its own single subset."""
    return dataset.split("/", 1)[1] if "/" in dataset else dataset
