"""CIDEr for the captioning benchmarks, scored exactly as the reference scores it, without Java.

The reference lower-cases every caption, runs pycocoevalcap's ``PTBTokenizer`` (Stanford's
PTBTokenizer jar, punctuation tokens dropped) over all references and then over all predictions,
and scores with pycocoevalcap's ``Cider``. ``ptb_tokenizer`` reproduces that tokeniser token for
token in pure Python; the scorer is pycocoevalcap's own. Scores are reported x100.

By default each caption is tokenised on its own. ``reproduce_line_shift=True`` tokenises the
references and the predictions as the reference's two joined files instead, so its bug comes back
too: a caption holding a line break the jar recognises (``\\r``, U+2028, ...) shifts every later
caption of its file onto the wrong item (see docs/evaluation.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tarsier.eval.annotations import Item
from tarsier.eval.ptb_tokenizer import tokenize as ptb_tokenize
from tarsier.eval.ptb_tokenizer import tokenize_batch

__all__ = ["cider", "evaluate", "ptb_tokenize"]


def _tokenize(captions: Sequence[str], reproduce_line_shift: bool) -> list[str]:
    return tokenize_batch(captions) if reproduce_line_shift else [ptb_tokenize(c) for c in captions]


def _tokenize_items(
    references: Sequence[Sequence[str]], predictions: Sequence[str], reproduce_line_shift: bool
) -> tuple[list[list[str]], list[str]]:
    """Tokenised references (grouped per item) and predictions, one tokeniser run for each side."""
    flat = _tokenize([r for refs in references for r in refs], reproduce_line_shift)
    grouped, start = [], 0
    for refs in references:
        grouped.append(flat[start : start + len(refs)])
        start += len(refs)
    return grouped, _tokenize(predictions, reproduce_line_shift)


def _score(references: list[list[str]], predictions: list[str]) -> tuple[float, list[float]]:
    from pycocoevalcap.cider.cider import Cider

    if not predictions:
        return 0.0, []
    score, scores = Cider().compute_score(dict(enumerate(references)), {i: [p] for i, p in enumerate(predictions)})
    return float(score), [float(s) for s in scores]


def cider(
    references: Sequence[Sequence[str]], predictions: Sequence[str], *, reproduce_line_shift: bool = False
) -> tuple[float, list[float]]:
    """Corpus CIDEr and per-item scores (raw, not x100) of predictions against their references."""
    return _score(*_tokenize_items(references, predictions, reproduce_line_shift))


def evaluate(
    items: Sequence[Item], *, reproduce_line_shift: bool = False
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-item records and the summary (CIDEr x100) for a captioning benchmark."""
    records: list[dict[str, Any]] = []
    scored: list[tuple[dict[str, Any], list[str], str]] = []
    for item in items:
        record: dict[str, Any] = {"key": item.key, "dataset": item.dataset, "idx": item.idx}
        references = [item.response] if isinstance(item.response, str) else list(item.response)
        if item.prediction is None:
            record.update(success=False, error=f"no prediction (inference failed: {item.error})")
        else:
            record.update(success=True, prediction=item.prediction)
            scored.append((record, references, item.prediction))
        records.append(record)
    references, predictions = _tokenize_items([s[1] for s in scored], [s[2] for s in scored], reproduce_line_shift)
    corpus, per_item = _score(references, predictions)
    for (record, _, _), tokens, value in zip(scored, predictions, per_item, strict=True):
        record["tokens"] = tokens
        record["cider"] = 100 * value
    summary = {
        "cider": 100 * corpus if scored else None,
        "success": len(scored),
        "failed": len(records) - len(scored),
    }
    return records, summary
