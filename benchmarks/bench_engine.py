"""Engine v2: continuous batching and the prefix cache, each against a baseline from the same run.

1. QA workload (``qa``): 8 videos x 8 questions, 16 new tokens, greedy, batch 8, through the
   Describer that ``bench run`` uses (questions grouped per video, as ``bench run`` orders them),
   with the prefix cache on (a video's prefix held once for the rows asking about it), on with
   each row holding a copy of it, and off, alternating; the batch's own KV cache at its largest.
   Predictions must be identical (else FAIL).
2. Staggered serving (``serving``): ``tarsier serve`` on the same model, 8 clients arriving 1 s apart,
   each asking about its own video for 64 tokens, streamed. Time to first token (p50 / p95), how
   many requests got their first token while an earlier request was still decoding, and the
   longest pause in a stream (what streaming rows pay for the prefills run between their steps).
   Run for this checkout, once per ``--prefill-chunks`` value (the server's ``--prefill-chunk``:
   2048 and 0, whole prompts, by default), and, with ``--baseline-src``, for another checkout's
   code (before engine v2: a batch ran to its end while later requests waited). The p50 is printed next to the bound
   of any first-come order: one request's prefill alone is P, so with P > gap, request i (0-based)
   cannot have its first token before P + i (P - gap).
3. Follow-up (``follow-up``): the same video asked twice through the API, one after the other;
   the second request's time to first token against the first's.
4. Joins (``joins``): what a request joining a running batch costs beyond its prefill and a decode
   step, joining a spare row or laying the cache out anew.
5. No regression (``throughput``): 8 different videos at batch 8, 32 and 512 new tokens (EOS
   ignored), this checkout against ``--baseline-src``, alternating, each run in a process of its
   own: through the Describer (``caption``, ``bench run``) and through the Python API's
   ``generate_ids`` (the baseline's static loop): videos/s, tokens/s and peak memory. Separate
   processes differ by a few percent from run to run here, so also (``in-process``): this engine
   and the baseline's static decode loop (its file, loaded by path) on one loaded model in one
   process, alternating, with prefill and decode timed apart.

``--dtype`` applies to both sides everywhere (default: the device's, fp32 on CPU). CPUs with AMX
(``grep amx /proc/cpuinfo``) run bf16 prefills about 3x faster than fp32.

    git worktree add ../tarsier-before 51a79b4                # the code before engine v2
    python benchmarks/bench_engine.py --baseline-src ../tarsier-before/src
    python benchmarks/bench_engine.py --quick                 # tiny model, fewer items: a smoke run
    python benchmarks/bench_engine.py --sections qa follow-up
    python benchmarks/bench_engine.py --dtype bf16 --sections serving --baseline-src ../tarsier-before/src
    python benchmarks/bench_engine.py --device cuda --rounds 2 --baseline-src ../tarsier-before/src   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from bench_serve import Server, sse_events

from tarsier.engine.describer import Describer, DescribeRequest, grouped_by_media
from tarsier.engine.loading import load_pretrained
from tarsier.engine.settings import GenerationSettings
from tarsier.media import write_video
from tarsier.testing import build_random_checkpoint

QUESTIONS = [
    "What happens in the video?", "What colours do you see?", "Is the camera moving?", "How many objects are there?",
    "Describe the background.", "What moves fastest?", "What changes between the first and last frame?",
    "Summarise the video in one sentence.",
]
FAILURES: list[str] = []
DEVICE = "cpu"  # --device
DTYPE: str | None = None  # --dtype (None: the device's default)
PREFILL_CHUNKS: list[int] = []  # --prefill-chunks: the server's --prefill-chunk values measured


def fail(message: str) -> None:
    FAILURES.append(message)
    print(f"FAIL {message}", flush=True)


def report(title: str, rows: list[tuple[str, ...]]) -> None:
    print(f"\n{title}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)))


def make_videos(folder: Path, count: int, side: int, frames: int = 8) -> list[Path]:
    """``count`` mp4 files of random pixels (different content each), ``frames`` frames each."""
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"video{index}.mp4"
        write_video(path, [rng.integers(0, 255, (side, side, 3), dtype=np.uint8) for _ in range(frames)], fps=4)
        paths.append(path)
    return paths


# -- 1. QA workload ---------------------------------------------------------------------------------
def qa_workload(folder: Path, videos: list[Path], questions: int, rounds: int) -> None:
    """Cache on (prefixes shared by the rows that continue them), cache on with each row holding a
    copy of its prefix (what runs where the shared-prefix attention cannot), and cache off."""
    model, processor = load_pretrained(folder, device=DEVICE, dtype=DTYPE, progress=False)
    settings = GenerationSettings(max_new_tokens=16)
    requests = grouped_by_media([DescribeRequest(f"{v.stem}-{q}", str(v), prompt=f"<video>\n{QUESTIONS[q % len(QUESTIONS)]}")
                                 for q in range(questions) for v in videos])
    warm = Describer(model, processor, GenerationSettings(max_new_tokens=2), batch_size=8, num_workers=2, cache_bytes=0)
    list(warm.run(requests[:2]))
    variants = {"cache on": None, "prefix copied": None, "cache off": 0}
    times: dict[str, list[float]] = {label: [] for label in variants}
    texts: dict[str, list[str | None]] = {}
    last: dict[str, Describer] = {}
    held: dict[str, int] = {}  # the batch's own KV cache at its largest
    for _ in range(rounds):
        for label, budget in variants.items():
            describer = Describer(model, processor, settings, batch_size=8, num_workers=2, cache_bytes=budget)
            if label == "prefix copied":
                describer.batch.shares_prefixes = False
            batch, peak = describer.batch, [0]
            step = batch.step

            def measured_step(step=step, batch=batch, peak=peak):
                step()
                peak[0] = max(peak[0], batch._cache.nbytes if batch._cache is not None else 0)

            batch.step = measured_step
            started = time.perf_counter()
            results = list(describer.run(requests))
            times[label].append(time.perf_counter() - started)
            texts[label], last[label], held[label] = [r.text for r in results], describer, peak[0]
            if any(r.error for r in results):
                fail(f"qa {label}: {next(r.error for r in results if r.error)}")
    if not texts["cache on"] == texts["prefix copied"] == texts["cache off"]:
        fail("qa: predictions differ between the cache on (shared or copied prefixes) and off")
    median = {label: statistics.median(values) for label, values in times.items()}
    cached = last["cache on"]
    cache = cached.batch.prefix_cache

    def per(value: str) -> tuple[str, ...]:
        return tuple(value.format(s=last[label].batch.stats, t=median[label]) for label in variants)

    report(f"QA workload: {len(videos)} videos x {questions} questions, 16 new tokens, batch 8 ({rounds} rounds, median)", [
        ("", *variants, "cache on vs off"),
        ("seconds", *per("{t:.1f}"), f"{median['cache off'] / median['cache on']:.2f}x faster"),
        ("items/s", *(f"{len(requests) / median[label]:.2f}" for label in variants), ""),
        ("tokens/s", *(f"{last[label].batch.stats.generated_tokens / median[label]:.1f}" for label in variants), ""),
        ("prefill s", *per("{s.prefill_seconds:.1f}"), ""),
        ("decode s", *per("{s.decode_seconds:.1f}"), ""),
        ("batch KV cache at most MiB", *(f"{held[label] / 2**20:.1f}" for label in variants), ""),
        ("prefix hits", f"{cache.stats.hits} / {cache.stats.hits + cache.stats.misses} ({cache.stats.hit_rate:.0%})",
         f"{last['prefix copied'].batch.prefix_cache.stats.hits}", "-", ""),
        ("frames decoded", f"{cached.frames_cache.stats.misses} of {len(requests)}",
         f"{last['prefix copied'].frames_cache.stats.misses} of {len(requests)}", f"{len(requests)} of {len(requests)}", ""),
        ("prefix cache held", f"{cache.nbytes / 2**20:.0f} MiB of {cache.budget_bytes / 2**20:.0f} MiB", "", "-", ""),
        ("identical predictions", "yes" if texts["cache on"] == texts["prefix copied"] == texts["cache off"] else "NO", "", "", ""),
    ])


# -- 2 and 3. serving -------------------------------------------------------------------------------
def stream_request(url: str, video: str, question: str, max_tokens: int, arrived: float) -> dict[str, float]:
    body = {"model": "bench", "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video}},
                                                      {"type": "text", "text": question}]}]}
    first = last = None
    pause = 0.0  # the longest wait between two pieces of the reply
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=900) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"{response.status_code}: {response.text}")
        for event in sse_events(response):
            if event.get("choices") and (event["choices"][0].get("delta") or {}).get("content"):
                now = time.perf_counter()
                first = now if first is None else first
                pause = 0.0 if last is None else max(pause, now - last)
                last = now
    return {"arrived": arrived, "first": first if first is not None else float("nan"), "ended": time.perf_counter(),
            "pause": pause}


def start_server(folder: Path, media: Path, scratch: Path, src: str | None, label: str, extra: tuple[str, ...] = ()) -> Server:
    env_src = None if src is None else str(Path(src).resolve())
    previous = os.environ.get("PYTHONPATH")
    if env_src is not None:
        os.environ["PYTHONPATH"] = env_src
    try:
        server = Server(["--model", str(folder), "--media-root", str(media), "--served-model-name", "bench",
                         "--device", DEVICE, "--max-batch-size", "8", *(["--dtype", DTYPE] if DTYPE else []), *extra],
                        scratch / f"server-{label}.log")
    finally:
        if env_src is not None:
            if previous is None:
                os.environ.pop("PYTHONPATH")
            else:
                os.environ["PYTHONPATH"] = previous
    server.wait_ready(300)
    return server


def staggered(server: Server, videos: list[Path], warm: list[Path], gap: float, max_tokens: int
              ) -> tuple[list[dict[str, float]], float]:
    """The requests' timings, and one request's time to first token on the idle server (its prefill
    alone). Warm-up requests use videos of their own: no request finds its video's prefix cached."""
    stream_request(server.url, warm[0].name, "Warm up.", 2, time.perf_counter())
    alone = stream_request(server.url, warm[1].name, "Warm up again.", 2, time.perf_counter())
    results: list[dict[str, float] | None] = [None] * len(videos)
    start = time.perf_counter()

    def client(index: int) -> None:
        time.sleep(max(0.0, start + index * gap - time.perf_counter()))
        results[index] = stream_request(server.url, videos[index].name, "Describe the video.", max_tokens,
                                        time.perf_counter())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(videos))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, alone["first"] - alone["arrived"]


def queue_bound(alone: float, gap: float, count: int) -> float:
    """The p50 time to first token no first-come order can beat when each prefill takes ``alone``
    seconds and runs one at a time: request i waits for the i prefills before its own."""
    return statistics.median(alone + index * max(0.0, alone - gap) for index in range(count))


def late_request(server: Server, videos: list[Path], running: int, max_tokens: int, delay: float) -> tuple[float, float]:
    """``running`` long requests start together; one more arrives ``delay`` s later (videos no earlier
    request asked about). Returns its time to first token and how long the long requests took."""
    results: list[dict[str, float] | None] = [None] * (running + 1)
    start = time.perf_counter()

    def client(index: int) -> None:
        wait = delay if index == running else 0.0
        time.sleep(max(0.0, start + wait - time.perf_counter()))
        tokens = 16 if index == running else max_tokens
        results[index] = stream_request(server.url, videos[index].name, "Describe the video.", tokens, time.perf_counter())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(running + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    late = results[running]
    return late["first"] - late["arrived"], max(r["ended"] for r in results[:running]) - start


def serving(folder: Path, media: Path, videos: list[Path], scratch: Path, baseline_src: str | None, max_tokens: int,
            late_tokens: int) -> None:
    """``videos``: 8 for the staggered clients, 5 for the late request, 2 to warm up with."""
    rows = [("", "TTFT p50 s", "TTFT p95 s", "first token while an earlier request decoded", "longest pause in a stream s",
             "TTFT alone s", "p50 bound of the queue s", "wall s")]
    late_rows = [("", "late request's TTFT s", "the 4 long requests took s")]
    p50 = {}
    variants = [(f"this checkout, chunk {chunk}", None, ("--prefill-chunk", str(chunk))) for chunk in PREFILL_CHUNKS]
    if baseline_src is not None:
        variants.append(("baseline", baseline_src, ()))
    for label, src, extra in variants:
        server = start_server(folder, media, scratch, src, label.replace(" ", "-").replace(",", ""), extra)
        try:
            results, alone = staggered(server, videos[:8], videos[13:15], 1.0, max_tokens)
            ttft_late, long_took = late_request(server, videos[8:13], 4, late_tokens, 1.1)
        finally:
            server.stop()
        late_rows.append((label, f"{ttft_late:.2f}", f"{long_took:.1f}"))
        ttft = [r["first"] - r["arrived"] for r in results]
        joined = sum(any(e["arrived"] < r["arrived"] and r["first"] < e["ended"] for e in results) for r in results)
        p50[label] = statistics.median(ttft)
        rows.append((label, f"{p50[label]:.2f}", f"{sorted(ttft)[int(0.95 * (len(ttft) - 1))]:.2f}",
                     f"{joined} of {len(results) - 1}", f"{max(r['pause'] for r in results):.2f}", f"{alone:.2f}",
                     f"{queue_bound(alone, 1.0, len(results)):.2f}",
                     f"{max(r['ended'] for r in results) - results[0]['arrived']:.1f}"))
    if "baseline" in p50:
        for label in p50:
            if label != "baseline":
                rows.append((f"{label} / baseline", f"{p50[label] / p50['baseline']:.2f}x", "", "", "", "", "", ""))
    report(f"Staggered serving: {len(results)} clients 1 s apart, {max_tokens} tokens each, own video each", rows)
    report(f"A request arriving 1.1 s after 4 others ({late_tokens} tokens each) started together", late_rows)


def follow_up(folder: Path, media: Path, videos: list[Path], scratch: Path, baseline_src: str | None) -> None:
    rows = [("", "first request TTFT s", "same video again TTFT s", "ratio")]
    for label, src in (("this checkout", None), ("baseline", baseline_src)):
        if label == "baseline" and src is None:
            continue
        server = start_server(folder, media, scratch, src, f"follow-{label.replace(' ', '-')}")
        try:
            stream_request(server.url, videos[-1].name, "Warm up.", 2, time.perf_counter())
            first = stream_request(server.url, videos[0].name, "What happens in the video?", 16, time.perf_counter())
            again = stream_request(server.url, videos[0].name, "What colours do you see?", 16, time.perf_counter())
        finally:
            server.stop()
        a, b = first["first"] - first["arrived"], again["first"] - again["arrived"]
        rows.append((label, f"{a:.3f}", f"{b:.3f}", f"{b / a:.2f}x"))
    report("Follow-up question through the API (the same video asked again)", rows)


def joins(folder: Path, videos: list[Path]) -> None:
    """4 rows stream (64 tokens each); 4 more videos join, one every 3 steps. A join's step costs its
    prefill, a decode step, and whatever moving the running rows' cache costs: the rest is printed."""
    from tarsier.engine.continuous_batch import ContinuousBatch, Job
    from tarsier.engine.loading import load_pretrained
    from tarsier.engine.settings import GenerationSettings

    model, processor = load_pretrained(str(folder), device=DEVICE, dtype=DTYPE, progress=False)
    items = [processor.encode_item("<video>\nDescribe the video.", processor.load_media(str(v))) for v in videos]
    settings = GenerationSettings(max_new_tokens=64, ignore_eos=True)
    engine = ContinuousBatch(model, processor, max_batch_size=8)
    for ids, media in items[:4]:
        engine.add(Job(list(ids), media, settings, lambda token: None, lambda error: None))
    engine.step()
    rows = [("join", "rows after", "a plain step s", "the join's step s", "its prefill s", "the rest s", "cache")]
    for number, (ids, media) in enumerate(items[4:], start=1):
        for _ in range(3):
            started = time.perf_counter()
            engine.step()
            plain = time.perf_counter() - started
        before, cache = engine.stats.prefill_seconds, engine._cache
        engine.add(Job(list(ids), media, settings, lambda token: None, lambda error: None))
        started = time.perf_counter()
        engine.step()
        took, prefill = time.perf_counter() - started, engine.stats.prefill_seconds - before
        rows.append((str(number), str(engine.running), f"{plain:.3f}", f"{took:.3f}", f"{prefill:.3f}",
                     f"{took - prefill - plain:.3f}", "spare row" if engine._cache is cache else "laid out anew"))
    while engine.busy():
        engine.step()
    report("Joins: 4 rows stream, 4 more videos join one every 3 steps", rows)


# -- 4. no regression -------------------------------------------------------------------------------
THROUGHPUT_RUN = r"""
import json, sys, time
from tarsier.engine.describer import Describer, DescribeRequest
from tarsier.engine.generation import GenerationSettings, generate_text  # both checkouts have these there
from tarsier.engine.loading import load_pretrained
path, device, dtype, folder, tokens, *videos = sys.argv[1:]
model, processor = load_pretrained(folder, device=device, dtype=dtype or None, progress=False)
settings = GenerationSettings(max_new_tokens=int(tokens), ignore_eos=True)
if path == "describer":  # caption / bench run: media decoded in worker threads, results in order
    requests = [DescribeRequest(str(i), v) for i, v in enumerate(videos)]
    warm = Describer(model, processor, GenerationSettings(max_new_tokens=2, ignore_eos=True), batch_size=8, num_workers=2)
    list(warm.run(requests))
    describer = Describer(model, processor, settings, batch_size=8, num_workers=2)
    started = time.perf_counter()
    texts = [r.text for r in describer.run(requests)]
    seconds = time.perf_counter() - started
else:  # the Python API: one collated batch (media prepared before the clock starts)
    inputs = processor.collate([processor.encode_item("<video>\nDescribe the video.", processor.load_media(v)) for v in videos])
    generate_text(model, processor, inputs, GenerationSettings(max_new_tokens=2, ignore_eos=True))
    started = time.perf_counter()
    texts = generate_text(model, processor, inputs, settings)
    seconds = time.perf_counter() - started
# VmHWM, not ru_maxrss: Linux keeps a parent's ru_maxrss across fork and exec, so a child of a large
# benchmark process would report the parent's peak.
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "texts": texts, "peak_mib": peak_kib / 1024}))
"""


def throughput(folder: Path, videos: list[Path], baseline_src: str | None, tokens_list: list[int], rounds: int,
               paths: list[str]) -> None:
    if baseline_src is None:
        print("\n(no --baseline-src: the no-regression comparison needs the code before engine v2)")
        return
    sources = {"this checkout": str(Path(__file__).resolve().parents[1] / "src"), "baseline": str(Path(baseline_src).resolve())}
    for path, tokens in [(path, tokens) for tokens in tokens_list for path in paths]:
        runs: dict[str, list[dict]] = {label: [] for label in sources}
        for round_number in range(rounds):
            order = list(sources.items())  # alternate which goes first: a drift in the machine favours neither
            for label, src in order if round_number % 2 == 0 else order[::-1]:
                out = subprocess.run([sys.executable, "-c", THROUGHPUT_RUN, path, DEVICE, DTYPE or "", str(folder), str(tokens),
                                      *map(str, videos)],
                                     capture_output=True, text=True, env={**os.environ, "PYTHONPATH": src}, check=True)
                runs[label].append(json.loads(out.stdout.strip().splitlines()[-1]))
        if runs["this checkout"][0]["texts"] != runs["baseline"][0]["texts"]:
            fail(f"throughput {path} {tokens}: texts differ from the baseline's")
        rows = [("", "seconds (median)", "all rounds", "videos/s", "tokens/s", "peak RSS MiB")]
        medians = {}
        for label, results in runs.items():
            medians[label] = statistics.median(r["seconds"] for r in results)
            rows.append((label, f"{medians[label]:.1f}", " ".join(f"{r['seconds']:.1f}" for r in results),
                         f"{len(videos) / medians[label]:.3f}",
                         f"{len(videos) * tokens / medians[label]:.1f}", f"{max(r['peak_mib'] for r in results):.0f}"))
        rows.append(("this / baseline throughput", f"{medians['baseline'] / medians['this checkout']:.2f}x", "", "", "", ""))
        way = "through the Describer" if path == "describer" else "through the Python API (generate_text)"
        report(f"No regression: {len(videos)} different videos, batch 8, {tokens} new tokens, {way} ({rounds} rounds)", rows)

# The same comparison without two processes: the baseline's static decode loop (its one file, loaded
# by path over this checkout's KV cache and sampling, which kept its interface) and this engine run
# the same inputs on one loaded model, alternating round by round; forwards are timed by kind.
IN_PROCESS_RUN = r"""
import importlib.util, json, statistics, sys, time, torch
from tarsier.engine.continuous_batch import generate_steps
from tarsier.engine.loading import load_pretrained
from tarsier.engine.settings import GenerationSettings
loop_file, device, dtype, folder, tokens, rounds, *videos = sys.argv[1:]
spec = importlib.util.spec_from_file_location("baseline_decode_loop", loop_file)
loop = importlib.util.module_from_spec(spec)
spec.loader.exec_module(loop)
model, processor = load_pretrained(folder, device=device, dtype=dtype or None, progress=False)
items = [processor.encode_item("<video>\nDescribe the video.", processor.load_media(v)) for v in videos]
batch = processor.collate(items)
timed = {"prefill": 0.0, "decode": 0.0}
forward = type(model).forward
def timed_forward(self, *args, **kwargs):
    ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
    started = time.perf_counter()
    out = forward(self, *args, **kwargs)
    timed["decode" if ids.shape[1] == 1 else "prefill"] += time.perf_counter() - started
    return out
type(model).forward = timed_forward
def run(way, new_tokens):
    settings = GenerationSettings(max_new_tokens=new_tokens, ignore_eos=True).decode_settings(processor)
    rows = [[] for _ in items]
    if way == "baseline":
        extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "pixel_values")}
        with torch.inference_mode():
            steps = list(loop.decode(model, batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"), settings,
                                     extra_inputs=extra))
    else:
        steps = list(generate_steps(model, processor, [(ids, media, settings) for ids, media in items]))
    for step in steps:
        for row, token in step.items():
            rows[row].append(token)
    return rows
run("baseline", 2), run("engine", 2)
results = {"engine": [], "baseline": []}
for round_number in range(int(rounds)):
    for way in ("engine", "baseline") if round_number % 2 == 0 else ("baseline", "engine"):
        timed.update(prefill=0.0, decode=0.0)
        started = time.perf_counter()
        rows = run(way, int(tokens))
        results[way].append({"seconds": time.perf_counter() - started, **timed, "rows": rows})
same = results["engine"][0]["rows"] == results["baseline"][0]["rows"]
print(json.dumps({way: {key: statistics.median(r[key] for r in runs) for key in ("seconds", "prefill", "decode")}
                  for way, runs in results.items()} | {"identical": same}))
"""


def in_process(folder: Path, videos: list[Path], baseline_src: str, tokens_list: list[int], rounds: int) -> None:
    loop_file = Path(baseline_src) / "tarsier" / "engine" / "decode_loop.py"
    if not loop_file.exists():
        print(f"\n(no {loop_file}: the in-process comparison needs the baseline's static decode loop)")
        return
    rows = [("", "engine s", "baseline loop s", "engine prefill / decode s", "baseline prefill / decode s", "throughput")]
    for tokens in tokens_list:
        out = subprocess.run([sys.executable, "-c", IN_PROCESS_RUN, str(loop_file), DEVICE, DTYPE or "", str(folder),
                              str(tokens), str(rounds), *map(str, videos)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
        if out.returncode != 0:
            print(f"\n(the in-process comparison did not run: {out.stderr.strip().splitlines()[-1]})")
            return
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if not result["identical"]:
            fail(f"in-process {tokens}: the engine's tokens differ from the baseline loop's")
        ours, theirs = result["engine"], result["baseline"]
        rows.append((f"{tokens} new tokens", f"{ours['seconds']:.2f}", f"{theirs['seconds']:.2f}",
                     f"{ours['prefill']:.2f} / {ours['decode']:.2f}", f"{theirs['prefill']:.2f} / {theirs['decode']:.2f}",
                     f"{theirs['seconds'] / ours['seconds']:.3f}x"))
    report(f"No regression in one process: {len(videos)} videos, batch 8, this engine vs the baseline's static loop "
           f"on one loaded model, alternating ({rounds} rounds, medians)", rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sections = ["qa", "serving", "follow-up", "joins", "throughput", "in-process"]
    parser.add_argument("--sections", nargs="+", default=sections, choices=sections)
    parser.add_argument("--quick", action="store_true", help="tiny model, fewer questions and tokens")
    parser.add_argument("--baseline-src", default=None, help="src/ of a checkout before engine v2 (git worktree)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default=None, help="fp32, fp16 or bf16, for both sides (default: the device's: bf16 on a "
                                                      "GPU, fp32 on CPU)")
    parser.add_argument("--throughput-paths", nargs="+", default=["describer", "api"], choices=["describer", "api"],
                        help="no regression: through the Describer, the Python API, or both (default)")
    parser.add_argument("--prefill-chunks", type=int, nargs="+", default=[2048, 0],
                        help="serving: the --prefill-chunk values to run this checkout's server with (default: 2048 0)")
    args = parser.parse_args()
    global DEVICE, DTYPE, PREFILL_CHUNKS
    DEVICE, DTYPE, PREFILL_CHUNKS = args.device, args.dtype, args.prefill_chunks
    import torch

    preset = "tiny" if args.quick else "small"
    print(f"preset={preset} device={DEVICE} dtype={DTYPE or 'default'} torch={torch.__version__} threads={torch.get_num_threads()}")
    scratch = Path(tempfile.mkdtemp(prefix="tarsier-bench-engine-"))
    try:
        folder = build_random_checkpoint(scratch / "model", preset)
        media = scratch / "media"
        media.mkdir()
        videos = make_videos(media, 15, 336)  # the first 8 for most sections; serving uses all
        if "qa" in args.sections:
            qa_workload(folder, videos[:8], 3 if args.quick else 8, args.rounds)
        if "serving" in args.sections:
            serving(folder, media, videos, scratch, args.baseline_src, 16 if args.quick else 64, 32 if args.quick else 256)
        if "follow-up" in args.sections:
            follow_up(folder, media, videos, scratch, args.baseline_src)
        if "joins" in args.sections:
            joins(folder, videos[:8])
        if "throughput" in args.sections:
            throughput(folder, videos[:8], args.baseline_src, [8] if args.quick else [32, 512], args.rounds,
                       args.throughput_paths)
        if "in-process" in args.sections and args.baseline_src is not None:
            in_process(folder, videos[:8], args.baseline_src, [8] if args.quick else [32, 512], max(args.rounds, 2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\n{len(FAILURES)} failure(s)" if FAILURES else "\nall checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    from tarsier.errors import TarsierError

    try:
        sys.exit(main())
    except TarsierError as exc:  # e.g. no mistral-common (the test extra): one line saying what to install
        sys.exit(f"bench_engine.py: {exc} (or pip install -e \".[test]\")")
    except KeyboardInterrupt:  # servers and scratch files are gone by now (their finally blocks ran)
        sys.exit("bench_engine.py: interrupted")
