"""A synthetic video world with exact ground truth: the stage-1/stage-2 mixture in miniature.

A clip is 16 frames of 64x64 pixels over a striped grey background. One or two balls of different
colours (red, green, blue, yellow) each move left, right, up or down or stay still; a ball may
appear part-way through and may turn a colour no other ball has; or the camera pans left or right
while the balls stay put (everything, stripes included, slides the other way). A ball is named by
its starting colour, and balls are always listed in the order red, green, blue, yellow, so every
sentence is decided by the pixels. Every clip comes with its description at two granularities,
perception and event questions, a multiple-choice question, an action label, a box track and a
still-pair comparison, in the formats :mod:`tarsier.train.adapters` reads. Descriptions follow a
small grammar, so a model's output can be parsed back and scored event by event (:func:`score`).

Why balls of one shape rather than circles, squares and triangles: telling shapes apart at this
size needs the model to relate neighbouring patches, which a model trained from scratch on two CPU
cores does not learn in minutes (shape accuracy stayed near chance in our runs).

Why motion blur: anything that moves in the picture leaves a fading trail behind it, and a
panning camera smears the background sideways, as a real camera's shutter does. Without it the
only evidence of motion is where a ball sits in one frame compared with another, and a ~1M
parameter LLM learns that comparison far too slowly for a demo: given perfect per-patch colour and
row/column features and a still camera, its answers to motion questions were right 0.41 of the
time after 2,000 steps of 32 samples (always answering the most common motion: 0.29), while
colours are learnt in a few hundred steps. With blur, which way a ball moves shows in each frame,
as its colour does; colour changes and appearances still need the frames' order.

    python -m tarsier.shapes.world evaluate --model src/tarsier/assets/shapes-demo
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from tarsier.media import sample_frame_indices, write_video

COLOURS = {"red": (225, 30, 30), "green": (30, 195, 50), "blue": (45, 85, 240), "yellow": (240, 220, 30)}
MOTIONS = ("left", "right", "up", "down", "still")
CAMERAS = ("still", "left", "right")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
SIZE = 64  # frame side in pixels
FRAMES = 16
FPS = 8
TRAVEL = 36  # pixels a moving ball (or the camera) covers in a clip
RADIUS = 8
TRAIL = ((4, 0.8), (8, 0.55), (12, 0.3))  # motion blur: (frames back, opacity) of the ghosts drawn
# behind anything that moves in the picture, long enough to reach the next 16 px cell (ViT patch)
PAN_BLUR = 9  # width in pixels of the sideways smear of the background while the camera pans
STRIPE_GREYS = (20, 140)  # background stripes: their texture shows pans (and whether it is smeared)

HELD_OUT_SEED = 1_000_003  # training data uses small seeds; held-out clips come from another stream
DETAILED_PROMPT = "Describe the video in detail."  # what `tarsier describe` asks by default
SHORT_PROMPTS = ("Describe the video briefly.", "Describe the video in one sentence.")


@dataclass(frozen=True)
class Ball:
    """One ball: its starting colour (its name), what it does, and where it starts (frame pixels)."""

    colour: str
    motion: str
    x: float
    y: float
    appears_at: int | None = None  # first frame it is visible in; None: from the start
    turns: str | None = None  # the colour it turns
    turns_at: int | None = None

    def position(self, frame: int, camera: str) -> tuple[float, float]:
        """Centre in frame pixels: its own motion minus the camera's."""
        progress = frame / (FRAMES - 1)
        (dx, dy), (cx, _) = DIRECTIONS[self.motion], DIRECTIONS[camera]
        return self.x + (dx - cx) * TRAVEL * progress, self.y + dy * TRAVEL * progress

    def visible(self, frame: int) -> bool:
        return self.appears_at is None or frame >= self.appears_at

    def colour_at(self, frame: int) -> str:
        return self.turns if self.turns and frame >= self.turns_at else self.colour


@dataclass(frozen=True)
class Clip:
    balls: tuple[Ball, ...]  # in colour order
    camera: str
    stripes: tuple[tuple[int, int], ...]  # background columns (width, grey) across the panned world


def random_clip(rng: np.random.Generator) -> Clip:
    """A clip drawn from the world's distribution."""
    camera = str(rng.choice(CAMERAS, p=[0.6, 0.2, 0.2]))
    count = 1 if rng.random() < 0.5 else 2
    colours = sorted(rng.choice(list(COLOURS), size=count, replace=False), key=list(COLOURS).index)
    free = [c for c in COLOURS if c not in colours]  # colours a ball may turn (never another ball's)
    lanes = rng.permutation(2)
    # Two balls share an axis (both horizontal or both vertical paths) so their lanes never cross.
    vertical = camera == "still" and rng.random() < 0.5
    motions = MOTIONS if count == 1 else ("up", "down", "still") if vertical else ("left", "right", "still")
    balls = []
    for colour, lane in zip(colours, lanes):
        motion = "still" if camera != "still" else str(rng.choice(motions))
        appears_at = int(rng.integers(4, 8)) if rng.random() < 0.3 else None
        turns = str(free.pop(int(rng.integers(len(free))))) if rng.random() < 0.3 else None
        turns_at = int(rng.integers(7, 11)) if turns else None
        columns = vertical if count == 2 else motion in ("up", "down")
        x, y = _start(rng, motion, camera, int(lane), columns)
        balls.append(Ball(str(colour), motion, x, y, appears_at, turns, turns_at))
    stripes = []
    width = 0
    while width < SIZE + TRAVEL:
        stripe = int(rng.integers(5, 12))
        stripes.append((stripe, int(rng.integers(*STRIPE_GREYS))))
        width += stripe
    return Clip(tuple(balls), camera, tuple(stripes))


def _start(rng: np.random.Generator, motion: str, camera: str, lane: int, columns: bool) -> tuple[float, float]:
    """A start point that keeps the ball in view for the whole clip, in its own lane: the left or
    right half when lanes are ``columns`` (vertical paths), else the top or bottom half."""
    (dx, dy), (cx, _) = DIRECTIONS[motion], DIRECTIONS[camera]
    low, high = RADIUS + 2, SIZE - RADIUS - 2
    lane_range = (low, SIZE // 2 - 2) if lane == 0 else (SIZE // 2 + 2, high)

    def along(displacement: float) -> float:
        return float(rng.uniform(low - min(0, displacement), high - max(0, displacement)))

    if columns:
        return float(rng.uniform(*lane_range)), along(dy * TRAVEL)
    return along((dx - cx) * TRAVEL), float(rng.uniform(*lane_range))


# -- pixels ---------------------------------------------------------------------------------------


def render(clip: Clip) -> list[Image.Image]:
    """The clip's frames as RGB images, with motion blur (see the module docstring)."""
    world = np.concatenate([np.full((SIZE, width, 3), grey, dtype=np.uint8) for width, grey in clip.stripes], axis=1)
    cx = DIRECTIONS[clip.camera][0]
    if cx:
        world = _smear(world, PAN_BLUR)
    frames = []
    for frame in range(FRAMES):
        # The view slides right over the world when the camera pans right (left: from the far end).
        offset = round((TRAVEL if cx < 0 else 0) + cx * TRAVEL * frame / (FRAMES - 1))
        pixels = world[:, offset : offset + SIZE].astype(np.float32)
        for ball in clip.balls:
            if not ball.visible(frame):
                continue
            colour = np.array(COLOURS[ball.colour_at(frame)], dtype=np.float32)
            for back, opacity in reversed(TRAIL):  # faintest, furthest ghost first
                coverage = _disc(*ball.position(frame - back, clip.camera))
                pixels += opacity * coverage[..., None] * (colour - pixels)
            pixels[_disc(*ball.position(frame, clip.camera)) > 0] = colour
        frames.append(Image.fromarray(np.rint(pixels).astype(np.uint8)))
    return frames


def _disc(x: float, y: float) -> np.ndarray:
    """1 inside a ball centred at (x, y), else 0, drawn as PIL draws it."""
    mask = Image.new("L", (SIZE, SIZE))
    ImageDraw.Draw(mask).ellipse((x - RADIUS, y - RADIUS, x + RADIUS, y + RADIUS), fill=1)
    return np.asarray(mask, dtype=np.float32)


def _smear(image: np.ndarray, width: int) -> np.ndarray:
    """A horizontal box blur (edges repeated), like a shutter open while the view slides."""
    padded = np.pad(image.astype(np.float32), ((0, 0), (width // 2, width // 2), (0, 0)), mode="edge")
    summed = np.cumsum(np.pad(padded, ((0, 0), (1, 0), (0, 0))), axis=1)
    return np.rint((summed[:, width:] - summed[:, :-width]) / width).astype(np.uint8)


def box(ball: Ball, frame: int, camera: str) -> list[float] | None:
    """Pixel box ``[x1, y1, x2, y2]`` of a ball in a frame, None while it has not appeared."""
    if not ball.visible(frame):
        return None
    x, y = ball.position(frame, camera)
    return [round(x - RADIUS, 1), round(y - RADIUS, 1), round(x + RADIUS, 1), round(y + RADIUS, 1)]


def picture_motion(ball: Ball, camera: str) -> str:
    """Which way a ball moves in the picture: its own motion, or against a panning camera."""
    if camera == "still":
        return ball.motion
    return "right" if camera == "left" else "left"


def patch_truth(clip: Clip, frame: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """What each cell of a ``grid`` x ``grid`` split of a frame shows (row-major, as ViT patches):
    the colour of the ball covering most of it (index into COLOURS, +1; 0: none) and the way the
    ball whose body or trail covers most of it moves in the picture (index into MOTIONS; "still"
    where nothing moves). The per-frame targets that pre-train the demo's vision tower
    (:func:`tarsier.shapes.demo_model.pretrain_vision`)."""
    cell = SIZE // grid
    least = (cell * cell) // 10  # a ball or its trail must cover a tenth of a cell

    def per_cell(mask: np.ndarray) -> np.ndarray:
        return mask.reshape(grid, cell, grid, cell).sum((1, 3)).reshape(-1)

    colours, motions = np.zeros(grid * grid, dtype=np.int64), np.full(grid * grid, MOTIONS.index("still"), dtype=np.int64)
    body_best, trail_best = np.full(grid * grid, least, dtype=np.float32), np.full(grid * grid, least, dtype=np.float32)
    for ball in clip.balls:
        if not ball.visible(frame):
            continue
        body = _disc(*ball.position(frame, clip.camera))
        trail = np.maximum(body, np.max([_disc(*ball.position(frame - back, clip.camera)) for back, _ in TRAIL], axis=0))
        covered, smeared = per_cell(body), per_cell(trail)
        wins = covered > body_best
        body_best[wins] = covered[wins]
        colours[wins] = list(COLOURS).index(ball.colour_at(frame)) + 1
        wins = smeared > trail_best
        trail_best[wins] = smeared[wins]
        motions[wins] = MOTIONS.index(picture_motion(ball, clip.camera))
    return colours, motions


def write_clip(path: Path, clip: Clip) -> None:
    write_video(path, render(clip), fps=FPS, crf=12, g=FRAMES)


# -- language -------------------------------------------------------------------------------------


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _capitalised(text: str) -> str:
    return text[0].upper() + text[1:]


def motion_phrase(motion: str) -> str:
    return "stays still" if motion == "still" else f"moves {motion}"


def sentence(ball: Ball) -> str:
    """``A red ball appears, moves left and turns blue.``"""
    parts = (["appears"] if ball.appears_at is not None else []) + [motion_phrase(ball.motion)]
    parts += [f"turns {ball.turns}"] if ball.turns else []
    return f"A {ball.colour} ball {_join(parts)}."


def detailed(clip: Clip) -> str:
    """Every ball and event, then the camera: the stage-2 description."""
    sentences = [sentence(ball) for ball in clip.balls]
    if clip.camera != "still":
        sentences.append(f"The camera pans {clip.camera}.")
    return " ".join(sentences)


def short(clip: Clip) -> str:
    """One sentence on the main thing happening: the stage-1 caption."""
    first = clip.balls[0]
    if clip.camera != "still":
        return f"The camera pans {clip.camera} past a {first.colour} ball."
    return f"A {first.colour} ball {motion_phrase(first.motion)}."


def perception_questions(clip: Clip) -> list[tuple[str, str]]:
    """Questions about what is there (answerable from one frame once every ball has appeared)."""
    pairs = [("How many balls are there?", "One." if len(clip.balls) == 1 else "Two.")]
    pairs.append(("Which balls are in the video?", _capitalised(_join([f"a {b.colour} ball" for b in clip.balls])) + "."))
    if len(clip.balls) == 1:
        pairs.append(("What colour is the ball at the start?", clip.balls[0].colour))
    return pairs


def event_questions(clip: Clip) -> list[tuple[str, str]]:
    """Questions about what happens over time: motion, the camera, colour changes, appearances."""
    pairs = [(f"Which way does the {b.colour} ball move?", "nowhere" if b.motion == "still" else b.motion) for b in clip.balls]
    pairs.append(("Does the camera move?", "No." if clip.camera == "still" else f"Yes, it pans {clip.camera}."))
    turned = " and ".join(f"the {b.colour} ball turns {b.turns}" for b in clip.balls if b.turns)
    pairs.append(("Does any ball change colour?", f"Yes, {turned}." if turned else "No."))
    appeared = [b for b in clip.balls if b.appears_at is not None]
    pairs.append(("Does a ball appear during the video?", "Yes, " + _join([f"a {b.colour} ball" for b in appeared]) + "." if appeared else "No."))
    return pairs


def open_questions(clip: Clip) -> list[tuple[str, str]]:
    """Every question/answer pair about one clip (answers short and exact)."""
    return perception_questions(clip) + event_questions(clip)


def choice_question(clip: Clip, rng: np.random.Generator) -> dict[str, Any]:
    """A multiple-choice question on the motion of one ball (options in a random order)."""
    ball = clip.balls[int(rng.integers(len(clip.balls)))]
    options = [motion if motion != "still" else "it stays still" for motion in MOTIONS]
    order = rng.permutation(len(options))
    answer = int(np.flatnonzero(order == MOTIONS.index(ball.motion))[0])
    return {"question": f"Which way does the {ball.colour} ball move?", "options": [options[i] for i in order], "answer": answer}


def action_label(clip: Clip) -> str:
    first = clip.balls[0]
    if clip.camera != "still":
        return f"camera panning {clip.camera}"
    return f"{first.colour} ball staying still" if first.motion == "still" else f"{first.colour} ball moving {first.motion}"


TEXT_ONLY = [
    {"prompt": f"What is the opposite of moving {a}?", "response": f"Moving {b}."}
    for a, b in (("left", "right"), ("right", "left"), ("up", "down"), ("down", "up"))
] + [
    {"prompt": "What lives in this world?", "response": "Balls, one or two at a time."},
    {"prompt": "Which colours can a ball have?", "response": "Red, green, blue and yellow."},
    {"prompt": "Which way can the camera pan?", "response": "Left or right."},
    {"prompt": "Can two balls have the same colour?", "response": "No."},
]


# -- parsing and scoring --------------------------------------------------------------------------

_SENTENCE = re.compile(r"An? (\w+) ball (.+)")
_CLAUSE = re.compile(r"appears|stays still|moves (\w+)|turns (\w+)")


def parse(description: str) -> dict[str, Any]:
    """Balls (by colour) and camera a description states, read with the world's grammar; text
    outside the grammar is ignored."""
    balls: dict[str, dict[str, Any]] = {}
    camera = "still"
    for text in re.split(r"(?<=\.)\s*", description.strip()):
        text = text.strip().rstrip(".")
        pan = re.fullmatch(r"The camera pans (\w+)", text)
        if pan:
            camera = pan.group(1)
            continue
        match = _SENTENCE.fullmatch(text)
        if not match or match.group(1) not in COLOURS or match.group(1) in balls:
            continue
        said: dict[str, Any] = {"motion": None, "appears": False, "turns": None}
        for clause in _CLAUSE.finditer(match.group(2)):
            if clause.group(0) == "appears":
                said["appears"] = True
            elif clause.group(0) == "stays still":
                said["motion"] = "still"
            elif clause.group(1):
                said["motion"] = clause.group(1)
            else:
                said["turns"] = clause.group(2)
        balls[match.group(1)] = said
    return {"balls": balls, "camera": camera}


def facts(clip_or_parsed: Clip | dict[str, Any]) -> set[tuple[str, ...]]:
    """Atomic facts (``("red", "ball")``, ``("red", "motion", "left")``, ``("camera", "pans", "left")``)."""
    parsed = clip_or_parsed if isinstance(clip_or_parsed, dict) else parse(detailed(clip_or_parsed))
    found = set()
    for colour, said in parsed["balls"].items():
        found.add((colour, "ball"))
        if said["motion"]:
            found.add((colour, "motion", said["motion"]))
        if said["appears"]:
            found.add((colour, "appears"))
        if said["turns"]:
            found.add((colour, "turns", said["turns"]))
    if parsed["camera"] != "still":
        found.add(("camera", "pans", parsed["camera"]))
    return found


def score(clips: list[Clip], descriptions: list[str]) -> dict[str, Any]:
    """Exact match, fact precision/recall/F1 and per-event accuracy of descriptions against truth.

    ``colour_accuracy``: share of the true balls the description names by their starting colour.
    ``motion``/``appears``/``turns_accuracy``: over the balls it names, how often it gets their
    motion, whether they appear (said iff it happens) and their colour change (or none) right.
    ``camera_accuracy`` is per clip; ``extra_balls`` counts balls named that are not in the clip.
    """
    right = {"motion": 0, "appears": 0, "turns": 0}
    balls = found = cameras = exact = extra = true_positive = predicted = actual = 0
    for clip, text in zip(clips, descriptions):
        guess = parse(text or "")
        exact += (text or "").strip() == detailed(clip)
        cameras += guess["camera"] == clip.camera
        for ball in clip.balls:
            balls += 1
            said = guess["balls"].get(ball.colour)
            if said:
                found += 1
                right["motion"] += said["motion"] == ball.motion
                right["appears"] += said["appears"] == (ball.appears_at is not None)
                right["turns"] += said["turns"] == ball.turns
        extra += len(set(guess["balls"]) - {ball.colour for ball in clip.balls})
        true_facts, guessed_facts = facts(clip), facts(guess)
        true_positive += len(true_facts & guessed_facts)
        predicted += len(guessed_facts)
        actual += len(true_facts)
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / actual if actual else 0.0
    return {
        "clips": len(clips),
        "exact_match": exact / len(clips),
        "fact_precision": precision,
        "fact_recall": recall,
        "fact_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "colour_accuracy": found / balls,
        **{f"{event}_accuracy": count / found if found else 0.0 for event, count in right.items()},
        "camera_accuracy": cameras / len(clips),
        "extra_balls": extra,
    }


def majority_reference(clips: list[Clip]) -> dict[str, float]:
    """What always giving the most common answer scores on each event (a frame-blind reference):
    the most frequent colour, "stays still", no appearing, no colour change, a still camera."""
    balls = [ball for clip in clips for ball in clip.balls]
    colours = [ball.colour for ball in balls]
    return {
        "colour_accuracy": max(colours.count(c) for c in COLOURS) / len(balls),
        "motion_accuracy": sum(ball.motion == "still" for ball in balls) / len(balls),
        "appears_accuracy": sum(ball.appears_at is None for ball in balls) / len(balls),
        "turns_accuracy": sum(ball.turns is None for ball in balls) / len(balls),
        "camera_accuracy": sum(clip.camera == "still" for clip in clips) / len(clips),
    }


# -- datasets on disk -----------------------------------------------------------------------------


def write_clips(folder: Path, count: int, seed: int, prefix: str = "clip", progress: bool = False,
                label: str = "clips") -> list[tuple[str, Clip]]:
    """``count`` clips as mp4 files in ``folder``, plus ``clips.jsonl`` with their ground truth.

    The clips of a seed are one stream: fewer clips are the first ones of more. ``progress`` shows
    a bar on stderr.
    """
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    bar = tqdm(total=count, desc=f"generating {label}", unit="clip", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    with bar, (folder / "clips.jsonl").open("w") as truth:
        for number in range(count):
            clip = random_clip(rng)
            name = f"{prefix}_{number:05d}.mp4"
            write_clip(folder / name, clip)
            truth.write(json.dumps({"media": name, "description": detailed(clip), "clip": asdict(clip)}) + "\n")
            written.append((name, clip))
            bar.update(1)
    return written


def read_clips(folder: Path) -> list[tuple[str, Clip]]:
    """The clips (file, ground truth) that :func:`write_clips` wrote to ``folder``."""
    clips = []
    for line in (folder / "clips.jsonl").read_text().splitlines():
        record = json.loads(line)
        data = record["clip"]
        balls = tuple(Ball(**ball) for ball in data["balls"])
        clips.append((str(folder / record["media"]), Clip(balls, data["camera"], tuple(map(tuple, data["stripes"])))))
    return clips


def write_training_data(folder: Path, count: int, seed: int, progress: bool = False) -> dict[str, Path]:
    """Clips and one JSONL per task, in the shapes the adapters read. Returns task -> file."""
    clips = write_clips(folder / "clips", count, seed, progress=progress, label="training clips")
    rng = np.random.default_rng(seed + 1)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records: dict[str, list[dict[str, Any]]] = {name: [] for name in (
        "captions", "perception_qa", "open_qa", "multiple_choice", "actions", "multi_image", "text", "tracking", "detailed", "short")}
    tracked = sample_frame_indices(FRAMES, 4)
    for number, (name, clip) in enumerate(clips):
        media = f"clips/{name}"
        records["captions"].append({"media": media, "caption": short(clip), "prompt": SHORT_PROMPTS[number % 2]})
        for question, answer in perception_questions(clip):
            records["perception_qa"].append({"media": media, "question": question, "answer": answer})
        events = event_questions(clip)
        for index in rng.choice(len(events), 2, replace=False):
            records["open_qa"].append({"media": media, "question": events[index][0], "answer": events[index][1]})
        records["multiple_choice"].append({"media": media, **choice_question(clip, rng)})
        records["actions"].append({"media": media, "label": action_label(clip)})
        ball = clip.balls[0]
        boxes = [box(ball, frame, clip.camera) for frame in range(FRAMES)]
        records["tracking"].append({"media": media, "object": f"the {ball.colour} ball", "boxes": boxes, "size": [SIZE, SIZE],
                                    "n_frames": len(tracked)})
        records["detailed"].append(_chat(media, DETAILED_PROMPT, detailed(clip)))
        records["short"].append(_chat(media, SHORT_PROMPTS[number % 2], short(clip)))
        if number % 4 == 0 and clip.camera == "still" and ball.appears_at is None:
            frames = render(clip)
            pair = []
            for label, frame in (("first", 0), ("last", FRAMES - 1)):
                pair.append(f"images/{name[:-4]}_{label}.png")
                frames[frame].save(folder / pair[-1])
            moved = "It did not move." if ball.motion == "still" else f"It moved {ball.motion}."
            records["multi_image"].append({"images": pair, "prompt": f"How did the {ball.colour} ball move from the first image to the second?",
                                           "response": moved})
    records["text"] = list(TEXT_ONLY)
    files = {}
    for task, lines in records.items():
        files[task] = folder / f"{task}.jsonl"
        files[task].write_text("".join(json.dumps(line) + "\n" for line in lines))
    return files


def _chat(media: str, prompt: str, reply: str) -> dict[str, Any]:
    """A common-format line (the ``chat`` adapter): one question, one answer about ``media``."""
    messages = [{"role": "user", "content": f"<video>\n{prompt}"}, {"role": "assistant", "content": reply}]
    return {"media": media, "task": "description", "messages": messages}


# -- evaluation -----------------------------------------------------------------------------------


def describe_clips(model_dir: str | Path, clips: list[tuple[str, Clip]], prompt: str = DETAILED_PROMPT,
                   max_new_tokens: int = 96) -> list[str]:
    """The model's greedy answers for ``clips`` (through the same path as ``tarsier describe``)."""
    from tarsier.engine.describer import Describer, DescribeRequest
    from tarsier.engine.settings import GenerationSettings

    describer = Describer.from_pretrained(str(model_dir), device="cpu", batch_size=8, num_workers=1,
                                          generation=GenerationSettings(max_new_tokens=max_new_tokens))
    requests = [DescribeRequest(str(i), path, f"<video>\n{prompt}") for i, (path, _) in enumerate(clips)]
    return [result.text or "" for result in describer.run(requests)]


def answer_accuracy(model_dir: str | Path, clips: list[tuple[str, Clip]]) -> dict[str, float]:
    """Exact-match accuracy on the clips' open questions about motion and camera."""
    from tarsier.engine.describer import Describer, DescribeRequest
    from tarsier.engine.settings import GenerationSettings

    describer = Describer.from_pretrained(str(model_dir), device="cpu", batch_size=8, num_workers=1,
                                          generation=GenerationSettings(max_new_tokens=16))
    requests, answers = [], []
    for path, clip in clips:
        for question, answer in open_questions(clip):
            requests.append(DescribeRequest(str(len(requests)), path, f"<video>\n{question}"))
            answers.append(answer)
    results = [result.text or "" for result in describer.run(requests)]
    return {"qa_accuracy": sum(r.strip() == a for r, a in zip(results, answers)) / len(answers), "questions": len(answers)}


def evaluate(model_dir: str | Path, clips: list[tuple[str, Clip]]) -> dict[str, Any]:
    """Description scores (see :func:`score`) plus open-QA accuracy, with example outputs."""
    descriptions = describe_clips(model_dir, clips)
    report = score([clip for _, clip in clips], descriptions)
    report.update(answer_accuracy(model_dir, clips))
    report["examples"] = [{"media": Path(path).name, "truth": detailed(clip), "model": text}
                          for (path, clip), text in list(zip(clips, descriptions))[:5]]
    return report


def format_report(reports: dict[str, dict[str, Any]]) -> str:
    """A side-by-side table of reports (e.g. before / after training); missing values show as -."""
    keys = ["exact_match", "fact_f1", "fact_precision", "fact_recall", "colour_accuracy", "motion_accuracy",
            "appears_accuracy", "turns_accuracy", "camera_accuracy", "qa_accuracy", "extra_balls"]
    names = list(reports)
    lines = [f"{'metric':<18}" + "".join(f"{name:>12}" for name in names)]
    for key in keys:
        cells = [reports[name].get(key) for name in names]
        lines.append(f"{key:<18}" + "".join(
            f"{'-':>12}" if c is None else f"{c:>12d}" if isinstance(c, int) else f"{c:>12.3f}" for c in cells))
    return "\n".join(lines)


def one_thread() -> None:
    """The demo model's matrices are too small for intra-op threads to pay off, and on shared
    cores OpenMP threads that spin-wait for each other make each step many times slower."""
    import torch

    torch.set_num_threads(1)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tarsier.shapes.world", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    evaluate_parser = commands.add_parser("evaluate", help="score a model on freshly generated held-out clips")
    evaluate_parser.add_argument("--model", required=True, help="checkpoint folder")
    evaluate_parser.add_argument("--clips", type=int, default=100, help="held-out clips to generate (default: 100)")
    evaluate_parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help=f"generator seed (default: {HELD_OUT_SEED})")
    evaluate_parser.add_argument("--work", default=".tarsier-demo/held-out", help="folder for the clips")
    generate_parser = commands.add_parser("generate", help="write clips and the per-task JSONL training files")
    generate_parser.add_argument("--output", required=True)
    generate_parser.add_argument("--clips", type=int, default=1000)
    generate_parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(list(argv) if argv is not None else None)
    one_thread()
    if args.command == "generate":
        for task, path in write_training_data(Path(args.output), args.clips, args.seed, progress=True).items():
            print(f"{task}: {path}")
        return 0
    clips = write_clips(Path(args.work), args.clips, args.seed, prefix="held_out", progress=True, label="held-out clips")
    clips = [(str(Path(args.work) / name), clip) for name, clip in clips]
    report = evaluate(args.model, clips)
    print(format_report({"majority": majority_reference([clip for _, clip in clips]), Path(args.model).name or "model": report}))
    for example in report["examples"]:
        print(f"\n{example['media']}\n  truth: {example['truth']}\n  model: {example['model']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
