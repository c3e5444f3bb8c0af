"""A local Ray is its command's own: its processes are recorded, stopped at the end, and a killed
command's are stopped by the next one (without Ray here: plain processes stand in for its workers)."""

import os
import subprocess
import sys
import time

import pytest

from tarsier.errors import TarsierError
from tarsier.scale import local_ray
from tarsier.scale.local_ray import LocalRayRun, RaySettings, clean_stale_runs


@pytest.fixture(autouse=True)
def runs_here(tmp_path, monkeypatch):
    monkeypatch.setattr(local_ray, "RUNS", tmp_path / "runs")
    return tmp_path / "runs"


def sleeper(**options):
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], **options)


def gone(process, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    return process.poll() is not None


def test_a_run_stops_the_processes_it_started_and_removes_its_folder(runs_here):
    run = LocalRayRun()
    worker = sleeper()  # a descendant, as Ray's raylet and workers are
    run.note()
    assert f"{worker.pid} " in (run.folder / "processes").read_text()
    run.stop()
    assert gone(worker) and not run.folder.exists()


def test_the_next_run_stops_what_a_killed_command_left(runs_here):
    # a command that died: its record names it (no longer running) and a worker that outlived it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = sleeper(start_new_session=True)
    time.sleep(0.2)
    stale = runs_here / "run-stale"
    stale.mkdir(parents=True)
    start = local_ray._start_time(orphan.pid)
    (stale / "processes").write_text(f"{dead.stdout.strip()} 1\n{orphan.pid} {start}\n")
    # a command still running keeps its processes
    alive = runs_here / "run-alive"
    alive.mkdir()
    bystander = sleeper()
    (alive / "processes").write_text(f"{os.getpid()} {local_ray._start_time(os.getpid())}\n"
                                     f"{bystander.pid} {local_ray._start_time(bystander.pid)}\n")
    try:
        clean_stale_runs()
        assert gone(orphan) and not stale.exists()
        assert bystander.poll() is None and alive.exists()
    finally:
        bystander.kill()
        orphan.kill()


def test_a_reused_pid_is_never_stopped(runs_here):
    stale = runs_here / "run-reused"
    stale.mkdir(parents=True)
    bystander = sleeper()
    try:  # the same pid with another start time: another process now
        (stale / "processes").write_text(f"999999 1\n{bystander.pid} 1\n")
        clean_stale_runs()
        assert bystander.poll() is None and not stale.exists()
    finally:
        bystander.kill()


def test_ray_options_are_checked_before_torch_is_imported():
    with pytest.raises(TarsierError, match="--replicas must be at least 1"):
        RaySettings(replicas=0)
    script = ("import sys; from tarsier.cli import main; "
              "code = main(['caption', '.', '--output', 'x.jsonl', '--engine', 'ray', '--replicas', '0']); "
              "print(code, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["2", "False"] and "--replicas must be at least 1" in result.stderr
