"""Open-ended video QA (MSVD-QA, MSR-VTT-QA, TGIF-QA, ActivityNet-QA), scored by an LLM judge.

The judge compares the predicted answer with the correct one and returns ``{"pred": "yes"|"no",
"score": 0-5}``. Accuracy is the share of "yes" and the score is the mean, both over the items the
judge answered; items it never answered usably are counted as failed and listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tarsier.eval.annotations import Item
from tarsier.eval.judge import Judge, JudgeReplyError, ReplyFormatError, parse_json_object
from tarsier.eval.prompts import Prompt


def parse_verdict(reply: str) -> dict[str, Any]:
    """``{"pred": "yes"|"no", "score": float in [0, 5]}`` from a judge reply."""
    verdict = parse_json_object(reply)
    pred = verdict.get("pred")
    pred = pred.strip().lower() if isinstance(pred, str) else pred
    if pred not in ("yes", "no"):
        raise ReplyFormatError('"pred" must be "yes" or "no"')
    score = verdict.get("score")
    if isinstance(score, str):
        try:
            score = float(score.strip())
        except ValueError:
            raise ReplyFormatError('"score" must be a number from 0 to 5') from None
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 5:
        raise ReplyFormatError('"score" must be a number from 0 to 5')
    return {"pred": pred, "score": float(score)}


async def judge_item(item: Item, judge: Judge, prompts: dict[str, Prompt]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "key": item.key,
        "dataset": item.dataset,
        "idx": item.idx,
        "question": item.question,
        "answer": item.response,
        "prediction": item.prediction,
    }
    if item.prediction is None:
        return {**record, "success": False, "error": f"no prediction (inference failed: {item.error})"}
    # As the reference does: answer and prediction are lower-cased, the question is sent as is.
    messages = prompts["open_qa"].render(
        question=item.question or "", answer=item.response.lower(), prediction=item.prediction.lower()
    )
    try:
        answer = await judge.ask(messages, parse_verdict, placeholder={"pred": "no", "score": 0.0})
    except JudgeReplyError as exc:
        return {**record, "success": False, "error": str(exc), "failed_replies": exc.replies}
    return {**record, "success": True, **answer.value, "judge_reply": answer.reply}


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in records if r["success"]]
    return {
        "accuracy": 100 * sum(r["pred"] == "yes" for r in done) / len(done) if done else None,
        "score": sum(r["score"] for r in done) / len(done) if done else None,
        "success": len(done),
        "failed": len(records) - len(done),
    }
