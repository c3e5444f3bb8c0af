"""Ray settings (checked without importing torch or Ray), and a local Ray that ends with its command.

A local Ray that a command starts is that command's own: ``ray.shutdown()`` returns before every
worker has gone (a 566 MB ``MapWorker`` outlived a run by 20 s), and a driver killed with SIGKILL
leaves its whole cluster running. So the command records the processes it started (its
descendants, with their start times, in a folder of its own under the temp folder) while it runs,
stops the survivors itself when it ends, and the next command stops what a killed one left and
removes its folder. Only processes this machine's ``/proc`` shows as started by the command are
touched; elsewhere (no ``/proc``) Ray's own shutdown is all there is.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tarsier.errors import TarsierError

RUNS = Path(tempfile.gettempdir()) / "tarsier-ray-runs"
PROCESSES_FILE = "processes"  # "pid start-time" per line; the first line is the command itself


@dataclass
class RaySettings:
    """Where Ray runs and how the work is spread."""

    address: str | None = None  # None: a local Ray on this machine; "auto" or "ray://..." for a cluster
    replicas: int = 1  # model actors, one loaded model each
    gpus_per_replica: float = 0.0  # 0 on CPU machines
    cpus_per_replica: float = 1.0  # also the torch threads of a CPU actor
    decode_workers: int = 2  # concurrent CPU tasks decoding media
    num_cpus: int | None = None  # for a local Ray: CPUs it may use (default: all)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise TarsierError(f"--replicas must be at least 1, got {self.replicas}")
        if self.gpus_per_replica < 0:
            raise TarsierError(f"--gpus-per-replica must be 0 or more, got {self.gpus_per_replica}")
        if self.decode_workers < 1:
            raise TarsierError(f"--decode-workers must be at least 1, got {self.decode_workers}")


def require_ray() -> Any:
    """Import ray, or say in one line how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise TarsierError("--engine ray needs Ray Data: pip install -e \".[ray]\" (or pip install 'ray[data]')") from None
    return ray


class LocalRayRun:
    """The record of one command's local Ray: ``note()`` while it runs, ``stop()`` when it ends."""

    def __init__(self) -> None:
        clean_stale_runs()
        RUNS.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="run-", dir=RUNS))
        self.me = (os.getpid(), _start_time(os.getpid()))
        self._noted_at = 0.0
        self.note()

    def note(self, every: float = 0.0) -> None:
        """Record the command's descendants now (at most once per ``every`` seconds)."""
        now = time.monotonic()
        if now - self._noted_at < every:
            return
        self._noted_at = now
        known = set(_read(self.folder)[1:])
        known |= {(pid, _start_time(pid)) for pid in _descendants(os.getpid())}
        lines = [self.me, *sorted(entry for entry in known if entry[1] is not None)]
        scratch = self.folder / (PROCESSES_FILE + ".tmp")
        scratch.write_text("".join(f"{pid} {start}\n" for pid, start in lines))
        scratch.replace(self.folder / PROCESSES_FILE)

    def stop(self) -> None:
        """After ``ray.shutdown()``: end the run's processes still alive and remove its folder."""
        self.note()
        _stop(self.folder)


def clean_stale_runs() -> None:
    """Stop the processes of runs whose command is gone (killed) and remove their folders."""
    for folder in RUNS.glob("run-*") if RUNS.is_dir() else ():
        entries = _read(folder)
        if entries and _alive(*entries[0]):
            continue  # another command is running it
        _stop(folder)


def _stop(folder: Path, grace: float = 5.0) -> None:
    survivors = [pid for pid, start in _read(folder)[1:] if _alive(pid, start)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in survivors:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while survivors and time.monotonic() < deadline:
            time.sleep(0.05)
            survivors = [pid for pid in survivors if _alive(pid, None)]
        if not survivors:
            break
    shutil.rmtree(folder, ignore_errors=True)


def _read(folder: Path) -> list[tuple[int, int | None]]:
    try:
        text = (folder / PROCESSES_FILE).read_text()
    except OSError:
        return []
    entries = []
    for line in text.splitlines():
        pid, _, start = line.partition(" ")
        if pid.isdigit() and start.isdigit():
            entries.append((int(pid), int(start)))
    return entries


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], parent [1], start time [19])."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def _alive(pid: int, start: int | None) -> bool:
    """Running (not a zombie) and, when ``start`` is given, the same process (pids are reused)."""
    fields = _stat(pid)
    if fields is None or fields[0] == "Z":
        return False
    return start is None or int(fields[19]) == start


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, pending = [], list(children.get(root, []))
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, []))
    return found
