"""Memory of a long captioning job: does RSS stay flat over hundreds of clips?

Each clip is decoded, sampled and preprocessed as ``tarsier caption`` does (``load_frames`` then the
processor's pixels), with Python's garbage collector switched off, so any memory that only the
collector would free shows up as growth. Prints RSS every 50 clips and the growth from the first
50 to the last.

    python benchmarks/bench_memory.py                 # 500 decodes of 720p clips
    python benchmarks/bench_memory.py --clips 100 --height 360
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path

import numpy as np

from tarsier.media import load_frames, write_video
from tarsier.models.tarsier.processing_tarsier import ImageSettings, TarsierProcessor


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=500, help="clips to decode (default: 500)")
    parser.add_argument("--height", type=int, default=720, help="clip height; width is 16:9 (default: 720)")
    parser.add_argument("--distinct", type=int, default=5, help="distinct clip files, cycled (default: 5)")
    args = parser.parse_args()

    width = args.height * 16 // 9 // 2 * 2
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        paths = []
        for index in range(args.distinct):
            frames = (rng.integers(0, 255, (args.height, width, 3), dtype=np.uint8) for _ in range(50))
            path = Path(scratch) / f"clip{index}.mp4"
            write_video(path, frames, fps=25, preset="ultrafast")
            paths.append(path)
        processor = TarsierProcessor.__new__(TarsierProcessor)  # pixels only: no tokenizer needed
        processor.image_settings, processor.do_image_padding = ImageSettings(), False
        gc.collect()
        gc.disable()
        readings = []
        for index in range(args.clips):
            sampled = load_frames(paths[index % len(paths)], 8)
            processor.pixel_values(sampled.images)
            del sampled
            if (index + 1) % 50 == 0:
                readings.append(rss_mib())
                print(f"after {index + 1:4d} clips: RSS {readings[-1]:7.1f} MiB", flush=True)
        gc.enable()
    growth = readings[-1] - readings[0]
    print(f"growth from clip 50 to clip {args.clips}: {growth:+.1f} MiB (garbage collector off throughout)")


if __name__ == "__main__":
    main()
