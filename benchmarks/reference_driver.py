"""Times the original research code (bytedance/tarsier, branch ``tarsier``) on given frames.

Run by ``bench_core.py --reference DIR --reference-python PYTHON``, never imported by tarsier: it
runs under the original code's own environment (transformers 4.44), with DIR (a checkout of the
original code, fetched and installed by hand, never committed here) on ``sys.path``. The videos
arrive as folders of already sampled frames, so the original's video reader (decord) is not needed
and is stubbed out if it is not installed. Without flash-attn (CUDA only) the original's LLM gets
PyTorch's SDPA attention, the same maths.

Prints one JSON object: seconds for the whole set one video at a time (the original has no correct
batching), per-video seconds, and the generated ids, so the caller can check that greedy outputs
are equal.

    PYTHON reference_driver.py --reference DIR --checkpoint CKPT --frames F0 F1 ... --new-tokens 32
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import types
from pathlib import Path


class _SdpaInstead:
    """``AutoModelForCausalLM`` with ``attn_implementation="sdpa"`` where FlashAttention 2 was asked for."""

    def __init__(self, auto):
        self._auto = auto

    def from_config(self, config, **kwargs):
        if kwargs.get("attn_implementation") == "flash_attention_2":
            kwargs["attn_implementation"] = "sdpa"
        return self._auto.from_config(config, **kwargs)


def legacy_tokenizer_copy(checkpoint: Path) -> Path:
    """The checkpoint as the original's tokenizers (< 0.20) can read it: BPE merges as "a b" strings.

    Newer tokenizers write merges as pairs; the vocabulary and merges are unchanged. Other files
    are linked, not copied.
    """
    import tempfile

    data = json.loads((checkpoint / "tokenizer.json").read_text(encoding="utf-8"))
    merges = data.get("model", {}).get("merges") or []
    if not merges or isinstance(merges[0], str):
        return checkpoint
    data["model"]["merges"] = [" ".join(pair) for pair in merges]
    copy = Path(tempfile.mkdtemp(prefix="tarsier-reference-"))
    for path in checkpoint.iterdir():
        if path.name != "tokenizer.json":
            (copy / path.name).symlink_to(path.resolve())
    (copy / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return copy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference", required=True, help="checkout of the original code (branch tarsier)")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--frames", nargs="+", required=True, help="one folder of PNG frames per video")
    parser.add_argument("--new-tokens", type=int, required=True)
    parser.add_argument("--prompt", default="<video>\nDescribe the video in detail.")
    args = parser.parse_args()

    sys.path.insert(0, args.reference)
    import torch  # transformers probes for decord at import; the stub must come after that

    import transformers  # noqa: F401

    try:
        import decord  # noqa: F401
    except ImportError:  # only video files need it; we pass frames
        sys.modules["decord"] = types.ModuleType("decord")
    from PIL import Image

    import models.modeling_tarsier as original
    from dataset.processor import Processor
    from models.modeling_tarsier import LlavaConfig, TarsierForConditionalGeneration

    if importlib.util.find_spec("flash_attn") is None:  # CUDA-only; the original asks for it unconditionally
        original.AutoModelForCausalLM = _SdpaInstead(original.AutoModelForCausalLM)

    checkpoint = legacy_tokenizer_copy(Path(args.checkpoint))
    processor = Processor(str(checkpoint), max_n_frames=8)
    config = LlavaConfig.from_pretrained(str(checkpoint))
    model = TarsierForConditionalGeneration.from_pretrained(str(checkpoint), config=config, torch_dtype=torch.float32)
    model.eval()

    videos = [[Image.open(p).convert("RGB") for p in sorted(Path(folder).glob("*.png"))] for folder in args.frames]

    def one(frames, new_tokens):
        inputs = processor(args.prompt, images=frames, edit_prompt=True)
        inputs = {k: v for k, v in inputs.items() if v is not None}
        with torch.inference_mode():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=True)
        return out[0, inputs["input_ids"].shape[1] :].tolist()

    for frames in videos:
        one(frames, 2)  # warm-up, as the caller warms up ours
    seconds, ids = [], []
    for frames in videos:
        began = time.perf_counter()
        ids.append(one(frames, args.new_tokens))
        seconds.append(time.perf_counter() - began)
    print(json.dumps({"seconds": sum(seconds), "per_video": seconds, "ids": ids}))


if __name__ == "__main__":
    main()
