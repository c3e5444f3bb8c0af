"""Starting models: a Tarsier checkpoint assembled from CLIP + Llama folders or from a LLaVA folder."""

import json
import shutil

import pytest
import torch
from conftest import make_config
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from tarsier import CheckpointError, TarsierError, TarsierForConditionalGeneration
from tarsier.engine.describer import Describer, DescribeRequest
from tarsier.engine.settings import GenerationSettings
from tarsier.models.tarsier.assembly import assemble_from_components
from tarsier.models.tarsier.processing_tarsier import TarsierProcessor
from tarsier.train.trainer import train

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14)
TEXT = dict(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


@pytest.fixture(scope="module")
def components(tmp_path_factory, fast_checkpoint):
    """A CLIP vision folder (transformers 5 names) and a Vicuna-like folder (SentencePiece only, no <image>)."""
    root = tmp_path_factory.mktemp("components")
    torch.manual_seed(1)
    CLIPVisionModel(CLIPVisionConfig(**VISION)).save_pretrained(root / "clip")
    LlamaForCausalLM(LlamaConfig(**TEXT)).save_pretrained(root / "vicuna")
    for name in ("tokenizer.model", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copyfile(fast_checkpoint / name, root / "vicuna" / name)
    return root / "clip", root / "vicuna"


def state(folder):
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def test_clip_plus_llama_become_an_official_checkpoint(components, tmp_path, clip_folder):
    clip, vicuna = components
    folder = assemble_from_components(tmp_path / "init", vision=clip, language=vicuna, save_dtype="fp32")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llava" and (config["image_token_index"], config["image_newline_idx"], config["image_new_idx"]) == (32000, 32001, 32002)
    assert config["vocab_size"] == config["text_config"]["vocab_size"] == 32064
    assert json.loads((folder / "added_tokens.json").read_text()) == {"<image>": 32000}

    ours, vision, llama = state(folder), state(clip), state(vicuna)
    for key, value in vision.items():
        assert torch.equal(ours[f"vision_tower.vision_model.{key}"], value), key
    assert torch.equal(ours["language_model.model.layers.1.mlp.up_proj.weight"], llama["model.layers.1.mlp.up_proj.weight"])
    embed = ours["language_model.model.embed_tokens.weight"]
    assert embed.shape == (32064, 64) and torch.equal(embed[:32000], llama["model.embed_tokens.weight"])
    assert torch.allclose(embed[32001], llama["model.embed_tokens.weight"].mean(0))
    assert ours["multi_modal_projector.linear_1.weight"].shape == (64, 32)
    assert not ours["multi_modal_projector.linear_1.bias"].any()

    processor = TarsierProcessor.from_pretrained(folder)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == 32000 and processor.layout.frame_token_ids[-1] == 32002
    describer = Describer.from_pretrained(str(folder), device="cpu", max_n_frames=2, generation=GenerationSettings(max_new_tokens=3))
    assert next(describer.run([DescribeRequest("x", str(clip_folder / "red.mp4"))])).error is None


def test_a_llava_next_folder_keeps_projector_and_turns_image_newline_into_the_row_separator(components, tmp_path, fast_checkpoint):
    clip, vicuna = components
    llava = tmp_path / "llava-v1.6-tiny-hf"
    llava.mkdir()
    weights = {f"vision_tower.vision_model.{k}": v for k, v in state(clip).items()}
    weights.update({f"language_model.{k}": v for k, v in state(vicuna).items()})
    weights["language_model.model.embed_tokens.weight"] = torch.cat([weights["language_model.model.embed_tokens.weight"], torch.randn(64, 64)])
    weights["language_model.lm_head.weight"] = torch.cat([weights["language_model.lm_head.weight"], torch.randn(64, 64)])
    weights.update({"multi_modal_projector.linear_1.weight": torch.randn(64, 32), "multi_modal_projector.linear_1.bias": torch.randn(64),
                    "multi_modal_projector.linear_2.weight": torch.randn(64, 64), "multi_modal_projector.linear_2.bias": torch.randn(64),
                    "image_newline": torch.randn(64)})
    save_file(weights, str(llava / "model.safetensors"))
    config = {"model_type": "llava_next", "image_token_index": 32000, "vision_feature_layer": -2, "projector_hidden_act": "gelu",
              "vision_config": {"model_type": "clip_vision_model", **VISION}, "text_config": {"model_type": "llama", **TEXT, "vocab_size": 32064}}
    (llava / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copyfile(fast_checkpoint / name, llava / name)
    (llava / "added_tokens.json").write_text(json.dumps({"<image>": 32000, "<pad>": 32001}))

    folder = assemble_from_components(tmp_path / "init", llava=llava, save_dtype="fp32")
    config = json.loads((folder / "config.json").read_text())
    assert (config["image_token_index"], config["image_newline_idx"], config["image_new_idx"], config["vocab_size"]) == (32000, 32002, 32003, 32064)
    ours = state(folder)
    assert torch.equal(ours["multi_modal_projector.linear_2.bias"], weights["multi_modal_projector.linear_2.bias"])
    assert torch.equal(ours["language_model.model.embed_tokens.weight"][32002], weights["image_newline"])
    assert torch.equal(ours["language_model.model.embed_tokens.weight"][:32002], weights["language_model.model.embed_tokens.weight"][:32002])
    model = TarsierForConditionalGeneration.from_pretrained(str(folder))
    assert model.config.vision_feature_layer == -2


def test_training_from_components_assembles_the_start_once(components, mixture_files, tmp_path):
    clip, vicuna = components
    config = make_config(None, mixture_files, "train.max_steps=1", model={"checkpoint": None, "vision": str(clip), "language": str(vicuna)})
    train(config, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "init" / "init_sources.json").is_file()
    stamp = (tmp_path / "run" / "init" / "config.json").stat().st_mtime_ns
    train(config, tmp_path / "run", resume="auto", progress=False)  # already at max_steps: reuses the start
    assert (tmp_path / "run" / "init" / "config.json").stat().st_mtime_ns == stamp
    assert TarsierForConditionalGeneration.from_pretrained(str(tmp_path / "run")).config.image_new_idx == 32002


def test_bad_component_folders_are_one_line(tmp_path, components):
    clip, _ = components
    with pytest.raises(CheckpointError, match=r"model.language: .*nope is not a folder"):
        assemble_from_components(tmp_path / "x", vision=clip, language=tmp_path / "nope")
    with pytest.raises(TarsierError, match="either a LLaVA folder, or a CLIP folder plus a Llama folder"):
        assemble_from_components(tmp_path / "x", vision=clip)
