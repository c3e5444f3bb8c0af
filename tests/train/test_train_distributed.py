"""Two CPU processes (torchrun, gloo) train exactly like one process accumulating two micro-batches,
whether each holds a replica (DDP) or a shard (FSDP2) of the parameters and optimizer state."""

import json
import os
import shutil
import subprocess
import sys

import torch
from conftest import make_config

from tarsier import TarsierForConditionalGeneration
from tarsier.train.trainer import train


def torchrun(config, output, *args):
    """``tarsier.cli.train`` in two CPU processes under torchrun; the finished (successful) run."""
    path = output.with_suffix(".yaml")
    path.write_text(config.to_yaml())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tarsier.cli.train", "--config", str(path), "--output", str(output), "--no-progress", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def logged_losses(output):
    return [json.loads(line)["loss"] for line in (output / "train_log.jsonl").read_text().splitlines()]


def weights(folder):
    model = TarsierForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_two_gloo_processes_match_one_process_with_accumulation(fast_checkpoint, mixture_files, tmp_path):
    steps = ("train.max_steps=3", "train.micro_batch_size=1", "optim.lr=1e-2", "optim.min_lr_ratio=1.0")
    done = torchrun(make_config(fast_checkpoint, mixture_files, *steps), tmp_path / "two")
    assert "2 processes (MULTI_CPU)" in done.stderr
    two = logged_losses(tmp_path / "two")

    one = train(make_config(fast_checkpoint, mixture_files, *steps, "train.gradient_accumulation=2"), tmp_path / "one", progress=False).losses
    assert len(two) == len(one) == 3
    assert all(abs(a - b) < 1e-4 for a, b in zip(one, two)), (one, two)
    assert one[-1] < one[0]
    state = json.loads((tmp_path / "two" / "trainer_state.json").read_text())
    assert state["processes"] == 2 and state["samples"] == 6
    TarsierForConditionalGeneration.from_pretrained(str(tmp_path / "two"))


def test_two_fsdp_processes_match_one_process_and_resume_where_they_stopped(fast_checkpoint, mixture_files, tmp_path):
    """FSDP2 over gloo: the gathered full state dict is the official-layout model, and the sharded
    training state (a distributed checkpoint) resumes the run exactly."""
    # Warmup then cosine decay, so that resuming must restore the scheduler too.
    steps = ("train.max_steps=4", "train.micro_batch_size=1", "optim.lr=1e-2", "optim.warmup_ratio=0.5", "train.save_every=2")
    fsdp = make_config(fast_checkpoint, mixture_files, *steps, "distributed.strategy=fsdp")
    done = torchrun(fsdp, tmp_path / "whole")
    assert "2 processes (FSDP)" in done.stderr
    whole = logged_losses(tmp_path / "whole")
    assert (tmp_path / "whole" / "checkpoint-000002" / "training_state" / "pytorch_model_fsdp_0" / ".metadata").is_file()

    one = train(make_config(fast_checkpoint, mixture_files, *steps, "train.gradient_accumulation=2"), tmp_path / "one", progress=False).losses
    # The same samples and gradients, but FSDP averages each gradient by a reduce-scatter and clips
    # with a norm summed from shards: float32 rounding differs (about 1e-6 of losses near 10).
    assert len(whole) == len(one) == 4
    assert all(abs(a - b) < 1e-4 for a, b in zip(one, whole)), (one, whole)
    final, reference = weights(tmp_path / "whole"), weights(tmp_path / "one")
    assert final.keys() == reference.keys()
    # AdamW moves each weight by up to lr (1e-2) a step whatever the gradient's size, so a missed or
    # wrong update shows at that scale; gradient rounding stays far below it (about 3e-6 is seen).
    assert all(torch.allclose(final[name], reference[name], rtol=0, atol=1e-4) for name in final)

    # A run stopped after its step-2 checkpoint (the checkpoint and the log so far) continues with
    # --resume auto and takes the uninterrupted run's steps 3 and 4.
    stopped = tmp_path / "stopped"
    shutil.copytree(tmp_path / "whole" / "checkpoint-000002", stopped / "checkpoint-000002")
    log = (tmp_path / "whole" / "train_log.jsonl").read_text().splitlines(keepends=True)
    (stopped / "train_log.jsonl").write_text("".join(log[:2]))
    done = torchrun(fsdp, stopped, "--resume", "auto")
    assert "resumed from" in done.stderr and "at step 2" in done.stderr
    assert logged_losses(stopped) == whole
    resumed = weights(stopped)
    assert all(torch.equal(final[name], resumed[name]) for name in final)
