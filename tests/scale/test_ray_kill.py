"""A ``--engine ray`` driver killed mid-run (SIGKILL), then rerun: nothing lost, nothing twice, no torn shard.

In its own module so that no Ray instance of the test process is running beside the driver's own.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tarsier.scale.local_ray import RUNS, _alive, _read
from tarsier.scale.shards import read_shard_records, shard_files

pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

from test_ray_engine import RAY, by_key, clips, in_process, model_args  # noqa: E402,F401,F811  (shared fixtures)

TARSIER = str(Path(sys.executable).with_name("tarsier"))


def test_a_driver_killed_mid_run_loses_and_repeats_nothing(clips, in_process, tmp_path):  # noqa: F811
    output = tmp_path / "captions"
    command = [TARSIER, "caption", str(clips / "list.txt"), "--output", f"{output}/", *model_args(),
               *RAY, "--shard-size", "3"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    while not shard_files(output) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert process.poll() is None, process.stderr.read().decode()
    os.kill(process.pid, signal.SIGKILL)  # the driver only: Ray's own processes go with it
    process.wait(30)
    done_before = len(read_shard_records(output))
    assert 0 < done_before < 20
    # what the killed driver's local Ray left running: the rerun stops it (and removes its record)
    [record] = [folder for folder in RUNS.glob("run-*") if _read(folder) and _read(folder)[0][0] == process.pid]
    left = _read(record)[1:]
    assert any(_alive(pid, start) for pid, start in left)  # Ray did not go with its driver
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert not record.exists() and not any(_alive(pid, start) for pid, start in left)
    assert not list(RUNS.glob("run-*"))  # the rerun, ended normally, stopped its own Ray too
    assert rerun.returncode in (0, 1), rerun.stderr  # 1 when a bad input was among those left
    assert f"20 inputs, {done_before} already in {output}, {20 - done_before} to caption" in rerun.stderr
    records = read_shard_records(output)
    assert len(records) == 20 and by_key(records).keys() == in_process.keys()
    assert not list(output.glob("*.pending"))
    for record in records:
        assert record["text"] == in_process[record["key"]]["text"]
