"""The pure-Python PTB tokeniser against data the real reference (pycocoevalcap + Java) produced.

The expected data lives in tests/eval/data and comes from make_ptb_expected.py there; these tests
need no Java.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import write_jsonl

from tarsier.eval import cider
from tarsier.eval.annotations import load_predictions
from tarsier.eval.ptb_tokenizer import tokenize, tokenize_batch

DATA = Path(__file__).parent / "data"
FILLER = "x"  # the caption make_ptb_expected.py puts between adversarial captions


def _load(name: str):
    return json.loads((DATA / name).read_text(encoding="utf-8"))


ADVERSARIAL = _load("ptb_adversarial.json")
REALISTIC = _load("ptb_realistic.json")
BATCHES = _load("ptb_batches.json")


def test_data_is_small_and_broad():
    assert sum(p.stat().st_size for p in DATA.glob("*.json")) < 1_000_000
    assert len(ADVERSARIAL) >= 250 and len(REALISTIC["videos"]) == 100


@pytest.mark.parametrize("case", ADVERSARIAL, ids=lambda case: repr(case["caption"])[:60])
def test_adversarial_caption_token_for_token(case):
    assert tokenize(case["caption"]) == case["tokens"]


def test_adversarial_captions_as_one_reference_batch():
    padded = [c for case in ADVERSARIAL for c in (case["caption"], FILLER)]
    assert tokenize_batch(padded)[::2] == [case["tokens"] for case in ADVERSARIAL]


def _caption_items(tmp_path, videos):
    lines = [
        {
            "idx": i,
            "dataset": "MSVD-Caption-test",
            "text": {"prompt": "p", "response": v["references"], "prediction": v["prediction"]},
        }
        for i, v in enumerate(videos)
    ]
    return load_predictions([write_jsonl(tmp_path / "p.jsonl", lines)]).items["msvd-caption"]


@pytest.mark.parametrize("reproduce_line_shift", [False, True])
def test_realistic_cider_equals_the_reference(tmp_path, reproduce_line_shift):
    records, summary = cider.evaluate(
        _caption_items(tmp_path, REALISTIC["videos"]), reproduce_line_shift=reproduce_line_shift
    )
    assert summary["cider"] / 100 == pytest.approx(REALISTIC["cider"], abs=1e-6)
    assert [r["cider"] / 100 for r in records] == pytest.approx(REALISTIC["per_video"], abs=1e-6)


@pytest.mark.parametrize("name", sorted(BATCHES["batches"]))
def test_reference_batches_are_reproduced(name):
    batch = BATCHES["batches"][name]
    assert tokenize_batch(batch["captions"]) == batch["tokens"]


def test_default_tokenises_each_caption_on_its_own():
    batches = BATCHES["batches"]
    # A line break inside a caption is white space, and later captions keep their own tokens.
    assert [tokenize(c) for c in batches["line_shift"]["captions"]] == [
        "a man is singing",
        "a woman is dancing",
        "two dogs play in the yard",
        "a cat sleeps",
        "a car drives fast now",
        "a child laughs",
        "the end",
        "the very end",
    ]
    # The next caption does not matter, nor does being last in the file.
    assert tokenize("see fig.") == "see fig"
    assert tokenize("a cat smiles :)") == "a cat smiles :-rrb-"
    assert tokenize("he said we'll") == "he said we 'll"
    assert tokenize("cats, dogs, etc.") == "cats dogs etc."


def test_line_shift_option_reproduces_the_reference_cider(tmp_path):
    case = BATCHES["line_shift_cider"]
    references = [v["references"] for v in case["videos"]]
    predictions = [v["prediction"] for v in case["videos"]]
    score, scores = cider.cider(references, predictions, reproduce_line_shift=True)
    assert score == pytest.approx(case["cider"], abs=1e-6) and scores == pytest.approx(case["per_video"], abs=1e-6)
    _, summary = cider.evaluate(_caption_items(tmp_path, case["videos"]), reproduce_line_shift=True)
    assert summary["cider"] / 100 == pytest.approx(case["cider"], abs=1e-6)
    # By default the "\r" is white space and nothing shifts: a different, correct score.
    assert cider.cider(references, predictions)[0] != pytest.approx(case["cider"], abs=1e-6)


def test_tokeniser_details():
    assert tokenize("") == "" and tokenize(" \t ") == ""
    assert tokenize("It's 3 o'clock, isn't it?") == "it 's 3 o'clock is n't it"
    assert tokenize("He can't; she won't; they cannot.") == "he ca n't she wo n't they can not"
    assert tokenize("“Quoted” — really… (yes) [no] {maybe}") == (
        "quoted really -lrb- yes -rrb- -lsb- no -rsb- -lcb- maybe -rcb-"
    )
    assert tokenize("Wow!! Really?! Yes!") == "wow !! really ?! yes"
    assert tokenize("Mr. Smith, U.S. army, e.g. 3.5 km at 10:30.") == "mr. smith u.s. army e.g. 3.5 km at 10:30"
    assert tokenize("Call (555) 555-1234 for 3 1/2 cups") == "call -lrb-555-rrb-\u00a0555-1234 for 3\u00a01/2 cups"
    assert tokenize("a dog 🐶 runs") == "a dog runs"
