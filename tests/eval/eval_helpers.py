"""Helpers for the eval tests: a scripted OpenAI-compatible judge on 127.0.0.1, JSONL writers.

The server speaks ``POST /v1/chat/completions`` like OpenAI/vLLM. By default it answers like a
simple, predictable judge: events are the sentences of a description, and an event is entailed
when its text occurs in the description; so expected scores can be worked out by hand. Tests can
queue scripted replies first (status codes, delays, broken JSON) and read what was requested.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Reply:
    status: int = 200
    content: str | None = None  # None: the default judge's answer
    delay: float = 0.0  # seconds before answering (bounded; for timeouts and concurrency)
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # wait until the test releases the server (or 20 s)


def _description(prompt: str) -> str:
    match = re.search(r"Description:\n(.*?)\n\n", prompt, re.S)
    return match.group(1) if match else ""


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"[.!?]", text) if s.strip()]


def entailed(event: str, description: str) -> bool:
    return event.lower().strip(" .") in description.lower()


def default_answer(messages: list[dict]) -> str:
    prompt = messages[0]["content"] if len(messages) == 1 else messages[-1]["content"]
    if messages[-1]["role"] == "user" and "could not be used" in prompt:
        prompt = messages[0]["content"]
    if "Correct answer:" in prompt:
        answer = re.search(r"Correct answer: (.*)\n", prompt).group(1)
        prediction = re.search(r"Predicted answer: (.*)\n", prompt).group(1)
        same = answer.strip() in prediction
        return json.dumps({"pred": "yes" if same else "no", "score": 5 if same else 1})
    if "Events:\n" in prompt:
        description = _description(prompt)
        block = prompt.split("Events:\n", 1)[1].split("\n\n", 1)[0]
        events = [re.sub(r"^\d+\. ", "", line) for line in block.splitlines() if line.strip()]
        return json.dumps(
            {
                "events": [
                    {"event": e, "relationship": "entailment" if entailed(e, description) else "neutral", "reason": "r"}
                    for e in events
                ]
            }
        )
    return json.dumps({"events": sentences(_description(prompt))})


class JudgeServer:
    """Threaded chat-completions server; ``script`` queues replies used before the default judge."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: deque[Reply] = deque()
        self.in_flight = 0
        self.max_in_flight = 0
        self.hanging = threading.Event()  # set when a hang reply is waiting
        self.release = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                    return
                with server._lock:
                    server.requests.append(body)
                    reply = server.script.popleft() if server.script else Reply()
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if reply.hang:
                        server.hanging.set()
                        server.release.wait(20)
                    time.sleep(reply.delay)
                    if reply.status != 200:
                        self._send(
                            reply.status, {"error": {"message": f"scripted {reply.status}", "type": "x"}}, reply.headers
                        )
                        return
                    content = reply.content if reply.content is not None else default_answer(body["messages"])
                    self._send(
                        200,
                        {
                            "id": f"chatcmpl-{len(server.requests)}",
                            "object": "chat.completion",
                            "created": 0,
                            "model": body["model"],
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": content},
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                        },
                    )
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    def start(self) -> JudgeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def dream_line(
    idx: int, subset: str, response: str, prediction: str | None, events: list[str] | None = None, **extra_info: int
) -> dict:
    record = {
        "idx": idx,
        "dataset": f"DREAM/{subset}",
        "text": {"prompt": "<video>\nDescribe the video in detail.", "response": response, "prediction": prediction},
        "video_file": "<placeholder>",
        "vid": idx,
        "extra_info": dict(extra_info),
    }
    if events is not None:
        record["extra_info"]["events"] = events
    return record


def tvbench_line(idx: int, answer: str = "B", prediction: str = "", subset: str = "Moving Direction") -> dict:
    """A multiple-choice line in the Tarsier2 release's chat layout: pre-filled " Answer: (", the letter
    as the last assistant part's reference, and (in a prediction line) the prediction as its text."""
    return {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "video", "video": {"video_file": "<placeholder>"}},
                    {"type": "text", "text": "Question: Which way does the ball roll?\n(A) Left.\n(B) Right."},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": " Answer: ("},
                    {"type": "text", "text": prediction, "reference": answer},
                ],
            },
        ],
        "dataset": f"TVBench/{subset}",
        "task": "video/QA",
        "idx": idx,
        "vid": f"moving/clip{idx}.mp4",
    }


def dream_release_line(idx: int, reference: str = "A dog chases a ball. The dog brings it back.") -> dict:
    """A caption line in the Tarsier2 release's chat layout, with the null keys its parts carry."""
    return {
        "messages": [
            {
                "content": [
                    {"reference": None, "text": None, "type": "video", "video": {"video_file": "<placeholder>"}},
                    {"reference": None, "text": "Describe the video in detail.", "type": "text", "video": None},
                ],
                "role": "user",
            },
            {"content": [{"reference": reference, "text": "", "type": "text", "video": None}], "role": "assistant"},
        ],
        "dataset": "DREAM/stock",
        "task": "video/caption",
        "idx": idx,
        "extra_info": {"duration": 4.2, "events": ["A dog chases a ball.", "The dog brings it back."], "n_events": 2},
        "vid": idx,
    }
