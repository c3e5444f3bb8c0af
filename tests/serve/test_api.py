"""The OpenAI-compatible server on a real uvicorn (127.0.0.1, free port), driven by the real openai client."""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from media_factory import make_image, make_video

from tarsier.engine.generation import generate_ids
from tarsier.engine.loading import load_pretrained
from tarsier.engine.settings import GenerationSettings
from tarsier.serve.api import ServeConfig, create_app
from tarsier.serve.media_sources import MediaPolicy

MODEL = "tiny-test"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def live_server(loaded, **options):
    """A real uvicorn serving create_app on a free port in a thread; stopped on exit."""
    config = ServeConfig(model_name=MODEL, **options)
    app = create_app(lambda: loaded, config)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        yield url, app
    finally:
        server.should_exit = True
        thread.join(30)


def wait_healthy(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never became healthy")


@pytest.fixture(scope="module")
def loaded(fast_checkpoint):
    return load_pretrained(fast_checkpoint, device="cpu", max_n_frames=4, progress=False)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media-root")
    make_video(root / "clip.mp4", 30, fps=10)
    make_video(root / "other.mp4", 12, fps=10)
    make_image(root / "still.png", 7)
    outside = tmp_path_factory.mktemp("outside")
    make_video(outside / "secret.mp4", 10, fps=10)
    (root / "escape.mp4").symlink_to(outside / "secret.mp4")
    return root, outside


@pytest.fixture(scope="module")
def server(loaded, media):
    with live_server(loaded, media=MediaPolicy(media_root=media[0]), max_tokens=64, max_queue=32) as running:
        yield running


def at_once(ask, count: int) -> None:
    """``ask(0) .. ask(count - 1)`` from as many threads at the same time, waiting for all."""
    threads = [threading.Thread(target=ask, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def video_message(url: str, text: str = "Describe the video.", kind: str = "video_url") -> list[dict]:
    return [{"role": "user", "content": [{"type": kind, kind: {"url": url}}, {"type": "text", "text": text}]}]


def data_url(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def expected_ids(loaded, media_path, messages, max_tokens, **settings):
    """What the library (the CLI's code path) generates alone for the same conversation."""
    model, processor = loaded
    frames = processor.load_media(str(media_path)) if media_path else None
    n_frames = len(frames.images) if frames else 0
    ids = processor.encode_prompt(processor.chat_template.render(messages, n_frames), n_frames)
    inputs = processor.pad([ids])
    if frames:
        inputs["pixel_values"] = processor.pixel_values(frames.images)
    out = generate_ids(model, processor, inputs, GenerationSettings(max_new_tokens=max_tokens, **settings))[0].tolist()
    eos = processor.tokenizer.eos_token_id
    return out[: out.index(eos) + 1] if eos in out else out


def test_health_models_and_metrics(server):
    url, _ = server
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "model": MODEL}
    assert [m.id for m in client(url).models.list().data] == [MODEL]
    metrics = httpx.get(f"{url}/metrics")
    assert metrics.status_code == 200 and "tarsier_queue_depth 0" in metrics.text


def test_data_url_video_matches_the_library_run_alone(server, loaded, media):
    url, _ = server
    clip = media[0] / "clip.mp4"
    response = client(url).chat.completions.create(
        model=MODEL, messages=video_message(data_url(clip, "video/mp4")), max_tokens=12,
        extra_body={"return_token_ids": True},
    )
    expected = expected_ids(loaded, clip, [{"role": "user", "content": "Describe the video."}], 12)
    choice = response.choices[0]
    assert choice.model_extra["token_ids"] == expected
    assert choice.message.content == loaded[1].decode(expected)
    assert choice.finish_reason == ("stop" if expected[-1] == loaded[1].tokenizer.eos_token_id else "length")
    assert response.usage.completion_tokens == len(expected)
    assert response.usage.prompt_tokens > 4 * 20  # 4 frames of 21 positions each, plus the text


def test_stream_gives_the_same_text_in_pieces_with_usage(server, loaded, media):
    url, _ = server
    messages = video_message("clip.mp4")
    whole = client(url).chat.completions.create(model=MODEL, messages=messages, max_tokens=16)
    chunks = list(client(url).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=16, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 1
    assert "".join(deltas) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_path_file_url_and_image_under_the_media_root(server, loaded, media):
    url, _ = server
    root = media[0]
    by_path = client(url).chat.completions.create(model=MODEL, messages=video_message("clip.mp4"), max_tokens=8)
    by_file = client(url).chat.completions.create(
        model=MODEL, messages=video_message(f"file://{root / 'clip.mp4'}"), max_tokens=8)
    assert by_path.choices[0].message.content == by_file.choices[0].message.content
    image = client(url).chat.completions.create(
        model=MODEL, messages=video_message("still.png", "Describe the image.", kind="image_url"), max_tokens=8,
        extra_body={"return_token_ids": True})
    expected = expected_ids(loaded, root / "still.png", [{"role": "user", "content": "Describe the image."}], 8)
    assert image.choices[0].model_extra["token_ids"] == expected
    assert image.usage.prompt_tokens < by_path.usage.prompt_tokens  # one frame, not four


@contextmanager
def media_host(root: Path):
    """A plain HTTP server on 127.0.0.1 (a free port) with media, a web page, redirects and a big file."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    routes = {
        "/clip.mp4": ("video/mp4", (root / "clip.mp4").read_bytes()),
        "/clip": ("video/mp4", (root / "clip.mp4").read_bytes()),  # the type says what it is
        "/big.mp4": ("video/mp4", b"\x00" * 5000),
        "/page.html": ("text/html", b"<html>not media</html>"),
    }
    redirects = {"/moved.mp4": "/clip.mp4", "/to-file.mp4": "file:///etc/passwd", "/to-ftp.mp4": "ftp://127.0.0.1/x.mp4",
                 "/loop.mp4": "/loop.mp4"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path in redirects:
                self.send_response(302)
                self.send_header("Location", redirects[self.path])
                self.end_headers()
                return
            kind, body = routes.get(self.path, ("text/plain", b""))
            self.send_response(200 if self.path in routes else 404)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    host = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=host.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{host.server_address[1]}"
    finally:
        host.shutdown()
        host.server_close()


def test_remote_media_is_fetched_only_when_allowed_and_within_limits(loaded, media):
    root = media[0]
    expected = expected_ids(loaded, root / "clip.mp4", [{"role": "user", "content": "Describe the video."}], 6)
    policy = MediaPolicy(allow_remote=True, max_bytes=(root / "clip.mp4").stat().st_size + 100)
    with media_host(root) as web, live_server(loaded, media=policy) as (url, _):
        for good in ("clip.mp4", "clip", "moved.mp4"):  # by extension, by content type, through a redirect
            reply = post(url, {**chat_body(f"{web}/{good}", max_tokens=6), "return_token_ids": True})
            assert reply.status_code == 200 and reply.json()["choices"][0]["token_ids"] == expected, (good, reply.text)
        refusals = {"big.mp4": (413, "over this server's media limit"), "page.html": (400, "unsupported media type 'text/html'"),
                    "to-file.mp4": (400, "file:///etc/passwd"), "to-ftp.mp4": (400, "ftp://127.0.0.1/x.mp4, which is not"),
                    "loop.mp4": (400, "could not fetch"), "missing.mp4": (400, "could not fetch")}
        policy.max_bytes = 4000  # the big file (5,000 bytes) is over it, the clip too
        for name, (status, words) in refusals.items():
            reply = post(url, chat_body(f"{web}/{name}"))
            assert reply.status_code == status and words in reply.json()["error"]["message"], (name, reply.text)
        assert httpx.get(f"{url}/health").status_code == 200
    with media_host(root) as web, live_server(loaded, media=MediaPolicy()) as (url, _):  # not allowed by default
        reply = post(url, chat_body(f"{web}/clip.mp4"))
        assert reply.status_code == 400 and "--allow-remote-media" in reply.json()["error"]["message"]


def test_repetition_penalty_is_the_library_s(server, loaded, media):
    url, _ = server
    turns = [{"role": "user", "content": "What moves?"}]
    plain = expected_ids(loaded, media[0] / "clip.mp4", turns, 10)
    expected = expected_ids(loaded, media[0] / "clip.mp4", turns, 10, repetition_penalty=0.3)
    response = client(url).chat.completions.create(
        model=MODEL, messages=video_message("clip.mp4", "What moves?"), max_tokens=10,
        extra_body={"return_token_ids": True, "repetition_penalty": 0.3})
    assert response.choices[0].model_extra["token_ids"] == expected != plain


def test_multi_turn_honours_earlier_assistant_turns(server, loaded, media):
    url, _ = server
    turns = [
        {"role": "user", "content": "What moves?"},
        {"role": "assistant", "content": "A ball."},
        {"role": "user", "content": "Which colour is it?"},
    ]
    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "clip.mp4"}},
                                             {"type": "text", "text": "What moves?"}]}] + turns[1:]
    response = client(url).chat.completions.create(model=MODEL, messages=messages, max_tokens=10,
                                                   extra_body={"return_token_ids": True})
    assert response.choices[0].model_extra["token_ids"] == expected_ids(loaded, media[0] / "clip.mp4", turns, 10)
    other = client(url).chat.completions.create(
        model=MODEL, messages=messages[:1] + [{"role": "assistant", "content": "Nothing at all."}] + messages[2:],
        max_tokens=10, extra_body={"return_token_ids": True})
    assert other.usage.prompt_tokens != response.usage.prompt_tokens  # the assistant turn is part of the prompt


def test_concurrent_requests_are_batched_and_match_each_alone(loaded, media):
    """Six requests of different lengths and media (two videos, an image, text alone) batched together:
    each gets the ids it gets alone, and those differ from row to row, so swapped rows would fail."""
    root = media[0]
    requests = [("clip.mp4", "video_url", "Question 0?", 6), ("other.mp4", "video_url", "What moves, and where does it go?", 9),
                ("still.png", "image_url", "Describe the image.", 7), (None, None, "Tell me a story about a red ball.", 8),
                ("clip.mp4", "video_url", "Describe the video in detail, please, with every colour.", 10),
                (None, None, "Hi", 5)]
    with live_server(loaded, media=MediaPolicy(media_root=root), batch_wait_ms=300, max_batch_size=8) as (url, _):
        results = [None] * len(requests)

        def ask(index):
            name, kind, text, tokens = requests[index]
            messages = video_message(name, text, kind) if name else [{"role": "user", "content": text}]
            results[index] = client(url).chat.completions.create(
                model=MODEL, messages=messages, max_tokens=tokens, extra_body={"return_token_ids": True})

        at_once(ask, len(requests))
        metrics = httpx.get(f"{url}/metrics").text
    sizes = [int(line.split('"')[1]) for line in metrics.splitlines() if line.startswith("tarsier_batches_total{")]
    assert max(sizes) > 1, metrics
    expected = [expected_ids(loaded, root / name if name else None, [{"role": "user", "content": text}], tokens)
                for name, _, text, tokens in requests]
    assert len({tuple(ids) for ids in expected}) == len(requests)  # every row's reply is its own
    assert [response.choices[0].model_extra["token_ids"] for response in results] == expected


def test_a_video_arriving_mid_stream_is_prefilled_in_chunks_and_both_answer_as_alone(loaded, media, monkeypatch):
    """--prefill-chunk: a second video's prompt, arriving while a reply streams, is prefilled a chunk
    per step (the streaming row gets tokens meanwhile); both replies are their ids alone."""
    from tarsier.engine.continuous_batch import ContinuousBatch

    root = media[0]
    chunks = []
    fill = ContinuousBatch._fill_chunk
    monkeypatch.setattr(ContinuousBatch, "_fill_chunk", lambda self, all_at_once: chunks.append(len(self._rows))
                        or fill(self, all_at_once))
    with live_server(loaded, media=MediaPolicy(media_root=root), prefill_chunk=16) as (url, app):
        assert app.state.tarsier["scheduler"].batch.prefill_chunk == 16
        results = {}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=chat_body("clip.mp4", max_tokens=40, stream=True,
                                                                                 return_token_ids=True), timeout=120) as response:
            lines = response.iter_lines()
            next(line for line in lines if line.startswith("data: {"))  # streaming: the second request arrives now
            results["other"] = client(url).chat.completions.create(
                model=MODEL, messages=video_message("other.mp4", "What moves?"), max_tokens=6,
                extra_body={"return_token_ids": True})
            rest = [line for line in lines if line.startswith("data: {")]
    assert len(chunks) > 1 and all(rows == 1 for rows in chunks)  # chunks ran while the first reply streamed
    streamed = [json.loads(line[6:]) for line in rest]
    assert any(event["choices"] and event["choices"][0].get("finish_reason") for event in streamed)
    assert results["other"].choices[0].model_extra["token_ids"] == expected_ids(
        loaded, root / "other.mp4", [{"role": "user", "content": "What moves?"}], 6)


def post(url, body, headers=None, timeout=60):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{url}/v1/chat/completions", content=data, headers={"content-type": "application/json", **(headers or {})},
                      timeout=timeout)


def chat_body(url_or_messages, **extra):
    messages = video_message(url_or_messages) if isinstance(url_or_messages, str) else url_or_messages
    return {"model": MODEL, "messages": messages, "max_tokens": 4, **extra}


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{not json", 400, "not valid JSON"),
        ({"model": MODEL}, 422, "messages"),
        ({"model": MODEL, "messages": "hi"}, 422, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}]}, 422, "model is required"),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "not served here"),
        (chat_body("clip.mp4", max_tokens=1000), 400, "over this server's limit of 64"),
        (chat_body("clip.mp4", max_tokens=0), 400, "at least 1"),
        (chat_body("clip.mp4", temperature=5), 400, "temperature"),
        (chat_body("clip.mp4", temperature="hot"), 422, "temperature must be a number"),
        (chat_body("clip.mp4", n=2), 400, "n must be 1"),
        (chat_body("clip.mp4", repetition_penalty=0), 400, "repetition_penalty must be > 0"),
        (chat_body("clip.mp4", top_k=-2), 400, "top_k must be >= 0"),
        (chat_body("clip.mp4", top_k=1.5), 422, "top_k must be"),
        (chat_body("clip.mp4", max_frames=99), 400, "--max-frames of 4"),
        (chat_body("../outside/secret.mp4"), 400, "outside the media root"),
        (chat_body("escape.mp4"), 400, "outside the media root"),
        (chat_body("/etc/passwd"), 400, "outside the media root"),
        (chat_body("missing.mp4"), 404, "no such file"),
        (chat_body("https://example.com/a.mp4"), 400, "--allow-remote-media"),
        (chat_body("ftp://host/a.mp4"), 400, "unsupported media URL scheme"),
        (chat_body("data:application/pdf;base64,AAAA"), 400, "unsupported media type"),
        (chat_body("data:video/mp4;base64,!!!"), 400, "base64"),
        (chat_body("data:video/mp4;base64," + base64.b64encode(os.urandom(3000)).decode()), 400, "data: URL media"),
        (chat_body([{"role": "assistant", "content": "hi"}]), 400, "expected a user message"),
        (chat_body([{"role": "user", "content": [{"type": "audio", "audio": {}}]}]), 400, "unsupported content part"),
        (chat_body([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]), 400, "last message"),
        (chat_body([{"role": "user", "content": "x " * 5000}]), 400, "over this server's limit"),
        (chat_body("clip\x00.mp4"), 400, "NUL byte"),
        (b'{"model": "tiny-test", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "nests JSON"),
        (b'{"model": "tiny-test", "extra": ' + b"[" * 100_000 + b"]" * 100_000
         + b', "messages": [{"role": "user", "content": "hi"}]}', 400, "nests JSON"),
        (b'{"model": "tiny-test", "extra": ' + b'{"a": ' * 40 + b"1" + b"}" * 40
         + b', "messages": [{"role": "user", "content": "hi"}]}', 400, "more than 32 levels"),
        (chat_body("clip.mp4", end_time=float("inf")), 400, "end_time must be a finite number"),
        (chat_body("clip.mp4", start_time=float("nan")), 400, "start_time must be a finite number"),
        (chat_body("clip.mp4", start_time=-3), 400, "start_time must be 0 or more"),
        (chat_body("clip.mp4", repetition_penalty=float("nan")), 400, "repetition_penalty must be a finite number"),
        (chat_body("clip.mp4", seed=10**30), 400, "seed must be between 0 and"),
        (chat_body("clip.mp4", seed=-1), 400, "seed must be between 0 and"),
    ],
    ids=lambda value: None if not isinstance(value, int) else str(value),
)
def test_bad_requests_get_their_status_and_one_line_message(server, body, status, words):
    url, _ = server
    response = post(url, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"] and "\n" not in error["message"] and "Traceback" not in error["message"]
    assert httpx.get(f"{url}/health").status_code == 200  # still serving


def test_errors_never_leak_server_paths(server, media):
    url, _ = server
    corrupt = "data:video/mp4;base64," + base64.b64encode(b"\x00" * 4000).decode()
    message = post(url, chat_body(corrupt)).json()["error"]["message"]
    assert "tarsier-media-" not in message and "/tmp" not in message
    message = post(url, chat_body("missing.mp4")).json()["error"]["message"]
    assert str(media[0]) not in message


def test_local_paths_are_refused_without_a_media_root(loaded):
    with live_server(loaded) as (url, _):
        response = post(url, chat_body("clip.mp4"))
    assert response.status_code == 400 and "--media-root" in response.json()["error"]["message"]


def test_api_key_is_required_everywhere_but_health(loaded, media):
    with live_server(loaded, api_key="s3cret", media=MediaPolicy(media_root=media[0])) as (url, _):
        assert httpx.get(f"{url}/health").status_code == 200
        for path in ("/v1/models", "/metrics"):
            assert httpx.get(f"{url}{path}").status_code == 401
        refused = post(url, chat_body("clip.mp4"))
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").chat.completions.create(model=MODEL, messages=video_message("clip.mp4"), max_tokens=2)
        ok = client(url, "s3cret").chat.completions.create(model=MODEL, messages=video_message("clip.mp4"), max_tokens=2)
        assert ok.usage.completion_tokens >= 1


def test_refusals_before_a_route_are_counted_and_the_bearer_scheme_is_any_case(loaded, media):
    with live_server(loaded, api_key="s3cret", media=MediaPolicy(media_root=media[0]), max_body_bytes=50_000) as (url, _):
        key = {"authorization": "Bearer s3cret"}
        assert httpx.get(f"{url}/v1/models", headers={"authorization": "bearer s3cret"}).status_code == 200
        assert httpx.get(f"{url}/v1/models", headers={"authorization": "BEARER  s3cret"}).status_code == 200
        assert httpx.get(f"{url}/v1/models", headers={"authorization": "Basic s3cret"}).status_code == 401
        assert post(url, chat_body("clip.mp4")).status_code == 401
        assert post(url, b"x" * 60_000, headers=key).status_code == 413
        # a web page may POST text/plain to any address without asking first: refused
        plain = httpx.post(f"{url}/v1/chat/completions", content=json.dumps(chat_body("clip.mp4")),
                           headers={**key, "content-type": "text/plain"}, timeout=60)
        assert plain.status_code == 415 and "application/json" in plain.json()["error"]["message"]
        assert post(url, chat_body("clip.mp4"), headers=key).status_code == 200
        metrics = httpx.get(f"{url}/metrics", headers=key).text
    for status, count in (("401", 2), ("413", 1), ("415", 1), ("200", 1)):
        assert f'tarsier_requests_total{{status="{status}"}} {count}' in metrics, metrics


def test_oversized_body_and_media_get_413(loaded, media):
    options = {"media": MediaPolicy(media_root=media[0], max_bytes=1000), "max_body_bytes": 50_000}
    with live_server(loaded, **options) as (url, _):
        big = chat_body("data:video/mp4;base64," + "A" * 60_000)
        assert post(url, big).status_code == 413
        medium = chat_body(data_url(media[0] / "clip.mp4", "video/mp4"))
        response = post(url, medium)
        assert response.status_code == 413 and "media" in response.json()["error"]["message"]
        assert post(url, chat_body("clip.mp4")).status_code == 413  # the file under the root is too big as well
        assert httpx.get(f"{url}/health").status_code == 200


def test_a_full_queue_answers_503_with_retry_after(loaded, media):
    with live_server(loaded, media=MediaPolicy(media_root=media[0]), max_batch_size=1, max_queue=1,
                     max_tokens=64) as (url, _):
        statuses, headers = [], []

        def ask(_):
            response = post(url, chat_body("clip.mp4", max_tokens=64))
            statuses.append(response.status_code)
            headers.append(response.headers.get("retry-after"))

        at_once(ask, 6)
    assert 503 in statuses and 200 in statuses, statuses
    assert all(header == "1" for status, header in zip(statuses, headers) if status == 503)


def test_a_client_that_leaves_mid_stream_frees_its_place(loaded, media):
    with live_server(loaded, media=MediaPolicy(media_root=media[0]), max_tokens=2000) as (url, app):
        scheduler = app.state.tarsier["scheduler"]
        body = chat_body("clip.mp4", max_tokens=2000, stream=True)
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            for _ in range(6):
                next(lines)
        deadline = time.monotonic() + 20
        while scheduler.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scheduler.in_flight == 0
        generated = scheduler.stats.generated_tokens
        assert generated < 1500  # stopped long before its 2000 tokens
        ok = client(url).chat.completions.create(model=MODEL, messages=video_message("clip.mp4"), max_tokens=3)
        assert ok.choices[0].message.content is not None
        assert 'tarsier_requests_total{status="499"} 1' in httpx.get(f"{url}/metrics").text


def test_a_non_streaming_client_that_leaves_is_noticed_and_its_row_stops(loaded, media):
    """A real client gives up on a long non-streaming reply and closes its connection: the server
    answers 499 in /metrics and the row leaves the batch long before its 2,000 tokens."""
    with live_server(loaded, media=MediaPolicy(media_root=media[0]), max_tokens=2000) as (url, app):
        with pytest.raises(httpx.ReadTimeout):
            post(url, chat_body([{"role": "user", "content": "Tell me a very long story."}], max_tokens=2000), timeout=1.5)
        scheduler = app.state.tarsier["scheduler"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and 'status="499"' not in httpx.get(f"{url}/metrics").text:
            time.sleep(0.1)
        metrics = httpx.get(f"{url}/metrics").text
        time.sleep(0.5)
        generated = scheduler.stats.generated_tokens
        time.sleep(0.5)
        assert 'tarsier_requests_total{status="499"} 1' in metrics, metrics
        assert 0 < generated < 1000 and scheduler.stats.generated_tokens == generated  # stopped, not running on


def test_stop_strings_end_the_reply_before_them(server, loaded):
    url, _ = server
    messages = [{"role": "user", "content": "Say something."}]
    whole = client(url).chat.completions.create(model=MODEL, messages=messages, max_tokens=24).choices[0].message.content
    words = whole.split()
    assert len(words) > 2
    stop = words[2]
    cut = client(url).chat.completions.create(model=MODEL, messages=messages, max_tokens=24, stop=[stop])
    assert cut.choices[0].message.content == whole[: whole.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client(url).chat.completions.create(model=MODEL, messages=messages, max_tokens=24, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == whole[: whole.index(stop)]


def test_seeded_sampling_repeats(server):
    url, _ = server
    kwargs = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12, "temperature": 1.0}
    first = client(url).chat.completions.create(seed=7, **kwargs).choices[0].message.content
    assert client(url).chat.completions.create(seed=7, **kwargs).choices[0].message.content == first


@pytest.mark.slow
def test_sigterm_drains_requests_in_progress_and_refuses_new_ones(fast_checkpoint, media):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "tarsier.cli", "serve", "--model", str(fast_checkpoint), "--port", str(port),
         "--media-root", str(media[0]), "--max-frames", "4", "--no-progress", "--served-model-name", MODEL],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        try:
            wait_healthy(url, 120)
        except AssertionError:
            process.kill()
            raise AssertionError(process.stdout.read()) from None
        body = chat_body("clip.mp4", max_tokens=400, stream=True)
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as response:
            lines = response.iter_lines()
            for _ in range(4):
                next(lines)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            # still listening while it drains: a load balancer sees it go, clients are told to retry
            refused = post(url, chat_body("clip.mp4"))
            health = httpx.get(f"{url}/health", timeout=10)
            rest = [line for line in lines if line.startswith("data: ")]
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "shutting down" in refused.json()["error"]["message"]
        assert health.status_code == 503 and health.json() == {"status": "draining"}
        assert rest[-1] == "data: [DONE]"
        finish = [json.loads(line[6:])["choices"][0]["finish_reason"] for line in rest[:-1] if json.loads(line[6:])["choices"]]
        assert finish[-1] in ("stop", "length")
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        output = process.stdout.read()
    assert "Traceback" not in output, output


def test_a_tarsier2_checkpoint_serves_video_and_text_in_one_batch_as_the_library_alone(tarsier2_checkpoint, media):
    """The server's prompt (the checkpoint's chat template) and its batch (image_grid_thw collated
    with the pixels) give each request the greedy ids the library gives it alone."""
    loaded = load_pretrained(tarsier2_checkpoint, device="cpu", progress=False)
    model, processor = loaded
    clip = media[0] / "clip.mp4"

    def alone(frames, text):
        inputs = processor.collate([processor.encode_item(text, frames)])
        out = generate_ids(model, processor, inputs, GenerationSettings(max_new_tokens=8))[0].tolist()
        ends = [index for index, token in enumerate(out) if token in processor.eos_token_ids]
        return out[: ends[0] + 1] if ends else out

    requests = [video_message("clip.mp4", "What moves?"), [{"role": "user", "content": "Hello there."}]]
    results = [None] * len(requests)
    with live_server(loaded, media=MediaPolicy(media_root=media[0]), batch_wait_ms=300) as (url, _):
        def ask(index):
            results[index] = client(url).chat.completions.create(
                model=MODEL, messages=requests[index], max_tokens=8, extra_body={"return_token_ids": True})

        at_once(ask, len(requests))
        metrics = httpx.get(f"{url}/metrics").text
    assert 'tarsier_batches_total{size="2"} 1' in metrics
    assert results[0].choices[0].model_extra["token_ids"] == alone(processor.load_media(str(clip)), "What moves?")
    assert results[1].choices[0].model_extra["token_ids"] == alone(None, "Hello there.")


def _counter(metrics: str, line_start: str) -> float:
    return next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(line_start))


def test_a_video_asked_again_reuses_its_prefix_and_answers_as_alone(server, loaded, media):
    """The second question about a video prefills only its own tokens (a prefix-cache hit in /metrics)
    and its reply is the one the library gives the same conversation alone."""
    url, _ = server
    before = httpx.get(f"{url}/metrics").text
    replies = []
    for question in ("What happens?", "What colour is it?"):
        response = client(url).chat.completions.create(
            model=MODEL, messages=video_message("other.mp4", question), max_tokens=10,
            extra_body={"return_token_ids": True})
        replies.append(response.choices[0].model_extra["token_ids"])
    after = httpx.get(f"{url}/metrics").text
    hits = 'tarsier_prefix_cache_lookups_total{result="hit"}'
    assert _counter(after, hits) - _counter(before, hits) == 1
    assert _counter(after, "tarsier_prefix_cache_reused_positions_total") > _counter(before, "tarsier_prefix_cache_reused_positions_total")
    for question, reply in zip(("What happens?", "What colour is it?"), replies):
        assert reply == expected_ids(loaded, media[0] / "other.mp4", [{"role": "user", "content": question}], 10)
