"""The Tarsier2 shapes demo: its start model in the official Tarsier2 layout, its data read as
training reads it, the recipe end to end, and what the bundled model says (a regression test of how
Tarsier2 is run: M-RoPE positions, rope deltas, decode positions)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tarsier.cli import main
from tarsier.models import auto
from tarsier.prompting import IGNORE_INDEX
from tarsier.shapes import DEMO_RECIPES, demo_model, world
from tarsier.train.config import DataSettings, SourceSettings
from tarsier.train.data import TrainingDataset
from tarsier.train.mixture import load_mixture

ASSETS = Path(world.__file__).resolve().parents[1] / "assets"
BUNDLED = ASSETS / "tarsier2-shapes-demo"
RECIPE = demo_model.TARSIER2_SHAPES_DEMO
NOT_SHIPPED = pytest.mark.skipif(
    not BUNDLED.is_dir(),
    reason="src/tarsier/assets/tarsier2-shapes-demo is not built yet: tarsier train --recipe tarsier2-shapes-demo "
    "--output runs/shapes2, then python -m tarsier.shapes.demo_model export runs/shapes2 src/tarsier/assets",
)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes2")
    world.write_training_data(folder / "data", 12, seed=0)
    demo_model.build_tarsier2_start_model(folder / "init", demo_model.training_texts(folder / "data", RECIPE), vision_steps=2,
                                          vision_clips=10)
    return folder


@pytest.fixture(scope="module")
def processor(demo_data):
    return auto.load_processor(demo_data / "init")


def test_the_recipes_are_the_names_the_cli_knows():
    assert tuple(demo_model.RECIPES) == DEMO_RECIPES
    assert RECIPE.n_frames == auto.family_named("tarsier2").default_n_frames == 16  # what `tarsier describe` samples


def test_the_start_model_is_a_small_tarsier2_in_the_official_layout(demo_data, processor):
    folder = demo_data / "init"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.json",
                 "preprocessor_config.json", "generation_config.json"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert auto.read_checkpoint(folder).family.name == "tarsier2"
    assert config["model_type"] == "llava" and config["projection_head"] is None
    text, vision = config["text_config"], config["vision_config"]
    assert text["model_type"] == vision["model_type"] == "qwen2_vl"
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    assert text["rope_scaling"]["type"] == "mrope" and sum(text["rope_scaling"]["mrope_section"]) == head_dim // 2
    assert (vision["patch_size"], vision["spatial_merge_size"], vision["temporal_patch_size"]) == (14, 2, 2)
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == config["image_token_index"]
    assert len(tokenizer) == text["vocab_size"] < 1024  # the BPE vocabulary, then Qwen2's 14 special tokens
    assert processor.eos_token_ids == tuple(tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))
    assert 1_000_000 < demo_model.parameter_count(folder) < 2_000_000
    # A 64 px clip: 16 frames at 56 px, each fed twice (one temporal patch), 4 x 4 patches merged 2 x 2.
    frames = processor.load_media(str(demo_data / "data" / "clips" / "clip_00000.mp4"))
    media = processor.media_inputs(frames)
    assert media.grid == [16, 4, 4] and media.n_tokens(2) == 64
    model = auto.load_model(folder, dtype=torch.float32)
    inputs = processor("<video>\n" + world.DETAILED_PROMPT, videos=str(demo_data / "data" / "clips" / "clip_00000.mp4"))
    positions, deltas = model.rope_positions(inputs["input_ids"], inputs["attention_mask"], inputs["image_grid_thw"])
    assert deltas.tolist() == [[16 - 64]]  # text after the video continues at its start + 16 frames, not + 64 tokens
    with torch.no_grad():
        assert model(**inputs).logits.shape == (1, inputs["input_ids"].shape[1], text["vocab_size"])


def test_every_task_file_reads_cleanly_through_its_adapter(demo_data, processor):
    for file, adapter, _ in demo_model.STAGE1_TASKS + demo_model.STAGE2_TASKS:
        mixture = load_mixture(DataSettings(sources=[SourceSettings(path=str(demo_data / "data" / f"{file}.jsonl"), adapter=adapter)],
                                            max_bad_fraction=0.0), RECIPE.n_frames)
        dataset = TrainingDataset(mixture.items, mixture.ranges, processor, [RECIPE.n_frames], max_length=512)
        example = dataset[0]  # tracking items check that the annotated frames were the ones sampled
        assert example["failures"] == [] and any(label != IGNORE_INDEX for label in example["labels"]), file


def test_the_demo_tokenizer_reads_prompts_as_training_showed_them(demo_data, processor):
    reply = "A yellow ball appears, moves down and turns red. The camera pans right."
    messages = [{"role": "user", "content": "<video>\n" + world.DETAILED_PROMPT}, {"role": "assistant", "content": reply}]
    frames = processor.load_media(str(demo_data / "data" / "clips" / "clip_00000.mp4"))
    ids, labels, _ = processor.encode_for_training(messages, frames)
    prompt, _ = processor.encode_item("<video>\n" + world.DETAILED_PROMPT, frames)
    assert ids[: len(prompt)] == prompt  # what `tarsier describe` feeds is exactly the trained prefix
    target = [token for token, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert processor.tokenizer.decode(target) == reply + "<|im_end|>"
    words = processor.tokenizer.tokenize(reply)
    assert len(words) < 20 and "<unk>" not in words  # the world's words are whole tokens


def test_stage0_labels_each_patch_where_the_frame_has_it(demo_data, processor):
    """The processor orders patches by 2 x 2 merge block, and each merged token stands for its 4."""
    model = auto.load_model(demo_data / "init", dtype=torch.float32)
    frames = demo_model.Tarsier2Frames(model, processor)
    assert frames.grid == 4 and frames.per_token == 4 and frames.width == model.config.text_config.hidden_size
    assert frames.order.tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    cells = np.kron(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16, np.ones((16, 16), np.uint8))  # 64 px, cell j: grey 16*j
    pixels = frames.pixels(Image.fromarray(cells).convert("RGB"))
    red = pixels[:, : 2 * 14 * 14].mean(1)  # channel 0 of both temporal copies
    assert (np.diff(red[np.argsort(frames.order)]) > 0).all()  # patch k shows cell order[k]
    assert frames.features(torch.from_numpy(np.stack([pixels, pixels]))).shape == (2, 4, frames.width)


def test_vision_pretraining_teaches_the_tarsier2_patches_their_colours(demo_data, processor):
    torch.manual_seed(0)
    model = auto.load_model(demo_data / "init", dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = demo_model.pretrain_vision(model, steps=120, pool_clips=60, frames=demo_model.Tarsier2Frames(model, processor))
    assert scores["colour_accuracy_on_ball_patches"] > 0.5 and scores["background_accuracy"] > 0.8, scores
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("vision_tower.") for k in changed)  # the ViT and its merger; the LLM untouched
    assert any(k.startswith("vision_tower.merger.") for k in changed)


def test_the_tarsier2_demo_runs_end_to_end_and_exports(tmp_path, capsys):
    output = tmp_path / "demo"
    assert main(["train", "--recipe", "tarsier2-shapes-demo", "--print-config", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "# --- tarsier2-shapes-stage1 ---" in printed and "# --- tarsier2-shapes-stage2 ---" in printed
    assert "n_frames: 16" in printed and "# tarsier2-shapes-demo data: 2000 training clips" in printed
    sizes = ["demo.clips=8", "demo.held_out_clips=2", "demo.vision_steps=2", "demo.vision_clips=10"]
    assert main(["train", "--recipe", "tarsier2-shapes-demo", "--output", str(output), "--no-progress", "--set", "train.max_steps=2",
                 *(part for size in sizes for part in ("--set", size))]) == 0
    report = json.loads((output / "report.json").read_text())
    assert report["recipe"] == "tarsier2-shapes-demo" and set(report["scores"]) == {"start", "stage1", "stage2"}
    assert report["training"]["stage1"]["steps"] == report["training"]["stage2"]["steps"] == 2
    assert report["training_clips"] == 8 and report["held_out_clips"] == 2 and 1e6 < report["parameters"] < 2e6
    assert auto.read_checkpoint(output / "stage2").family.name == "tarsier2"
    # Export next to the bundled samples: they are kept, the model's descriptions of them recorded.
    assets = tmp_path / "assets"
    shutil.copytree(ASSETS / "samples", assets / "samples")
    shipped = demo_model.export(output, assets)
    assert list(shipped) == ["shapes_1.mp4", "shapes_2.mp4", "shapes_3.mp4"]
    for name in ("truth.jsonl", "shapes_1.mp4"):
        assert (assets / "samples" / name).read_bytes() == (ASSETS / "samples" / name).read_bytes()
    model = assets / "tarsier2-shapes-demo"
    for name in RECIPE.shipped_files + ("train_config.yaml", "evaluation.json", "samples.json", "samples_trace.json", "README.md"):
        assert (model / name).is_file(), name
    assert json.loads((model / "samples.json").read_text()) == {name: said for name, (_, said) in shipped.items()}
    card = (model / "README.md").read_text()
    assert card.startswith("# tarsier2-shapes-demo:") and "| camera right |" in card and "--model tarsier2-shapes-demo" in card


def sample_clips() -> list[tuple[str, None]]:
    return [(str(ASSETS / "samples" / name), None) for name in demo_model.sample_truth(ASSETS)]


@NOT_SHIPPED
def test_the_shipped_tarsier2_demo_model_still_says_what_it_said_when_shipped():
    recorded = json.loads((BUNDLED / "samples.json").read_text())
    assert list(recorded) == list(demo_model.sample_truth(ASSETS))
    assert world.describe_clips("tarsier2-shapes-demo", sample_clips()) == list(recorded.values())


@NOT_SHIPPED
def test_what_the_shipped_tarsier2_demo_model_says_depends_on_its_clips():
    """The recorded descriptions are about their clips: each names a ball of its clip, no two are the
    same. (That the engine reproduces them, log-probabilities included, and fails to when its
    positions are off: tests/shapes/test_bundled_traces.py.)"""
    recorded = json.loads((BUNDLED / "samples.json").read_text())
    truth = demo_model.sample_truth(ASSETS)
    assert len(set(recorded.values())) == len(recorded)
    for name, said in recorded.items():
        assert set(world.parse(said)["balls"]) & set(world.parse(truth[name])["balls"]), (name, said)


def test_a_missing_bundled_model_is_named_as_such(monkeypatch, tmp_path):
    from tarsier import checkpoints
    from tarsier.errors import CheckpointError

    monkeypatch.setitem(checkpoints.BUNDLED_MODELS, "tarsier2-shapes-demo", tmp_path / "absent")
    with pytest.raises(CheckpointError, match="tarsier2-shapes-demo: the bundled model is missing from this install"):
        auto.read_checkpoint("tarsier2-shapes-demo")


def test_export_of_a_folder_that_is_no_finished_run_is_one_clear_error(tmp_path, capsys):
    assert demo_model.main(["export", str(tmp_path / "nothing"), str(tmp_path / "assets")]) == 2
    assert "nothing: not a finished shapes demo run" in capsys.readouterr().err
    assert not (tmp_path / "assets").exists()
