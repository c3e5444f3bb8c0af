"""What a user with one GPU gets: correctness on CUDA, then 7B-shaped throughput against `generate`
and against the limits of the card, measured in one run.

Sections (``--sections``, in this order by default; each is skipped when the time budget cannot fit it):

- ``limits``   -- the card's ceilings, measured here: bf16 matrix product TFLOP/s, device copy GB/s.
- ``checks``   -- ``benchmarks/gpu_checks.py`` (both families, tiny checkpoints), in a child process.
- ``tarsier``  -- a Tarsier-7b-shaped model (CLIP ViT-L/14-336 + 32 x 4096 Llama, vocab 32,064) with
  random bf16 weights built on the GPU, 8 frames (4,8xx positions), greedy, EOS ignored: our engine vs
  transformers' ``generate`` on the same inputs in the same process, one after the other, at batch
  1, 8 and 32 for 128 and 512 new tokens; prefill ms per video against peak FLOP/s, decode ms per
  step against the bandwidth bound, peak memory per row, the SDPA kernels that ran.
- ``compile``  -- the same model with ``engine.compile_decode_step`` (torch.compile, CUDA graphs):
  compile seconds, ms per step, ids against eager.
- ``tarsier2`` -- a Tarsier2-7B-shaped model (Qwen2-VL-7B config), 16 frames of 720p (9,216 visual
  tokens), batch 1 and 8, 128 new tokens, engine vs ``generate``.

Results go to ``OUT/results.json`` (after every measurement, so a run cut short keeps what it did)
and ``OUT/summary.md``; the summary is printed last.

    python benchmarks/gpu_suite.py --out gpu-results          # on a GPU machine (about 8 minutes)
    python benchmarks/gpu_suite.py --device cpu --quick       # a dry run of the whole script, tiny shapes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tarsier.engine.continuous_batch import generate_steps
from tarsier.engine.decode_step import compile_decode_step
from tarsier.engine.sampling import DecodeSettings, Sampler
from tarsier.models.tarsier.configuration_tarsier import TarsierConfig
from tarsier.models.tarsier.modeling_tarsier import TarsierForConditionalGeneration
from tarsier.models.tarsier2.configuration_tarsier2 import Tarsier2Config
from tarsier.models.tarsier2.modeling_tarsier2 import Tarsier2ForConditionalGeneration
from tarsier.testing import Preset, Tarsier2Preset, official_config, tarsier2_official_config

RESULTS: dict = {}
OUT = Path(".")
DEADLINE = float("inf")


def log(message: str) -> None:
    print(message, flush=True)
    with open(OUT / "log.txt", "a") as handle:
        handle.write(message + "\n")


def save() -> None:
    (OUT / "results.json").write_text(json.dumps(RESULTS, indent=2, default=str) + "\n")


def left() -> float:
    return DEADLINE - time.monotonic()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --- the card's limits ----------------------------------------------------------------------------
def measure_limits(device: str, quick: bool) -> dict:
    """bf16 matrix product rate on random data and device-to-device copy bandwidth (read + write)."""
    size = 1024 if quick else 8192
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    began, repeats = time.perf_counter(), 3 if quick else 20
    for _ in range(repeats):
        a @ b
    sync(device)
    tflops = 2 * size**3 * repeats / (time.perf_counter() - began) / 1e12
    source = torch.randn(2**24 if quick else 2**30, device=device, dtype=torch.bfloat16)  # 2 GiB on the GPU
    target = torch.empty_like(source)
    target.copy_(source)
    sync(device)
    began = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source)
    sync(device)
    gbps = 2 * source.numel() * source.element_size() * repeats / (time.perf_counter() - began) / 1e9
    del a, b, source, target
    return {"bf16_matmul_tflops": round(tflops, 1), "copy_gbps": round(gbps, 1), "matmul_size": size}


# --- 7B-shaped models with random weights, built on the device ------------------------------------
@dataclass
class Workload:
    """A model and how to make a batch of video prompts for it (one video per row, no padding)."""

    name: str
    model: torch.nn.Module
    make_inputs: Callable[[int], dict[str, torch.Tensor]]
    eos: int


def _randomise(model: torch.nn.Module) -> None:
    """Small random weights everywhere (norms 1, biases 0): no uninitialised memory reaches a timing."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.02)
            elif name.endswith("bias"):
                parameter.zero_()
            else:
                parameter.fill_(1.0)


def _build(model_class: type, config: object, device: str) -> torch.nn.Module:
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = model_class(config)
    finally:
        torch.set_default_dtype(torch.float32)
    _randomise(model)
    return model.eval()


def tarsier_7b(device: str, quick: bool, n_frames: int) -> Workload:
    """Tarsier-7b's published geometry: CLIP ViT-L/14-336 (24 x 1024), Llama-2-7B (32 x 4096, MLP 11,008)."""
    if quick:
        preset = Preset(vision_width=64, vision_layers=2, vision_heads=4, text_width=128, text_layers=2, text_heads=4)
    else:
        preset = Preset(vision_width=1024, vision_layers=24, vision_heads=16, text_width=4096, text_layers=32, text_heads=32)
    config = official_config(preset)
    config["text_config"]["intermediate_size"] = 352 if quick else 11008
    config["vision_config"]["intermediate_size"] = preset.vision_width * 4
    config = TarsierConfig(**config)
    model = _build(TarsierForConditionalGeneration, config, device)
    generator = torch.Generator().manual_seed(0)
    # "USER: <video>\nDescribe the video in detail. ASSISTANT:" with the 8 frames expanded, as the processor lays it out.
    head, tail = [1, 3148, 1001, 29901, 29871], [13, 4002, 29581, 278, 4863, 297, 9493, 29889, 319, 1799, 9047, 13566, 29901]
    ids = head + config.frame_token_ids() * n_frames + tail

    def make_inputs(batch: int) -> dict[str, torch.Tensor]:
        input_ids = torch.tensor([ids] * batch)
        pixels = torch.randn(batch * n_frames, 3, preset.image_size, preset.image_size, generator=generator)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                "pixel_values": pixels.to(device, torch.bfloat16)}

    return Workload("tarsier-7b-shaped", model, make_inputs, eos=2)


def tarsier2_7b(device: str, quick: bool, n_frames: int) -> Workload:
    """Qwen2-VL-7B's geometry: ViT 32 x 1280 + merger, Qwen2 28 x 3584 (MLP 18,944, 4 KV heads), vocab 152,064.

    ``n_frames`` sampled 720p frames, each fed twice (temporal patch 2), resized to 504 x 896 by the
    pixel cap: a grid of (n_frames, 36, 64) patches, 576 merged tokens per frame.
    """
    if quick:
        preset = Tarsier2Preset()
        grid = (2, 4, 8)
    else:
        preset = Tarsier2Preset(vision_width=1280, vision_layers=32, vision_heads=16, text_width=3584, text_layers=28,
                                text_heads=28, text_kv_heads=4, mrope_section=(16, 24, 24))
        grid = (n_frames, 36, 64)
    config = tarsier2_official_config(preset)
    if not quick:
        config["text_config"]["intermediate_size"] = 18944
        config["text_config"]["vocab_size"] = 152064
        config["vision_config"]["mlp_ratio"] = 4
    config = Tarsier2Config(**json.loads(json.dumps(config)))
    model = _build(Tarsier2ForConditionalGeneration, config, device)
    generator = torch.Generator().manual_seed(0)
    slots = grid[0] * grid[1] * grid[2] // 4
    # <|im_start|>user\n<|vision_start|> pads <|vision_end|>Describe the video in detail.<|im_end|>\n<|im_start|>assistant\n
    ids = [151644, 872, 198, 151652] + [151655] * slots + [151653, 74785, 279, 2766, 304, 7716, 13, 151645, 198, 151644, 77091, 198]
    ids = [i if i < config.text_config.vocab_size else 100 + i % 1000 for i in ids]

    def make_inputs(batch: int) -> dict[str, torch.Tensor]:
        input_ids = torch.tensor([ids] * batch)
        pixels = torch.randn(batch * grid[0] * grid[1] * grid[2], 3 * 2 * 14 * 14, generator=generator)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                "pixel_values": pixels.to(device, torch.bfloat16), "image_grid_thw": torch.tensor([grid] * batch)}

    return Workload("tarsier2-7b-shaped", model, make_inputs, eos=151645)


# --- runs -----------------------------------------------------------------------------------------
def run_engine(work: Workload, inputs: dict[str, torch.Tensor], new_tokens: int, device: str) -> dict:
    """Our engine: seconds to the first token (prefill), then per step; ids; peak memory."""
    settings = DecodeSettings(max_new_tokens=new_tokens, eos_token_id=None, sampler=Sampler(), ignore_eos=True)
    media = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    prompts = [(ids.tolist(), row_media, settings)
               for ids, row_media in zip(inputs["input_ids"], work.model.media_by_row(inputs["input_ids"], media))]
    sync(device)
    base = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    steps: list[list[int]] = []
    began = time.perf_counter()
    first = None
    for step in generate_steps(work.model, None, prompts):
        if first is None:
            first = time.perf_counter()  # the token is on the host: the prefill has ended
        steps.append([step[row] for row in sorted(step)])
    sync(device)
    ended = time.perf_counter()
    peak = torch.cuda.max_memory_allocated() - base if device.startswith("cuda") else 0
    return {"seconds": ended - began, "prefill_s": first - began, "decode_s": ended - first,
            "ms_per_step": 1000 * (ended - first) / max(new_tokens - 1, 1), "peak_bytes": peak,
            "ids": torch.tensor(steps).T.tolist()}


def run_generate(work: Workload, inputs: dict[str, torch.Tensor], new_tokens: int, device: str) -> dict:
    """transformers' ``generate`` (its default cache), greedy, forced to ``new_tokens`` as the reference runs it."""
    moved = {k: v.to(device) for k, v in inputs.items()}
    sync(device)
    base = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    with torch.inference_mode():
        out = work.model.generate(**moved, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                  eos_token_id=work.eos, pad_token_id=0)
    sync(device)
    seconds = time.perf_counter() - began
    peak = torch.cuda.max_memory_allocated() - base if device.startswith("cuda") else 0
    return {"seconds": seconds, "peak_bytes": peak, "ids": out[:, inputs["input_ids"].shape[1]:].tolist()}


def prefill_flops(work: Workload, inputs: dict[str, torch.Tensor], device: str) -> float:
    """Floating-point operations of one prompt's forward (vision + LLM, last logits), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    one = {k: v[: len(v) // inputs["input_ids"].shape[0]] if k == "pixel_values" else v[:1] for k, v in inputs.items()}
    one = {k: v.to(device) for k, v in one.items()}
    counter = FlopCounterMode(display=False)
    try:
        with torch.inference_mode(), counter:
            work.model(**one, logits_to_keep=1)
        return float(counter.get_total_flops())
    except AssertionError:  # torch's counter cannot size grouped-query attention: count by hand
        return counted_flops(work.model, one)


def counted_flops(model: torch.nn.Module, one: dict[str, torch.Tensor]) -> float:
    """Matrix-product FLOPs of one prompt: 2 x weights x tokens for every linear layer, plus attention
    (the LLM's causal half; the vision tower's full blocks, one per frame for Tarsier2's ViT)."""
    def linear_weights(module: torch.nn.Module) -> int:
        return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))

    positions = one["input_ids"].shape[1]
    text = model.config.text_config
    width = text.num_attention_heads * (getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
    head = model.get_output_embeddings().weight.numel()
    flops = 2 * (linear_weights(model.language_model) - head) * positions + 2 * head
    flops += text.num_hidden_layers * 2 * positions**2 * width
    grid = one["image_grid_thw"][0].tolist()
    patches, per_frame = grid[0] * grid[1] * grid[2], grid[1] * grid[2]
    merger = linear_weights(model.vision_tower.merger)
    flops += 2 * (linear_weights(model.vision_tower) - merger) * patches + 2 * merger * patches // 4
    vision = model.config.vision_config
    flops += vision.depth * grid[0] * 4 * per_frame**2 * vision.embed_dim
    return float(flops)


def decode_bytes(model: torch.nn.Module, batch: int, context: float) -> float:
    """The fewest bytes one decode step must read: the LLM's weights once (an embedding row per row
    aside) and each row's filled KV cache at ``context`` positions."""
    text = model.config.text_config
    language = model.language_model
    weights = sum(p.numel() * p.element_size() for p in language.parameters())
    weights -= model.get_input_embeddings().weight.numel() * model.get_input_embeddings().weight.element_size()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv = batch * text.num_hidden_layers * 2 * text.num_key_value_heads * head_dim * 2 * context
    return float(weights + kv)


def sdpa_kernels(work: Workload, inputs: dict[str, torch.Tensor], device: str) -> list[str]:
    """Names of the attention kernels a 4-token engine run launches (prefill and decode)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if device.startswith("cuda") else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        run_engine(work, inputs, 4, device)
    names = {event.key for event in prof.key_averages()}
    wanted = ("flash", "fmha", "efficient", "attention", "cudnn", "sdpa", "softmax")
    return sorted(name[:120] for name in names if any(word in name.lower() for word in wanted))


def agreement(ours: list[list[int]], theirs: list[list[int]]) -> str:
    """Rows with identical ids, and the mean length of the rows' common prefix (bf16 rounding differs
    between kernels, so a random model's near-tied logits may part ways after a while)."""
    prefixes = []
    for a, b in zip(ours, theirs):
        common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        prefixes.append(common)
    same = sum(a == b for a, b in zip(ours, theirs))
    return f"{same}/{len(ours)} (common prefix {sum(prefixes) / len(prefixes):.1f} of {len(ours[0])})"


def compare(work: Workload, inputs_for: Callable[[int], dict], batch: int, tokens: int, device: str,
            with_generate: bool) -> dict:
    """One round of ours then ``generate`` on the same inputs (a warm-up has already run; under a
    compiled step, an untimed first run compiles and records the graphs for this shape)."""
    inputs = inputs_for(batch)
    row = {"batch": batch, "new_tokens": tokens}
    if getattr(work.model, "compiled_decode_step", None) is not None:
        row["compile_and_first_run_s"] = round(run_engine(work, inputs, tokens, device)["seconds"], 1)
    ours = run_engine(work, inputs, tokens, device)
    row.update({"ours_s": round(ours["seconds"], 3),
           "ours_prefill_s": round(ours["prefill_s"], 3), "ours_ms_per_step": round(ours["ms_per_step"], 2),
           "ours_tokens_per_s": round(batch * tokens / ours["seconds"], 1),
           "ours_videos_per_s": round(batch / ours["seconds"], 3),
           "ours_peak_gb_per_row": round(ours["peak_bytes"] / batch / 1e9, 2)})
    if with_generate:
        theirs = run_generate(work, inputs, tokens, device)
        same = agreement(ours["ids"], theirs["ids"])
        row.update({"generate_s": round(theirs["seconds"], 3),
                    "generate_tokens_per_s": round(batch * tokens / theirs["seconds"], 1),
                    "generate_peak_gb_per_row": round(theirs["peak_bytes"] / batch / 1e9, 2),
                    "speedup_vs_generate": round(theirs["seconds"] / ours["seconds"], 2),
                    "rows_with_identical_ids": same})
    return row


def model_section(name: str, work: Workload, device: str, plan: list[tuple[int, int, bool]], compiled: bool = False) -> None:
    """Warm up, count the prefill's FLOPs, then run ``plan`` ((batch, new tokens, with generate) in
    order) while the time budget allows; each measured row is saved as soon as it exists. With
    ``compiled``, our engine's decode step is compiled (``engine.compile_decode_step``)."""
    section = RESULTS.setdefault(name, {"rows": []})
    limits = RESULTS.get("limits", {})
    warm = work.make_inputs(1)
    began = time.perf_counter()
    run_engine(work, warm, 4, device)
    run_generate(work, warm, 4, device)
    log(f"{name}: warm-up {time.perf_counter() - began:.1f} s")
    flops = prefill_flops(work, warm, device)
    section["prefill_tflop_per_video"] = round(flops / 1e12, 2)
    section["prompt_positions"] = int(warm["input_ids"].shape[1])
    section["weights_gb"] = round(sum(p.numel() * p.element_size() for p in work.model.parameters()) / 1e9, 2)
    try:
        section["attention_kernels"] = sdpa_kernels(work, warm, device)
    except Exception as exc:  # the profiler is a nicety
        section["attention_kernels"] = [f"profiler failed: {exc}"]
    section["attn_implementation"] = work.model.config._attn_implementation
    save()
    if compiled:
        compile_decode_step(work.model)
    try:
        run_plan(name, work, device, plan, flops)
    finally:
        if compiled:
            del work.model.compiled_decode_step
            torch._dynamo.reset()


def run_plan(name: str, work: Workload, device: str, plan: list[tuple[int, int, bool]], flops: float) -> None:
    section, limits = RESULTS[name], RESULTS.get("limits", {})
    compile_allowance = 45 if getattr(work.model, "compiled_decode_step", None) is not None else 0
    step_estimate = None
    for batch, tokens, with_generate in plan:
        # A row costs its prefill plus its steps, twice with generate; skip what the budget cannot hold.
        if step_estimate is not None:
            prefill, per_step = step_estimate
            ours = prefill * batch + per_step * (1 + batch / 16) * tokens + compile_allowance
            if with_generate and 2.6 * ours > left() - 20:
                log(f"{name}: batch {batch} x {tokens} tokens without generate (about {2.6 * ours:.0f} s, {left():.0f} s left)")
                with_generate = False
            if ours > left() - 20:
                log(f"{name}: skipped batch {batch} x {tokens} tokens (needs about {ours:.0f} s, {left():.0f} s left)")
                section["rows"].append({"batch": batch, "new_tokens": tokens, "skipped": f"about {ours:.0f} s needed"})
                save()
                continue
        try:
            row = compare(work, work.make_inputs, batch, tokens, device, with_generate)
        except torch.OutOfMemoryError as exc:
            row = {"batch": batch, "new_tokens": tokens, "error": f"out of memory: {str(exc).splitlines()[0]}"}
            torch.cuda.empty_cache()
        section["rows"].append(row)
        if "ours_s" in row:
            step_estimate = (row["ours_prefill_s"] / batch, row["ours_ms_per_step"] / 1000 / (1 + batch / 16))
            context = section["prompt_positions"] + tokens / 2
            bound_ms = 1000 * decode_bytes(work.model, batch, context) / (limits.get("copy_gbps", 1) * 1e9)
            row["decode_bound_ms"] = round(bound_ms, 2)
            row["decode_pct_of_bound"] = round(100 * bound_ms / row["ours_ms_per_step"], 1)
            row["prefill_ms_per_video"] = round(1000 * row["ours_prefill_s"] / batch, 1)
            row["prefill_pct_of_peak"] = round(100 * flops * batch / row["ours_prefill_s"] / 1e12
                                               / limits.get("bf16_matmul_tflops", float("inf")), 1)
        log(f"{name}: {json.dumps(row)}")
        save()


def compile_section(name: str, work: Workload, device: str, batches: list[int], tokens: int) -> None:
    """Eager, then compiled (the first run compiles and records the graphs; the second is timed), per batch size."""
    section = RESULTS.setdefault(name, {"rows": []})
    compile_decode_step(work.model)
    compiled_step = work.model.__dict__.pop("compiled_decode_step")
    try:
        for batch in batches:
            if left() < 90:
                log(f"{name}: skipped batch {batch} ({left():.0f} s left)")
                continue
            inputs = work.make_inputs(batch)
            eager = run_engine(work, inputs, tokens, device)
            work.model.compiled_decode_step = compiled_step
            first = run_engine(work, inputs, tokens, device)
            compiled = run_engine(work, inputs, tokens, device)
            del work.model.compiled_decode_step
            same = agreement(eager["ids"], compiled["ids"])
            row = {"batch": batch, "new_tokens": tokens, "compile_s": round(first["seconds"] - compiled["seconds"], 1),
                   "eager_ms_per_step": round(eager["ms_per_step"], 2), "compiled_ms_per_step": round(compiled["ms_per_step"], 2),
                   "step_speedup": round(eager["ms_per_step"] / compiled["ms_per_step"], 2),
                   "compiled_tokens_per_s": round(batch * tokens / compiled["seconds"], 1),
                   "rows_with_identical_ids": same}
            context = inputs["input_ids"].shape[1] + tokens / 2
            bound_ms = 1000 * decode_bytes(work.model, batch, context) / (RESULTS.get("limits", {}).get("copy_gbps", 1) * 1e9)
            row["compiled_pct_of_bound"] = round(100 * bound_ms / row["compiled_ms_per_step"], 1)
            section["rows"].append(row)
            log(f"{name}: {json.dumps(row)}")
            save()
    finally:
        work.model.__dict__.pop("compiled_decode_step", None)
        torch._dynamo.reset()


def checks_section(device: str, timeout: float, training: bool) -> None:
    script = Path(__file__).with_name("gpu_checks.py")
    try:
        done = subprocess.run([sys.executable, str(script), "--device", device, *([] if training else ["--no-training"])],
                              capture_output=True, text=True, timeout=timeout)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        output, code = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), "timeout"
    (OUT / "gpu_checks.log").write_text(output)
    lines = [line for line in output.splitlines() if line.startswith(("PASS", "FAIL", "info"))]
    RESULTS["checks"] = {"exit": code, "lines": lines}
    for line in lines:
        log(f"checks: {line}")
    save()


def summary() -> str:
    """The tables the README takes."""
    out = []
    limits = RESULTS.get("limits", {})
    if "device" in RESULTS:
        out.append(f"device: {RESULTS['device']}")
    if limits:
        out.append(f"measured limits: bf16 matmul {limits['bf16_matmul_tflops']} TFLOP/s, copy {limits['copy_gbps']} GB/s")
    checks = RESULTS.get("checks")
    if checks:
        passed = sum(line.startswith("PASS") for line in checks["lines"])
        failed = [line for line in checks["lines"] if line.startswith("FAIL")]
        out.append(f"gpu_checks.py: {passed} passed, {len(failed)} failed (exit {checks['exit']})")
        out.extend(failed)
    for name in ("tarsier", "tarsier-compiled", "tarsier2"):
        section = RESULTS.get(name)
        if not section:
            continue
        out.append(f"\n{name}: {section.get('prompt_positions')} positions, prefill {section.get('prefill_tflop_per_video')} "
                   f"TFLOP per video, weights {section.get('weights_gb')} GB, attention {section.get('attn_implementation')}")
        out.append("| batch | new tokens | ours s | tok/s | prefill ms/video (% peak) | decode ms/step (% of bound) | "
                   "generate s | tok/s | speed-up | GB/row ours / generate | same ids |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for row in section["rows"]:
            if "ours_s" not in row:
                out.append(f"| {row['batch']} | {row['new_tokens']} | {row.get('skipped') or row.get('error')} |")
                continue
            out.append(f"| {row['batch']} | {row['new_tokens']} | {row['ours_s']} | {row['ours_tokens_per_s']} | "
                       f"{row['prefill_ms_per_video']} ({row['prefill_pct_of_peak']}%) | {row['ours_ms_per_step']} "
                       f"({row['decode_pct_of_bound']}%) | {row.get('generate_s', '-')} | {row.get('generate_tokens_per_s', '-')} | "
                       f"{row.get('speedup_vs_generate', '-')} | {row['ours_peak_gb_per_row']} / "
                       f"{row.get('generate_peak_gb_per_row', '-')} | {row.get('rows_with_identical_ids', '-')} |")
        compiles = [str(row["compile_and_first_run_s"]) for row in section["rows"] if "compile_and_first_run_s" in row]
        if compiles:
            out.append("compile + first run (s): " + ", ".join(compiles))
        if section.get("attention_kernels"):
            out.append("attention kernels: " + "; ".join(section["attention_kernels"][:6]))
    compiled = RESULTS.get("compile")
    if compiled:
        out.append("\ncompiled decode step (torch.compile reduce-overhead):")
        out.append("| batch | compile s | eager ms/step | compiled ms/step | speed-up | % of bound | same ids |")
        out.append("|---|---|---|---|---|---|---|")
        for row in compiled["rows"]:
            out.append(f"| {row['batch']} | {row['compile_s']} | {row['eager_ms_per_step']} | {row['compiled_ms_per_step']} | "
                       f"{row['step_speedup']} | {row['compiled_pct_of_bound']}% | {row['rows_with_identical_ids']} |")
    for key, value in RESULTS.items():
        if isinstance(value, dict) and "error" in value:
            out.append(f"{key}: ERROR {value['error']}")
    return "\n".join(out)


def main() -> int:
    global OUT, DEADLINE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few tokens: a dry run of the script")
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-results"), help="folder for results.json, summary.md, logs")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the whole run; later rows are skipped to fit")
    parser.add_argument("--sections", default="limits,checks,tarsier,compile,tarsier-compiled,tarsier2")
    parser.add_argument("--no-checks-training", dest="checks_training", action="store_false",
                        help="gpu_checks.py without its training check")
    args = parser.parse_args()
    OUT = Path(args.out)
    OUT.mkdir(parents=True, exist_ok=True)
    DEADLINE = time.monotonic() + args.budget
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device (--device cpu --quick runs the script on the CPU)")
        return 1
    import transformers

    RESULTS["device"] = (f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}"
                         if device.startswith("cuda") else "cpu") + f", transformers {transformers.__version__}"
    log(RESULTS["device"])
    sections = args.sections.split(",")
    tokens = (8, 16) if args.quick else (128, 512)
    short, long = tokens
    tarsier = None
    for name in sections:
        if left() < 30:
            log(f"{name}: skipped, the time budget is spent")
            continue
        began = time.perf_counter()
        try:
            if name == "limits":
                RESULTS["limits"] = measure_limits(device, args.quick)
                log(f"limits: {RESULTS['limits']}")
            elif name == "checks":
                checks_section(device, timeout=min(240, left() - 60), training=args.checks_training)
            elif name in ("tarsier", "compile", "tarsier-compiled"):
                if tarsier is None:  # built once for both sections
                    tarsier = tarsier_7b(device, args.quick, n_frames=2 if args.quick else 8)
                if name == "tarsier":
                    plan = [(1, short, True), (8, short, True), (8, long, True), (32, short, True), (1, long, True),
                            (32, long, True)]
                    if args.quick:
                        plan = [(1, short, True), (2, long, True), (4, short, True)]
                    model_section(name, tarsier, device, plan)
                elif name == "tarsier-compiled":
                    plan = [(8, long, True), (32, long, False)] if not args.quick else [(2, long, True), (4, short, False)]
                    model_section(name, tarsier, device, plan, compiled=True)
                else:
                    compile_section(name, tarsier, device, [1, 8, 32] if not args.quick else [1, 2], short)
            elif name == "tarsier2":
                tarsier = None
                work = tarsier2_7b(device, args.quick, n_frames=16)
                model_section(name, work, device, [(1, short, True), (8, short, True)])
                del work
            else:
                raise ValueError(f"unknown section {name!r}")
        except Exception as exc:
            RESULTS.setdefault(name, {})["error"] = f"{type(exc).__name__}: {exc}"
            log(f"{name}: FAILED\n{traceback.format_exc()}")
        finally:
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            log(f"{name}: {time.perf_counter() - began:.0f} s")
            save()
    text = summary()
    (OUT / "summary.md").write_text(text + "\n")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
