"""Times the original research code (bytedance/tarsier, branch ``tarsier``) on given video files.

Run by ``bench_core.py --reference DIR --reference-python PYTHON``, never imported by tarsier: it
runs under the original code's own environment (transformers 4.44.2 and decord, installed by hand),
with DIR (a checkout of the original code, never committed here) on ``sys.path``.

The original runs as its quick-start script runs it: its ``Processor`` reads each video file with
decord (8 frames sampled evenly) and prepares the prompt, then ``model.generate`` is called with the
script's settings (greedy, ``use_cache=True``; ``generate`` itself runs without gradients, so no
``torch.inference_mode()`` is added). What differs, for a CPU: the weights stay in fp32 on the CPU
(the script asks for fp16 and ``device_map="auto"``), without flash-attn (CUDA only) the LLM gets
PyTorch's SDPA attention, the same maths, and the tokenizer file is rewritten for its older
tokenizers (``legacy_tokenizer_copy``). ``min_new_tokens`` makes every video run to the last token, as ours does.
Each video is warmed up once (2 tokens) before timing, as the caller warms up ours.

Prints one JSON object: ``seconds`` (the ``generate`` calls, one video at a time, the span timed for
ours), ``input_seconds`` (decoding and preparing the inputs), per-video seconds, and the generated
ids, so the caller can check that greedy outputs are equal.

    PYTHON reference_driver.py --reference DIR --checkpoint CKPT --videos V0.mp4 V1.mp4 ... --new-tokens 32
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
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
    are linked, not copied. Only loading differs; tokenizing is the same.
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="checkout of the original code (branch tarsier)")
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder (tarsier's format, which the original reads)")
    parser.add_argument("--videos", nargs="+", required=True, help="video files, one generation each, read with decord")
    parser.add_argument("--new-tokens", type=int, required=True, help="new tokens per video (every video runs to the last)")
    parser.add_argument("--max-n-frames", type=int, default=8, help="frames sampled per video (default: 8, the script's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--prompt", default="<video>\nDescribe the video in detail.")
    args = parser.parse_args()

    if importlib.util.find_spec("decord") is None:
        sys.exit("reference_driver.py: the original reads videos with decord: pip install decord (or eva-decord)")
    sys.path.insert(0, args.reference)
    import torch

    import models.modeling_tarsier as original
    from dataset.processor import Processor
    from models.modeling_tarsier import LlavaConfig, TarsierForConditionalGeneration

    if args.threads:
        torch.set_num_threads(args.threads)
    if importlib.util.find_spec("flash_attn") is None:  # CUDA-only; the original asks for it unconditionally
        original.AutoModelForCausalLM = _SdpaInstead(original.AutoModelForCausalLM)

    checkpoint = legacy_tokenizer_copy(Path(args.checkpoint))
    processor = Processor(str(checkpoint), max_n_frames=args.max_n_frames)
    config = LlavaConfig.from_pretrained(str(checkpoint), trust_remote_code=True)
    model = TarsierForConditionalGeneration.from_pretrained(
        str(checkpoint), config=config, torch_dtype=torch.float32, trust_remote_code=True
    )
    model.eval()

    def inputs_for(video):  # what the quick-start script's process_one does before generating
        inputs = processor(args.prompt, video, edit_prompt=True)
        return {k: v.to(model.device) for k, v in inputs.items() if v is not None}

    def generate(inputs, new_tokens):  # the script's generate_kwargs, run to the last token
        out = model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             top_p=1, temperature=0, use_cache=True)
        return out[0, inputs["input_ids"].shape[1] :].tolist()

    for video in args.videos:
        generate(inputs_for(video), 2)  # warm-up, as the caller warms up ours
    seconds, input_seconds, ids = [], [], []
    for video in args.videos:
        began = time.perf_counter()
        inputs = inputs_for(video)
        ready = time.perf_counter()
        ids.append(generate(inputs, args.new_tokens))
        seconds.append(time.perf_counter() - ready)
        input_seconds.append(ready - began)
    print(json.dumps({"seconds": sum(seconds), "input_seconds": sum(input_seconds), "per_video": seconds,
                      "threads": torch.get_num_threads(), "ids": ids}))


if __name__ == "__main__":
    main()
