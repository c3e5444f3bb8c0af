"""The trainer on a random tiny-fast checkpoint: learning, freezing, resuming, saving, bad input."""

import json

import pytest
import torch
from conftest import chat, make_config, write_jsonl

from tarsier import TarsierError, TarsierForConditionalGeneration
from tarsier.cli import main
from tarsier.engine.describer import Describer, DescribeRequest
from tarsier.engine.settings import GenerationSettings
from tarsier.train.trainer import train


def learned(losses):
    """The last three steps average under half the first three (a random model starts near ln 32000)."""
    return sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3


def weights(folder):
    model = TarsierForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_loss_decreases_and_only_the_projector_and_llm_change(fast_checkpoint, mixture_files, tmp_path):
    config = make_config(fast_checkpoint, mixture_files, "train.max_steps=12", "optim.lr=1e-2", "optim.min_lr_ratio=1.0")
    result = train(config, tmp_path / "run", progress=False)
    assert len(result.losses) == 12
    assert learned(result.losses), result.losses

    before, after = weights(fast_checkpoint), weights(tmp_path / "run")
    vision = [name for name in before if name.startswith("vision_tower.")]
    assert vision and all(torch.equal(before[name], after[name]) for name in vision)
    for prefix in ("multi_modal_projector.", "language_model.model.layers.", "language_model.lm_head."):
        assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith(prefix)), prefix
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13)) and all(r["tokens_per_second"] > 0 for r in log)


def test_the_loss_check_can_fail_when_nothing_is_learned(fast_checkpoint, mixture_files, tmp_path):
    config = make_config(fast_checkpoint, mixture_files, "train.max_steps=6", "optim.lr=1e-12", "optim.min_lr_ratio=1.0")
    losses = train(config, tmp_path / "run", progress=False).losses
    assert not learned(losses), losses


def test_a_resumed_run_takes_the_same_next_step_as_an_uninterrupted_one(fast_checkpoint, mixture_files, tmp_path):
    settings = ("train.max_steps=4", "train.gradient_accumulation=2", "optim.warmup_ratio=0.5", "train.save_every=2")
    whole = train(make_config(fast_checkpoint, mixture_files, *settings), tmp_path / "whole", progress=False)
    # Continue from the mid-run checkpoint (step 2) in a fresh folder; logging may change on resume.
    resumed = train(make_config(fast_checkpoint, mixture_files, *settings, "train.log_every=2"), tmp_path / "resumed",
                    resume=str(tmp_path / "whole" / "checkpoint-000002"), progress=False)
    assert resumed.losses[0] == whole.losses[2]
    assert resumed.losses == whole.losses[2:]
    final, resumed_final = weights(tmp_path / "whole"), weights(tmp_path / "resumed")
    assert all(torch.equal(final[name], resumed_final[name]) for name in final)


def test_resuming_with_a_different_config_is_refused_with_the_difference(fast_checkpoint, mixture_files, tmp_path):
    train(make_config(fast_checkpoint, mixture_files, "train.max_steps=2", "train.save_every=1"), tmp_path / "run", progress=False)
    with pytest.raises(TarsierError, match=r"cannot resume from .*checkpoint-000002: the config differs .*optim.lr: 0.001 -> 0.01"):
        train(make_config(fast_checkpoint, mixture_files, "train.max_steps=2", "optim.lr=1e-2"), tmp_path / "run", resume="auto", progress=False)
    with pytest.raises(TarsierError, match="already holds checkpoints; pass --resume auto"):
        train(make_config(fast_checkpoint, mixture_files, "train.max_steps=2"), tmp_path / "run", progress=False)
    assert [p.name for p in sorted((tmp_path / "run").glob("checkpoint-*"))] == ["checkpoint-000001", "checkpoint-000002"]
    state_file = tmp_path / "run" / "checkpoint-000002" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["distributed"] == "NO"
    state_file.write_text(json.dumps({**state, "distributed": "FSDP"}))  # as if sharded by FSDP processes
    with pytest.raises(TarsierError, match=r"written by a FSDP run and this run is NO, so its training state is in the other layout"):
        train(make_config(fast_checkpoint, mixture_files, "train.max_steps=2"), tmp_path / "run", resume="auto", progress=False)


def test_the_saved_model_loads_and_describes(fast_checkpoint, mixture_files, clip_folder, tmp_path, capsys):
    config = make_config(fast_checkpoint, mixture_files, "train.max_steps=2", "train.save_dtype=bf16")
    output = train(config, tmp_path / "run", progress=False).output
    assert json.loads((output / "config.json").read_text())["torch_dtype"] == "bfloat16"
    model = TarsierForConditionalGeneration.from_pretrained(str(output))
    assert model.config.image_newline_idx == 32002 and next(model.parameters()).dtype == torch.bfloat16
    describer = Describer.from_pretrained(str(output), device="cpu", max_n_frames=2, generation=GenerationSettings(max_new_tokens=4))
    result = next(describer.run([DescribeRequest("red", str(clip_folder / "red.mp4"))]))
    assert result.error is None and isinstance(result.text, str)
    assert main(["describe", str(clip_folder / "red.mp4"), "--model", str(output), "--max-new-tokens", "3", "--max-frames", "2"]) == 0


def test_lora_trains_adapters_and_saves_merged_weights_under_the_official_names(fast_checkpoint, mixture_files, tmp_path):
    config = make_config(fast_checkpoint, mixture_files, "train.max_steps=3", "model.lora.enabled=true", "model.lora.r=4",
                         "model.gradient_checkpointing=true")
    train(config, tmp_path / "run", progress=False)
    before, after = weights(fast_checkpoint), weights(tmp_path / "run")
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert any(".self_attn.q_proj.weight" in name for name in changed)
    assert any(name.startswith("multi_modal_projector.") for name in changed)
    assert not any(name.startswith("vision_tower.") or "embed_tokens" in name or "norm" in name for name in changed)


def test_too_many_undecodable_items_stop_the_run(fast_checkpoint, clip_folder, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 64)
    records = [chat(str(broken), "Q", "A")] * 3 + [chat(str(clip_folder / "red.mp4"), "Q", "A")]
    path = write_jsonl(tmp_path / "data.jsonl", records)
    config = make_config(fast_checkpoint, [path], "train.max_steps=60", "data.max_bad_fraction=0.5", "train.micro_batch_size=4")
    with pytest.raises(TarsierError, match=r"items could not be used \(\d+\.\d%\), more than data.max_bad_fraction=0.5"):
        train(config, tmp_path / "run", progress=False)


def test_out_of_memory_becomes_advice(fast_checkpoint, mixture_files, tmp_path, monkeypatch):
    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(TarsierForConditionalGeneration, "forward", exhausted)
    with pytest.raises(TarsierError, match=r"out of memory at step 1 .*model.gradient_checkpointing=true, lower train.micro_batch_size"):
        train(make_config(fast_checkpoint, mixture_files), tmp_path / "run", progress=False)


def test_a_malformed_json_line_is_skipped_reported_and_counted_by_the_cli(fast_checkpoint, clip_folder, tmp_path, capsys):
    good = "".join(json.dumps(chat(str(clip_folder / "red.mp4"), "Q", "A")) + "\n" for _ in range(9))
    path = tmp_path / "data.jsonl"
    path.write_text(good + '{"media": "red.mp4", "messages": [\n')  # a line cut short
    config = make_config(fast_checkpoint, [path], "train.max_steps=1", "data.max_bad_fraction=0.2")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config.to_yaml())
    assert main(["train", "--config", str(config_file), "--output", str(tmp_path / "run"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "data: data: 9 items (1 skipped)" in err and f"data: skipped {path}:10: not valid JSON (" in err
    assert (tmp_path / "run" / "model.safetensors").exists()
    # Over the cap: one line naming the count, the cap and the first bad line.
    assert main(["train", "--config", str(config_file), "--set", "data.max_bad_fraction=0.05", "--output", str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"tarsier: error: 1 of 10 data lines are unusable (10.0%), more than data.max_bad_fraction=0.05; first: {path}:10: not valid JSON")


def test_data_workers_never_outnumber_the_cpus(monkeypatch):
    from tarsier.train.trainer import data_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert data_workers(8) == 2 and data_workers(1) == 1 and data_workers(0) == 0
    assert data_workers(8, processes_per_machine=2) == 1 and data_workers(8, processes_per_machine=4) == 1
