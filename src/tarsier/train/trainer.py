"""The training loop: one stage of the Tarsier recipe on one CPU, one GPU or many, via accelerate.

What a step does: ``gradient_accumulation`` micro-batches per process (gradients synchronised
only on the last), clip the gradient norm, AdamW step, scheduler step. The ViT is frozen (no
gradients, eval mode) unless a config says otherwise; the projector and the LLM (or LoRA adapters
on it) train. On GPUs the forward runs under bf16 autocast with fp32 master weights.

Processes: ``torchrun``/``accelerate launch`` start one per device (or several on a CPU); with
``distributed.strategy: fsdp`` (the default of the recipes) parameters, gradients and optimizer
state are sharded with FSDP2 (wrapping each Llama decoder and CLIP encoder layer), else each
process holds a replica (DDP). Both run over NCCL on GPUs and gloo on CPUs; one process is plain.

Determinism: the samples of step ``k`` are a function of the seed and ``k`` alone (see
:mod:`tarsier.train.mixture`), and checkpoints hold the optimizer, scheduler and RNG states, so a
resumed run computes the same next-step loss as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tarsier.errors import TarsierError
from tarsier.jsonl import JsonlAppender
from tarsier.models import auto
from tarsier.train import checkpoints
from tarsier.train.config import StageConfig, config_differences
from tarsier.train.data import Collator, TrainingDataset, worker_init
from tarsier.train.init import start_folder
from tarsier.train.mixture import MixtureSchedule, RankBatchSampler, load_mixture

# Bad items are judged against the cap only once this many have been attempted.
MIN_ITEMS_FOR_BAD_FRACTION = 100


@dataclass
class TrainResult:
    output: Path  # the final model, in the official layout
    steps: int
    losses: list[float] = field(default_factory=list)  # mean loss of each step this run took
    seconds: float = 0.0
    bad_items: int = 0


def data_workers(wanted: int, processes_per_machine: int = 1) -> int:
    """``data.num_workers``, capped at the CPUs this process may use (shared by the machine's
    training processes): 8 workers on a 2-core machine only made torch warn and the cores thrash."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(wanted, max(1, cpus // max(1, processes_per_machine)))


def train(config: StageConfig, output: str | Path, resume: str | None = None, progress: bool = True) -> TrainResult:
    """Run one stage; the final model is written to ``output`` and each checkpoint below it."""
    from accelerate.utils import set_seed

    output = Path(output)
    model_frames, model_max_length = family_data_defaults(config)
    mixture = load_mixture(config.data, model_frames)
    accelerator = make_accelerator(config, text_only_items=mixture.has_text_only)
    main = accelerator.is_main_process
    say = _printer(main)
    checkpoint = _checkpoint_to_resume(output, resume, config, accelerator.num_processes, accelerator.distributed_type.value)
    set_seed(config.train.seed)
    for line in mixture.summary():
        say(f"data: {line}")
    for line in mixture.skipped():
        say(f"data: skipped {line}")

    with accelerator.main_process_first():  # assembling a start model from components happens once
        folder = start_folder(config.model, output)
    model, processor = load_start_model(folder, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    vit = "trained" if config.model.train_vision_tower else "frozen"
    processes = "1 process" if accelerator.num_processes == 1 else f"{accelerator.num_processes} processes ({accelerator.distributed_type.value})"
    say(f"model: {folder} | {trainable / 1e6:.2f}M of {total / 1e6:.2f}M parameters train (ViT {vit}"
        f"{', LoRA' if config.model.lora.enabled else ''}) | {processes}, mixed precision {accelerator.mixed_precision}")

    state = checkpoints.read_trainer_state(checkpoint) if checkpoint else {"step": 0, "bad_items": 0, "attempted": 0, "seconds": 0.0}
    start_step, max_steps = state["step"], config.train.max_steps
    accumulation = config.train.gradient_accumulation
    schedule = MixtureSchedule([s.size for s in mixture.sources], [s.weight for s in mixture.sources], config.train.seed)
    sampler = RankBatchSampler(
        schedule, config.train.micro_batch_size, accelerator.process_index, accelerator.num_processes,
        first_microstep=start_step * accumulation, microsteps=(max_steps - start_step) * accumulation,
    )
    dataset = TrainingDataset(mixture.items, mixture.ranges, processor, [s.n_frames for s in mixture.sources],
                              config.data.max_length or model_max_length)
    workers = data_workers(config.data.num_workers, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=Collator(processor), num_workers=workers,
        worker_init_fn=worker_init, prefetch_factor=4 if workers else None,
    )

    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LearningRate(config))
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    batches = iter(loader)  # before restoring RNG: starting workers draws from it
    if checkpoint:
        accelerator.load_state(str(checkpoint / "training_state"))
        say(f"resumed from {checkpoint} at step {start_step}")

    log = TrainingLog(output, config, main, resumed=checkpoint is not None)
    result = TrainResult(output=output, steps=start_step, bad_items=state["bad_items"])
    bad, attempted = state["bad_items"], state["attempted"]
    started, previous_seconds = time.perf_counter(), state["seconds"]
    set_train_mode(model, config)
    bar = _progress(main and progress, start_step, max_steps)
    try:
        for step in range(start_step, max_steps):
            totals = torch.zeros(4, dtype=torch.float64)  # loss, failures, tokens, samples
            for micro in range(accumulation):
                batch = next(batches)
                failures = batch.pop("failures")
                batch.pop("tasks")
                if failures and main:
                    for failure in failures[:3]:
                        say(f"data: skipped {failure}")
                inputs = {k: v.to(accelerator.device) for k, v in batch.items()}
                sync = micro == accumulation - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(model), _oom_hint(config, step, inputs):
                    loss = model(**inputs).loss
                    accelerator.backward(loss / accumulation)
                tokens, samples = float(inputs["attention_mask"].sum()), len(inputs["input_ids"])
                totals += torch.tensor([loss.item() / accumulation, len(failures), tokens, samples], dtype=torch.float64)
            grad_norm, lr = None, scheduler.get_last_lr()[0]
            if config.optim.max_grad_norm > 0:
                grad_norm = float(accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.optim.max_grad_norm))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            totals = accelerator.reduce(totals.to(accelerator.device), reduction="sum").cpu()
            step_loss = float(totals[0]) / accelerator.num_processes
            bad += int(totals[1])
            attempted += int(totals[1] + totals[3])
            result.losses.append(step_loss)
            result.steps, result.bad_items = step + 1, bad
            if attempted >= MIN_ITEMS_FOR_BAD_FRACTION and bad > config.data.max_bad_fraction * attempted:
                raise TarsierError(
                    f"{bad} of {attempted} items could not be used ({100 * bad / attempted:.1f}%), more than "
                    f"data.max_bad_fraction={config.data.max_bad_fraction:g}; see the skipped items above"
                )
            log.step(step + 1, step_loss, lr, grad_norm, int(totals[2]), int(totals[3]), bad)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
            done = step + 1 == max_steps
            if done or (config.train.save_every and (step + 1) % config.train.save_every == 0):
                seconds = previous_seconds + time.perf_counter() - started
                trainer_state = {"step": step + 1, "bad_items": bad, "attempted": attempted, "seconds": seconds,
                                 "processes": accelerator.num_processes, "distributed": accelerator.distributed_type.value, "samples": (step + 1) * config.global_batch * accelerator.num_processes}
                say(f"saved {save_checkpoint(accelerator, model, folder, output, config, trainer_state)}")
    finally:
        if bar is not None:
            bar.close()
        log.close()
    if main:  # the last step always saves: its model becomes the final one
        checkpoints.link_model_files(checkpoints.checkpoints(output)[-1], output)
    accelerator.wait_for_everyone()
    result.seconds = previous_seconds + time.perf_counter() - started
    say(f"done: {result.steps} steps in {result.seconds:.0f}s; final model in {output}")
    return result


# -- setup ----------------------------------------------------------------------------------------


def make_accelerator(config: StageConfig, text_only_items: bool = False):
    """An Accelerator for this launch: FSDP2 over several processes when asked, else DDP.

    Text-only batches leave the projector (and a trained ViT) without gradients, which DDP must
    be told about (``find_unused_parameters``) when the mixture has text-only items.

    accelerate takes an FSDP plugin only on accelerators: for CPU processes it keeps gloo DDP
    (``MULTI_CPU``) and drops the plugin. FSDP2 itself runs on gloo, so there the FSDP mode is set
    after the fact, as accelerate sets it for GPUs (in both of its shared states: ``AcceleratorState``
    copies ``PartialState``'s mode whenever it is constructed again).
    """
    from accelerate import Accelerator, FullyShardedDataParallelPlugin
    from accelerate.state import PartialState
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType

    cuda = torch.cuda.is_available()
    precision = config.train.mixed_precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    plugin = None
    if config.distributed.strategy == "fsdp" and world > 1:
        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=["LlamaDecoderLayer", "CLIPEncoderLayer"],
            reshard_after_forward=True,
            state_dict_type="SHARDED_STATE_DICT",
            cpu_offload=config.distributed.fsdp_cpu_offload and cuda,  # on CPUs it has nowhere to go (and pins memory)
            cpu_ram_efficient_loading=False,
        )
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=text_only_items)]
    accelerator = Accelerator(cpu=not cuda, mixed_precision=precision, fsdp_plugin=plugin, kwargs_handlers=handlers)
    if plugin is not None and accelerator.distributed_type == DistributedType.MULTI_CPU:
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        PartialState._shared_state["distributed_type"] = accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin
    return accelerator


def family_data_defaults(config: StageConfig) -> tuple[int, int]:
    """Frames per video (as the family's processor samples them) and tokens per sample for the start
    model's family (a model assembled from LLaVA or CLIP + Llama is first-generation)."""
    family = auto.family_of(config.model.checkpoint) if config.model.checkpoint else auto.DEFAULT_FAMILY
    return family.default_n_frames, family.training_max_length


def load_start_model(folder: Path, config: StageConfig):
    """The model in fp32 (master weights) with the trainable parts chosen, and its processor."""
    checkpoint = auto.read_checkpoint(folder)
    processor = auto.load_processor(checkpoint, max_n_frames=1 << 16)
    model = auto.load_model(checkpoint, dtype=torch.float32)
    settings = config.model
    model.requires_grad_(True)
    if not settings.train_vision_tower:
        for module in model.vision_encoder_modules():
            module.requires_grad_(False)
    if settings.lora.enabled:
        from peft import LoraConfig, inject_adapter_in_model

        lora = settings.lora
        inject_adapter_in_model(
            LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules),
            model.language_model,
        )
        for name, parameter in model.language_model.named_parameters():
            parameter.requires_grad = "lora_" in name
        if lora.train_embeddings:
            model.get_input_embeddings().requires_grad_(True)
            model.get_output_embeddings().requires_grad_(True)
    if settings.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model, processor


def set_train_mode(model: torch.nn.Module, config: StageConfig) -> None:
    """Train mode, except a frozen ViT, which stays in eval mode (no dropout, fixed features)."""
    model.train()
    if not config.model.train_vision_tower:
        for module in _unwrap(model).vision_encoder_modules():
            module.eval()


def build_optimizer(model: torch.nn.Module, config: StageConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only, and the projector at its own rate if one is set."""
    optim = config.optim
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            key = (name.startswith(model.projector_prefix), parameter.ndim >= 2)
            groups.setdefault(key, []).append(parameter)
    param_groups = [
        {"params": params, "weight_decay": optim.weight_decay if decays else 0.0,
         "lr": (optim.projector_lr or optim.lr) if projector else optim.lr}
        for (projector, decays), params in sorted(groups.items())
    ]
    return torch.optim.AdamW(param_groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps)


class LearningRate:
    """Multiplier of the base rates: linear warmup, then cosine decay to ``min_lr_ratio``."""

    def __init__(self, config: StageConfig):
        self.total = config.train.max_steps
        self.warmup = round(config.optim.warmup_ratio * self.total)
        self.floor = config.optim.min_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


# -- checkpoints ----------------------------------------------------------------------------------


def _checkpoint_to_resume(output: Path, resume: str | None, config: StageConfig, processes: int, mode: str) -> Path | None:
    """The checkpoint to continue from, after checking it was made with the same settings."""
    if resume is None:
        if checkpoints.checkpoints(output):
            raise TarsierError(f"{output} already holds checkpoints; pass --resume auto to continue, or choose another --output")
        return None
    checkpoint = checkpoints.resolve_resume(output, resume)
    if checkpoint is None:
        return None
    from tarsier.train.config import read_yaml

    saved = read_yaml(checkpoint / "train_config.yaml")
    differences = config_differences(saved, config.to_dict())
    if differences:
        raise TarsierError(f"cannot resume from {checkpoint}: the config differs from the one it was trained with: {'; '.join(differences)}")
    state = checkpoints.read_trainer_state(checkpoint)
    written_by = state.get("processes", 1)
    if written_by != processes:
        raise TarsierError(
            f"cannot resume from {checkpoint}: it was written by {written_by} process(es), this run has {processes}; "
            "the global batch (and so the training) would differ"
        )
    # FSDP writes its training state as sharded distributed checkpoints; every other mode as whole files.
    saved_mode = state.get("distributed", mode)
    if (saved_mode == "FSDP") != (mode == "FSDP"):
        raise TarsierError(
            f"cannot resume from {checkpoint}: it was written by a {saved_mode} run and this run is {mode}, "
            "so its training state is in the other layout"
        )
    return checkpoint


def save_checkpoint(accelerator, model, start: Path, output: Path, config: StageConfig, trainer_state: dict[str, Any]) -> Path:
    """Write ``checkpoint-STEP`` (official-layout model + training state) atomically; prune old ones."""
    step = trainer_state["step"]
    final = output / f"{checkpoints.CHECKPOINT_PREFIX}{step:06d}"
    scratch = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(scratch / "training_state"))
    state_dict = accelerator.get_state_dict(model)  # every process takes part (FSDP gathers)
    if accelerator.is_main_process:
        if config.model.lora.enabled:
            state_dict = checkpoints.merge_lora(state_dict, config.model.lora.alpha / config.model.lora.r)
        checkpoints.save_model(scratch, state_dict, start, config.train.save_dtype)
        (scratch / "train_config.yaml").write_text(config.to_yaml())
        (scratch / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        scratch.rename(final)
        checkpoints.prune_checkpoints(output, config.train.keep_checkpoints)
    accelerator.wait_for_everyone()
    return final


# -- logging --------------------------------------------------------------------------------------


class TrainingLog:
    """Loss, learning rate, gradient norm and throughput: JSONL (``train_log.jsonl``), optionally
    TensorBoard (``tensorboard/``), and a line on stderr every ``log_every`` steps."""

    def __init__(self, output: Path, config: StageConfig, enabled: bool, resumed: bool):
        self.enabled, self.every = enabled, config.train.log_every
        self.window: list[tuple[float, int, int]] = []
        self.window_started = time.perf_counter()
        self.writer = self.tensorboard = None
        if enabled:
            output.mkdir(parents=True, exist_ok=True)
            if not resumed:
                (output / "train_log.jsonl").unlink(missing_ok=True)
            self.writer = JsonlAppender(output / "train_log.jsonl")
            if config.train.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(output / "tensorboard"))

    def step(self, step: int, loss: float, lr: float, grad_norm: float | None, tokens: int, samples: int, bad: int) -> None:
        if not self.enabled:
            return
        self.window.append((loss, tokens, samples))
        if step % self.every:
            return
        seconds = time.perf_counter() - self.window_started
        record = {
            "step": step,
            "loss": sum(w[0] for w in self.window) / len(self.window),
            "lr": lr,
            "grad_norm": grad_norm,
            "samples_per_second": sum(w[2] for w in self.window) / seconds,
            "tokens_per_second": sum(w[1] for w in self.window) / seconds,
            "bad_items": bad,
        }
        self.writer.write(record)
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "step" and value is not None:
                    self.tensorboard.add_scalar(f"train/{key}", value, step)
        _printer(True)(
            f"step {step}: loss {record['loss']:.4f} lr {lr:.2e} grad-norm {grad_norm or 0:.3f} "
            f"{record['samples_per_second']:.1f} samples/s {record['tokens_per_second']:.0f} tokens/s"
        )
        self.window, self.window_started = [], time.perf_counter()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _printer(enabled: bool):
    """A print to stderr for the main process that keeps a progress bar intact."""
    from tqdm import tqdm

    def say(message: str) -> None:
        if enabled:
            tqdm.write(message, file=sys.stderr)

    return say


def _progress(enabled: bool, start: int, total: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", desc="training", file=sys.stderr, dynamic_ncols=True)


@contextlib.contextmanager
def _oom_hint(config: StageConfig, step: int, inputs: dict[str, torch.Tensor]):
    """Turn an out-of-memory error into advice naming the settings that help."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise TarsierError(
            f"out of memory at step {step + 1} (micro-batch of {inputs['input_ids'].shape[0]} x {inputs['input_ids'].shape[1]} tokens); "
            "set model.gradient_checkpointing=true, lower train.micro_batch_size (raise train.gradient_accumulation to keep "
            "the batch), lower data.n_frames, or shard over more GPUs with distributed.strategy=fsdp"
        ) from None


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)
