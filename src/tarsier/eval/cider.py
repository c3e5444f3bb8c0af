"""CIDEr for the captioning benchmarks, with a pure-Python PTB-style tokeniser (no Java).

The reference lower-cases captions, runs Stanford's PTBTokenizer (a Java jar) and drops punctuation
tokens before pycocoevalcap's CIDEr scorer. The tokeniser below follows the same Penn Treebank rules
that matter for n-gram matching (punctuation split off, clitics such as ``'s`` and ``n't`` split,
``cannot``/``gonna`` split, hyphenated words, numbers and abbreviations kept whole); the scorer is
pycocoevalcap's own. Scores are reported x100.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from tarsier.eval.annotations import Item

# Tokens the reference removes after tokenising (PTB spellings and the raw characters they stand for).
PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
    + ['"', "(", ")", "{", "}", "[", "]"]
)

_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u2013": "-", "\u2014": "--"})
# Characters that always stand alone (a comma only when it is not inside a number such as 1,000).
_ALWAYS_SPLIT = re.compile(r"""(\.\.\.+|--+|[;?!()\[\]{}"$%#@*+=<>|~^]|,(?!\d)|(?<!\d),)""")
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"], "wanna": ["wan", "na"]}
_ABBREVIATION = re.compile(r"^(?:[a-z]\.)+$|^(?:mr|mrs|ms|dr|st|jr|sr|vs|etc|inc|co|prof|no)\.$")


def _split_token(token: str) -> list[str]:
    head: list[str] = []
    tail: list[str] = []
    while len(token) > 1 and token[0] in "'`-":
        head.append(token[0])
        token = token[1:]
    while (
        len(token) > 1
        and token[-1] in "'`-:"
        or (len(token) > 1 and token[-1] == "." and not _ABBREVIATION.match(token))
    ):
        tail.insert(0, token[-1])
        token = token[:-1]
    if token in _SPLIT_WORDS:
        return head + _SPLIT_WORDS[token] + tail
    match = _CLITIC.match(token)
    if match and match.group(1) not in "'":
        return head + [match.group(1), match.group(2)] + tail
    return head + [token] + tail


def ptb_tokenize(text: str) -> str:
    """Lower-cased, PTB-tokenised text with punctuation tokens removed, joined by single spaces."""
    text = text.lower().translate(_QUOTES).replace("\n", " ")
    text = _ALWAYS_SPLIT.sub(r" \1 ", text)
    tokens: list[str] = []
    for raw in text.split():
        tokens.extend(_split_token(raw))
    return " ".join(t for t in tokens if t not in PUNCTUATION)


def cider(references: Sequence[Sequence[str]], predictions: Sequence[str]) -> tuple[float, list[float]]:
    """Corpus CIDEr and per-item scores (raw, not x100) of tokenised predictions against references."""
    from pycocoevalcap.cider.cider import Cider

    if not predictions:
        return 0.0, []
    gts = {i: [ptb_tokenize(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [ptb_tokenize(p)] for i, p in enumerate(predictions)}
    score, scores = Cider().compute_score(gts, res)
    return float(score), [float(s) for s in scores]


def evaluate(items: Sequence[Item]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-item records and the summary (CIDEr x100) for a captioning benchmark."""
    records: list[dict[str, Any]] = []
    scored: list[tuple[dict[str, Any], list[str], str]] = []
    for item in items:
        record: dict[str, Any] = {"key": item.key, "dataset": item.dataset, "idx": item.idx}
        references = [item.response] if isinstance(item.response, str) else list(item.response)
        if item.prediction is None:
            record.update(success=False, error=f"no prediction (inference failed: {item.error})")
        else:
            record.update(success=True, prediction=item.prediction, tokens=ptb_tokenize(item.prediction))
            scored.append((record, references, item.prediction))
        records.append(record)
    corpus, per_item = cider([s[1] for s in scored], [s[2] for s in scored])
    for (record, _, _), value in zip(scored, per_item, strict=True):
        record["cider"] = 100 * value
    summary = {
        "cider": 100 * corpus if scored else None,
        "success": len(scored),
        "failed": len(records) - len(scored),
    }
    return records, summary
