"""Core performance: frame sampling, vision, and generation throughput, each against a baseline.

Machines are noisy, so every figure is printed with its baseline from the same run, measured in
alternating rounds (ours, baseline, ours, baseline, ...), as best and median seconds. Nothing here
changes the allocator or samples memory from a thread (both slow the code measured): peak memory is
the kernel's high-water mark (VmHWM), reset before each measurement.

Baselines:
- frame sampling: decoding the whole clip with PyAV and keeping the sampled frames;
- vision: the reference's way -- the full CLIP tower with every hidden state kept, then pick -2;
- generation: the same 8 videos one at a time with our engine, and transformers' ``generate``
  with its default (growing) KV cache at batch 8, which is what tarsier ran before its engine;
  with ``--reference DIR``, also the original research code one video at a time, run by
  ``reference_driver.py`` under its own Python environment (a checkout of bytedance/tarsier, branch
  ``tarsier``, with transformers 4.44.2 and decord installed by hand; nothing of it is part of this
  project). The videos are written as mp4 files; the original reads them with its own processor
  (decord), ours gets the frames our reader decodes from the same files (the same pixels).

    python benchmarks/bench_core.py                         # small model, 8 videos, 32 and 512 new tokens
    python benchmarks/bench_core.py --quick                 # tiny model, fewer tokens: a smoke run
    python benchmarks/bench_core.py --new-tokens 512 --rounds 2
    python benchmarks/bench_core.py --device cuda --dtype bf16
    python benchmarks/bench_core.py --skip-media --reference ~/src/tarsier --reference-python ~/envs/tarsier-ref/bin/python
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import torch
from transformers import CLIPVisionModel

from tarsier.engine.device import resolve_device, resolve_dtype
from tarsier.engine.generation import iter_tokens
from tarsier.engine.loading import load_model
from tarsier.engine.settings import GenerationSettings
from tarsier.media import load_frames, write_video
from tarsier.models.tarsier.processing_tarsier import TarsierProcessor
from tarsier.testing import build_random_checkpoint

CACHE = Path.home() / ".cache" / "tarsier-bench"
PROMPT = "<video>\nDescribe the video in detail."


def peak_rss_reset() -> int:
    """Reset the process's peak-RSS mark (Linux) and return the current RSS in bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_bytes("VmRSS")


def peak_rss_since(start: int) -> int:
    return max(_status_bytes("VmHWM") - start, 0)


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class Measure:
    """Seconds and peak memory of one workload over several rounds."""

    def __init__(self, name: str, fn: Callable[[], object], device: str):
        self.name, self.fn, self.device = name, fn, device
        self.seconds: list[float] = []
        self.peak = 0

    def once(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
        else:
            start = peak_rss_reset()
        began = time.perf_counter()
        self.fn()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - began)
        peak = torch.cuda.max_memory_allocated() - start if self.device.startswith("cuda") else peak_rss_since(start)
        self.peak = max(self.peak, peak)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def cell(self) -> str:
        return f"{self.best:.2f} / {self.median:.2f} s"


def alternate(measures: list[Measure], rounds: int, warmup: bool = True) -> None:
    """Run each workload once per round, in turn, so drifts in machine speed hit all of them alike."""
    if warmup:
        for measure in measures:
            measure.fn()
    for _ in range(rounds):
        for measure in measures:
            measure.once()


def make_clip(seconds: int, width: int, height: int, fps: int = 25) -> Path:
    """A synthetic clip (moving gradients), cached between runs since encoding it takes a while."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"clip_{seconds}s_{width}x{height}.mp4"
    if path.exists():
        return path
    ys, xs = np.mgrid[0:height, 0:width]

    def frames():
        for index in range(seconds * fps):
            shift = index * 4
            frame = np.empty((height, width, 3), dtype=np.uint8)
            frame[..., 0] = (xs + shift) % 256
            frame[..., 1] = (ys + shift // 2) % 256
            frame[..., 2] = (xs + ys + index) % 256
            yield frame

    scratch = path.with_suffix(".tmp.mp4")
    write_video(scratch, frames(), fps=fps, preset="ultrafast")
    scratch.rename(path)
    return path


def full_decode_sampling(path: Path, n_frames: int) -> int:
    """Baseline: decode every frame and keep the sampled ones (the frame count from the header)."""
    with av.open(str(path)) as container:
        total = container.streams.video[0].frames
        wanted = {round(i * (total - 1) / (n_frames - 1)) for i in range(n_frames)}
        kept = [frame.to_image() for index, frame in enumerate(container.decode(video=0)) if index in wanted]
    return len(kept)


def reference_vision(model, clip: CLIPVisionModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """Baseline: the reference runs every CLIP layer and keeps all hidden states, then picks -2."""
    hidden = clip(pixel_values, output_hidden_states=True).hidden_states[model.config.vision_feature_layer][:, 1:]
    return model.multi_modal_projector(hidden)


class Generation:
    """Our engine over a batch, timing the prefill (to the first token) and the decode steps apart."""

    def __init__(self, model, processor, batch, settings: GenerationSettings):
        self.model, self.processor, self.batch, self.settings = model, processor, batch, settings
        self.prefill: list[float] = []
        self.decode: list[float] = []
        self.ids: dict[int, list[int]] = {}

    def __call__(self) -> None:
        began = time.perf_counter()
        first = None
        ids: dict[int, list[int]] = {}
        for step in iter_tokens(self.model, self.processor, self.batch, self.settings):
            if first is None:
                first = time.perf_counter()
            for row, token in step.items():
                ids.setdefault(row, []).append(token)
        ended = time.perf_counter()
        self.prefill.append(first - began)
        self.decode.append(ended - first)
        self.ids = ids


class ReferenceRun(Measure):
    """The original code, one video at a time, in its own environment; its own timing is used.

    ``seconds`` are its ``generate`` calls (the span timed for ours); ``input_seconds`` its decoding
    and preparing of the inputs, which ours does before the timed span.
    """

    def __init__(self, python: str, checkout: str, checkpoint: Path, video_files: list[Path], new_tokens: int):
        super().__init__("reference", lambda: None, "cpu")
        self.command = [python, str(Path(__file__).with_name("reference_driver.py")), "--reference", checkout,
                        "--checkpoint", str(checkpoint), "--new-tokens", str(new_tokens),
                        "--threads", str(torch.get_num_threads()), "--videos", *map(str, video_files)]
        self.ids: list[list[int]] = []
        self.input_seconds: list[float] = []

    def once(self) -> None:
        done = subprocess.run(self.command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"the reference run failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        self.seconds.append(result["seconds"])
        self.input_seconds.append(result["input_seconds"])
        self.ids = result["ids"]


def report(title: str, rows: list[tuple[str, ...]]) -> None:
    print(f"\n{title}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, short low-resolution clip, few tokens")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per comparison (default: 3)")
    parser.add_argument("--new-tokens", type=int, nargs="+", default=None,
                        help="new tokens per video, one comparison each (default: 32 512; --quick: 16)")
    parser.add_argument("--videos", type=int, default=8, help="videos per batch (default: 8)")
    parser.add_argument("--clip-seconds", type=int, default=None, help="length of the synthetic clip (default: 300, --quick: 20)")
    parser.add_argument("--no-generate-baseline", action="store_true",
                        help="skip transformers' generate at batch N (slow with long outputs: it copies its cache every step)")
    parser.add_argument("--skip-media", action="store_true", help="skip the frame sampling and vision comparisons")
    parser.add_argument("--reference", metavar="DIR", help="checkout of the original code (bytedance/tarsier, branch tarsier)")
    parser.add_argument("--reference-python", metavar="PYTHON", help="the Python of the original code's environment")
    args = parser.parse_args()
    if bool(args.reference) != bool(args.reference_python):
        parser.error("--reference and --reference-python go together")

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.manual_seed(0)
    preset, seconds, size = ("tiny", 20, (640, 360)) if args.quick else ("small", 300, (1280, 720))
    seconds = args.clip_seconds or seconds
    new_tokens = args.new_tokens or ([16] if args.quick else [32, 512])
    print(f"device={device} dtype={dtype} preset={preset} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"rounds={args.rounds} (best / median)")

    clip_path = make_clip(seconds, *size)
    scratch = Path(tempfile.mkdtemp(prefix="tarsier-bench-"))
    folder = build_random_checkpoint(scratch / "model", preset)
    model = load_model(folder, device, dtype, progress=False)
    processor = TarsierProcessor.from_pretrained(folder)

    if not args.skip_media:
        # 1. Frame sampling: seek to the 8 sampled frames vs decode everything.
        ours = Measure("ours", lambda: load_frames(clip_path, 8), "cpu")
        base = Measure("full decode", lambda: full_decode_sampling(clip_path, 8), "cpu")
        alternate([ours, base], args.rounds, warmup=False)
        report(f"sample 8 frames from a {seconds} s {size[1]}p clip", [
            ("", "ours", "decode all frames", "speed-up"),
            ("seconds", ours.cell(), base.cell(), f"{base.median / ours.median:.1f}x"),
        ])

        # 2. Vision tower: stop at the selected layer vs all layers with every hidden state kept.
        frames = load_frames(clip_path, 8).images
        pixels = processor.pixel_values(frames).to(device, dtype)
        clip = CLIPVisionModel(model.config.vision_config).to(device, dtype).eval()
        prefix = "vision_tower.vision_model."
        clip.load_state_dict({k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)})
        with torch.inference_mode():
            ours = Measure("ours", lambda: model.get_image_features(pixels), device)
            base = Measure("reference", lambda: reference_vision(model, clip, pixels), device)
            alternate([ours, base], args.rounds)
        report("vision tower, 8 frames", [
            ("", "ours", "reference way", "ours vs reference"),
            ("seconds", ours.cell(), base.cell(), f"{base.median / ours.median:.2f}x faster"),
            ("peak memory", f"{ours.peak / 2**20:.0f} MiB", f"{base.peak / 2**20:.0f} MiB",
             f"{base.peak / max(ours.peak, 1):.2f}x less"),
        ])
        del clip

    # 3. Generation: N different videos, one at a time vs one batch (all rows run to the last token).
    rng = np.random.default_rng(0)
    side = model.config.vision_config.image_size
    video_files = []
    for index in range(args.videos):  # mp4 files (8 frames each): the original reads them with decord
        video_files.append(scratch / f"video{index}.mp4")
        write_video(video_files[-1], (rng.integers(0, 255, (side, side, 3), dtype=np.uint8) for _ in range(8)))
    videos = [load_frames(path, 8).images for path in video_files]  # the same pixels decord gives the original
    batch = processor(text=[PROMPT] * args.videos, videos=videos)
    singles = [processor(text=PROMPT, videos=[video]) for video in videos]
    positions = batch["input_ids"].shape[1]
    warmup = GenerationSettings(max_new_tokens=2, ignore_eos=True)  # first calls of a shape are slow (oneDNN, allocator)
    for inputs in [batch, *singles]:
        Generation(model, processor, inputs, warmup)()
    for n in new_tokens:
        settings = GenerationSettings(max_new_tokens=n, ignore_eos=True)
        together = Generation(model, processor, batch, settings)
        alone = [Generation(model, processor, single, settings) for single in singles]
        measures = [
            Measure("batch", together, device),
            Measure("one at a time", lambda: [run() for run in alone], device),
        ]
        if not args.no_generate_baseline:
            def generate_default_cache():
                with torch.inference_mode():
                    model.generate(**{k: v.to(device) for k, v in batch.items()}, max_new_tokens=n, min_new_tokens=n,
                                   do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
            measures.append(Measure("generate", generate_default_cache, device))
        if args.reference:
            reference = ReferenceRun(args.reference_python, args.reference, folder, video_files, n)
            measures.append(reference)
        alternate(measures, args.rounds, warmup=False)  # warmed up above; a full extra run of 512 tokens costs minutes
        ours, sequential = measures[0], measures[1]
        total = args.videos * n
        rows = [
            ("", "videos/s", "tokens/s", "seconds", "prefill s", "decode s", "peak memory", "batch is"),
            (f"ours, batch {args.videos}", f"{args.videos / ours.median:.3f}", f"{total / ours.median:.1f}", ours.cell(),
             f"{statistics.median(together.prefill):.1f}", f"{statistics.median(together.decode):.1f}",
             f"{ours.peak / 2**20:.0f} MiB", "-"),
            ("ours, one at a time", f"{args.videos / sequential.median:.3f}", f"{total / sequential.median:.1f}",
             sequential.cell(), f"{statistics.median(sum(r.prefill[i] for r in alone) for i in range(args.rounds)):.1f}",
             f"{statistics.median(sum(r.decode[i] for r in alone) for i in range(args.rounds)):.1f}",
             f"{sequential.peak / 2**20:.0f} MiB", f"{sequential.median / ours.median:.2f}x faster"),
        ]
        if not args.no_generate_baseline:
            generate = measures[2]
            rows.append((f"generate, default cache, batch {args.videos}", f"{args.videos / generate.median:.3f}",
                         f"{total / generate.median:.1f}", generate.cell(), "-", "-", f"{generate.peak / 2**20:.0f} MiB",
                         f"{generate.median / ours.median:.2f}x faster"))
        if args.reference:
            rows.append(("original code, one at a time", f"{args.videos / reference.median:.3f}",
                         f"{total / reference.median:.1f}", reference.cell(), "-", "-", "-",
                         f"{reference.median / ours.median:.2f}x faster"))
            rows.append(("ours one at a time vs original", "-", "-", "-", "-", "-", "-",
                         f"{reference.median / sequential.median:.2f}x faster"))
        report(f"generation: {args.videos} videos x 8 frames ({positions} positions each), {n} new tokens", rows)
        if args.reference:
            print(f"original code, decoding and preparing the inputs (not in its seconds above): "
                  f"{statistics.median(reference.input_seconds):.2f} s for {args.videos} videos (median)")
            same = reference.ids == [alone[i].ids[0] for i in range(args.videos)]
            print(f"greedy ids of the original code and ours, one at a time: {'identical' if same else 'DIFFERENT'}")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    from tarsier.errors import TarsierError

    try:
        main()
    except TarsierError as exc:  # e.g. no mistral-common (the test extra): one line saying what to install
        sys.exit(f"bench_core.py: {exc} (or pip install -e \".[test]\")")
