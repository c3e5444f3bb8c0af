"""Two CPU processes (torchrun, gloo) train exactly like one process accumulating two micro-batches."""

import json
import os
import subprocess
import sys

from conftest import make_config
from tarsier import TarsierForConditionalGeneration
from tarsier.train.trainer import train


def test_two_gloo_processes_match_one_process_with_accumulation(fast_checkpoint, mixture_files, tmp_path):
    steps = ("train.max_steps=3", "train.micro_batch_size=1", "optim.lr=1e-2", "optim.min_lr_ratio=1.0")
    config = make_config(fast_checkpoint, mixture_files, *steps)
    path = tmp_path / "two.yaml"
    path.write_text(config.to_yaml())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tarsier.cli.train", "--config", str(path), "--output", str(tmp_path / "two"), "--no-progress"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes (MULTI_CPU)" in done.stderr
    two = [json.loads(line)["loss"] for line in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]

    one = train(make_config(fast_checkpoint, mixture_files, *steps, "train.gradient_accumulation=2"), tmp_path / "one", progress=False).losses
    assert len(two) == len(one) == 3
    assert all(abs(a - b) < 1e-4 for a, b in zip(one, two)), (one, two)
    assert one[-1] < one[0]
    state = json.loads((tmp_path / "two" / "trainer_state.json").read_text())
    assert state["processes"] == 2 and state["samples"] == 6
    TarsierForConditionalGeneration.from_pretrained(str(tmp_path / "two"))
