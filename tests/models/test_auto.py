"""The registry: one place knows the families, and a load reads the checkpoint's config.json once."""

import builtins
import io
import json
from pathlib import Path

import pytest
from transformers import GenerationConfig

from tarsier import CheckpointError
from tarsier.engine.loading import load_pretrained
from tarsier.models import auto
from tarsier.models.tarsier.modeling_tarsier import TarsierForConditionalGeneration
from tarsier.models.tarsier.processing_tarsier import TarsierProcessor
from tarsier.models.tarsier2.modeling_tarsier2 import Tarsier2ForConditionalGeneration
from tarsier.models.tarsier2.processing_tarsier2 import Tarsier2Processor


@pytest.fixture
def config_reads(monkeypatch):
    """Every opening of a file named config.json, by any code (ours, transformers', the hub's)."""
    opened: list[str] = []
    real_open = io.open

    def counting_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, Path)) and Path(file).name == "config.json" and "r" in mode:
            opened.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    return opened


@pytest.mark.parametrize(
    ("fixture", "family", "model_class", "processor_class", "frames"),
    [
        ("tiny_checkpoint", "tarsier", TarsierForConditionalGeneration, TarsierProcessor, 8),
        ("tarsier2_checkpoint", "tarsier2", Tarsier2ForConditionalGeneration, Tarsier2Processor, 16),
    ],
)
def test_a_load_reads_config_json_once_and_builds_the_family_s_classes(
    request, config_reads, fixture, family, model_class, processor_class, frames
):
    folder = request.getfixturevalue(fixture)
    model, processor = load_pretrained(folder, device="cpu", progress=False)
    assert config_reads == [str(folder / "config.json")]
    assert (type(model), type(processor)) == (model_class, processor_class)
    assert processor.max_n_frames == frames
    assert model.config.image_token_index == json.loads((folder / "config.json").read_text())["image_token_index"]
    try:  # the generation defaults transformers' own from_pretrained would have read
        expected = GenerationConfig.from_pretrained(folder)
    except OSError:
        expected = GenerationConfig.from_pretrained(folder, config_file_name="config.json", _from_model_config=True)
    assert model.generation_config.to_diff_dict() == expected.to_diff_dict()


def test_read_checkpoint_gives_the_family_and_both_json_files(tiny_checkpoint, tarsier2_checkpoint):
    first, second = auto.read_checkpoint(tiny_checkpoint), auto.read_checkpoint(tarsier2_checkpoint)
    assert (first.family.name, second.family.name) == ("tarsier", "tarsier2")
    assert (first.family.default_n_frames, second.family.default_n_frames) == (8, 16)
    assert second.generation_config["eos_token_id"] == json.loads((tarsier2_checkpoint / "generation_config.json").read_text())["eos_token_id"]
    assert auto.read_checkpoint(first) is first  # loaders take either a path or what was read
    assert first.model_config.frame_token_ids()[-1] == first.config["image_new_idx"]


def test_published_checkpoints_have_known_families_without_the_network():
    assert auto.family_of("omni-research/Tarsier-7b").name == "tarsier"
    assert auto.default_frame_count("omni-research/Tarsier2-Recap-7b") == 16
    assert auto.family_named("tarsier2").training_max_length == 16384
    with pytest.raises(CheckpointError, match="unknown model family 'tarsier3'; known: tarsier2, tarsier"):
        auto.family_named("tarsier3")


def test_the_old_loaders_still_give_either_family(tarsier2_checkpoint, config_reads):
    """``TarsierForConditionalGeneration.from_pretrained`` and ``TarsierProcessor.from_pretrained``
    (the README's first example) load a Tarsier2 checkpoint too, each reading config.json once."""
    model = TarsierForConditionalGeneration.from_pretrained(tarsier2_checkpoint)
    assert isinstance(model, Tarsier2ForConditionalGeneration) and len(config_reads) == 1
    assert isinstance(TarsierProcessor.from_pretrained(tarsier2_checkpoint), Tarsier2Processor) and len(config_reads) == 2
    with pytest.raises(CheckpointError, match="renders prompts with its own chat template"):
        TarsierProcessor.from_pretrained(tarsier2_checkpoint, do_image_padding=True)
