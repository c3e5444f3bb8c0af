"""One decode step of a batch (one token per row into a pre-allocated KV cache), eager or compiled.

:class:`~tarsier.engine.continuous_batch.ContinuousBatch` steps every batch with it. The cache is
allocated once for prompt + new tokens: transformers' default cache grows by concatenation, which
copies the whole cache at every step (at batch 8 with ~4,800 positions per row that was 79% of a
decode step on CPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tarsier.models.interface import FamilyModel


COMPILED_CAPACITY_STEP = 1024  # KV cache lengths are rounded up to this under a compiled step


def compile_decode_step(model: FamilyModel, mode: str = "reduce-overhead", fullgraph: bool = False) -> None:
    """Compile the model's one-token decode forward with ``torch.compile`` (``reduce-overhead``: CUDA
    graphs on GPUs), so a step costs its kernels rather than thousands of Python-side launches.

    Prefill stays eager (its shapes change with every prompt). Each batch size and cache length
    compiles once (tens of seconds for a 7B model); cache lengths are rounded up to a multiple of
    ``COMPILED_CAPACITY_STEP``, so a job of similar videos compiles once per batch size it runs at.
    """
    model.compiled_decode_step = torch.compile(model.forward, mode=mode, dynamic=False, fullgraph=fullgraph)


def decode_step(model: FamilyModel, **inputs: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, V]`` of the next token after one input token per row."""
    compiled = getattr(model, "compiled_decode_step", None)
    if compiled is None:
        return model(**inputs, use_cache=True, logits_to_keep=1).logits[:, -1]
    # Embedded outside: the forward's media check reads a count back to the host, which would split the graph.
    embeds = model.get_input_embeddings()(inputs.pop("input_ids"))
    torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed: replay over them
    return compiled(inputs_embeds=embeds, **inputs, use_cache=True, logits_to_keep=1).logits[:, -1].clone()
