"""The static-batch decode loop of the Python API (``generate_ids``/``generate_text``/``stream_text``):
a batch prepared together runs to its end. Applications and chats run
:class:`~tarsier.engine.continuous_batch.ContinuousBatch` instead, which shares the step
(:func:`_decode_step`), the cache and the sampling with it and lets requests join and leave.

Why our own loop rather than transformers' ``generate``:

- **A pre-allocated KV cache.** ``generate``'s default cache grows by concatenation, which copies the
  whole cache at every step: at batch 8 with ~4,800 positions per row that was 79% of a decode step
  on CPU. transformers' ``StaticCache`` is allocated once for prompt + new tokens.
- **Prefill sized to the device.** On CPU a batch-8 prefill cost ~1.8x per row what single prefills
  did (the padded attention mask and cache-unfriendly activation sizes), so CPU prefills one row at a
  time, without its left padding, into its slot of the batch cache; accelerators prefill the whole
  batch at once.
- **Finished rows leave the batch.** A row that produced EOS is dropped from the cache and from
  every later step, so a batch costs what its unfinished rows cost.
- **Tokens as they come, per row**, so one batch can stream every row (streaming, serving).
- **Settings per row** (serving): each row may have its own length limit, sampler and seed, and a
  caller can drop a row mid-generation (a client that went away, a stop string).

Greedy ids equal ``generate``'s for every row, alone or in a batch (tested), because left padding
is masked and position ids count attended tokens only.
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from tarsier.engine.kv_cache import KVCache
from tarsier.engine.sampling import DecodeSettings, banned_logits, penalise_repeats, sample_rows

if TYPE_CHECKING:
    from tarsier.models.interface import FamilyModel


COMPILED_CAPACITY_STEP = 1024  # KV cache lengths are rounded up to this under a compiled step


def compile_decode_step(model: FamilyModel, mode: str = "reduce-overhead", fullgraph: bool = False) -> None:
    """Compile the model's one-token decode forward with ``torch.compile`` (``reduce-overhead``: CUDA
    graphs on GPUs), so a step costs its kernels rather than thousands of Python-side launches.

    Prefill stays eager (its shapes change with every prompt). Each batch size and cache length
    compiles once (tens of seconds for a 7B model): cache lengths are rounded up to a multiple of
    ``COMPILED_CAPACITY_STEP`` and finished rows stay in their batch, so a job of similar videos
    compiles once or twice. Chat sessions' own caches keep their lengths.
    """
    model.compiled_decode_step = torch.compile(model.forward, mode=mode, dynamic=False, fullgraph=fullgraph)


def _decode_step(model: FamilyModel, **inputs: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, V]`` of the next token after one input token per row."""
    compiled = getattr(model, "compiled_decode_step", None)
    if compiled is None:
        return model(**inputs, use_cache=True, logits_to_keep=1).logits[:, -1]
    # Embedded outside: the forward's media check reads a count back to the host, which would split the graph.
    embeds = model.get_input_embeddings()(inputs.pop("input_ids"))
    torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed: replay over them
    return compiled(inputs_embeds=embeds, **inputs, use_cache=True, logits_to_keep=1).logits[:, -1].clone()


def prefill_rows_at_once(model: FamilyModel) -> bool:
    """Accelerators prefill the whole batch in one pass; CPUs go faster one row at a time (measured)."""
    return model.device.type != "cpu" or getattr(model, "hf_device_map", None) is not None


def _prefill(
    model: FamilyModel,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    media: Mapping[str, torch.Tensor],
    cache: KVCache,
) -> torch.Tensor:
    """Run the prompt through the model into ``cache``; returns the last position's logits ``[B, V]``.

    ``positions`` are ``[B, n]`` or, for M-RoPE, ``[3, B, n]``: rows are sliced on the last two axes.
    """
    kwargs = {"use_cache": True, "logits_to_keep": 1}
    if prefill_rows_at_once(model) or input_ids.shape[0] == 1:
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache.cache, **media, **kwargs)
        return out.logits[:, -1]
    logits = []
    length = input_ids.shape[1]
    for row, row_media in enumerate(model.media_by_row(input_ids, media)):
        # Left padding is not computed: the row's tokens go to the right end of its cache slot,
        # where the padded batch has them (the padding's positions stay masked).
        start = length - int(mask[row, :length].sum())
        if not mask[row, start:length].all():  # not left padding: run the row as it is
            start = 0
        row_cache = KVCache(model, 1, length - start)
        out = model(input_ids=input_ids[row : row + 1, start:], attention_mask=mask[row : row + 1, start:length],
                    position_ids=positions[..., row : row + 1, start:], cache=row_cache.cache, **row_media, **kwargs)
        cache.copy_row(row, row_cache, length - start, offset=start)
        logits.append(out.logits[:, -1])
    cache.set_length(length)
    return torch.cat(logits)


def decode(
    model: FamilyModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor | None,
    settings: DecodeSettings | Sequence[DecodeSettings],
    cancelled: Container[int] = (),
    *,
    extra_inputs: Mapping[str, torch.Tensor] | None = None,
) -> Iterator[dict[int, int]]:
    """Yield ``{row: token}`` after every step for the rows still running; a row's EOS is its last.

    ``input_ids`` are left-padded prompts ``[B, n]``. ``extra_inputs`` are the model's other media
    inputs for the prompt (Tarsier2's ``image_grid_thw``). ``settings`` is one for the batch or one
    per row. A row found in ``cancelled`` (checked after each step) stops there. Stopping the
    iteration early stops generation after the current step.

    The model places the prompt (:meth:`prefill_positions`: positions and a per-row delta, 0 for
    Tarsier, M-RoPE's for Tarsier2); every later token sits at ``attended tokens + delta``.
    """
    batch, length = input_ids.shape
    per_row = [settings] * batch if isinstance(settings, DecodeSettings) else list(settings)
    if len(per_row) != batch:
        raise ValueError(f"got {len(per_row)} decode settings for {batch} rows")
    limits = torch.tensor([row.max_new_tokens for row in per_row])
    # One row of stop ids per batch row, padded with -1 (never a token).
    widest = max(1, *(len(row.stop_ids) for row in per_row))
    eos = torch.tensor([list(row.stop_ids) + [-1] * (widest - len(row.stop_ids)) for row in per_row])
    samplers = [row.sampler for row in per_row]
    penalties = torch.tensor([row.repetition_penalty for row in per_row], dtype=torch.float32)
    longest = int(limits.max())
    # A compiled step replays one graph per batch shape, so its batch keeps finished rows (their tokens
    # are computed and ignored) rather than recording a graph for every size the batch shrinks to.
    compiled = getattr(model, "compiled_decode_step", None) is not None
    finished = torch.zeros(batch, dtype=torch.bool)
    capacity = length + longest
    if compiled:  # one graph serves every prompt length up to the next multiple of COMPILED_CAPACITY_STEP
        capacity = -(-capacity // COMPILED_CAPACITY_STEP) * COMPILED_CAPACITY_STEP
    cache = KVCache(model, batch, capacity, allocate=not prefill_rows_at_once(model))
    device = model.device
    media = {name: value for name, value in {"pixel_values": pixel_values, **(extra_inputs or {})}.items()
             if value is not None}
    input_ids = input_ids.to(device)
    # The 2D mask spans the whole cache so its width never changes; position ids count attended tokens.
    mask = torch.zeros(batch, cache.capacity, dtype=torch.long, device=device)
    mask[:, :length] = attention_mask.to(device)
    positions, deltas = model.prefill_positions(input_ids, mask[:, :length], media)
    next_position = mask.sum(-1) + deltas[:, 0]
    logits = _prefill(model, input_ids, mask, positions, media, cache)
    banned = banned_logits(per_row, logits.shape[-1], device)
    seen = None
    if (penalties != 1).any():  # the prompt's attended ids count
        counts = torch.zeros(batch, logits.shape[-1], dtype=torch.int32, device=device)
        seen = counts.scatter_add_(1, input_ids, mask[:, :length].int()) > 0

    rows = torch.arange(batch)
    for step in range(longest):
        if banned is not None:
            logits = logits.masked_fill(banned, float("-inf"))
        if seen is not None:
            logits = penalise_repeats(logits, seen, penalties)
        tokens = sample_rows(logits, samplers).cpu()
        if seen is not None:
            seen[torch.arange(len(tokens), device=device), tokens.to(device)] = True
        yield {row: token for row, token, done in zip(rows.tolist(), tokens.tolist(), finished.tolist()) if not done}
        running = ~finished & ~(tokens[:, None] == eos).any(1) & (limits > step + 1)
        if cancelled:
            running &= torch.tensor([row not in cancelled for row in rows.tolist()], dtype=torch.bool)
        if not running.all():
            if not running.any():
                return
            if compiled:
                finished = ~running
            else:
                keep = running.nonzero().squeeze(1)
                rows, tokens, limits, eos, penalties = rows[keep], tokens[keep], limits[keep], eos[keep], penalties[keep]
                samplers = [samplers[index] for index in keep.tolist()]
                on_device = keep.to(device)
                mask, next_position = mask[on_device], next_position[on_device]
                if seen is not None:
                    seen = seen[on_device]
                cache.keep_rows(on_device)
                finished = finished[keep]
        mask[:, length + step] = 1
        logits = _decode_step(model, input_ids=tokens[:, None].to(device), attention_mask=mask,
                              position_ids=next_position[:, None], cache=cache.cache)
        next_position = next_position + 1
