"""Fixtures for the eval tests: the scripted judge server and small predictions files."""

from __future__ import annotations

import pytest
from eval_helpers import JudgeServer, dream_line, write_jsonl


@pytest.fixture
def judge_server():
    server = JudgeServer().start()
    yield server
    server.stop()


@pytest.fixture
def closed_port_url():
    """A 127.0.0.1 URL where nothing listens (an endpoint that is down)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def dream_predictions(tmp_path):
    """Six DREAM items over two subsets whose AutoDQ scores under the default judge are known.

    Under the default judge, recall/precision per item are:
      1 (a): events [man walks, dog runs], pred "a man walks. a cat sleeps."   R 1/2  P 1/2
      2 (a): events [girl jumps],          pred "a girl jumps."                 R 1    P 1
      3 (a): no events list; reference "a car stops. a man exits." pred "a car stops."  R 1/2 P 1
      4 (b): events [],                    pred "a bird flies."                 R 1 (empty) P 0
      5 (b): events [ball rolls, kid kicks the ball], pred "the kid kicks the ball. the ball rolls."  R 1 P 1
      6 (b): events [woman sings],         pred "a woman dances."               R 0    P 0
    """
    records = [
        dream_line(
            1,
            "a",
            "A man walks. A dog runs.",
            "A man walks. A cat sleeps.",
            ["a man walks", "a dog runs"],
            n_subjects=2,
            n_shots=1,
            n_events=2,
        ),
        dream_line(2, "a", "A girl jumps.", "A girl jumps.", ["a girl jumps"], n_subjects=1, n_shots=2, n_events=1),
        dream_line(3, "a", "A car stops. A man exits.", "A car stops.", None, n_subjects=3, n_shots=1, n_events=4),
        dream_line(4, "b", "A bird sits.", "A bird flies.", [], n_subjects=1, n_shots=4, n_events=0),
        dream_line(
            5,
            "b",
            "The ball rolls. The kid kicks the ball.",
            "The kid kicks the ball. The ball rolls.",
            ["the ball rolls", "the kid kicks the ball"],
            n_subjects=5,
            n_shots=3,
            n_events=8,
        ),
        dream_line(6, "b", "A woman sings.", "A woman dances.", ["a woman sings"], n_subjects=1, n_shots=1, n_events=6),
    ]
    return write_jsonl(tmp_path / "predictions.jsonl", records)
