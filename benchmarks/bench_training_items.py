"""Memory of the training items: Python objects vs :class:`tarsier.train.mixture.PackedItems`.

A forked DataLoader worker that reads every item un-shares the memory pages it touches (reading a
Python object writes its reference count). Printed: the bytes each item takes, and the private
memory a forked worker has after reading every item, for both ways of keeping them.

    python benchmarks/bench_training_items.py            # 200,000 caption-like items
"""

from __future__ import annotations

import argparse
import gc
import os
import tracemalloc

import psutil

from tarsier.train.data import TrainingItem
from tarsier.train.mixture import PackedItems


def caption_item(i: int) -> TrainingItem:
    reply = f"A person {i} walks into a kitchen, opens the fridge and takes out a bottle of milk, then pours it into a glass."
    messages = [{"role": "user", "content": "<video>\nDescribe the video in detail."}, {"role": "assistant", "content": reply}]
    return TrainingItem(messages=messages, media=f"/data/videos/clip_{i:08d}.mp4", where=f"/data/stage1/captions.jsonl:{i}", task="caption")


def worker_private_bytes(items) -> int:
    """Private (unshared) memory of a forked child after it has read every item once."""
    gc.freeze()  # keep the collector itself from touching every object in the child
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        for index in range(len(items)):
            items[index].media  # noqa: B018 - the read is the point
        os.write(write, str(psutil.Process().memory_full_info().uss).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    gc.unfreeze()
    return int(os.read(read, 64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200_000)
    count = parser.parse_args().items

    tracemalloc.start()
    objects = [caption_item(i) for i in range(count)]
    object_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    packed = PackedItems(objects).freeze()
    objects_worker = worker_private_bytes(objects)
    packed_worker = worker_private_bytes(packed)
    print(f"{count} items            objects     packed      ratio")
    print(f"bytes per item         {object_bytes / count:8.0f}   {packed.nbytes / count:8.0f}   {object_bytes / packed.nbytes:5.1f}x")
    print(f"worker private MiB     {objects_worker / 2**20:8.1f}   {packed_worker / 2**20:8.1f}   {objects_worker / packed_worker:5.1f}x")


if __name__ == "__main__":
    main()
