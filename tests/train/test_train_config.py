"""Stage configs: recipes, strict loading with errors that name the key, overrides, resume diffs, CLI."""

import pytest
import yaml

from tarsier import TarsierError
from tarsier.cli import main
from tarsier.train.config import config_differences, config_from_dict, load_config
from tarsier.train.recipes import RECIPES


def test_builtin_recipes_need_only_their_start_model():
    with pytest.raises(TarsierError, match=r"recipe stage1: 'model.llava' is not set: training needs a start model; .*--set model.llava=PATH"):
        load_config(recipe="stage1")
    assert load_config(recipe="stage1", complete=False).model.llava is None  # a template may leave it out
    with pytest.raises(TarsierError, match=r"'model' needs exactly one start: checkpoint, llava, or vision \+ language \(got checkpoint, llava\)"):
        load_config(recipe="stage2", overrides=["model.llava=x"], complete=False)  # a conflict is wrong even in a template
    config = load_config(recipe="stage1", overrides=["model.llava=/models/llava-v1.6-vicuna-7b-hf"])
    assert config.model.llava == "/models/llava-v1.6-vicuna-7b-hf" and not config.model.train_vision_tower
    assert [s.adapter for s in config.data.sources] == ["caption", "open_qa", "multiple_choice", "action", "multi_image", "text", "tracking"]
    stage2 = load_config(recipe="stage2")
    assert stage2.model.checkpoint == "runs/stage1" and stage2.distributed.strategy == "fsdp"
    assert set(RECIPES) == {"stage1", "stage2"}


def test_printed_config_loads_back_identically(tmp_path):
    config = load_config(recipe="stage2", overrides=["optim.lr=3e-6", "train.max_steps=10"])
    path = tmp_path / "stage2.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config
    assert config.optim.lr == 3e-6 and config.train.max_steps == 10


def test_print_config_is_a_template_that_trains_once_filled_in(tmp_path, capsys):
    # The first documented step: print the stage-1 recipe, although it names no start model yet.
    assert main(["train", "--recipe", "stage1", "--print-config"]) == 0
    template = capsys.readouterr().out
    assert "  llava: null" in template and "# REQUIRED (or another start): a LLaVA-1.6 folder" in template
    path = tmp_path / "stage1.yaml"
    path.write_text(template)
    # Printing it again works too; training from it names the missing key and how to set it, on one line.
    assert main(["train", "--config", str(path), "--print-config"]) == 0
    assert capsys.readouterr().out == template
    assert main(["train", "--config", str(path), "--output", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"tarsier: error: {path}: 'model.llava' is not set: ")
    assert "--set model.llava=PATH" in error and "model.checkpoint" in error
    assert main(["train", "--recipe", "stage1", "--init-only", "--output", str(tmp_path / "run")]) == 2
    assert "'model.llava' is not set" in capsys.readouterr().err
    # Filled in, the file loads back as the recipe with the start set.
    path.write_text(template.replace("  llava: null", "  llava: /models/llava-v1.6-vicuna-7b-hf"))
    assert load_config(path) == load_config(recipe="stage1", overrides=["model.llava=/models/llava-v1.6-vicuna-7b-hf"])
    assert main(["train", "--recipe", "stage2", "--print-config"]) == 0
    path.write_text(capsys.readouterr().out)
    assert load_config(path) == load_config(recipe="stage2")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", r"unknown key 'optim.lrr'; optim takes: beta1, .*lr, "),
        ("optim.lr=fast", r"'optim.lr' must be a number, got 'fast'"),
        ("optim.lr=-1", r"'optim.lr' must be positive, got -1.0"),
        ("train.micro_batch_size=0", r"'train.micro_batch_size' must be at least 1, got 0"),
        ("train.max_steps=1.5", r"'train.max_steps' must be an integer, got 1.5"),
        ("train.mixed_precision=fp8", r"'train.mixed_precision' is 'fp8'; use auto, bf16, fp16 or no"),
        ("data.sources=[]", r"'data.sources' must list at least one JSONL file"),
        ("data.sources=[{path: a.jsonl, weight: 0}]", r"'data.sources\[0\].weight' must be positive, got 0.0"),
        ("data.sources=[{path: a.jsonl, adapter: subtitles}]", r"'data.sources\[0\].adapter' is 'subtitles'; known adapters: chat, caption"),
        ("data.sources=[{weight: 1}]", r"'data.sources\[0\].path' is required"),
        ("model.vision=clip", r"'model.language' is required with the other"),
        ("model.lora.enabled=maybe", r"'model.lora.enabled' must be true or false, got 'maybe'"),
        ("distributed.strategy=zero3", r"'distributed.strategy' is 'zero3'; use fsdp or ddp"),
        ("data.max_bad_fraction=1", r"'data.max_bad_fraction' must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(override, message):
    with pytest.raises(TarsierError, match=message) as error:
        load_config(recipe="stage2", overrides=[override])
    assert "\n" not in str(error.value) and str(error.value).startswith("recipe stage2: ")


def test_yaml_problems_name_the_file_and_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  checkpoint: [x\n")
    with pytest.raises(TarsierError, match=rf"{broken}:\d+: not valid YAML"):
        load_config(broken)
    with pytest.raises(TarsierError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(TarsierError, match="expected KEY=VALUE"):
        load_config(recipe="stage2", overrides=["optim.lr"])


def test_config_differences_ignore_only_settings_that_leave_the_numbers_alone():
    saved = load_config(recipe="stage2").to_dict()
    same_numbers = config_from_dict({**saved, "train": {**saved["train"], "log_every": 1, "save_every": 7}}, "x").to_dict()
    assert config_differences(saved, same_numbers) == []
    changed = {**saved, "optim": {**saved["optim"], "lr": 1e-4}, "data": {**saved["data"], "sources": saved["data"]["sources"][:1]}}
    differences = config_differences(saved, config_from_dict(changed, "x").to_dict())
    assert "optim.lr: 1e-05 -> 0.0001" in differences
    assert "data.sources: 4 -> 1" in differences and any(d.startswith("data.sources[1].path") for d in differences)


def test_cli_prints_configs_and_reports_errors_on_one_line(capsys):
    assert main(["train", "--recipe", "stage2", "--print-config", "--set", "optim.lr=5e-6"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 5e-6 and printed["stage"] == "stage2"
    assert main(["train", "--recipe", "stage2", "--set", "optim.warmup_ratio=2", "--output", "x"]) == 2
    assert capsys.readouterr().err.strip() == "tarsier: error: recipe stage2: 'optim.warmup_ratio' must be in [0, 1), got 2.0"
    assert main(["train", "--recipe", "shapes-demo", "--print-config", "--output", "runs/s"]) == 0
    out = capsys.readouterr().out
    assert "# --- shapes-stage1 ---" in out and "# --- shapes-stage2 ---" in out and "runs/s/stage1" in out


def test_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "torchrun --nproc_per_node 8 -m tarsier.cli.train" in text and "--recipe shapes-demo" in text
