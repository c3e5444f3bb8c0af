"""The synthetic shapes world: pixels match the ground truth, text parses back, data and demo plumbing."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tarsier.cli import main
from tarsier.models.tarsier.configuration_tarsier import TarsierConfig
from tarsier.models.tarsier.modeling_tarsier import TarsierForConditionalGeneration
from tarsier.models.tarsier.processing_tarsier import TarsierProcessor
from tarsier.shapes import demo_model, world
from tarsier.shapes.world import COLOURS, FRAMES, Ball, Clip
from tarsier.train.config import DataSettings, SourceSettings
from tarsier.train.data import TrainingDataset
from tarsier.train.mixture import load_mixture

ASSETS = Path(world.__file__).resolve().parents[1] / "assets"


def pixel(image, centre):
    return np.asarray(image)[round(centre[1]), round(centre[0])]


def test_frames_show_each_ball_where_and_as_the_truth_says():
    stripes = ((96, 100),)
    mover = Ball("red", "right", x=15, y=16, turns="blue", turns_at=8)
    late = Ball("green", "up", x=56, y=60, appears_at=5)  # clear of the mover at every frame
    frames = world.render(Clip((mover, late), "still", stripes))
    assert len(frames) == FRAMES
    assert tuple(pixel(frames[0], mover.position(0, "still"))) == COLOURS["red"]
    assert tuple(pixel(frames[15], mover.position(15, "still"))) == COLOURS["blue"]
    assert mover.position(15, "still")[0] - mover.position(0, "still")[0] == world.TRAVEL
    assert tuple(pixel(frames[4], late.position(4, "still"))) == (100, 100, 100)  # not there yet
    assert tuple(pixel(frames[5], late.position(5, "still"))) == COLOURS["green"]
    assert world.box(late, 4, "still") is None and world.box(late, 5, "still") is not None


def test_a_camera_pan_slides_the_background_and_the_balls_the_other_way():
    rng = np.random.default_rng(3)
    stripes = tuple((int(rng.integers(5, 12)), int(rng.integers(80, 140))) for _ in range(20))
    still = Ball("yellow", "still", x=50, y=16)
    frames = world.render(Clip((still,), "right", stripes))
    first, last = np.asarray(frames[0]), np.asarray(frames[-1])
    travel = world.TRAVEL
    assert np.array_equal(first[40:, travel:], last[40:, :-travel])  # background moved left by TRAVEL
    assert still.position(15, "right")[0] == still.x - travel


def test_motion_blur_trails_behind_what_moves_in_the_picture_and_a_pan_smears_the_background():
    stripes = ((40, 30), (60, 70))  # one sharp stripe edge at x=40
    mover, sitter = Ball("red", "right", x=20, y=16), Ball("blue", "still", x=16, y=48)
    frame = np.asarray(world.render(Clip((mover, sitter), "still", stripes))[8]).astype(int)
    x, y = (round(v) for v in mover.position(8, "still"))
    behind, ahead = frame[y, x - world.RADIUS - 3], frame[y, x + world.RADIUS + 3]
    assert behind[0] - behind[2] > 40 and ahead[0] == ahead[2]  # a red tint on the left only
    x, y = (round(v) for v in sitter.position(8, "still"))
    assert (frame[y, x - world.RADIUS - 2] == frame[y, x + world.RADIUS + 2]).all()  # no trail
    assert (frame[y, x - world.RADIUS - 2] == 30).all()
    assert np.abs(np.diff(frame[40:, :, 0], axis=1)).max() == 40  # still camera: the stripe edge is sharp

    panned = np.asarray(world.render(Clip((sitter,), "left", stripes))[8]).astype(int)
    assert np.abs(np.diff(panned[:30, :, 0], axis=1)).max() < 10  # smeared over PAN_BLUR pixels
    x, y = (round(v) for v in sitter.position(8, "left"))
    assert panned[y, x - world.RADIUS - 3, 2] > panned[y, x - world.RADIUS - 3, 0] + 20  # the ball moves right in the picture: trail on its left


def test_patch_truth_names_each_cell_by_the_ball_and_trail_covering_it():
    mover = Ball("red", "right", x=56 - world.TRAVEL, y=40)
    clip = Clip((mover, Ball("green", "still", x=8, y=56)), "still", ((200, 100),))
    frame = 15
    x, y = mover.position(frame, "still")
    assert (x, y) == (56, 40)
    colours, motions = world.patch_truth(clip, frame, 4)
    cells = lambda values: values.reshape(4, 4)  # noqa: E731
    red, green = 1 + list(COLOURS).index("red"), 1 + list(COLOURS).index("green")
    right, still = world.MOTIONS.index("right"), world.MOTIONS.index("still")
    # the red body (48..64, 32..48) fills cell row 2, column 3; its trail reaches into column 2
    assert cells(colours)[2, 3] == red and cells(motions)[2, 3] == right
    assert cells(colours)[2, 2] == 0 and cells(motions)[2, 2] == right  # trail only: moving, no ball
    assert cells(colours)[3, 0] == green and cells(motions)[3, 0] == still
    assert cells(colours)[0].tolist() == [0, 0, 0, 0] and cells(motions)[0].tolist() == [still] * 4
    panned = Clip((Ball("blue", "still", x=30, y=30),), "right", ((200, 100),))
    assert world.picture_motion(panned.balls[0], "right") == "left"
    assert right not in world.patch_truth(panned, 8, 4)[1]


def test_vision_pretraining_teaches_the_patches_their_colours():
    torch.manual_seed(0)
    model = TarsierForConditionalGeneration(TarsierConfig(**json.loads((ASSETS / "shapes-demo" / "config.json").read_text())))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = demo_model.pretrain_vision(model, steps=120, pool_clips=60)
    assert scores["colour_accuracy_on_ball_patches"] > 0.5 and scores["background_accuracy"] > 0.8, scores
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("vision_tower.") for k in changed)  # projector and LLM untouched


def test_random_clips_are_reproducible_unambiguous_and_stay_in_view():
    one = [world.random_clip(np.random.default_rng(5)) for _ in range(2)]
    assert one[0] == one[1]
    rng = np.random.default_rng(0)
    for _ in range(300):
        clip = world.random_clip(rng)
        colours = [ball.colour for ball in clip.balls]
        assert colours == sorted(colours, key=list(COLOURS).index) and len(set(colours)) == len(colours)
        turns = [ball.turns for ball in clip.balls if ball.turns]
        assert not set(turns) & set(colours) and len(set(turns)) == len(turns)
        for ball in clip.balls:
            for frame in (0, FRAMES - 1):
                x, y = ball.position(frame, clip.camera)
                assert world.RADIUS <= x <= 64 - world.RADIUS and world.RADIUS <= y <= 64 - world.RADIUS
            assert clip.camera == "still" or ball.motion == "still"


def test_descriptions_parse_back_and_score_against_the_truth():
    clip = Clip((Ball("red", "left", 40, 20, appears_at=5, turns="blue", turns_at=9), Ball("green", "still", 20, 50)), "left", ((100, 100),))
    text = world.detailed(clip)
    assert text == "A red ball appears, moves left and turns blue. A green ball stays still. The camera pans left."
    assert world.short(clip) == "The camera pans left past a red ball."
    assert world.facts(world.parse(text)) == world.facts(clip)
    perfect = world.score([clip], [text])
    assert perfect["exact_match"] == perfect["fact_f1"] == perfect["motion_accuracy"] == perfect["camera_accuracy"] == 1.0
    wrong = world.score([clip], ["A red ball moves right and turns blue. A green ball stays still. A yellow ball stays still."])
    assert wrong["exact_match"] == 0 and wrong["colour_accuracy"] == 1.0 and wrong["motion_accuracy"] == 0.5  # over named balls
    assert wrong["appears_accuracy"] == 0.5 and wrong["turns_accuracy"] == 1.0 and wrong["camera_accuracy"] == 0.0
    assert wrong["extra_balls"] == 1 and 0 < wrong["fact_f1"] < 1
    assert world.score([clip], [""])["fact_f1"] == 0.0
    assert dict(world.event_questions(clip))["Does any ball change colour?"] == "Yes, the red ball turns blue."


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    world.write_training_data(folder / "data", 12, seed=0)
    demo_model.build_start_model(folder / "init", demo_model.training_texts(folder / "data"), vision_steps=2)
    return folder


def test_every_task_file_reads_cleanly_through_its_adapter(demo_data):
    processor = TarsierProcessor.from_pretrained(demo_data / "init")
    for file, adapter, _ in demo_model.STAGE1_TASKS + demo_model.STAGE2_TASKS:
        mixture = load_mixture(DataSettings(sources=[SourceSettings(path=str(demo_data / "data" / f"{file}.jsonl"), adapter=adapter)],
                                            max_bad_fraction=0.0))
        dataset = TrainingDataset(mixture.items, mixture.ranges, processor, [8], max_length=512)
        example = dataset[0]  # tracking items check that the annotated frames were the ones sampled
        assert example["failures"] == [] and any(label != -100 for label in example["labels"]), file


def test_the_demo_tokenizer_reads_prompts_as_training_showed_them(demo_data):
    processor = TarsierProcessor.from_pretrained(demo_data / "init")
    config = json.loads((demo_data / "init" / "config.json").read_text())
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == config["image_token_index"] < config["vocab_size"]
    assert processor.layout.frame_token_ids == ([config["image_token_index"]] * 4 + [config["image_token_index"] + 1]) * 4 + [config["image_new_idx"]]
    reply = "A yellow ball appears, moves down and turns red. The camera pans right."
    messages = [{"role": "user", "content": "<video>\n" + world.DETAILED_PROMPT}, {"role": "assistant", "content": reply}]
    ids, labels = processor.labelled_ids(messages, 8)
    prompt = processor.encode_prompt(processor.format_prompt("<video>\n" + world.DETAILED_PROMPT, 8), 8)
    assert ids[: len(prompt)] == prompt  # what `tarsier describe` feeds is exactly the trained prefix
    assert processor.decode([t for t, label in zip(ids, labels) if label != -100]) == reply


def test_the_demo_runs_end_to_end_in_miniature(tmp_path):
    report = demo_model.run_demo(tmp_path / "demo", progress=False, train_clips=12, held_out_clips=2, steps=(2, 2),
                                  vision_steps=2)
    assert set(report["scores"]) == {"start", "stage1", "stage2"}
    assert json.loads((tmp_path / "demo" / "report.json").read_text())["training"]["stage2"]["steps"] == 2
    assert (tmp_path / "demo" / "stage2" / "model.safetensors").is_file()


def test_a_short_demo_run_generates_data_sized_to_it_with_progress(tmp_path, capsys):
    # The full recipe (what made the shipped model) still generates what it always did.
    assert demo_model.demo_sizes(demo_model.stage_configs("runs/s")) == {
        "clips": 2000, "held_out_clips": 100, "vision_steps": 1500, "vision_clips": 600}
    assert demo_model.demo_sizes(demo_model.stage_configs("runs/s", ["train.max_steps=2000"]))["clips"] == 2000
    assert demo_model.demo_sizes(demo_model.stage_configs("runs/s", ["train.max_steps=350"]))["clips"] == 1000
    # A 2-step run generates the minimum, shows progress while it does, and --set demo.* sets a size.
    output = tmp_path / "demo"
    assert main(["train", "--recipe", "shapes-demo", "--output", str(output), "--set", "train.max_steps=2",
                 "--set", "demo.held_out_clips=2"]) == 0
    err = capsys.readouterr().err
    assert "generating 32 training clips, 2 held-out clips, stage 0: 30 steps on frames of 40 clips (sized to the run" in err
    assert "generating training clips: 100%" in err and "32/32" in err and "stage 0 training: 100%" in err
    report = json.loads((output / "report.json").read_text())
    assert report["training_clips"] == 32 and report["held_out_clips"] == 2 and report["vision_pretraining"]["steps"] == 30
    assert report["training"]["stage1"]["steps"] == report["training"]["stage2"]["steps"] == 2
    for bad, message in (("demo.clips=0", "--set demo.clips: must be an integer >= 8 (training clips generated), got '0'"),
                         ("demo.frames=3", "--set demo.frames: unknown demo setting; the shapes demo takes: demo.clips, ")):
        assert main(["train", "--recipe", "shapes-demo", "--output", str(tmp_path / "x"), "--set", bad]) == 2
        assert capsys.readouterr().err.startswith(f"tarsier: error: {message}")
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(not (ASSETS / "shapes-demo" / "config.json").is_file(), reason="the shipped demo model is not built")
def test_the_shipped_demo_model_still_says_what_it_said_when_shipped():
    recorded = json.loads((ASSETS / "shapes-demo" / "samples.json").read_text())
    truth = [json.loads(line) for line in (ASSETS / "samples" / "truth.jsonl").read_text().splitlines()]
    assert list(recorded) == [record["path"] for record in truth]
    clips = [(str(ASSETS / "samples" / name), None) for name in recorded]
    assert world.describe_clips("shapes-demo", clips) == list(recorded.values())


def test_the_majority_reference_is_what_constant_answers_score():
    clip = Clip((Ball("red", "left", 40, 20, appears_at=5, turns="blue", turns_at=9), Ball("green", "still", 20, 50)), "left", ((100, 100),))
    reference = world.majority_reference([clip])
    assert reference == {"colour_accuracy": 0.5, "motion_accuracy": 0.5, "appears_accuracy": 0.5, "turns_accuracy": 0.5, "camera_accuracy": 0.0}
