"""``tarsier serve`` under load: N concurrent clients against the same requests sent one at a time.

Starts the server as a subprocess on a random Tarsier checkpoint (bound to 127.0.0.1 on a free port,
stopped at the end, also on an error or Ctrl-C), writes one synthetic clip per request (so every
prompt differs), and talks to it with the ``openai`` client, streaming, as an application would.

1. Throughput. The same ``--requests`` requests, once one at a time and once from each number of
   concurrent clients in ``--clients`` (each client sends its next request when its last one is
   answered). Every round runs them all in turn (one at a time, then each level; the order rotates
   from round to round) so that drifts in machine speed hit all of them alike. Printed per run
   kind: requests/s and tokens/s (completion tokens from the usage chunk) of the median run, the
   wall time best / median, p50/p95 latency and time to first token over all rounds (first token
   = the first chunk that carries text), the speed-up over one at a time, and the batch sizes the
   server formed (from /metrics).
2. Correctness. Decoding is greedy, so each request's text and token ids (``return_token_ids``)
   must be identical in every run, whatever batch it landed in; any difference is a FAIL.
3. Load. Waves of good requests (paths and data: URLs, streamed and whole) mixed with bad ones
   (invalid JSON, unknown model, a path outside the media root, a missing file, an unsupported
   data: URL type, a corrupt video, max_tokens over the cap, max_frames over the server's, a body
   of the wrong shape, and a client that disconnects mid-stream), sent by concurrent clients in a
   shuffled order. Every good request must be answered 200 with its text from part 1, every bad
   one refused with a 4xx and an OpenAI-style ``{"error": {"message": ...}}`` body, the
   disconnected streams must be counted (status 499 in /metrics), nothing may stay in flight, the
   server must still answer /health, and its RSS after the last wave must be within
   ``--rss-tolerance-mb`` of its RSS after the first (warm-up) wave.

Exits 1 on any correctness failure (each printed on a FAIL line), 0 otherwise.

    python benchmarks/bench_serve.py                          # small model, 1/4/8/16 clients, 16 requests
    python benchmarks/bench_serve.py --quick                  # tiny model, a smoke run (under a minute on 2 CPUs)
    python benchmarks/bench_serve.py --requests 8             # small model, ~8 minutes on 2 CPUs
    python benchmarks/bench_serve.py --clients 1 8 16 --max-batch-size 16 --device cuda
    python benchmarks/bench_serve.py --model ~/models/Tarsier-7b --device cuda --max-tokens 256
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import json
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai

from tarsier.media import write_video

PROMPTS = [
    "Describe the video in detail.",
    "What happens in this video?",
    "Describe the video.",
    "What is moving in the video, and where does it go?",
]
# Runs the serve sub-command alone, for when `python -m tarsier.cli` cannot (a command module missing).
LAUNCHER = """\
import argparse, sys
from tarsier.cli import serve
from tarsier.errors import TarsierError
parser = argparse.ArgumentParser(prog="tarsier")
serve.register(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
try:
    sys.exit(args.run(args) or 0)
except TarsierError as exc:
    sys.exit(f"tarsier: error: {exc}")
"""
FAILURES: list[str] = []


def fail(message: str) -> None:
    FAILURES.append(message)
    print(f"FAIL: {message}", flush=True)


def say(message: str) -> None:
    print(message, flush=True)


# -- the server ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_command() -> list[str]:
    """``python -m tarsier.cli serve`` when every command module is there, else the launcher above."""
    try:
        from tarsier.cli import COMMANDS

        whole = importlib.util.find_spec("tarsier.cli.__main__") is not None and all(
            importlib.util.find_spec(f"tarsier.cli.{name}") is not None for name in COMMANDS)
    except ImportError:
        whole = False
    return [sys.executable, "-m", "tarsier.cli", "serve"] if whole else [sys.executable, "-c", LAUNCHER, "serve"]


def _die_with_parent() -> None:
    """In the child: get SIGTERM if this script dies without cleaning up (Linux), so no server is left."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Server:
    """``tarsier serve`` in a subprocess; its output goes to a log file, printed if it fails."""

    def __init__(self, options: list[str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self.command = [*serve_command(), "--host", "127.0.0.1", "--port", str(self.port), "--no-progress", *options]
        self.log = open(log, "wb")
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"the server was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=30).text

    def log_tail(self, lines: int = 40) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM (the server drains), then SIGKILL if it has not gone after 20 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def counters(text: str, name: str, label: str) -> dict[int, float]:
    """``{label value: count}`` of a labelled Prometheus counter."""
    pattern = re.compile(rf'^{name}{{{label}="(\d+)"}} ([0-9.e+]+)$', re.M)
    return {int(key): float(value) for key, value in pattern.findall(text)}


def gauge(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else float("nan")


def batches_between(before: str, after: str) -> dict[int, int]:
    old, new = counters(before, "tarsier_batches_total", "size"), counters(after, "tarsier_batches_total", "size")
    return {size: int(count - old.get(size, 0)) for size, count in sorted(new.items()) if count > old.get(size, 0)}


def wait_idle(server: Server, timeout: float = 60) -> str:
    """/metrics once nothing is waiting or generating (disconnected rows leave at their next step)."""
    deadline = time.monotonic() + timeout
    while True:
        text = server.metrics()
        if gauge(text, "tarsier_requests_in_flight") == 0 or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


# -- requests --------------------------------------------------------------------------------------
def make_clips(folder: Path, count: int, seconds: float = 2, fps: int = 12) -> list[str]:
    """``count`` different small clips (coloured blocks drifting), named relative to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        rng = np.random.default_rng(index)
        blocks = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
        base = np.kron(blocks, np.ones((16, 16, 1), dtype=np.uint8))  # 144 x 192
        dx, dy = rng.integers(1, 5, 2)
        frames = [np.roll(base, (int(dy * i), int(dx * i)), axis=(0, 1)) for i in range(int(seconds * fps))]
        name = f"clip{index:03d}.mp4"
        write_video(folder / name, frames, fps=fps)
        names.append(name)
    return names


@dataclass
class Request:
    index: int
    url: str  # relative to the media root, or a data: URL
    prompt: str

    def messages(self) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": self.url}},
                                             {"type": "text", "text": self.prompt}]}]


@dataclass
class Result:
    index: int
    latency: float
    ttft: float | None
    text: str
    token_ids: list[int] | None
    completion_tokens: int | None
    finish_reason: str | None


def stream_one(client: openai.OpenAI, model: str, request: Request, max_tokens: int, frames: int) -> Result:
    began = time.perf_counter()
    first = None
    parts: list[str] = []
    ids = usage = finish = None
    stream = client.chat.completions.create(
        model=model, messages=request.messages(), max_tokens=max_tokens, stream=True,
        stream_options={"include_usage": True}, extra_body={"max_frames": frames, "return_token_ids": True})
    for chunk in stream:
        if chunk.choices:
            choice = chunk.choices[0]
            if choice.delta is not None and choice.delta.content:
                if first is None:
                    first = time.perf_counter()
                parts.append(choice.delta.content)
            if choice.finish_reason is not None:
                finish = choice.finish_reason
                ids = (choice.model_extra or {}).get("token_ids")
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
    ended = time.perf_counter()
    return Result(request.index, ended - began, None if first is None else first - began, "".join(parts), ids, usage,
                  finish)


@dataclass
class Run:
    """One pass over the requests: one at a time, or from N concurrent clients."""

    wall: float
    results: list[Result]
    batches: dict[int, int]

    @property
    def tokens(self) -> int:
        return sum(result.completion_tokens or 0 for result in self.results)


def run_requests(server: Server, client: openai.OpenAI, model: str, requests: list[Request], clients: int,
                 max_tokens: int, frames: int) -> Run:
    """All ``requests`` from ``clients`` closed-loop clients (0 = one at a time, in this thread)."""
    before = wait_idle(server)
    began = time.perf_counter()
    if clients == 0:
        results = [stream_one(client, model, request, max_tokens, frames) for request in requests]
    else:
        pool = ThreadPoolExecutor(clients, thread_name_prefix="client")
        try:
            futures = [pool.submit(stream_one, client, model, request, max_tokens, frames) for request in requests]
            results = [future.result() for future in futures]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # on Ctrl-C, do not wait for replies
    wall = time.perf_counter() - began
    return Run(wall, results, batches_between(before, server.metrics()))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def first_difference(a: list[int] | None, b: list[int] | None) -> str:
    if a is None or b is None:
        return "token ids missing"
    for position, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"first differing token at position {position} ({x} vs {y})"
    return f"lengths {len(a)} vs {len(b)}"


def check_run(label: str, run: Run, reference: dict[int, Result] | None) -> None:
    """Each result complete and, against the reference (greedy), identical in text and token ids."""
    for result in run.results:
        if result.token_ids is None or result.completion_tokens is None or result.finish_reason is None:
            fail(f"{label}, request {result.index}: missing token_ids, usage or finish_reason")
            continue
        if result.completion_tokens != len(result.token_ids):
            fail(f"{label}, request {result.index}: usage says {result.completion_tokens} completion tokens, "
                 f"token_ids holds {len(result.token_ids)}")
        if reference is None:
            continue
        want = reference[result.index]
        if result.token_ids != want.token_ids or result.text != want.text:
            fail(f"{label}, request {result.index}: reply differs from the one-at-a-time run "
                 f"({first_difference(result.token_ids, want.token_ids)}; text {result.text[:60]!r} vs {want.text[:60]!r})")


# -- the load run ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    name: str
    good: bool
    ok: bool
    detail: str


def post(url: str, body: Any = None, raw: bytes | None = None, timeout: float = 900) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(url, content=content, headers={"Content-Type": "application/json"}, timeout=timeout)


def sse_events(response: httpx.Response) -> Any:
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            if data == "[DONE]":
                return
            yield json.loads(data)


def good_request(server: Server, body: dict[str, Any], want: Result, stream: bool, name: str) -> Outcome:
    url = server.url + "/v1/chat/completions"
    if not stream:
        response = post(url, body)
        if response.status_code != 200:
            return Outcome(name, True, False, f"status {response.status_code}: {response.text[:200]}")
        reply = response.json()
        choice = reply["choices"][0]
        text, ids = choice["message"]["content"], choice.get("token_ids")
        usage = reply.get("usage", {}).get("completion_tokens")
    else:
        text, ids, usage = "", None, None
        with httpx.stream("POST", url, json={**body, "stream": True, "stream_options": {"include_usage": True}},
                          timeout=900) as response:
            if response.status_code != 200:
                return Outcome(name, True, False, f"status {response.status_code}: {response.read()[:200]!r}")
            for event in sse_events(response):
                if "error" in event:
                    return Outcome(name, True, False, f"error in the stream: {event['error']}")
                for choice in event.get("choices", []):
                    text += choice.get("delta", {}).get("content") or ""
                    if choice.get("finish_reason") is not None:
                        ids = choice.get("token_ids")
                if event.get("usage"):
                    usage = event["usage"]["completion_tokens"]
    if text != want.text or ids != want.token_ids:
        return Outcome(name, True, False, f"reply differs from part 1 ({first_difference(ids, want.token_ids)})")
    if usage != len(ids):
        return Outcome(name, True, False, f"usage says {usage} completion tokens for {len(ids)} ids")
    return Outcome(name, True, True, "200, same reply")


def bad_request(server: Server, name: str, body: Any = None, raw: bytes | None = None) -> Outcome:
    response = post(server.url + "/v1/chat/completions", body, raw, timeout=120)
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = None
    ok = 400 <= response.status_code < 500 and isinstance(message, str) and bool(message)
    detail = f"{response.status_code} {message!r}" if message else f"{response.status_code} {response.text[:200]!r}"
    return Outcome(name, False, ok, detail)


def disconnect_mid_stream(server: Server, body: dict[str, Any]) -> Outcome:
    """Read the stream up to its first text, then drop the connection."""
    with httpx.Client(timeout=900) as client:
        with client.stream("POST", server.url + "/v1/chat/completions", json={**body, "stream": True}) as response:
            if response.status_code != 200:
                return Outcome("disconnect mid-stream", False, False, f"status {response.status_code}")
            for event in sse_events(response):
                if any(choice.get("delta", {}).get("content") for choice in event.get("choices", [])):
                    return Outcome("disconnect mid-stream", False, True, "200, left after the first text")
    return Outcome("disconnect mid-stream", False, False, "the stream ended before any text")


def load_wave(server: Server, model: str, requests: list[Request], reference: dict[int, Result], media: Path,
              args: argparse.Namespace, token_cap: int, seed: int) -> list[Outcome]:
    """Good and bad requests, shuffled, from ``args.load_clients`` concurrent clients."""

    def body(request: Request, **extra: Any) -> dict[str, Any]:
        return {"model": model, "messages": request.messages(), "max_tokens": args.max_tokens,
                "max_frames": args.frames, "return_token_ids": True, **extra}

    tasks = []
    for number, request in enumerate(requests):
        as_data = number % 2 == 1  # the same clip as a data: URL: the same reply
        if as_data:
            payload = base64.b64encode((media / request.url).read_bytes()).decode()
            request = Request(request.index, f"data:video/mp4;base64,{payload}", request.prompt)
        stream = number % 4 in (0, 1)
        name = f"good {'data: URL' if as_data else 'path'} {'streamed' if stream else 'whole'}"
        tasks.append(lambda r=request, s=stream, n=name: good_request(server, body(r), reference[r.index], s, n))
    first = requests[0]
    noise = base64.b64encode(random.Random(seed).randbytes(48 * 1024)).decode()
    bad = [
        ("invalid JSON", None, b'{"model": "m", "messages": [{"role": "user", "content": "hi"'),
        ("unknown model", body(first, model="no-such-model"), None),
        ("path outside the media root", body(Request(0, "../x.mp4", first.prompt)), None),
        ("missing file", body(Request(0, "no-such-clip.mp4", first.prompt)), None),
        ("unsupported data: URL type", body(Request(0, "data:application/pdf;base64,JVBERi0xLjQK", first.prompt)), None),
        ("corrupt video (data: URL)", body(Request(0, f"data:video/mp4;base64,{noise}", first.prompt)), None),
        ("corrupt video (file)", body(Request(0, "corrupt.mp4", first.prompt)), None),
        ("max_tokens over the cap", body(first, max_tokens=token_cap + 1), None),
        ("max_frames over the server's", body(first, max_frames=args.server_frames + 1), None),
        ("messages of the wrong shape", {"model": model, "messages": "describe the video"}, None),
    ]
    tasks += [lambda n=name, b=b, r=r: bad_request(server, n, b, r) for name, b, r in bad]
    tasks.append(lambda: disconnect_mid_stream(server, body(first)))
    random.Random(seed).shuffle(tasks)

    def guarded(task: Any) -> Outcome:
        try:
            return task()
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            return Outcome("a request", True, False, f"{type(exc).__name__}: {exc}")

    pool = ThreadPoolExecutor(args.load_clients, thread_name_prefix="load")
    try:
        return [future.result() for future in [pool.submit(guarded, task) for task in tasks]]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def load_run(server: Server, model: str, requests: list[Request], reference: dict[int, Result], media: Path,
             args: argparse.Namespace, token_cap: int) -> list[tuple[str, ...]]:
    say(f"\nload: {args.load_waves} waves of {len(requests)} good + 11 bad requests from {args.load_clients} clients")
    (media / "corrupt.mp4").write_bytes(random.Random(1).randbytes(64 * 1024))
    before = wait_idle(server)
    disconnects = 0
    rss: list[float] = []
    refused: dict[str, str] = {}
    good_right = good_total = bad_right = bad_total = 0
    for wave in range(args.load_waves):
        began = time.perf_counter()
        outcomes = load_wave(server, model, requests, reference, media, args, token_cap, seed=wave)
        disconnects += sum(outcome.name == "disconnect mid-stream" for outcome in outcomes)
        wait_idle(server)
        rss.append(server.rss_mib())
        good = [o for o in outcomes if o.good]
        bad = [o for o in outcomes if not o.good]
        good_right += sum(o.ok for o in good)
        good_total += len(good)
        bad_right += sum(o.ok for o in bad)
        bad_total += len(bad)
        say(f"  wave {wave + 1}: {sum(o.ok for o in good)}/{len(good)} good answered right, "
            f"{sum(o.ok for o in bad)}/{len(bad)} bad refused, {time.perf_counter() - began:.1f} s, "
            f"server RSS {rss[-1]:.0f} MiB{' (after warm-up)' if wave == 0 else ''}")
        for outcome in outcomes:
            if not outcome.ok:
                fail(f"load wave {wave + 1}, {outcome.name}: {outcome.detail}")
            elif not outcome.good:
                refused.setdefault(outcome.name, outcome.detail)
    for name, detail in sorted(refused.items()):
        say(f"  {name}: {detail[:150]}")

    # Disconnected rows leave their batch at the next step; the server counts each as a 499.
    deadline = time.monotonic() + 60
    while True:
        after = server.metrics()
        left = counters(after, "tarsier_requests_total", "status").get(499, 0) - \
            counters(before, "tarsier_requests_total", "status").get(499, 0)
        if left >= disconnects or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    in_flight = gauge(wait_idle(server), "tarsier_requests_in_flight")
    health = httpx.get(server.url + "/health", timeout=30)
    statuses = counters(after, "tarsier_requests_total", "status")
    old = counters(before, "tarsier_requests_total", "status")
    spread = ", ".join(f"{status}: {int(count - old.get(status, 0))}" for status, count in sorted(statuses.items())
                       if count > old.get(status, 0))
    say(f"  server counted {spread}")
    if left < disconnects:
        fail(f"load: {disconnects} clients disconnected mid-stream, the server counted {int(left)} (status 499)")
    if in_flight != 0:
        fail(f"load: {in_flight:.0f} requests still in flight after the load")
    if not server.alive() or health.status_code != 200:
        fail(f"load: the server is not healthy afterwards (alive: {server.alive()}, /health {health.status_code})")
    growth = rss[-1] - rss[0]
    if growth > args.rss_tolerance_mb:
        fail(f"load: server RSS grew {growth:.0f} MiB from the warm-up wave to the last "
             f"({rss[0]:.0f} -> {rss[-1]:.0f} MiB; tolerance {args.rss_tolerance_mb:.0f} MiB)")
    return [
        ("load", "result"),
        ("good requests answered right", f"{good_right}/{good_total}"),
        ("bad requests refused (4xx + error.message; disconnects: left after the first text)",
         f"{bad_right}/{bad_total} ({len(refused)} kinds)"),
        ("disconnects counted (499)", f"{int(left)}/{disconnects}"),
        ("in flight afterwards", f"{in_flight:.0f}"),
        ("/health afterwards", f"{health.status_code}"),
        ("server RSS after warm-up wave -> last wave", f"{rss[0]:.0f} -> {rss[-1]:.0f} MiB ({growth:+.0f} MiB, "
                                                      f"tolerance {args.rss_tolerance_mb:.0f})"),
    ]


# -- report ----------------------------------------------------------------------------------------
def report(title: str, rows: list[tuple[str, ...]]) -> None:
    print(f"\n{title}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def summary_row(label: str, runs: list[Run], baseline: list[Run] | None) -> tuple[str, ...]:
    walls = [run.wall for run in runs]
    median_wall = statistics.median(walls)
    latencies = [result.latency for run in runs for result in run.results]
    ttfts = [result.ttft for run in runs for result in run.results if result.ttft is not None]
    batches: dict[int, int] = {}
    for run in runs:
        for size, count in run.batches.items():
            batches[size] = batches.get(size, 0) + count
    speedup = "-" if baseline is None else f"{statistics.median(r.wall for r in baseline) / median_wall:.2f}x"
    return (
        label,
        f"{len(runs[0].results) / median_wall:.3f}",
        f"{statistics.median(run.tokens / run.wall for run in runs):.1f}",
        f"{min(walls):.1f} / {median_wall:.1f}",
        f"{percentile(latencies, 50):.2f} / {percentile(latencies, 95):.2f}",
        f"{percentile(ttfts, 50):.2f} / {percentile(ttfts, 95):.2f}",
        speedup,
        " ".join(f"{size}x{count}" for size, count in sorted(batches.items())) or "-",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny model, 1 and 4 clients, 4 requests of 16 tokens, 1 round: a smoke run")
    parser.add_argument("--preset", default=None, help="random checkpoint preset: small, tiny, tiny-fast (default: small)")
    parser.add_argument("--model", default=None, help="serve this checkpoint instead of a random one")
    parser.add_argument("--clients", type=int, nargs="+", default=None, help="concurrency levels (default: 1 4 8 16)")
    parser.add_argument("--requests", type=int, default=None, help="requests per run, one clip each (default: 16)")
    parser.add_argument("--max-tokens", type=int, default=None, help="max_tokens of every request (default: 64)")
    parser.add_argument("--frames", type=int, default=None, help="max_frames of every request (default: 8)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default: 2)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="the server's --max-batch-size (default: 8)")
    parser.add_argument("--device", default=None, help="the server's --device (default: its own)")
    parser.add_argument("--dtype", default=None, help="the server's --dtype (default: its own)")
    parser.add_argument("--load-waves", type=int, default=3, help="waves of the load run; the first is the warm-up (default: 3)")
    parser.add_argument("--load-clients", type=int, default=8, help="concurrent clients in the load run (default: 8)")
    parser.add_argument("--load-good", type=int, default=None, help="good requests per load wave (default: 8, --quick: 4)")
    parser.add_argument("--rss-tolerance-mb", type=float, default=64, help="RSS growth allowed over the load run (default: 64)")
    parser.add_argument("--skip-load", action="store_true", help="throughput and correctness only")
    args = parser.parse_args()
    quick = args.quick
    args.preset = args.preset or ("tiny" if quick else "small")
    args.clients = args.clients or ([1, 4] if quick else [1, 4, 8, 16])
    args.requests = args.requests or (4 if quick else 16)
    args.max_tokens = args.max_tokens or (16 if quick else 64)
    args.frames = args.frames or (4 if quick else 8)
    args.rounds = args.rounds or (1 if quick else 2)
    args.load_good = min(args.load_good or (4 if quick else 8), args.requests)
    if min(args.clients) < 1 or args.requests < 1 or args.rounds < 1 or args.load_waves < 2:
        parser.error("--clients, --requests and --rounds must be at least 1, --load-waves at least 2")
    if max(args.clients) > args.requests:
        print(f"note: {args.requests} requests per run, so at most {args.requests} are in flight at once", flush=True)
    args.server_frames = max(8, args.frames)
    token_cap = max(2048, args.max_tokens)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)  # the server is stopped in `finally` either way
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (`&`)
    scratch = Path(tempfile.mkdtemp(prefix="tarsier-bench-serve-"))
    server = None
    try:
        if args.model:
            model_dir = args.model
        else:
            from tarsier.testing import build_random_checkpoint

            model_dir = str(build_random_checkpoint(scratch / "model", args.preset))
        media = scratch / "media"
        clips = make_clips(media, args.requests)
        requests = [Request(i, clip, PROMPTS[i % len(PROMPTS)]) for i, clip in enumerate(clips)]
        options = ["--model", model_dir, "--media-root", str(media), "--max-batch-size", str(args.max_batch_size),
                   "--max-frames", str(args.server_frames), "--max-tokens", str(token_cap)]
        for name in ("device", "dtype"):
            if getattr(args, name):
                options += [f"--{name}", getattr(args, name)]
        server = Server(options, scratch / "server.log")
        say(f"bench_serve: preset={args.preset if not args.model else args.model} requests={args.requests} "
            f"clients={args.clients} max_tokens={args.max_tokens} frames={args.frames} rounds={args.rounds} "
            f"max_batch_size={args.max_batch_size} (server pid {server.process.pid}, {server.url}, "
            f"{'python -m tarsier.cli' if '-m' in server.command else 'launcher'})")
        loading = time.perf_counter()
        server.wait_ready(timeout=600)
        say(f"server ready in {time.perf_counter() - loading:.1f} s, RSS {server.rss_mib():.0f} MiB")

        # The model name the server expects is the --model value.
        model = model_dir
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=1800)
        # Warm-up: first calls of a shape are slow (oneDNN, allocator): one alone, then one full batch.
        began = time.perf_counter()
        warm = min(args.max_batch_size, args.requests, max(args.clients))
        run_requests(server, client, model, requests[:1], 0, 2, args.frames)
        if warm > 1:
            run_requests(server, client, model, requests[:warm], warm, 2, args.frames)
        say(f"warm-up: {time.perf_counter() - began:.1f} s")

        sequential: list[Run] = []
        concurrent: dict[int, list[Run]] = {level: [] for level in args.clients}
        reference: dict[int, Result] | None = None
        kinds = [0, *args.clients]
        for round_number in range(args.rounds):
            shift = round_number % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                run = run_requests(server, client, model, requests, kind, args.max_tokens, args.frames)
                label = "one at a time" if kind == 0 else f"{kind} client{'s' if kind > 1 else ''}"
                say(f"round {round_number + 1}, {label}: {run.wall:.1f} s, {run.tokens} tokens, batches "
                    + (" ".join(f"{size}x{count}" for size, count in run.batches.items()) or "-"))
                if kind == 0:
                    sequential.append(run)
                    if reference is None:  # the first one-at-a-time run is what every run must give
                        reference = {result.index: result for result in run.results}
                else:
                    concurrent[kind].append(run)
                if reference is not None:
                    check_run(f"round {round_number + 1}, {label}", run, reference)
        assert reference is not None  # round 1 starts with the one-at-a-time run, so every run was checked
        rows = [("", "req/s", "tokens/s", "wall s best / median", "latency p50 / p95 s", "TTFT p50 / p95 s",
                 "req/s vs one at a time", "batches (size x count)")]
        rows.append(summary_row("one at a time", sequential, None))
        for level in args.clients:
            rows.append(summary_row(f"{level} client{'s' if level > 1 else ''}", concurrent[level], sequential))
        tokens = reference[0].completion_tokens
        identical = "identical" if not FAILURES else "NOT identical (see FAIL lines)"
        report(f"throughput: {args.requests} requests x {args.max_tokens} new tokens, {args.frames} frames each, "
               f"{args.rounds} round(s); server --max-batch-size {args.max_batch_size}", rows)
        say(f"greedy replies (text and token ids) in every run vs one at a time: {identical} "
            f"({tokens} tokens for request 0)")

        if not args.skip_load:
            before_load = len(FAILURES)
            rows = load_run(server, model, requests[:args.load_good], reference, media, args, token_cap)
            report("load run", rows)
            say(f"load run: {'passed' if len(FAILURES) == before_load else 'FAILED'}")
    except KeyboardInterrupt:
        say("interrupted: stopping the server")
        return 130
    except Exception as exc:
        if server is not None and not server.alive():
            say(f"the server died:\n{server.log_tail()}")
        fail(f"{type(exc).__name__}: {exc}")
        return 1
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    if FAILURES:
        say(f"\n{len(FAILURES)} failure(s)")
        return 1
    say("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
