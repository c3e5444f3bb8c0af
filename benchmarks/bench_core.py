"""Core performance: frame sampling, vision + prefill, decode throughput, peak memory.

Every figure is printed next to a plain baseline measured in the same run, as a ratio, because
machines are noisy and absolute numbers say little. Baselines:

- frame sampling: decoding the whole clip with PyAV and keeping the sampled frames;
- vision: the reference's way -- the full CLIP tower with every hidden state kept, then pick -2;
- batch decoding: the same prompts generated one at a time (the reference's only correct way).

    python benchmarks/bench_core.py                  # small model (ViT 6x256, LLM 6x512), 5-min 720p clip
    python benchmarks/bench_core.py --quick          # tiny model, 20 s 360p clip: a smoke run
    python benchmarks/bench_core.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import av
import numpy as np
import psutil
import torch
from transformers import CLIPVisionModel

from tarsier.media import load_frames, write_video
from tarsier.processor import TarsierProcessor
from tarsier.runtime import load_model, resolve_device, resolve_dtype
from tarsier.testing import build_random_checkpoint

CACHE = Path.home() / ".cache" / "tarsier-bench"


@contextmanager
def peak_memory(device: str):
    """Peak memory above the starting level while the block runs (GPU allocator or process RSS)."""
    result = {"bytes": 0}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        yield result
        torch.cuda.synchronize()
        result["bytes"] = torch.cuda.max_memory_allocated() - start
        return
    process = psutil.Process()
    start = process.memory_info().rss
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result["bytes"] = max(peak[0], process.memory_info().rss) - start


def timed(fn, repeat: int, device: str) -> float:
    """Median wall time of ``fn`` over ``repeat`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


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


def report(rows: list[tuple[str, str, str, str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # Make glibc hand large freed tensors back to the OS at once, so process RSS tracks live
        # CPU memory and the peaks below compare fairly. The variable must be set at start-up.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model and short low-resolution clip")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--clip-seconds", type=int, default=None, help="length of the synthetic clip (default: 300, --quick: 20)")
    args = parser.parse_args()

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.manual_seed(0)
    preset, seconds, size = ("tiny", 20, (640, 360)) if args.quick else ("small", 300, (1280, 720))
    seconds = args.clip_seconds or seconds
    rows = [("measure", "ours", "baseline", "ratio (baseline/ours)")]

    # 1. Frame sampling: seek to the 8 sampled frames vs decode everything.
    clip_path = make_clip(seconds, *size)
    ours = timed(lambda: load_frames(clip_path, 8), args.repeat, "cpu")
    base = timed(lambda: full_decode_sampling(clip_path, 8), 1, "cpu")
    rows.append((f"sample 8 frames, {seconds}s {size[1]}p clip", f"{ours:.2f} s", f"{base:.2f} s", f"{base / ours:.1f}x"))

    with tempfile.TemporaryDirectory() as scratch:
        folder = build_random_checkpoint(Path(scratch) / "model", preset)
        model = load_model(folder, device, dtype)
        processor = TarsierProcessor.from_pretrained(folder)
    frames = load_frames(clip_path, 8).images
    inputs = processor(text="<video>\nDescribe the video in detail.", videos=[frames])
    inputs = {k: v.to(device) for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)

    # 2. Vision tower: stop at the selected layer vs all layers with every hidden state kept.
    clip = CLIPVisionModel(model.config.vision_config).to(device, dtype).eval()
    prefix = "vision_tower.vision_model."
    clip.load_state_dict({k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)})
    pixels = inputs["pixel_values"]
    with torch.inference_mode():
        with peak_memory(device) as base_mem:
            base = timed(lambda: reference_vision(model, clip, pixels), args.repeat, device)
        with peak_memory(device) as ours_mem:
            ours = timed(lambda: model.get_image_features(pixels), args.repeat, device)
    rows.append(("vision, 8 frames", f"{ours * 1000:.0f} ms", f"{base * 1000:.0f} ms", f"{base / ours:.2f}x"))
    rows.append(("vision peak memory", f"{ours_mem['bytes'] / 2**20:.0f} MiB", f"{base_mem['bytes'] / 2**20:.0f} MiB",
                 f"{base_mem['bytes'] / max(ours_mem['bytes'], 1):.2f}x"))

    # 3. Prefill: vision + the LLM over the whole prompt (~4,800 positions for 8 frames).
    with torch.inference_mode(), peak_memory(device) as prefill_mem:
        prefill = timed(lambda: model(**inputs, logits_to_keep=1), args.repeat, device)
    positions = inputs["input_ids"].shape[1]
    rows.append((f"vision + prefill, {positions} positions", f"{prefill * 1000:.0f} ms", "-", "-"))
    rows.append(("prefill peak memory", f"{prefill_mem['bytes'] / 2**20:.0f} MiB", "-", "-"))

    # 4. Decoding: tokens/s at batch 1 and batch 8 (8 different videos) vs 8 single runs.
    def generate(batch):
        with torch.inference_mode():
            return model.generate(**batch, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                  do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)

    videos = [[frame.rotate(15 * i) for frame in frames[:4]] for i in range(8)]
    singles = [processor(text="<video>\nDescribe the video in detail.", videos=[video]) for video in videos]
    batch8 = processor(text=["<video>\nDescribe the video in detail."] * 8, videos=videos)

    def to_device(batch):
        moved = {k: v.to(device) for k, v in batch.items()}
        moved["pixel_values"] = moved["pixel_values"].to(dtype)
        return moved

    singles, batch8 = [to_device(b) for b in singles], to_device(batch8)
    one = timed(lambda: generate(singles[0]), args.repeat, device)
    sequential = timed(lambda: [generate(b) for b in singles], 1, device)
    with peak_memory(device) as batch_mem:
        batched = timed(lambda: generate(batch8), 1, device)
    rows.append(("decode tokens/s, batch 1 (incl. prefill)", f"{args.new_tokens / one:.1f}", "-", "-"))
    rows.append((
        "decode tokens/s, batch 8 (incl. prefill)",
        f"{8 * args.new_tokens / batched:.1f}",
        f"{8 * args.new_tokens / sequential:.1f} (8 x batch 1)",
        f"{sequential / batched:.2f}x",
    ))
    rows.append(("batch 8 generation peak memory", f"{batch_mem['bytes'] / 2**20:.0f} MiB", "-", "-"))

    print(f"device={device} dtype={dtype} preset={preset} torch={torch.__version__} threads={torch.get_num_threads()}")
    report(rows)


if __name__ == "__main__":
    main()
