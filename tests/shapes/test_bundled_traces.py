"""The engine reproduces what each bundled demo model said when it was shipped: the same reply ids,
and at every step the same log-probability of the chosen token as one uncached forward gave then.

Trained models' replies hardly depend on positions (every decode position one off left all three
Tarsier2 replies unchanged), their log-probabilities do: so a decode-position, rope-delta or cache
bug in either family fails here even when the text survives it (checked below)."""

import json
from pathlib import Path

import pytest

from tarsier.engine.continuous_batch import ContinuousBatch, Job
from tarsier.engine.loading import load_pretrained
from tarsier.engine.settings import GenerationSettings
from tarsier.shapes import demo_model, world

ASSETS = Path(world.__file__).resolve().parents[1] / "assets"
TOLERANCE = 1e-3  # float32 on any CPU; a position one off moves them by 0.1-0.6


def engine_trace(model, processor, names, max_new_tokens=96):
    """Each sample's reply ids and chosen-token log-probabilities, all samples in one batch."""
    batch = ContinuousBatch(model, processor, max_batch_size=len(names))
    rows, traces = {}, {name: {"ids": [], "logprobs": []} for name in names}
    emit = batch._emit

    def recorded_emit():
        for row, logits in zip(batch._rows, batch._logits):
            rows[id(row.job)].append(logits.float().log_softmax(-1))
        emit()

    batch._emit = recorded_emit
    logprobs = {}
    for name in names:
        ids, media = processor.encode_item(f"<video>\n{world.DETAILED_PROMPT}", processor.load_media(str(ASSETS / "samples" / name)))
        trace = traces[name]
        job = Job(list(ids), media, GenerationSettings(max_new_tokens=max_new_tokens), trace["ids"].append, lambda error: None)
        rows[id(job)] = logprobs[name] = []
        batch.add(job)
    while batch.busy():
        batch.step()
    for name, trace in traces.items():
        trace["logprobs"] = [float(step[token]) for step, token in zip(logprobs[name], trace["ids"])]
    return traces


def differences(recorded, traced):
    return [max(abs(a - b) for a, b in zip(recorded[name]["logprobs"], traced[name]["logprobs"])) for name in recorded]


@pytest.mark.parametrize("bundled", ["shapes-demo", "tarsier2-shapes-demo"])
def test_the_engine_gives_each_bundled_model_s_recorded_ids_and_log_probabilities(bundled):
    recorded = json.loads((ASSETS / bundled / "samples_trace.json").read_text())
    assert list(recorded) == list(demo_model.sample_truth(ASSETS))
    model, processor = load_pretrained(bundled, device="cpu", progress=False)
    traced = engine_trace(model, processor, list(recorded))
    said = json.loads((ASSETS / bundled / "samples.json").read_text())
    for name in recorded:
        assert traced[name]["ids"] == recorded[name]["ids"], name
        assert processor.decode(recorded[name]["ids"], skip_special_tokens=True) == said[name]
    assert max(differences(recorded, traced)) < TOLERANCE

    # The same engine with every decode position one off: what this test is for.
    right = model.prefill_positions
    model.prefill_positions = lambda ids, mask, media: (lambda positions, delta: (positions, delta + 1))(*right(ids, mask, media))
    off = engine_trace(model, processor, list(recorded))
    assert min(differences(recorded, off)) > 10 * TOLERANCE
