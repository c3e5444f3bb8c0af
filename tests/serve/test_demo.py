"""``tarsier demo``: the page's callbacks with the bundled model, then the real page in headless Chromium."""

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from media_factory import make_image

from tarsier.cli import main
from tarsier.engine.chat import ChatSession
from tarsier.engine.loading import load_pretrained
from tarsier.engine.scheduler import Scheduler
from tarsier.engine.settings import GenerationSettings
from tarsier.serve.demo import SAMPLES, UPLOAD_HINT, DemoCallbacks, build_demo

TARSIER = str(Path(sys.executable).with_name("tarsier"))
N_FRAMES = 4
MAX_NEW_TOKENS = 32
GREEDY = (0.0, 1.0, MAX_NEW_TOKENS)  # temperature, top-p, max new tokens, as the sliders pass them


@pytest.fixture(scope="module")
def engine():
    model, processor = load_pretrained("shapes-demo", device="cpu", max_n_frames=N_FRAMES, progress=False)
    scheduler = Scheduler(model, processor)
    yield model, processor, scheduler
    scheduler.close()


@pytest.fixture
def callbacks(engine):
    _, processor, scheduler = engine
    return DemoCallbacks(scheduler, processor)


@pytest.fixture
def corrupt_video(tmp_path):
    path = tmp_path / "bad.mp4"
    path.write_bytes(random.Random(0).randbytes(4096))  # fixed noise: always the same error
    return path


def direct_answers(engine, questions, n_frames=N_FRAMES):
    """The replies of a ChatSession run directly (no scheduler, no page) on the first sample."""
    model, processor, _ = engine
    frames = processor.load_media(str(SAMPLES[0]), n_frames)
    session = ChatSession(model, processor, frames, GenerationSettings(MAX_NEW_TOKENS, 0.0, 1.0))
    return ["".join(session.ask(question)) for question in questions]


def test_the_bundled_samples_exist():
    assert [path.name for path in SAMPLES] == ["shapes_1.mp4", "shapes_2.mp4", "shapes_3.mp4"]


def test_load_shows_the_sampled_frames_captioned_with_their_source_index(callbacks, engine):
    conversation, gallery, chat, status = callbacks.load(str(SAMPLES[0]), N_FRAMES)
    expected = engine[1].load_media(str(SAMPLES[0]), N_FRAMES)
    assert len(gallery) == N_FRAMES
    assert [caption for _, caption in gallery] == [f"frame {index}" for index in expected.indices]
    # what the model gets (squared, resized, cropped), not the file's frames
    views = engine[1].model_view(expected)
    assert [image.tobytes() for image, _ in gallery] == [image.tobytes() for image in views]
    assert gallery[0][0].size == (engine[1].image_settings.crop_size,) * 2
    assert chat == [] and conversation.session is None
    assert "shapes_1.mp4" in status and f"{N_FRAMES} of {expected.total_frames} frames" in status
    _, gallery, _, _ = callbacks.load(str(SAMPLES[0]), 2)  # the frames slider
    assert [caption for _, caption in gallery] == ["frame 0", f"frame {expected.total_frames - 1}"]


def test_answers_stream_on_the_model_thread_and_match_a_direct_chat_session(callbacks, engine, monkeypatch):
    questions = ["What happens in the video?", "Describe the video."]
    expected = direct_answers(engine, questions)
    model = engine[0]
    encoded_on = []  # the thread of every vision-tower run
    features = model.get_image_features
    monkeypatch.setattr(
        model, "get_image_features",
        lambda *args, **kwargs: encoded_on.append(threading.current_thread().name) or features(*args, **kwargs),
    )
    conversation, *_ = callbacks.load(str(SAMPLES[0]), N_FRAMES)

    updates = list(callbacks.ask(questions[0], *GREEDY, conversation))
    assert len(updates) > 2  # the reply grew piece by piece
    replies = [chat[-1]["content"] for _, chat, _ in updates[1:]]
    assert all(later.startswith(earlier) for earlier, later in zip(replies, replies[1:]))
    box, chat, status = updates[-1]
    assert box == "" and "1 turn." in status
    assert chat == [{"role": "user", "content": questions[0]}, {"role": "assistant", "content": expected[0]}]

    *_, (_, chat, status) = callbacks.ask(questions[1], *GREEDY, conversation)
    assert [message["content"] for message in chat] == [questions[0], expected[0], questions[1], expected[1]]
    assert "2 turns" in status
    # the video went through the vision tower once for both turns (the conversation's KV was reused), on the model thread
    assert encoded_on == ["tarsier-model"]

    chat, status = callbacks.restart(conversation)
    assert chat == [] and conversation.session is None and "new conversation" in status
    *_, (_, chat, _) = callbacks.ask(questions[0], *GREEDY, conversation)
    assert chat[-1]["content"] == expected[0] and len(chat) == 2
    assert len(encoded_on) == 1  # a new conversation about the same video reuses its cached prefix


def test_user_mistakes_become_a_status_line_not_an_exception(callbacks, corrupt_video, tmp_path):
    conversation, gallery, chat, status = callbacks.load(str(corrupt_video), N_FRAMES)
    assert (conversation.frames, gallery, chat) == (None, [], [])
    assert status.startswith("⚠️ bad.mp4: cannot") and str(tmp_path) not in status  # the name, not the temp path
    # asking with the bad file still in the box says what is wrong with it, not "upload a video"
    assert list(callbacks.ask("What happens?", *GREEDY, conversation)) == [("What happens?", [], status)]
    assert callbacks.restart(conversation) == ([], status)
    notes = tmp_path / "notes.txt"
    notes.write_text("not media")
    assert "unsupported file type" in callbacks.load(str(notes), N_FRAMES)[3]
    assert callbacks.load(None, N_FRAMES) == (None, [], [], UPLOAD_HINT)

    assert list(callbacks.ask("What happens?", *GREEDY, None)) == [("What happens?", [], f"⚠️ {UPLOAD_HINT}")]
    conversation, *_ = callbacks.load(str(SAMPLES[1]), N_FRAMES)
    [(box, chat, status)] = callbacks.ask("What happens?", 0.0, 0.0, MAX_NEW_TOKENS, conversation)  # top-p 0
    assert box == "What happens?" and chat == [] and status.startswith("⚠️ top_p must be in (0, 1]")
    [(_, _, status)] = callbacks.ask("   ", *GREEDY, conversation)
    assert "Type a question" in status
    assert conversation.session is None or conversation.session.history == []


def test_build_demo_wires_a_page(engine):
    _, processor, scheduler = engine
    demo = build_demo(scheduler, processor, model_name="shapes-demo", settings=GenerationSettings(64, 0.5, 0.9))
    config = demo.get_config_file()
    sliders = {c["props"]["label"]: c["props"] for c in config["components"] if c["type"] == "slider"}
    assert sliders["Frames"]["maximum"] == N_FRAMES and sliders["Frames"]["value"] == N_FRAMES
    assert (sliders["Temperature (0: greedy)"]["value"], sliders["Top-p"]["value"]) == (0.5, 0.9)
    assert sliders["Max new tokens"]["value"] == 64


def test_help_teaches_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "tarsier demo --model shapes-demo" in text
    assert "--host" in text and "--port" in text and "--share" in text and "--max-new-tokens" in text


def test_bad_options_fail_in_one_line_before_loading(capsys):
    assert main(["demo", "--model", "shapes-demo", "--port", "0"]) == 2
    assert capsys.readouterr().err == "tarsier: error: --port must be between 1 and 65535, got 0\n"
    assert main(["demo", "--model", "shapes-demo", "--top-p", "2"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--model", "shapes-demo", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in capsys.readouterr().err


# -- the real page, served by `tarsier demo` in a subprocess, driven by headless Chromium -----------------------------


@pytest.fixture(scope="module")
def chromium():
    """Debian's chromium for Playwright (whose own browser download needs the internet); CI must have it."""
    path = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        path = None
    if path is None:
        reason = "the browser test needs Debian's chromium (apt-get install chromium) and the playwright package"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI must run it, not skip it")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path)
        yield browser
        browser.close()


@pytest.fixture
def demo_url(tmp_path):
    """``tarsier demo --model shapes-demo`` on a free port; stopped with Ctrl-C (SIGINT) after the test."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [TARSIER, "demo", "--model", "shapes-demo", "--port", str(port), "--max-frames", str(N_FRAMES),
               "--max-new-tokens", str(MAX_NEW_TOKENS), "--no-progress"]
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}  # uploads land here, not in /tmp/gradio
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    ready = threading.Event()

    def read_stderr():
        for line in server.stderr:
            lines.append(line)
            if "(Ctrl-C stops it)" in line:
                ready.set()
        ready.set()  # the server ended

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert ready.wait(90) and server.poll() is None, f"the demo did not start: {''.join(lines)}"
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.send_signal(signal.SIGINT)
        try:
            assert server.wait(timeout=30) == 0, "".join(lines)
        finally:
            server.kill()
            reader.join(5)
            server.stderr.close()
    assert lines[-1] == "tarsier: demo stopped\n"


def test_the_page_in_a_headless_browser(chromium, demo_url, engine, corrupt_video):
    from playwright.sync_api import expect

    question = "What happens in the video?"
    [answer] = direct_answers(engine, [question])
    page = chromium.new_page()
    outside = []  # the page must work offline: nothing but the demo's own server is asked for anything

    def only_local(route):
        if route.request.url.startswith(demo_url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.set_default_timeout(20_000)
    page.goto(demo_url)

    page.locator("#media input[type=file]").set_input_files(SAMPLES[0])
    expect(page.locator("#status")).to_contain_text(f"shapes_1.mp4: {N_FRAMES} of")
    expect(page.locator("#gallery img")).to_have_count(N_FRAMES)
    expect(page.locator("#gallery")).to_contain_text("frame 0")
    page.locator("#question textarea").fill(question)
    page.locator("#question textarea").press("Enter")
    expect(page.locator("#status")).to_contain_text("1 turn.")
    expect(page.locator("#chat")).to_contain_text(question)
    expect(page.locator("#chat")).to_contain_text(answer)

    page.get_by_role("button", name="shapes_2.mp4").click()  # a bundled sample starts a new conversation
    expect(page.locator("#status")).to_contain_text(f"shapes_2.mp4: {N_FRAMES} of")
    expect(page.locator("#chat")).not_to_contain_text(question)

    page.locator("#media button[aria-label=Clear]").click()
    page.locator("#media input[type=file]").set_input_files(corrupt_video)
    expect(page.locator("#status")).to_contain_text("bad.mp4: cannot open as a video")
    expect(page.locator("#gallery img")).to_have_count(0)
    page.locator("#question textarea").fill("What happens?")
    page.locator("#question textarea").press("Enter")
    expect(page.locator("#status")).not_to_contain_text("Upload a video")
    expect(page.locator("#status")).to_contain_text("bad.mp4: cannot open as a video")

    # a lone small image is one square thumbnail of the model's view, not blown up across the gallery
    still = corrupt_video.with_name("small.png")
    make_image(still, 3, size=(64, 48))
    page.locator("#media button[aria-label=Clear]").click()
    page.locator("#media input[type=file]").set_input_files(still)
    expect(page.locator("#status")).to_contain_text("small.png: 1 of 1 frames")
    expect(page.locator("#gallery img")).to_have_count(1)
    thumbnail, gallery = page.locator("#gallery img").bounding_box(), page.locator("#gallery").bounding_box()
    assert thumbnail["width"] < gallery["width"] / 3 and abs(thumbnail["width"] - thumbnail["height"]) < 2
    assert "Traceback" not in page.content()
    assert outside == []
    page.close()
