"""Stage configs: dataclasses, strict YAML loading, ``--set`` overrides and resume comparison.

A stage config says where the model starts (``model``), what it reads (``data``: a mixture of
JSONL sources), how it optimises (``optim``), how long and how it runs (``train``) and how it is
spread over devices (``distributed``). Every key is checked on load: an unknown key, a value of
the wrong type or out of range is a one-line :class:`~tarsier.errors.TarsierError` naming the file
and the dotted key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tarsier.config_files import read_yaml_mapping
from tarsier.errors import TarsierError

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSettings:
    """Low-rank adapters on the LLM's linear layers (peft); the projector stays fully trained."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    # The separator rows live in the embedding matrix; train it when they are new (stage 1 from LLaVA).
    train_embeddings: bool = False


@dataclass
class ModelSettings:
    """Where training starts: exactly one of ``checkpoint``, ``llava``, or ``vision`` + ``language``."""

    checkpoint: str | None = None  # a Tarsier checkpoint folder or hub id (fine-tuning, stage 2)
    llava: str | None = None  # a LLaVA / LLaVA-NeXT folder in the HF layout (e.g. llava-v1.6-vicuna-7b-hf)
    vision: str | None = None  # a CLIP (vision) model folder ...
    language: str | None = None  # ... plus a Llama / Vicuna folder; the projector starts random
    train_vision_tower: bool = False  # the Tarsier recipe keeps the ViT frozen
    gradient_checkpointing: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class SourceSettings:
    """One JSONL file of the mixture."""

    path: str
    weight: float = 1.0  # share of the samples drawn from this source (relative to the others)
    adapter: str = "chat"  # how its lines are read: chat (the common format) or a task adapter
    name: str | None = None  # shown in logs; defaults to the file name
    media_root: str | None = None  # relative media paths start here (default: the file's folder)
    n_frames: int | None = None  # frames per item unless the item says otherwise


@dataclass
class DataSettings:
    sources: list[SourceSettings] = field(default_factory=list)
    n_frames: int | None = None  # frames per video unless a source or item says; None: the start model's (8, Tarsier2 16)
    # tokens per sample after frame expansion, longer replies cut at the end; None: the start model's
    # (Tarsier 6,144: 8 frames of 601 and the text; Tarsier2 16,384, the reference's max_seq_len)
    max_length: int | None = None
    num_workers: int = 4  # DataLoader processes decoding frames
    max_bad_fraction: float = 0.01  # abort when more items than this fail (missing/undecodable media)


@dataclass
class OptimSettings:
    """AdamW with linear warmup and cosine decay."""

    lr: float = 2e-5
    projector_lr: float | None = None  # default: lr
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    max_grad_norm: float = 1.0  # 0 turns clipping off


@dataclass
class RunSettings:
    max_steps: int = 1000  # optimizer steps; each takes micro_batch_size * gradient_accumulation * processes samples
    micro_batch_size: int = 1
    gradient_accumulation: int = 8
    seed: int = 42
    mixed_precision: str = "auto"  # auto (bf16 on GPUs that have it, else fp32) | bf16 | fp16 | no
    save_dtype: str = "bf16"  # dtype of the weights written in the official layout: bf16 | fp16 | fp32
    log_every: int = 10
    save_every: int = 500  # 0: only at the end
    keep_checkpoints: int = 2  # newest checkpoint-* folders kept; 0 keeps all
    tensorboard: bool = False


@dataclass
class DistributedSettings:
    strategy: str = "fsdp"  # fsdp (sharded) | ddp (replicated); one process always runs plainly
    fsdp_cpu_offload: bool = False  # GPUs only


@dataclass
class StageConfig:
    stage: str = "custom"
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    train: RunSettings = field(default_factory=RunSettings)
    distributed: DistributedSettings = field(default_factory=DistributedSettings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, width=120)

    def to_template(self) -> str:
        """:meth:`to_yaml` with comments saying what to fill in (``--print-config``); loads back the same."""
        lines = [f"# tarsier train config ({self.stage}); every key with its value. See docs/training.md.",
                 "# Training needs a start model: exactly one of model.checkpoint, model.llava, or model.vision + model.language.",
                 "# Data paths are relative to the working directory. Run: tarsier train --config THIS_FILE --output DIR"]
        unset = not (self.model.checkpoint or self.model.llava or self.model.vision or self.model.language)
        section = None
        for line in self.to_yaml().splitlines():
            if line and not line.startswith(" "):
                section = line.split(":", 1)[0]
            key = line.strip().split(":", 1)[0]
            if section == "model" and line.startswith("  ") and not line.startswith("   ") and key in START_KEYS:
                required = unset and key == suggested_start(self)
                lines.append(f"  # {'REQUIRED (or another start): ' if required else 'start from '}{START_KEYS[key]}")
            if line.startswith("  ") and not line.startswith("   ") and f"{section}.{key}" in MODEL_DEFAULT_KEYS:
                lines.append(f"  # {MODEL_DEFAULT_KEYS[f'{section}.{key}']}")
            lines.append(line)
        return "\n".join(lines) + "\n"

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step in one process (times the number of processes)."""
        return self.train.micro_batch_size * self.train.gradient_accumulation


# Keys whose null means "the start model's family decides" (commented in --print-config).
MODEL_DEFAULT_KEYS = {
    "data.n_frames": "null: the start model's frames per video (Tarsier 8, Tarsier2 16)",
    "data.max_length": "null: the start model's tokens per sample (Tarsier 6144, Tarsier2 16384)",
}

# Keys a resumed run may change: they affect logging, saving and speed, never the numbers.
RESUMABLE_KEYS = {
    "train.log_every",
    "train.save_every",
    "train.keep_checkpoints",
    "train.tensorboard",
    "data.num_workers",
    "model.gradient_checkpointing",
}


# -- loading --------------------------------------------------------------------------------------


def load_config(
    path: str | Path | None = None, recipe: str | None = None, overrides: list[str] = (), complete: bool = True
) -> StageConfig:
    """A validated config from a YAML file or a built-in recipe, with ``key=value`` overrides applied.

    ``complete=False`` accepts a template: the settings a user must fill in (the start model, the
    data sources) may still be missing; every value that is given is checked all the same. This is
    what ``--print-config`` prints; training needs ``complete=True``.
    """
    from tarsier.train.recipes import RECIPES

    if (path is None) == (recipe is None):
        raise TarsierError("give exactly one of a config file (--config) or a built-in recipe (--recipe)")
    if recipe is not None:
        if recipe not in RECIPES:
            raise TarsierError(f"unknown recipe {recipe!r}; built-in recipes: {', '.join(RECIPES)}")
        data, where = RECIPES[recipe](), f"recipe {recipe}"
    else:
        data, where = read_yaml(Path(path)), str(path)
    for override in overrides:
        apply_override(data, override)
    return config_from_dict(data, where, complete)


def read_yaml(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "with sections model, data, optim, train, distributed")


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML: numbers, booleans, lists, mappings) in place."""
    import yaml

    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise TarsierError(f"--set {override!r}: expected KEY=VALUE, e.g. optim.lr=1e-5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise TarsierError(f"--set {key}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def config_from_dict(data: dict[str, Any], where: str, complete: bool = True) -> StageConfig:
    config = _build(StageConfig, data, "", where)
    validate(config, where, complete)
    return config


def _build(cls: type, data: Any, prefix: str, where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    section = prefix.rstrip(".") or "the config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TarsierError(f"{where}: '{section}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise TarsierError(f"{where}: unknown key '{prefix}{key}'; {section} takes: {', '.join(sorted(known))}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = _convert(hints[f.name], data[f.name], f"{prefix}{f.name}", where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TarsierError(f"{where}: '{prefix}{f.name}' is required")
    return cls(**values)


def _convert(hint: Any, value: Any, key: str, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, key, where)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".", where)
    if origin is list:
        if not isinstance(value, list):
            raise TarsierError(f"{where}: '{key}' must be a list, got {value!r}")
        return [_convert(args[0], item, f"{key}[{i}]", where) for i, item in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise TarsierError(f"{where}: '{key}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TarsierError(f"{where}: '{key}' must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TarsierError(f"{where}: '{key}' must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TarsierError(f"{where}: '{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint} for {key}")


# What each way to start takes, for the missing-start error and the comments of a printed config.
START_KEYS = {
    "checkpoint": "a Tarsier checkpoint folder or hub id (e.g. runs/stage1; fine-tuning, stage 2)",
    "llava": "a LLaVA-1.6 folder in the HF layout (e.g. models/llava-v1.6-vicuna-7b-hf; stage 1)",
    "vision": "a CLIP vision model folder, together with model.language",
    "language": "a Llama / Vicuna folder, together with model.vision (the projector then starts random)",
}


def suggested_start(config: StageConfig) -> str:
    """The start key a stage is normally given: LLaVA for stage 1, a checkpoint otherwise."""
    return "llava" if config.stage == "stage1" else "checkpoint"


def validate(config: StageConfig, where: str, complete: bool = True) -> None:
    """Range and consistency checks, each naming the key at fault.

    With ``complete=False`` (a template to print) the settings still to be filled in may be
    missing: the start model and the data sources.
    """

    def fail(key: str, problem: str) -> None:
        raise TarsierError(f"{where}: '{key}' {problem}")

    model = config.model
    starts = [name for name in ("checkpoint", "llava", "vision") if getattr(model, name)]
    if complete and (model.vision and not model.language or model.language and not model.vision):
        fail("model.vision" if not model.vision else "model.language", "is required with the other (CLIP + Llama components)")
    if len(starts) > 1:
        fail("model", f"needs exactly one start: checkpoint, llava, or vision + language (got {', '.join(starts)})")
    if complete and not starts and not model.language:
        key = suggested_start(config)
        other = "llava" if key == "checkpoint" else "checkpoint"
        fail(f"model.{key}", f"is not set: training needs a start model; set it in the config file or with --set model.{key}=PATH, "
             f"where PATH is {START_KEYS[key]}; or start from model.{other}, or model.vision + model.language")
    lora = model.lora
    if lora.enabled and (lora.r < 1 or lora.alpha <= 0):
        fail("model.lora.r", f"and alpha must be positive (r={lora.r}, alpha={lora.alpha})")
    if not 0 <= lora.dropout < 1:
        fail("model.lora.dropout", f"must be in [0, 1), got {lora.dropout}")

    data = config.data
    if complete and not data.sources:
        fail("data.sources", "must list at least one JSONL file")
    from tarsier.train.adapters import ADAPTERS

    for i, source in enumerate(data.sources):
        if source.weight <= 0:
            fail(f"data.sources[{i}].weight", f"must be positive, got {source.weight}")
        if source.adapter not in ADAPTERS:
            fail(f"data.sources[{i}].adapter", f"is {source.adapter!r}; known adapters: {', '.join(ADAPTERS)}")
        if source.n_frames is not None and source.n_frames < 1:
            fail(f"data.sources[{i}].n_frames", f"must be at least 1, got {source.n_frames}")
    if data.n_frames is not None and data.n_frames < 1:
        fail("data.n_frames", f"must be at least 1, got {data.n_frames}")
    if data.max_length is not None and data.max_length < 16:
        fail("data.max_length", f"must be at least 16 tokens, got {data.max_length}")
    if data.num_workers < 0:
        fail("data.num_workers", f"must be >= 0, got {data.num_workers}")
    if not 0 <= data.max_bad_fraction < 1:
        fail("data.max_bad_fraction", f"must be in [0, 1), got {data.max_bad_fraction}")

    optim = config.optim
    if optim.lr <= 0:
        fail("optim.lr", f"must be positive, got {optim.lr}")
    if optim.projector_lr is not None and optim.projector_lr <= 0:
        fail("optim.projector_lr", f"must be positive, got {optim.projector_lr}")
    for key in ("beta1", "beta2"):
        if not 0 <= getattr(optim, key) < 1:
            fail(f"optim.{key}", f"must be in [0, 1), got {getattr(optim, key)}")
    for key in ("weight_decay", "max_grad_norm", "eps"):
        if getattr(optim, key) < 0:
            fail(f"optim.{key}", f"must be >= 0, got {getattr(optim, key)}")
    if not 0 <= optim.warmup_ratio < 1:
        fail("optim.warmup_ratio", f"must be in [0, 1), got {optim.warmup_ratio}")
    if not 0 <= optim.min_lr_ratio <= 1:
        fail("optim.min_lr_ratio", f"must be in [0, 1], got {optim.min_lr_ratio}")

    run = config.train
    for key in ("max_steps", "micro_batch_size", "gradient_accumulation", "log_every"):
        if getattr(run, key) < 1:
            fail(f"train.{key}", f"must be at least 1, got {getattr(run, key)}")
    for key in ("save_every", "keep_checkpoints"):
        if getattr(run, key) < 0:
            fail(f"train.{key}", f"must be >= 0, got {getattr(run, key)}")
    if run.mixed_precision not in ("auto", "bf16", "fp16", "no"):
        fail("train.mixed_precision", f"is {run.mixed_precision!r}; use auto, bf16, fp16 or no")
    if run.save_dtype not in ("bf16", "fp16", "fp32"):
        fail("train.save_dtype", f"is {run.save_dtype!r}; use bf16, fp16 or fp32")
    if config.distributed.strategy not in ("fsdp", "ddp"):
        fail("distributed.strategy", f"is {config.distributed.strategy!r}; use fsdp or ddp")


# -- resume ---------------------------------------------------------------------------------------


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists of mappings keep their index (``a[0].b``)."""
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    if isinstance(data, list) and any(isinstance(item, dict) for item in data):
        flat = {f"{prefix.rstrip('.')}": len(data)}
        for i, item in enumerate(data):
            flat.update(flatten(item, f"{prefix.rstrip('.')}[{i}]."))
        return flat
    return {prefix.rstrip("."): data}


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: saved -> current`` for every setting a resumed run may not change."""
    before, after = flatten(saved), flatten(current)
    changes = []
    for key in sorted(set(before) | set(after)):
        if key in RESUMABLE_KEYS or before.get(key) == after.get(key):
            continue
        changes.append(f"{key}: {before.get(key, '(unset)')!r} -> {after.get(key, '(unset)')!r}")
    return changes
