"""The decode loop every generation path runs (describe, caption, bench, chat).

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

from collections.abc import Collection, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tarsier.model import Tarsier2ForConditionalGeneration, TarsierForConditionalGeneration

    # Either family: both give prefill_positions and media_by_row, the loop's only model-specific needs.
    TarsierModel = TarsierForConditionalGeneration | Tarsier2ForConditionalGeneration


class KVCache:
    """transformers' ``StaticCache`` plus what the loop needs: capacity, row copies, dropping rows.

    ``rope_deltas`` (``[B, 1]``, set when a prompt is prefilled) is each row's position delta: a chat's
    later turn continues at ``attended tokens + delta``, Tarsier2's M-RoPE delta from its first turn's
    media (0 for Tarsier). ``seen_ids`` (``[B, vocab]`` booleans, kept only under a repetition
    penalty) marks the ids each row's sequence holds, so a later turn penalises the earlier ones too.
    """

    def __init__(self, model: TarsierModel, batch_size: int, capacity: int, *, allocate: bool = False):
        from transformers import StaticCache

        text = model.config.text_config
        self.cache = StaticCache(config=text, max_cache_len=capacity)
        self.capacity = capacity
        self.rope_deltas: torch.Tensor | None = None
        self.seen_ids: torch.Tensor | None = None
        if allocate:  # needed before rows are copied in; otherwise each layer allocates on its own device
            head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
            self.cache.early_initialization(batch_size, text.num_key_value_heads, head_dim, model.dtype, model.device)

    @property
    def length(self) -> int:
        """Positions filled so far."""
        return int(self.cache.get_seq_length())

    def copy_row(self, row: int, source: KVCache, length: int, offset: int = 0) -> None:
        """Positions ``offset .. offset+length`` of row ``row`` take ``source``'s single row's first ``length``."""
        for target, layer in zip(self.cache.layers, source.cache.layers):
            target.keys[row, :, offset : offset + length].copy_(layer.keys[0, :, :length])
            target.values[row, :, offset : offset + length].copy_(layer.values[0, :, :length])

    def set_length(self, length: int) -> None:
        for layer in self.cache.layers:
            layer.cumulative_length.fill_(length)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop every row not in ``rows`` (one copy of the cache, when a row finishes, not per step)."""
        for layer in self.cache.layers:
            layer.keys = layer.keys[rows]
            layer.values = layer.values[rows]

    def with_capacity(self, model: TarsierModel, capacity: int) -> KVCache:
        """This cache if it holds ``capacity`` positions, else a larger copy (a chat's next turn)."""
        if capacity <= self.capacity:
            return self
        grown = KVCache(model, 1, capacity)
        grown.rope_deltas, grown.seen_ids = self.rope_deltas, self.seen_ids
        length = self.length
        for index, layer in enumerate(self.cache.layers):
            grown.cache.layers[index].update(layer.keys[:, :, :length], layer.values[:, :, :length])
        return grown


class Sampler:
    """Greedy argmax, or temperature + top-k + top-p sampling with transformers' own warpers (same maths).

    With a ``seed``, sampling draws from its own generator, so a request gives the same reply
    whatever else runs in its batch.
    """

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, top_k: int = 0):
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.greedy = temperature <= 0
        warpers = [] if self.greedy else [TemperatureLogitsWarper(temperature)]
        if not self.greedy and top_k > 0:  # in generate()'s order: temperature, top-k, top-p
            warpers.append(TopKLogitsWarper(top_k))
        if not self.greedy and top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        self.warpers = LogitsProcessorList(warpers)
        self.seed = seed
        self._generator: torch.Generator | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.greedy:
            return logits.argmax(-1)
        if self.seed is not None and self._generator is None:
            self._generator = torch.Generator(logits.device).manual_seed(self.seed)
        scores = self.warpers(None, logits.float())
        return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1, generator=self._generator).squeeze(1)


def banned_logits(settings: Sequence[DecodeSettings], vocab: int, device: torch.device) -> torch.Tensor | None:
    """A ``[vocab]`` mask of the ids no row may emit (every row's banned ids and padded rows), or None."""
    banned = torch.zeros(vocab, dtype=torch.bool)
    for row in settings:
        banned[[i for i in row.banned_ids if 0 <= i < vocab]] = True
        if row.vocab_end is not None:
            banned[row.vocab_end :] = True
    return banned.to(device) if banned.any() else None


def penalise_repeats(logits: torch.Tensor, seen: torch.Tensor, penalties: torch.Tensor) -> torch.Tensor:
    """transformers' repetition penalty (in float32, as ``generate`` applies it): the logit of an id
    already in a row's sequence is divided by the row's penalty, or multiplied when negative."""
    logits = logits.float()
    penalties = penalties.to(logits.device)[:, None]
    return torch.where(seen, torch.where(logits < 0, logits * penalties, logits / penalties), logits)


def _sample(logits: torch.Tensor, samplers: Sequence[Sampler]) -> torch.Tensor:
    """One token per row; rows sharing one sampler are sampled together."""
    if all(sampler is samplers[0] for sampler in samplers):
        return samplers[0](logits)
    tokens = logits.argmax(-1)
    for row, sampler in enumerate(samplers):
        if not sampler.greedy:
            tokens[row] = sampler(logits[row : row + 1])[0]
    return tokens


@dataclass
class DecodeSettings:
    """One row's decoding settings; ``eos_token_id`` is one id or several (Tarsier2 stops at either
    of ``<|im_end|>`` and ``<|endoftext|>``), normalised to a tuple."""

    max_new_tokens: int
    eos_token_id: int | Collection[int] | None
    sampler: Sampler
    ignore_eos: bool = False  # benchmarks: always run max_new_tokens steps
    repetition_penalty: float = 1.0  # 1: none; over 1 discourages ids already in the sequence (prompt included)
    # Ids that are not text and must never be emitted (media placeholders), and where text ids end
    # (the embedding's rows past it are padding). Greedy and sampling alike never pick them.
    banned_ids: tuple[int, ...] = ()
    vocab_end: int | None = None

    def __post_init__(self) -> None:
        ids = self.eos_token_id
        self.eos_token_id = () if ids is None else (int(ids),) if isinstance(ids, int) else tuple(int(i) for i in ids)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """The ids that end this row (none when ``ignore_eos``)."""
        return () if self.ignore_eos else self.eos_token_id


COMPILED_CAPACITY_STEP = 1024  # KV cache lengths are rounded up to this under a compiled step


def compile_decode_step(model: TarsierModel, mode: str = "reduce-overhead", fullgraph: bool = False) -> None:
    """Compile the model's one-token decode forward with ``torch.compile`` (``reduce-overhead``: CUDA
    graphs on GPUs), so a step costs its kernels rather than thousands of Python-side launches.

    Prefill stays eager (its shapes change with every prompt). Each batch size and cache length
    compiles once (tens of seconds for a 7B model): cache lengths are rounded up to a multiple of
    ``COMPILED_CAPACITY_STEP`` and finished rows stay in their batch, so a job of similar videos
    compiles once or twice. Chat sessions' own caches keep their lengths.
    """
    model.compiled_decode_step = torch.compile(model.forward, mode=mode, dynamic=False, fullgraph=fullgraph)


def _decode_step(model: TarsierModel, **inputs: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, V]`` of the next token after one input token per row."""
    compiled = getattr(model, "compiled_decode_step", None)
    if compiled is None:
        return model(**inputs, use_cache=True, logits_to_keep=1).logits[:, -1]
    # Embedded outside: the forward's media check reads a count back to the host, which would split the graph.
    embeds = model.get_input_embeddings()(inputs.pop("input_ids"))
    torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed: replay over them
    return compiled(inputs_embeds=embeds, **inputs, use_cache=True, logits_to_keep=1).logits[:, -1].clone()


def prefill_rows_at_once(model: TarsierModel) -> bool:
    """Accelerators prefill the whole batch in one pass; CPUs go faster one row at a time (measured)."""
    return model.device.type != "cpu" or getattr(model, "hf_device_map", None) is not None


def _prefill(
    model: TarsierModel,
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
    model: TarsierModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor | None,
    settings: DecodeSettings | Sequence[DecodeSettings],
    cache: KVCache | None = None,
    cancelled: Container[int] = (),
    *,
    extra_inputs: Mapping[str, torch.Tensor] | None = None,
) -> Iterator[dict[int, int]]:
    """Yield ``{row: token}`` after every step for the rows still running; a row's EOS is its last.

    ``input_ids`` are left-padded prompts ``[B, n]``. ``extra_inputs`` are the model's other media
    inputs for the prompt (Tarsier2's ``image_grid_thw``). ``settings`` is one for the batch or one
    per row. With ``cache`` (one row, holding earlier turns), ``input_ids`` continue it; it must have
    room for ``n + max_new_tokens`` more positions. A row found in ``cancelled`` (checked after each
    step) stops there. Stopping the iteration early stops generation after the current step.

    The model places the prompt (:meth:`prefill_positions`: positions and a per-row delta, 0 for
    Tarsier, M-RoPE's for Tarsier2); every later token sits at ``attended tokens + delta``. A
    continued cache's turn adds the delta of the turns before it (``KVCache.rope_deltas``).
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
    past = cache.length if cache is not None else 0
    # A compiled step replays one graph per batch shape, so its batch keeps finished rows (their tokens
    # are computed and ignored) rather than recording a graph for every size the batch shrinks to.
    compiled = getattr(model, "compiled_decode_step", None) is not None
    finished = torch.zeros(batch, dtype=torch.bool)
    if cache is None:
        capacity = length + longest
        if compiled:  # one graph serves every prompt length up to the next multiple of COMPILED_CAPACITY_STEP
            capacity = -(-capacity // COMPILED_CAPACITY_STEP) * COMPILED_CAPACITY_STEP
        cache = KVCache(model, batch, capacity, allocate=not prefill_rows_at_once(model))
    if cache.capacity < past + length + longest:
        raise ValueError("the KV cache has no room for this turn; grow it with KVCache.with_capacity first")
    device = model.device
    media = {name: value for name, value in {"pixel_values": pixel_values, **(extra_inputs or {})}.items()
             if value is not None}
    input_ids = input_ids.to(device)
    # The 2D mask spans the whole cache so its width never changes; position ids count attended tokens.
    mask = torch.zeros(batch, cache.capacity, dtype=torch.long, device=device)
    mask[:, :past] = 1
    mask[:, past : past + length] = attention_mask.to(device)
    positions, deltas = model.prefill_positions(input_ids, mask[:, past : past + length], media)
    if past:  # a continued chat: earlier turns fill every position before this one, shifted by their delta
        deltas = deltas + cache.rope_deltas
        positions = positions + past + cache.rope_deltas
    cache.rope_deltas = deltas
    next_position = mask.sum(-1) + deltas[:, 0]
    logits = _prefill(model, input_ids, mask, positions, media, cache)
    banned = banned_logits(per_row, logits.shape[-1], device)
    seen = None
    if (penalties != 1).any():  # the prompt's attended ids (and a continued chat's earlier ones) count
        counts = torch.zeros(batch, logits.shape[-1], dtype=torch.int32, device=device)
        seen = counts.scatter_add_(1, input_ids, mask[:, past : past + length].int()) > 0
        if past and cache.seen_ids is not None:
            seen |= cache.seen_ids
        cache.seen_ids = seen

    rows = torch.arange(batch)
    for step in range(longest):
        if banned is not None:
            logits = logits.masked_fill(banned, float("-inf"))
        if seen is not None:
            logits = penalise_repeats(logits, seen, penalties)
        tokens = _sample(logits, samplers).cpu()
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
                    seen = cache.seen_ids = seen[on_device]
                cache.keep_rows(on_device)
                finished = finished[keep]
        mask[:, past + length + step] = 1
        logits = _decode_step(model, input_ids=tokens[:, None].to(device), attention_mask=mask,
                              position_ids=next_position[:, None], cache=cache.cache)
        next_position = next_position + 1
