"""The web demo (``tarsier demo``): a Gradio page that shows what the model sees and chats about it.

A browser tab uploads a video, GIF or image (or picks a bundled sample) and sees the sampled frames
as a gallery: exactly the frames the model gets. Questions stream their answers over as many turns
as wanted; each tab keeps a :class:`~tarsier.engine.chat.ScheduledChat`, whose turns are jobs on the
:class:`~tarsier.engine.scheduler.Scheduler` like API requests: tabs share batches and never block
each other, and a conversation's KV stays in the prefix cache between turns, so the video is encoded
once. New media, a new frame count or Restart start a new conversation.

The model is only ever touched on the scheduler's model thread, as in ``tarsier serve``; Gradio's
threads only decode media and relay text.
Problems a user can cause (an unreadable file, impossible settings) appear in the page's status
line as one sentence, never as a traceback.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr

from tarsier.engine.chat import ScheduledChat
from tarsier.engine.settings import GenerationSettings
from tarsier.errors import TarsierError, one_line
from tarsier.media import GIF_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

if TYPE_CHECKING:
    from PIL import Image

    from tarsier.engine.scheduler import Scheduler
    from tarsier.media import SampledFrames
    from tarsier.models.interface import FamilyProcessor

logger = logging.getLogger(__name__)

# The demo works offline: no usage statistics or version checks from any page Gradio builds (ours passes
# analytics_enabled=False too; the variable also covers the Blocks Gradio makes for itself).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "assets" / "samples").glob("*.mp4"))
UPLOAD_HINT = "Upload a video, GIF or image, or pick a sample."
MAX_NEW_TOKENS_LIMIT = 2048  # the slider's end (further than any sensible reply)
# System fonts only: the default theme would fetch its fonts from Google, which an offline page cannot.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])

Message = dict[str, str]  # {"role": "user" | "assistant", "content": text}, as gr.Chatbot takes them


@dataclass
class Conversation:
    """One browser tab's media, its sampled frames and the chat about them (started on the first question)."""

    name: str  # the file name shown in the page
    frames: SampledFrames | None  # None: the file could not be read, and ``problem`` says why
    session: ScheduledChat | None = None
    problem: str | None = None


class DemoCallbacks:
    """What the page's events do; plain methods, so tests can call them without a browser."""

    def __init__(self, scheduler: Scheduler, processor: FamilyProcessor):
        self.scheduler = scheduler
        self.processor = processor

    def load(
        self, path: str | None, n_frames: float
    ) -> tuple[Conversation | None, list[tuple[Image.Image, str]], list[Message], str]:
        """New media or frame count: sample the frames and start a new conversation.

        Returns the tab's conversation, the gallery (frame, caption), the (empty) chat and the status line.
        """
        if not path:
            return None, [], [], UPLOAD_HINT
        name = Path(path).name
        try:
            frames = self.processor.load_media(path, int(n_frames))
        except TarsierError as exc:  # the upload's temporary path means nothing to the user: show its name
            problem = str(exc).replace(path, name)
            return Conversation(name, None, problem=problem), [], [], f"⚠️ {problem}"
        # the frames as the model gets them (squared, resized, cropped), not as the file has them
        gallery = [(image, f"frame {index}") for image, index in zip(self.processor.model_view(frames), frames.indices)]
        status = f"**{name}**: {len(frames.images)} of {frames.total_frames} frames ({frames.kind}). Ask a question."
        return Conversation(name, frames), gallery, [], status

    def restart(self, conversation: Conversation | None) -> tuple[list[Message], str]:
        """Forget the chat (the media and its frames stay); returns the empty chat and the status line."""
        if conversation is None:
            return [], UPLOAD_HINT
        if conversation.problem:
            return [], f"⚠️ {conversation.problem}"
        conversation.session = None
        return [], f"**{conversation.name}**: new conversation. Ask a question."

    def ask(
        self, question: str, temperature: float, top_p: float, max_new_tokens: float, conversation: Conversation | None
    ) -> Iterator[tuple[str, list[Message], str]]:
        """Stream the answer: yields (question box, chat, status line) as the reply grows.

        The question box empties once the question is taken; it keeps the text when nothing was asked.
        """
        question = question.strip()
        if conversation is None or conversation.problem:  # the file in the box was not readable: say why again
            yield question, [], f"⚠️ {conversation.problem if conversation else UPLOAD_HINT}"
            return
        done = list(conversation.session.history) if conversation.session else []
        if not question:
            yield question, done, "⚠️ Type a question first."
            return
        try:
            settings = GenerationSettings(int(max_new_tokens), float(temperature), float(top_p))
        except TarsierError as exc:
            yield question, done, f"⚠️ {exc}"
            return
        if conversation.session is None:
            conversation.session = ScheduledChat(self.scheduler, self.processor, conversation.frames, settings)
        session = conversation.session
        session.settings = settings  # the sliders may have moved since the last turn
        asked: Message = {"role": "user", "content": question}
        answering = f"**{conversation.name}**: answering…"
        reply = ""
        yield "", [*done, asked, {"role": "assistant", "content": reply}], answering
        pieces = session.ask(question)
        try:
            for piece in pieces:
                reply += piece
                yield "", [*done, asked, {"role": "assistant", "content": reply}], answering
        except Exception as exc:  # the turn is dropped; say why in the page
            if not isinstance(exc, TarsierError):
                logger.exception("generation failed")
            yield question, done, f"⚠️ {one_line(exc)}"
            return
        finally:
            pieces.close()  # a tab that went away cancels its turn on the model thread
        turns = len(session.history) // 2
        status = f"**{conversation.name}**: {turns} turn{'s' * (turns != 1)}. Ask a follow-up or Restart."
        yield "", list(session.history), status


def build_demo(
    scheduler: Scheduler,
    processor: FamilyProcessor,
    *,
    model_name: str = "",
    settings: GenerationSettings | None = None,
) -> gr.Blocks:
    """The page; ``settings`` are the sliders' starting values, ``processor.max_n_frames`` the frame slider's end."""
    settings = settings or GenerationSettings()
    callbacks = DemoCallbacks(scheduler, processor)
    # Uploads older than a day are deleted (checked hourly), so a long-running demo does not fill the disk.
    with gr.Blocks(title="Tarsier demo", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown(f"# Tarsier{f' · {model_name}' if model_name else ''}\nShow it a video, then ask about it.")
        conversation = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                media = gr.File(
                    label="Video, GIF or image", file_types=[*VIDEO_EXTENSIONS, *GIF_EXTENSIONS, *IMAGE_EXTENSIONS],
                    elem_id="media",
                )
                gr.Examples([[str(path)] for path in SAMPLES], inputs=[media], label="Bundled samples")
                most = processor.max_n_frames
                n_frames = gr.Slider(1, most, most, step=1, label="Frames", elem_id="frames")
                temperature = gr.Slider(
                    0, max(2, settings.temperature), settings.temperature, step=0.05, label="Temperature (0: greedy)"
                )
                top_p = gr.Slider(0.05, 1, settings.top_p, step=0.05, label="Top-p")
                longest = max(MAX_NEW_TOKENS_LIMIT, settings.max_new_tokens)
                max_new_tokens = gr.Slider(1, longest, settings.max_new_tokens, step=1, label="Max new tokens")
                restart = gr.Button("Restart conversation", elem_id="restart")
            with gr.Column(scale=2):
                gallery = gr.Gallery(  # 4 a row (8 cut off the last), never fewer: a lone image is not blown up
                    label="Sampled frames (what the model sees)", columns=4, fit_columns=False, height=420, object_fit="contain",
                    format="jpeg", interactive=False, allow_preview=False, elem_id="gallery",
                )
                status = gr.Markdown(UPLOAD_HINT, elem_id="status")  # beside the chat, where the eye is
                chat = gr.Chatbot(label="Chat", buttons=["copy", "copy_all"], elem_id="chat")
                with gr.Row():
                    question = gr.Textbox(
                        placeholder="Ask about the video and press Enter", show_label=False, scale=4, elem_id="question"
                    )
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="send")

        asking = gr.on(
            [question.submit, send.click], callbacks.ask,
            [question, temperature, top_p, max_new_tokens, conversation], [question, chat, status],
        )
        # New media, another frame count or a restart first stops an answer in progress.
        loaded = [conversation, gallery, chat, status]
        gr.on([media.change, n_frames.release], callbacks.load, [media, n_frames], loaded, cancels=[asking])
        gr.on([restart.click, chat.clear], callbacks.restart, [conversation], [chat, status], cancels=[asking])
    return demo


def launch_demo(
    demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, *, share: bool = False
) -> tuple[str, str | None]:
    """Start serving in the background; returns the local URL and the public one (``demo.close()`` stops both).

    There is never a public share link unless ``share``.
    """
    try:
        _, url, share_url = demo.queue().launch(
            server_name=host,
            server_port=port,
            share=share,
            prevent_thread_lock=True,
            quiet=True,
            ssr_mode=False,
            run_history=False,
            theme=THEME,
        )
    except OSError:  # Gradio's only reason: it could not bind
        raise TarsierError(
            f"cannot serve the demo on {host}:{port}: the port is in use or the address is not this machine's; "
            "choose another --port or --host"
        ) from None
    return url, share_url

