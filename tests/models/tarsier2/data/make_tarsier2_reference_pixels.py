"""Expected Tarsier2 pixel values, computed by the ORIGINAL Tarsier2 code, for tests/test_processing_tarsier2.py.

Two halves:

- :func:`build_inputs` (numpy and Pillow only) writes the test media: a 13-frame 200x150 palette GIF
  and 300x400 PNGs in the modes RGB, RGBA, L and P, plus a 1280x720 RGB PNG (shrunk to 460,800 px
  before the image processor). The test imports it to rebuild the very same pixels; the files need
  not be byte-identical across Pillow versions, only their decoded pixels, which the stored
  ``frames_sha256`` checks.
- Run as a script (in the REFERENCE's environment, never ours) it feeds those files through the
  reference's own loaders and processor and writes ``tarsier2_reference_pixels.json`` beside this file.

How the stored file was made
----------------------------
Reference: github.com/bytedance/tarsier, branch ``main`` (Tarsier2), commit
63de87a760c2aec6b31470a08046969a13787126; its ``dataset/`` folder is all that is used. Environment
(Python 3.11): ``transformers==4.47.0``, ``Pillow==9.3.0`` (both as its requirements.txt pins),
``numpy==1.26.4``, ``torch`` (any; 2.13.0 here). decord, pyarrow and func_timeout, imported by the
reference's data parsers but never called for GIFs and images, are stubbed. Then::

    # the tiny checkpoint: only its preprocessor_config.json and tokenizer are read
    .venv/bin/python -c "from tarsier.testing import build_random_tarsier2_checkpoint as b; b('/tmp/t2ckpt')"
    /tmp/refenv/bin/python tests/models/tarsier2/data/make_tarsier2_reference_pixels.py \\
        --reference /path/to/bytedance-tarsier --checkpoint /tmp/t2ckpt

The reference call, per input, is its inference path with its default inference config
(``configs/tarser2_default_config.yaml``: 16 frames, sampler v1, each frame fed twice,
max_pixels 460,800, min_pixels 0, no padding/crop/square resize): ``VisionParser.transform`` reads
the file (GIF: ``ImageSequence`` frames ``.convert('RGB')``; image: ``Image.open(...).convert('RGB')``),
then ``TarsierProcessor.__call__`` shrinks frames over the pixel cap (``PIL.Image.resize``, its
default filter: bicubic) and runs ``Qwen2VLImageProcessor`` (transformers' slow PIL/numpy one;
``videos=`` for a GIF, ``images=`` for an image). Its ``pixel_values`` and grid are stored as shape,
grid, sum, the sha256 of the float32 bytes and 256 sampled values.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
from PIL import Image

REFERENCE_COMMIT = "63de87a760c2aec6b31470a08046969a13787126"
OUTPUT = Path(__file__).with_name("tarsier2_reference_pixels.json")
N_SAMPLES = 256
# The reference's inference defaults (configs/tarser2_default_config.yaml).
N_FRAMES = 16
MAX_PIXELS = 460_800
SAMPLING = {"video_sampler_version": "v1", "force_frames_n_divisible": 1, "use_multi_images_for_video": True}


# -- inputs (shared with the test) -------------------------------------------------------------------


def _rgb(width: int, height: int, seed: int) -> np.ndarray:
    """Gradients plus noise: every channel varies, so any rounding difference in resizing shows."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (width + height - 2)], -1)
    return np.clip(base + rng.randint(-40, 41, (height, width, 3)), 0, 255).astype(np.uint8)


def _palette(seed: int) -> list[int]:
    return np.random.RandomState(seed).randint(0, 256, 256 * 3).astype(np.uint8).tolist()


def _palette_gif(path: Path) -> None:
    """13 frames of 200x150, palette mode with one explicit 256-colour palette; each frame differs."""
    rng = np.random.RandomState(1)
    y, x = np.mgrid[0:150, 0:200]
    frames = []
    for i in range(13):
        index = ((x + 3 * i) // 4 + (y // 5) * 7 + rng.randint(0, 3, (150, 200))) % 256
        frame = Image.fromarray(index.astype(np.uint8), "P")
        frame.putpalette(_palette(2))
        frames.append(frame)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def build_inputs(folder: str | Path) -> list[dict[str, str]]:
    """Write the test media to ``folder``; returns ``{"name", "kind", "path"}`` per input
    (``kind``: the reference's content type, "video" for the GIF, "image" otherwise)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _palette_gif(folder / "palette_200x150.gif")
    Image.fromarray(_rgb(300, 400, 3)).save(folder / "rgb_300x400.png")
    rgba = np.concatenate([_rgb(300, 400, 5), _rgb(300, 400, 6)[..., :1]], axis=-1)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba_300x400.png")
    Image.fromarray(_rgb(300, 400, 7)[..., 0], "L").save(folder / "gray_300x400.png")
    palette = Image.fromarray(np.random.RandomState(8).randint(0, 256, (400, 300)).astype(np.uint8), "P")
    palette.putpalette(_palette(9))
    palette.save(folder / "palette_300x400.png")
    Image.fromarray(_rgb(1280, 720, 4)).save(folder / "rgb_1280x720.png")
    names = ["palette_200x150.gif", "rgb_300x400.png", "rgba_300x400.png", "gray_300x400.png",
             "palette_300x400.png", "rgb_1280x720.png"]
    return [
        {"name": name, "kind": "video" if name.endswith(".gif") else "image", "path": str(folder / name)}
        for name in names
    ]


def sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def sample_positions(n_values: int) -> list[int]:
    """Flat indices of the stored samples (the test recomputes them)."""
    return sorted(np.random.RandomState(0).choice(n_values, size=min(N_SAMPLES, n_values), replace=False).tolist())


def summary(pixel_values: np.ndarray, grid: list[int], frames: list[np.ndarray]) -> dict:
    """What the JSON keeps of one input's pixels; ``frames`` are the decoded RGB frames before any resize."""
    values = np.ascontiguousarray(pixel_values, dtype="<f4")
    flat = values.reshape(-1)
    positions = sample_positions(flat.size)
    return {
        "image_grid_thw": grid,
        "shape": list(values.shape),
        "sum": float(values.sum(dtype=np.float64)),
        "sha256": sha256(values),
        "frames_sha256": sha256(np.stack(frames).astype(np.uint8)),
        "sample_positions": positions,
        "sample_values": [float(flat[i]) for i in positions],  # float32 values, exact as doubles
    }


# -- the reference run (its own environment) ---------------------------------------------------------


def _load_module(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _reference_modules(reference: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """The reference's ``standard_vision_parser`` and ``tarsier_processor``, imported from its checkout.

    Its parser utilities import decord, pyarrow and func_timeout at the top (for videos and HDFS);
    none is called for GIFs and images, so they are stubbed while that module loads.
    """
    stubs = {name: types.ModuleType(name) for name in ("decord", "pyarrow", "pyarrow.fs", "func_timeout")}
    stubs["pyarrow"].fs = stubs["pyarrow.fs"]
    stubs["func_timeout"].func_set_timeout = lambda seconds: (lambda function: function)
    stubs["func_timeout"].exceptions = types.SimpleNamespace(FunctionTimedOut=TimeoutError)
    for package in ("dataset", "dataset.custom_data_parsers"):
        module = types.ModuleType(package)
        module.__path__ = [str(reference / package.replace(".", "/"))]
        sys.modules[package] = module
    sys.modules.update(stubs)
    try:
        _load_module("dataset.custom_data_parsers.utils", reference / "dataset/custom_data_parsers/utils.py")
    finally:
        for name in stubs:
            del sys.modules[name]
    parser = _load_module(
        "dataset.custom_data_parsers.standard_vision_parser",
        reference / "dataset/custom_data_parsers/standard_vision_parser.py",
    )
    processor = _load_module("dataset.tarsier_processor", reference / "dataset/tarsier_processor.py")
    return parser, processor


def reference_summaries(reference: Path, checkpoint: Path, inputs: list[dict[str, str]]) -> dict[str, dict]:
    from transformers import AutoTokenizer, Qwen2VLImageProcessor

    parser_module, processor_module = _reference_modules(reference)
    chat_template = json.loads((checkpoint / "chat_template.json").read_text())["chat_template"]
    processor = processor_module.TarsierProcessor(
        image_processor=Qwen2VLImageProcessor.from_pretrained(str(checkpoint)),
        tokenizer=AutoTokenizer.from_pretrained(str(checkpoint)),
        chat_template=chat_template,
        image_token="<|image_pad|>",
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
    )
    parser = parser_module.VisionParser(
        n_frames=N_FRAMES, max_n_frames=256, is_training=False, video_sampling_strategy=dict(SAMPLING)
    )
    results = {}
    for item in inputs:
        kind = item["kind"]
        sample = {
            "messages": [
                {"role": "user", "content": [{"type": kind, kind: {f"{kind}_file": item["path"]}},
                                             {"type": "text", "text": "Describe."}]},
                {"role": "assistant", "content": []},
            ],
            "extra_info": {},
        }
        config = {"do_padding": False, "do_crop": False, "do_resize": False, "max_pixels": MAX_PIXELS, "min_pixels": 0}
        messages = parser.transform(sample, config)
        media = messages[0]["content"][0][kind]
        # Decoded frames before any resize (each video frame is listed twice: keep one of each pair).
        frames = [np.asarray(image) for image in (media[::2] if kind == "video" else [media])]
        outputs = processor(messages, config, is_training=False)
        results[item["name"]] = {
            "kind": kind,
            **summary(outputs["pixel_values"].numpy(), outputs["image_grid_thw"].tolist()[0], frames),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of bytedance/tarsier (main)")
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="tarsier.testing.build_random_tarsier2_checkpoint's folder"
    )
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/tarsier2-reference-inputs"), help="where the inputs are written"
    )
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()

    import PIL
    import transformers

    inputs = build_inputs(args.work)
    document = {
        "about": "Tarsier2 pixel values of the original code, by make_tarsier2_reference_pixels.py (see its docstring)",
        "reference_commit": REFERENCE_COMMIT,
        "environment": {"transformers": transformers.__version__, "Pillow": PIL.__version__, "numpy": np.__version__},
        "preprocessor_config": json.loads((args.checkpoint / "preprocessor_config.json").read_text()),
        "inputs": reference_summaries(args.reference, args.checkpoint, inputs),
    }
    args.output.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
