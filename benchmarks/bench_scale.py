"""``--engine ray`` against the in-process engine: throughput, overhead, start-up, and driver memory.

1. Throughput. The same N synthetic clips (each with one of four prompts, so batches pad) through
   the in-process :class:`~tarsier.engine.describer.Describer` (batch B, ``--decode-workers`` decode
   threads, torch's default threads) and through :class:`~tarsier.scale.ray_describer.RayDescriber`
   with each replica count in ``--replicas`` (``--cpus-per-replica`` CPUs and torch threads each,
   ``--decode-workers`` decode tasks). The configurations run in turn, once per round, the order
   rotating from round to round, so drifts in machine speed hit all of them alike. Printed per
   configuration: items/s of the median run, wall seconds best / median, the ratio to in process,
   the Ray overhead per item ((Ray median - in-process median) / N), the time to the first result
   and the steady rate after it (items after the first burst of results / time from the first
   result to the last), the driver's peak RSS (VmHWM, reset before each run: above the RSS at the
   start of the run, and absolute), and the peak of the summed RSS of Ray's processes (sampled
   twice a second from a thread; shared pages count once per process). The in-process model is
   loaded once, before the rounds (its load time is printed apart); every Ray run starts its
   replicas afresh and loads the model in each, as ``tarsier caption --engine ray`` does, so that is
   part of its wall time. By default ONE local Ray instance serves all Ray runs (started before the
   rounds; its ``ray.init`` time is printed apart, and a cold first Ray run warms it up); with
   ``--fresh-ray`` every Ray run starts and stops its own instance, exactly as the command does.
2. Correctness. Decoding is greedy: every run must give each clip the text, error and frame indices
   of the first in-process run, each key exactly once; any difference is a FAIL (exit status 1).
3. Driver memory. A ``--manifest-lines`` line JSONL manifest (a few tiny 56 px clips repeated, each
   line a different prompt, so every key differs) read with the CLI's manifest reader and pushed
   through the decode stage alone (``ray.data.from_items`` + the engine's ``_Decoder`` map, set up as
   ``RayDescriber.run`` sets it up, rows consumed with ``iter_rows`` and their pixels dropped), with
   the ``tiny-fast`` checkpoint's 56 px processor and ``--manifest-frames`` frames (default 1) so
   that 10,000 items decode in a minute or two on 2 CPUs. The driver's VmRSS is sampled before the
   manifest is read, once the rows are built, and at 10%, 50% and 100% of the rows; the same for a
   manifest of a tenth the lines. Printed for VmRSS and its parts RssAnon (the driver's own heap)
   and RssShmem (pages of Ray's shared object store the driver has read, which Ray reuses: bounded
   by the object store's size, and in the real engine the driver reads only texts, not pixels):
   growth per 1,000 items from 10% and from 50% to 100% -- RssAnon's must stay under
   ``--rss-growth-mb`` per 1,000, else FAIL -- and what the manifest's rows cost per 1,000 lines.
4. Decode workers (on a GPU with ``--device cuda``, or anywhere with ``--decode-sweep``): one replica
   with 1, 2 and 4 decode workers; items/s and GPU utilisation sampled with ``nvidia-smi
   --query-gpu=utilization.gpu --format=csv`` (mean / median / p90 over the run). Without a GPU
   (or without nvidia-smi) it says so and carries on.

    python benchmarks/bench_scale.py                         # tiny model, 32 clips, replicas 1 and 2, 2 rounds
    python benchmarks/bench_scale.py --quick                 # a smoke run (~2 minutes on 2 CPUs)
    python benchmarks/bench_scale.py --preset small --clips 16 --new-tokens 16
    python benchmarks/bench_scale.py --fresh-ray             # every Ray run starts its own Ray, as the CLI does
    python benchmarks/bench_scale.py --skip-throughput       # driver memory only
    python benchmarks/bench_scale.py --device cuda --preset small --replicas 1 --gpus-per-replica 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PROMPTS = [
    "Describe the video in detail.",
    "What happens in this video?",
    "Describe the video.",
    "What is moving in the video, and where does it go?",
]
FAILURES: list[str] = []


def fail(message: str) -> None:
    FAILURES.append(message)
    print(f"FAIL: {message}", flush=True)


def say(message: str) -> None:
    print(message, flush=True)


# -- memory ----------------------------------------------------------------------------------------
def _status_bytes(field_name: str, pid: str = "self") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss() -> int:
    return _status_bytes("VmRSS")


def rss_parts() -> tuple[int, int, int]:
    """(VmRSS, RssAnon, RssShmem): all resident pages, the private heap, and mapped shared memory (Ray's object store)."""
    return _status_bytes("VmRSS"), _status_bytes("RssAnon"), _status_bytes("RssShmem")


def peak_rss_reset() -> int:
    """Reset this process's peak-RSS mark (Linux) and return the current RSS in bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return rss()


def mib(value: float) -> str:
    return f"{value / 2**20:.0f}"


class Sampler:
    """Calls ``probe`` every ``interval`` seconds in a thread; keeps the values that are not None."""

    def __init__(self, probe: Callable[[], float | None], interval: float):
        self.probe, self.interval = probe, interval
        self.values: list[float] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                value = self.probe()
            except Exception as exc:  # a probe that cannot work here says why once, and stops
                self.error = " ".join(str(exc).split()) or type(exc).__name__
                return
            if value is not None:
                self.values.append(value)
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def children_rss() -> float:
    """Summed RSS of this process's descendants (Ray's raylet, GCS and workers when Ray runs here)."""
    import psutil

    total = 0
    for child in psutil.Process().children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return float(total)


def gpu_utilisation() -> float | None:
    """The busiest GPU's utilisation in percent, from nvidia-smi."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise RuntimeError("nvidia-smi not found") from None
    if done.returncode != 0:
        raise RuntimeError(f"nvidia-smi failed: {done.stderr.strip() or done.stdout.strip()}")
    values = [float(line) for line in done.stdout.split() if line.strip().replace(".", "", 1).isdigit()]
    return max(values) if values else None


# -- inputs ----------------------------------------------------------------------------------------
def make_clips(folder: Path, count: int, size: tuple[int, int] = (144, 192), seconds: float = 2, fps: int = 12) -> list[Path]:
    """``count`` different small clips (coloured blocks drifting)."""
    from tarsier.media import write_video

    folder.mkdir(parents=True, exist_ok=True)
    height, width = size
    paths = []
    for index in range(count):
        rng = np.random.default_rng(index)
        blocks = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        base = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))
        dx, dy = rng.integers(1, 5, 2)
        frames = [np.roll(base, (int(dy * i), int(dx * i)), axis=(0, 1)) for i in range(int(seconds * fps))]
        path = folder / f"clip{index:03d}.mp4"
        write_video(path, frames, fps=fps)
        paths.append(path)
    return paths


def write_manifest(path: Path, clips: list[Path], lines: int) -> Path:
    """A JSONL manifest of ``lines`` items: the clips over and over, each line with its own prompt."""
    with open(path, "w") as out:
        for index in range(lines):
            prompt = f"{PROMPTS[index % len(PROMPTS)]} (line {index})"
            out.write(json.dumps({"path": str(clips[index % len(clips)]), "prompt": prompt, "id": index}) + "\n")
    return path


# -- runs ------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One pass over the requests."""

    wall: float
    first: float  # seconds to the first result
    first_burst: int  # results that came with the first one (within 50 ms of it)
    bursts: int  # groups of results more than 50 ms apart
    last: float  # seconds to the last result
    driver_peak: int  # bytes above the driver's RSS at the start
    driver_hwm: int  # the driver's absolute VmHWM
    children_peak: float  # summed RSS of Ray's processes, sampled
    results: dict[str, tuple[Any, ...]]
    errors: list[str] = field(default_factory=list)

    @property
    def steady(self) -> float:
        """Items/s after the first burst: the later results over the time from the first result to the last."""
        span = self.last - self.first
        rest = len(self.results) - self.first_burst
        return rest / span if span > 0 and rest > 0 else float("nan")


def timed_run(describer: Any, requests: list[Any]) -> Run:
    """All ``requests`` through ``describer.run``, timing each result as it arrives."""
    start_rss = peak_rss_reset()
    arrivals: list[float] = []
    results: dict[str, tuple[Any, ...]] = {}
    repeated: list[str] = []
    with Sampler(children_rss, 0.5) as ray_memory:
        began = time.perf_counter()
        for result in describer.run(requests):
            arrivals.append(time.perf_counter() - began)
            if result.key in results:
                repeated.append(result.key)
            results[result.key] = (result.text, result.error, list(result.frame_indices))
        wall = time.perf_counter() - began
    hwm = _status_bytes("VmHWM")
    first = arrivals[0] if arrivals else float("nan")
    burst = sum(1 for t in arrivals if t - first <= 0.05) if arrivals else 0
    bursts = sum(1 for a, b in zip([-1.0, *arrivals], arrivals) if b - a > 0.05)
    errors = [f"key {key} came back {repeated.count(key) + 1} times" for key in sorted(set(repeated))]
    return Run(wall, first, burst, bursts, arrivals[-1] if arrivals else float("nan"), max(hwm - start_rss, 0), hwm,
               max(ray_memory.values, default=0.0), results, errors)


@dataclass
class Config:
    name: str
    make: Callable[[], Any]  # the describer
    replicas: int = 0  # 0: in process
    runs: list[Run] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(run.wall for run in self.runs)

    @property
    def best(self) -> float:
        return min(run.wall for run in self.runs)


def check(label: str, run: Run, requests: list[Any], reference: dict[str, tuple[Any, ...]]) -> None:
    """Each key once, no errors, and (greedy) the reference's text, error and frame indices."""
    for message in run.errors:
        fail(f"{label}: {message}")
    wanted = {request.key for request in requests}
    missing, extra = wanted - run.results.keys(), run.results.keys() - wanted
    if missing or extra:
        fail(f"{label}: {len(missing)} key(s) missing, {len(extra)} unexpected")
    differ = 0
    for key in sorted(wanted & run.results.keys()):
        got, want = run.results[key], reference[key]
        if got[1]:
            fail(f"{label}, {key}: error {got[1]!r}")
        elif got != want:
            differ += 1
            if differ <= 3:
                fail(f"{label}, {key}: differs from the in-process run (text {str(got[0])[:60]!r} vs {str(want[0])[:60]!r}, "
                     f"frames {got[2]} vs {want[2]})")
    if differ > 3:
        fail(f"{label}: {differ} items differ in all")


def report(title: str, rows: list[tuple[str, ...]]) -> None:
    print(f"\n{title}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    sys.stdout.flush()


def ray_init(ray: Any, num_cpus: int) -> float:
    """A local Ray instance set up as ``RayDescriber`` sets up its own; returns the seconds it took."""
    began = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}})
    return time.perf_counter() - began


# -- 1 and 2: throughput and correctness -----------------------------------------------------------
def throughput(args: argparse.Namespace, folder: Path, requests: list[Any], device: str, ray: Any) -> None:
    import torch

    from tarsier.engine.describer import Describer
    from tarsier.engine.settings import GenerationSettings
    from tarsier.scale.ray_describer import RayDescriber, RaySettings

    generation = GenerationSettings(max_new_tokens=args.new_tokens)
    began = time.perf_counter()
    local = Describer.from_pretrained(str(folder), device=device, dtype=args.dtype, max_n_frames=args.max_frames,
                                      batch_size=args.batch_size, num_workers=args.decode_workers,
                                      generation=generation, progress=False)
    load_seconds = time.perf_counter() - began
    say(f"in process: model loaded in {load_seconds:.2f} s (once, before the rounds); torch threads "
        f"{torch.get_num_threads()}, {args.decode_workers} decode threads")

    def ray_describer(replicas: int) -> Callable[[], Any]:
        gpus = gpus_per_replica(args, device, replicas)
        settings = RaySettings(replicas=replicas, gpus_per_replica=gpus, cpus_per_replica=args.cpus_per_replica,
                               decode_workers=args.decode_workers)
        return lambda: RayDescriber(str(folder), device=device, dtype=args.dtype, max_n_frames=args.max_frames,
                                    batch_size=args.batch_size, generation=generation, settings=settings, progress=False)

    configs = [Config("in process", lambda: local)]
    configs += [Config(f"ray, {r} replica{'s' if r > 1 else ''}", ray_describer(r), r) for r in args.replicas]

    # Warm-up: the first calls of a shape are slow in process (oneDNN, allocator); the first Ray run on a
    # fresh instance starts Ray's worker pool. Both are start-up costs, printed apart from the rounds.
    warm = requests[: 2 * args.batch_size]
    began = time.perf_counter()
    for _ in local.run(warm):
        pass
    say(f"in process: warm-up on {len(warm)} items {time.perf_counter() - began:.2f} s")
    cold: Run | None = None
    if args.quick and not args.fresh_ray:
        say("--quick: no cold first Ray run (the first Ray run of the rounds pays for warming the fresh instance)")
    elif not args.fresh_ray:
        cold = timed_run(configs[1].make(), warm)
        say(f"{configs[1].name}: first run on the fresh Ray instance ({len(warm)} items): first result after "
            f"{cold.first:.2f} s, all after {cold.wall:.2f} s")

    reference: dict[str, tuple[Any, ...]] | None = None
    for round_number in range(args.rounds):
        shift = round_number % len(configs)
        for config in configs[shift:] + configs[:shift]:
            if reference is None and config.replicas:  # round 1 runs in process first, so this never happens
                raise AssertionError("the reference run must come first")
            run = timed_run(config.make(), requests)
            config.runs.append(run)
            label = f"round {round_number + 1}, {config.name}"
            say(f"{label}: {run.wall:.2f} s, first result after {run.first:.2f} s ({run.first_burst} items; "
                f"{run.bursts} burst{'s' if run.bursts > 1 else ''} of results in all), "
                f"driver peak +{mib(run.driver_peak)} MiB")
            if reference is None:
                reference = run.results
            check(label, run, requests, reference)
    if cold is not None and reference is not None:
        check("first Ray run (warm-up)", cold, warm, reference)

    base = configs[0]
    n = len(requests)
    rows = [("", "items/s", "wall s best / median", "vs in process", "Ray overhead s/item", "first result s",
             "steady items/s", "driver peak MiB (+start / abs)", "Ray processes MiB")]
    for config in configs:
        first = statistics.median(run.first for run in config.runs)
        steady = median_steady(config.runs)
        peak = max(run.driver_peak for run in config.runs)
        hwm = max(run.driver_hwm for run in config.runs)
        children = max(run.children_peak for run in config.runs)
        rows.append((
            config.name, f"{n / config.median:.2f}", f"{config.best:.2f} / {config.median:.2f}",
            "-" if config is base else f"{base.median / config.median:.2f}x",
            "-" if config is base else f"{(config.median - base.median) / n:+.3f}",
            f"{first:.2f}", "-" if steady != steady else f"{steady:.2f}", f"+{mib(peak)} / {mib(hwm)}",
            mib(children) if children and config is not base else "-",
        ))
    instance = ("its own Ray instance per run (started and stopped inside the run, as the CLI does)" if args.fresh_ray
                else "one Ray instance for all Ray runs (ray.init" + ("" if args.quick else " and its cold first run")
                + " printed above)")
    report(f"throughput: {n} clips x {args.max_frames} frames, {args.new_tokens} new tokens, batch {args.batch_size}, "
           f"{args.decode_workers} decode workers, {args.cpus_per_replica:g} CPU(s) per replica, preset {args.preset}, "
           f"{args.rounds} round(s), medians; Ray runs use {instance}", rows)
    say("Ray wall time includes starting the replicas and loading the model in each (every run); the in-process "
        f"model load ({load_seconds:.2f} s) is not in its wall time. steady items/s: after the first burst of results "
        "(rough when the results came in few bursts; '-' when all came at once).")
    base_first = statistics.median(run.first for run in base.runs)
    base_steady = median_steady(base.runs)
    for config in configs[1:]:
        first = statistics.median(run.first for run in config.runs)
        steady = median_steady(config.runs)
        after = (f"after it {steady:.2f} items/s vs {base_steady:.2f} in process, "
                 f"{1 / steady - 1 / base_steady:+.3f} s per item"
                 if steady == steady and base_steady == base_steady else "all its results came at once, so no steady rate")
        say(f"{config.name}: start-up ~{first - base_first:.1f} s per run (first result after {first:.2f} s vs "
            f"{base_first:.2f} s in process: starting the decode actors and the replicas, imports, model load); {after}")
    identical = "identical" if not FAILURES else "NOT identical (see FAIL lines)"
    say(f"greedy texts, errors and frame indices, Ray vs in process: {identical}")


def median_steady(runs: list[Run]) -> float:
    """The median steady rate of the runs that had one (NaN when none did)."""
    rates = [run.steady for run in runs if run.steady == run.steady]
    return statistics.median(rates) if rates else float("nan")


def gpus_per_replica(args: argparse.Namespace, device: str, replicas: int) -> float:
    if args.gpus_per_replica is not None:
        return args.gpus_per_replica
    if not device.startswith("cuda"):
        return 0.0
    import torch

    return min(1.0, torch.cuda.device_count() / replicas)


# -- 3: driver memory through the decode stage -----------------------------------------------------
def decode_stage(ray: Any, folder: Path, manifest: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The manifest's items through the Ray engine's decode stage alone; the driver's memory along the way."""
    from tarsier.cli.inputs import read_input_list
    from tarsier.engine.describer import DescribeRequest
    from tarsier.scale.ray_describer import _Decoder, _request_row

    peak_rss_reset()
    marks: dict[str, tuple[int, int, int]] = {"start": rss_parts()}
    began = time.perf_counter()
    items = read_input_list(manifest)
    requests = [DescribeRequest(item.key(args.manifest_frames), item.path, item.prompt, item.start_time, item.end_time)
                for item in items]
    rows = [_request_row(request) for request in requests]
    n = len(rows)
    if len({row["key"] for row in rows}) != n:
        fail(f"{manifest.name}: the manifest's keys are not all different")
    marks["rows built"] = rss_parts()  # with the items and requests the CLI also holds
    del items, requests
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    workers = args.decode_workers
    # as RayDescriber.run builds its first two stages
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(n, 4 * workers)))
    dataset = dataset.map(_Decoder, fn_constructor_args=(str(folder), args.manifest_frames), concurrency=workers, num_cpus=1)
    checkpoints = {max(1, n // 10): "10%", max(1, n // 2): "50%", n: "100%"}
    count = errors = pixel_bytes = 0
    first = None
    for row in dataset.iter_rows():
        count += 1
        if first is None:
            first = time.perf_counter() - began
        errors += bool(row["prepare_error"])
        pixel_bytes += len(row["pixels"])
        del row  # the pixels are dropped at once
        if count in checkpoints:
            marks[checkpoints[count]] = rss_parts()
    seconds = time.perf_counter() - began
    peak = _status_bytes("VmHWM")
    if count != n:
        fail(f"{manifest.name}: {count} rows came back for {n}")
    if errors:
        fail(f"{manifest.name}: {errors} items failed to decode")
    del rows, dataset
    return {"lines": n, "marks": marks, "peak": peak, "seconds": seconds, "first": first or float("nan"),
            "pixels": pixel_bytes}


def driver_memory(ray: Any, scratch: Path, args: argparse.Namespace) -> None:
    from tarsier.testing import build_random_checkpoint

    folder = build_random_checkpoint(scratch / "model-56px", "tiny-fast")  # the processor is all the decode stage needs
    clips = make_clips(scratch / "tiny-clips", 8, size=(56, 56), seconds=1, fps=8)
    big = args.manifest_lines
    small = max(10, big // 10)
    say(f"\ndriver memory: decode stage alone, {small} then {big} manifest lines ({len(clips)} clips of 56x56 px, "
        f"1 s; {args.manifest_frames} frame(s) each, the tiny-fast 56 px processor; {args.decode_workers} decode workers)")
    results = []
    for lines in (small, big):
        manifest = write_manifest(scratch / f"manifest-{lines}.jsonl", clips, lines)
        result = decode_stage(ray, folder, manifest, args)
        results.append(result)
        say(f"{lines} lines: {result['seconds']:.1f} s ({lines / result['seconds']:.0f} items/s, first row after "
            f"{result['first']:.1f} s), {result['pixels'] / 2**20:.0f} MiB of pixels through the driver, "
            f"driver VmHWM {mib(result['peak'])} MiB")
    rows = [("lines", "memory", "start", "rows built", "at 10%", "at 50%", "at 100%", "rows cost /1k lines",
             "growth /1k items 10%->100%", "50%->100%")]
    growth: dict[tuple[int, int], float] = {}
    for result in results:
        marks, lines = result["marks"], result["lines"]
        span = lines - max(1, lines // 10)
        for part, name in enumerate(("VmRSS", "RssAnon", "RssShmem")):
            grown = (marks["100%"][part] - marks["10%"][part]) / (span / 1000) if span > 0 else 0.0
            half = lines - max(1, lines // 2)
            late = (marks["100%"][part] - marks["50%"][part]) / (half / 1000) if half > 0 else 0.0
            growth[(lines, part)] = grown
            rows_cost = (marks["rows built"][part] - marks["start"][part]) / (lines / 1000)
            rows.append((str(lines), name, *(mib(marks[k][part]) for k in ("start", "rows built", "10%", "50%", "100%")),
                         f"{rows_cost / 2**20:.2f}", f"{grown / 2**20:+.2f}", f"{late / 2**20:+.2f}"))
    report("driver memory (MiB) while the decode stage streams the manifest's rows; VmRSS = RssAnon (the driver's "
           "own heap) + RssFile + RssShmem (pages of Ray's shared object store it has read)", rows)
    private = growth[(big, 1)] / 2**20
    verdict = "flat" if private <= args.rss_growth_mb else "GROWING"
    say(f"driver growth over the {big}-line run, per 1,000 items: private (RssAnon) {private:+.2f} MiB ({verdict}; "
        f"limit {args.rss_growth_mb:g} MiB), VmRSS {growth[(big, 0)] / 2**20:+.2f} MiB, of which object-store pages "
        f"(RssShmem) {growth[(big, 2)] / 2**20:+.2f} MiB")
    if verdict != "flat":
        fail(f"the driver's private memory grew {private:.2f} MiB per 1,000 items while streaming {big} rows")


# -- 4: decode workers vs GPU utilisation ----------------------------------------------------------
def decode_sweep(args: argparse.Namespace, folder: Path, requests: list[Any], device: str, workers: list[int]) -> None:
    from tarsier.engine.settings import GenerationSettings
    from tarsier.scale.ray_describer import RayDescriber, RaySettings

    generation = GenerationSettings(max_new_tokens=args.new_tokens)
    on_gpu = device.startswith("cuda")
    rows = [("decode workers", "items/s", "wall s", "first result s", "GPU util % mean / median / p90", "samples")]
    note = None
    for count in workers:
        settings = RaySettings(replicas=1, gpus_per_replica=gpus_per_replica(args, device, 1),
                               cpus_per_replica=args.cpus_per_replica, decode_workers=count)
        describer = RayDescriber(str(folder), device=device, dtype=args.dtype, max_n_frames=args.max_frames,
                                 batch_size=args.batch_size, generation=generation, settings=settings, progress=False)
        with Sampler(gpu_utilisation if on_gpu else (lambda: None), 0.25) as gpu:
            run = timed_run(describer, requests)
        check(f"decode workers {count}", run, requests, run.results)  # each key once, no errors
        note = note or gpu.error
        values = gpu.values
        util = (f"{statistics.mean(values):.0f} / {statistics.median(values):.0f} / {np.percentile(values, 90):.0f}"
                if values else "n/a")
        rows.append((str(count), f"{len(requests) / run.wall:.2f}", f"{run.wall:.2f}", f"{run.first:.2f}", util,
                     str(len(values))))
        say(f"decode workers {count}: {run.wall:.2f} s")
    report(f"decode workers vs {'GPU utilisation' if on_gpu else 'throughput (no GPU: utilisation n/a)'}: "
           f"1 replica, {len(requests)} clips", rows)
    if note:
        say(f"GPU utilisation not sampled: {note}")


# -- main ------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="8 clips, 4 frames, 8 tokens, 1 round, 1,000 manifest lines, no cold Ray run")
    parser.add_argument("--preset", default=None, help="random checkpoint preset: tiny, tiny-fast, small (default: tiny)")
    parser.add_argument("--clips", type=int, default=None, help="clips per run (default: 32, --quick: 8)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size of every engine (default: 4, --quick: 2)")
    parser.add_argument("--max-frames", type=int, default=None, help="frames per clip (default: 8, --quick: 4)")
    parser.add_argument("--new-tokens", type=int, default=None, help="max new tokens (greedy; default: 32, --quick: 8)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default: 2, --quick: 1)")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="Ray replica counts to run (default: 1 2)")
    parser.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs (and torch threads) per replica (default: 1)")
    parser.add_argument("--gpus-per-replica", type=float, default=None,
                        help="GPUs per replica (default: 0 on CPU; on CUDA, the GPUs shared out over the replicas, at most 1)")
    parser.add_argument("--decode-workers", type=int, default=2,
                        help="decode threads in process, decode tasks in Ray (default: 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp32 on CPU, bf16 on GPU)")
    parser.add_argument("--fresh-ray", action="store_true", help="every Ray run starts and stops its own Ray (as the CLI)")
    parser.add_argument("--manifest-lines", type=int, default=None,
                        help="lines of the big manifest (default: 10000, --quick: 1000)")
    parser.add_argument("--manifest-frames", type=int, default=1, help="frames per item in the decode-stage run (default: 1)")
    parser.add_argument("--rss-growth-mb", type=float, default=2.0,
                        help="driver RSS growth allowed per 1,000 streamed items, else FAIL (default: 2)")
    parser.add_argument("--decode-sweep", action="store_true", help="also sweep decode workers 1/2/4 without a GPU")
    parser.add_argument("--sweep-workers", type=int, nargs="+", default=[1, 2, 4],
                        help="decode workers to sweep (default: 1 2 4)")
    parser.add_argument("--skip-throughput", action="store_true", help="skip parts 1 and 2")
    parser.add_argument("--skip-memory", action="store_true", help="skip part 3 (driver memory)")
    args = parser.parse_args()
    quick = args.quick
    args.preset = args.preset or "tiny"
    args.clips = args.clips or (8 if quick else 32)
    args.batch_size = args.batch_size or (2 if quick else 4)
    args.max_frames = args.max_frames or (4 if quick else 8)
    args.new_tokens = args.new_tokens or (8 if quick else 32)
    args.rounds = args.rounds or (1 if quick else 2)
    args.manifest_lines = args.manifest_lines or (1000 if quick else 10000)
    if min(args.clips, args.batch_size, args.max_frames, args.new_tokens, args.rounds, args.decode_workers,
           args.manifest_frames, *args.replicas, *args.sweep_workers) < 1 or args.manifest_lines < 100:
        parser.error("counts must be at least 1 (--manifest-lines at least 100)")

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)  # Ray is shut down in `finally` either way
    signal.signal(signal.SIGINT, signal.default_int_handler)

    import torch

    from tarsier.cli.inputs import MediaInput
    from tarsier.engine.describer import DescribeRequest
    from tarsier.scale.ray_describer import require_ray
    from tarsier.testing import build_random_checkpoint

    device = args.device
    sweep = args.decode_sweep
    if device.startswith("cuda"):
        if torch.cuda.is_available():
            sweep = True
        else:
            say("note: --device cuda but CUDA is not available here: running on the CPU, GPU utilisation not sampled")
            device = "cpu"
    ray = require_ray()
    torch.manual_seed(0)
    say(f"bench_scale: device={device} preset={args.preset} clips={args.clips} batch={args.batch_size} "
        f"frames={args.max_frames} new_tokens={args.new_tokens} rounds={args.rounds} replicas={args.replicas} "
        f"decode_workers={args.decode_workers} cpus={os.cpu_count()} torch={torch.__version__} ray={ray.__version__}")
    scratch = Path(tempfile.mkdtemp(prefix="tarsier-bench-scale-"))
    try:
        folder = build_random_checkpoint(scratch / "model", args.preset)
        clips = make_clips(scratch / "clips", args.clips)
        requests = []
        for index, clip in enumerate(clips):
            item = MediaInput(str(clip), PROMPTS[index % len(PROMPTS)])
            requests.append(DescribeRequest(item.key(args.max_frames), item.path, item.prompt))
        needed = max([r * args.cpus_per_replica + args.decode_workers for r in args.replicas]
                     + [args.cpus_per_replica + w for w in (args.sweep_workers if sweep else [])])
        num_cpus = max(os.cpu_count() or 1, int(needed + 0.999))
        if (not args.skip_throughput and not args.fresh_ray) or not args.skip_memory or sweep:
            seconds = ray_init(ray, num_cpus)
            say(f"ray.init (local, num_cpus={num_cpus}): {seconds:.2f} s")
        if not args.skip_throughput:
            if args.fresh_ray:
                ray.shutdown()
            throughput(args, folder, requests, device, ray)
            if args.fresh_ray and (not args.skip_memory or sweep):
                ray_init(ray, num_cpus)
        if not args.skip_memory:
            driver_memory(ray, scratch, args)
        if sweep:
            decode_sweep(args, folder, requests, device, args.sweep_workers)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    if FAILURES:
        say(f"\n{len(FAILURES)} failure(s)")
        return 1
    say("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
