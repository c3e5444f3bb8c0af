"""Tarsier2Processor: media -> ``pixel_values`` + ``image_grid_thw``, prompt -> ``input_ids``, as the reference.

Frames (the reference's inference defaults):

- 16 frames per video, spread evenly with first and last (:func:`tarsier.media.sample_frame_indices`);
  a video with no more frames than that gives every frame once (the first generation repeated frames
  instead); one frame is frame 0. GIFs and frame folders alike; an image is one frame.
- A frame larger than 460,800 pixels is shrunk (aspect kept, PIL bicubic) to fit; a sample's frames
  also share a budget of 128 x 384 x 384 pixels, counted over the images fed, so long videos get
  smaller frames.
- Every frame is fed twice in a row, so each temporal patch of 2 holds one real frame: n frames make
  ONE grid ``(n, h/14, w/14)`` in ``image_grid_thw``. Resizing to multiples of 28, rescaling and
  normalising are the checkpoint's ``Qwen2VLImageProcessor`` settings (transformers' PIL backend; its
  video processor needs torchvision, which we do not depend on); the temporal pairs are cut here.

Text: the checkpoint's own ``chat_template.json`` renders one user turn, media first then the
question (the v1 form ``<video>\\nQUESTION`` gives exactly the prompt of ``QUESTION``), then the
media block between ``<|vision_start|>`` and ``<|vision_end|>`` becomes ``t*h*w/4`` ``<|image_pad|>``
ids whatever pad the template wrote. Batches are left-padded. ``generation_config.json`` is read
into :attr:`Tarsier2Processor.generation_config` for the generation settings to honour.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, PreTrainedTokenizerBase
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize

from tarsier.errors import CheckpointError, MediaError, PromptError
from tarsier.media import SampledFrames, load_frames
from tarsier.models.family import Checkpoint
from tarsier.models.processing_common import (
    BatchingProcessor,
    MediaItem,
    check_call_options,
    frames_in_memory,
    media_per_prompt,
)
from tarsier.models.tarsier2.family import FrameRules
from tarsier.prompting import IGNORE_INDEX, counted, in_spans, split_frame

VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
# Placeholders of the first generation's prompts; the whitespace after one (its separator) belongs to it.
_PLACEHOLDER = re.compile(r"(?:<video>|<image>)\s*")
# A chat template that marks what training learns (transformers' assistant-token mask).
_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


def every_frame_once(sampled: SampledFrames) -> SampledFrames:
    """Drop the repeats the first generation's rule makes when a clip has fewer frames than asked.

    ``round(i * (T - 1) / (n - 1))`` steps by less than one frame when ``T < n``, so it visits every
    frame of the clip, in order, with repeats; removing them leaves each frame once. For ``T >= n``
    it has no repeats and this changes nothing.
    """
    keep = [i for i, index in enumerate(sampled.indices) if i == 0 or index != sampled.indices[i - 1]]
    if len(keep) == len(sampled.indices):
        return sampled
    return dataclasses.replace(
        sampled, images=[sampled.images[i] for i in keep], indices=[sampled.indices[i] for i in keep]
    )


def cap_pixels(image: Image.Image, min_pixels: int, max_pixels: int, source: str | None = None) -> Image.Image:
    """Shrink (or grow) a frame to ``[min_pixels, max_pixels]``, aspect kept, as the reference does."""
    try:
        height, width = smart_resize(image.height, image.width, factor=1, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError as error:  # an aspect ratio over 200
        raise MediaError(f"{source or 'a frame'}: {error}") from None
    if (width, height) == image.size:
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC)


def cut_temporal_patches(clip: np.ndarray, patch: int, merge: int, temporal: int) -> tuple[np.ndarray, list[int]]:
    """Frames ``[T, C, H, W]`` -> patches ``[T/temporal * H/patch * W/patch, C*temporal*patch*patch]``.

    Rows go time slot by time slot, and within a slot by ``merge x merge`` block (the tokens the
    merger forms), then row and column inside the block. Returns the patches and the grid (t, h, w).
    """
    frames, channels, height, width = clip.shape
    t, h, w = frames // temporal, height // patch, width // patch
    patches = clip.reshape(t, temporal, channels, h // merge, merge, patch, w // merge, merge, patch)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return patches.reshape(t * h * w, channels * temporal * patch * patch), [t, h, w]


def load_qwen2_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The checkpoint's ``tokenizer.json`` taken verbatim (no BOS; Qwen2 adds none), padding on the left."""
    from transformers import PreTrainedTokenizerFast

    if not (folder / "tokenizer.json").is_file():
        raise CheckpointError(f"{folder}: no tokenizer.json")
    settings: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            settings.update(json.loads((folder / name).read_text()))
    special = {}
    for key in ("eos_token", "pad_token"):
        value = settings.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if value is not None:
            special[key] = value
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **special)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"
    tokenizer.padding_side = "left"
    return tokenizer


def read_chat_template(folder: Path) -> str:
    """The processor's chat template: ``chat_template.json`` (published) or ``chat_template.jinja``."""
    if (folder / "chat_template.json").is_file():
        template = json.loads((folder / "chat_template.json").read_text()).get("chat_template")
        if not isinstance(template, str):
            raise CheckpointError(f"{folder}/chat_template.json: no 'chat_template' string")
        return template
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    raise CheckpointError(f"{folder}: no chat_template.json; Tarsier2 renders prompts with the checkpoint's own")


def user_content(
    text: str, media_type: str | None, n_tokens: int = 0, source: str | None = None
) -> list[dict[str, Any]]:
    """The user turn's parts: the media where its placeholder is, else first, then the question.

    A ``<video>``/``<image>`` placeholder and the whitespace after it mark the media's place, so
    ``"<video>\\nQUESTION"`` gives the parts of ``"QUESTION"``. Without media placeholders are dropped.
    ``n_tokens`` rides along as ``num_vision_tokens`` for templates that write the pads themselves.
    """
    pieces = _PLACEHOLDER.split(text)
    if media_type is None:
        return [{"type": "text", "text": "".join(pieces)}]
    if len(pieces) > 2:
        where = f"{source}: " if source else ""
        raise PromptError(
            f"{where}the prompt has {counted(len(pieces) - 1, 'media placeholder')} but one media item; "
            "use one <video> (or none: the media goes first)"
        )
    before, after = ("", pieces[0]) if len(pieces) == 1 else pieces
    media = {"type": media_type, "num_vision_tokens": n_tokens}
    return [*_text_part(before), media, *_text_part(after)]


def _text_part(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text}] if text else []


@dataclass(frozen=True)
class MediaInputs:
    """One media item ready for the model: its patches, its grid and the frames it came from."""

    pixel_values: torch.Tensor  # [t*h*w, C*2*14*14]
    grid: list[int]  # (t, h, w) in patches
    frames: SampledFrames

    def n_tokens(self, merge: int) -> int:
        t, h, w = self.grid
        return t * h * w // (merge * merge)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """``pixel_values`` and this item's one-row ``image_grid_thw``, as the model takes them."""
        return {"pixel_values": self.pixel_values, "image_grid_thw": torch.tensor([self.grid], dtype=torch.long)}


def _model_inputs(media: MediaInputs | None) -> dict[str, torch.Tensor]:
    return {} if media is None else media.model_inputs()


class Tarsier2Processor(BatchingProcessor):
    """Turns (prompt, media) pairs into Tarsier2 inputs; decodes generated ids back to text."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Qwen2VLImageProcessorPil,
        chat_template: str,
        image_token_id: int,
        rules: FrameRules = FrameRules(),
        generation_config: dict[str, Any] | None = None,
    ):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template
        self.image_token_id = image_token_id
        self.rules = rules
        self.generation_config = generation_config or {}
        self.vision_start_id = tokenizer.convert_tokens_to_ids(VISION_START)
        self.vision_end_id = tokenizer.convert_tokens_to_ids(VISION_END)
        if None in (tokenizer.convert_ids_to_tokens(image_token_id), self.vision_start_id, self.vision_end_id):
            raise CheckpointError(f"the tokenizer lacks the image id {image_token_id} or {VISION_START}/{VISION_END}")

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, max_n_frames: int | None = None, **hub_kwargs: Any
    ) -> Tarsier2Processor:
        """Load from a checkpoint folder or hub id (config.json names the image token)."""
        from tarsier.models import auto

        return cls.from_checkpoint(auto.read_checkpoint(name_or_path, weights=False, **hub_kwargs), max_n_frames)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Checkpoint,
        max_n_frames: int | None = None,
        do_image_padding: bool = False,
        chat_template: str | None = None,
    ) -> Tarsier2Processor:
        """The processor of a checkpoint read by the registry, sampling ``max_n_frames`` frames per
        video (None: 16). ``do_image_padding`` and ``chat_template`` are first-generation settings."""
        folder = checkpoint.folder
        if do_image_padding or chat_template is not None:
            raise CheckpointError(
                f"{folder}: a Tarsier2 checkpoint renders prompts with its own chat template and does not pad frames"
            )
        if not (folder / "preprocessor_config.json").is_file():
            raise CheckpointError(f"{folder}: missing preprocessor_config.json")
        return cls(
            tokenizer=load_qwen2_tokenizer(folder),
            image_processor=Qwen2VLImageProcessorPil.from_pretrained(str(folder)),
            chat_template=read_chat_template(folder),
            image_token_id=checkpoint.model_config.image_token_index,
            rules=FrameRules(**({} if max_n_frames is None else {"n_frames": max_n_frames})),
            generation_config=checkpoint.generation_config,
        )

    @property
    def merge_size(self) -> int:
        return self.image_processor.merge_size

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The ids that end a reply: ``generation_config.json``'s (``<|im_end|>`` and ``<|endoftext|>``
        in the published checkpoints), else the tokenizer's EOS."""
        eos = self.generation_config.get("eos_token_id", self.tokenizer.eos_token_id)
        return () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)

    # -- media ------------------------------------------------------------------------------------
    def load_media(
        self,
        media: MediaItem,
        n_frames: int | None = None,
        start_time: float | None = None,
        end_time: float | None = None,
    ) -> SampledFrames:
        """Sample ONE media item by the Tarsier2 rules: a path (video, GIF, image, frame folder), a list
        of frame files, a PIL image, a list of PIL images (one video, already sampled) or
        :class:`SampledFrames` (taken as they are). ``n_frames`` is capped at ``max_n_frames``."""
        given = frames_in_memory(media)
        if given is not None:
            return given
        wanted = min(n_frames, self.rules.n_frames) if n_frames else self.rules.n_frames
        return every_frame_once(load_frames(media, n_frames=wanted, start_time=start_time, end_time=end_time))

    def normalised_frame(self, image: Image.Image) -> np.ndarray:
        """One RGB frame -> ``[3, H, W]`` float32, resized to multiples of 28 and normalised by the
        checkpoint's ``Qwen2VLImageProcessor`` settings."""
        processor = self.image_processor
        pixels = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
        if processor.do_resize:
            factor = processor.patch_size * processor.merge_size
            pixels = processor.resize(pixels, size=processor.size, resample=processor.resample, factor=factor)
        if processor.do_rescale:
            pixels = processor.rescale(pixels, processor.rescale_factor)
        if processor.do_normalize:
            pixels = processor.normalize(pixels, processor.image_mean, processor.image_std)
        return np.asarray(pixels, dtype=np.float32)

    def capped_frames(self, sampled: SampledFrames) -> list[Image.Image]:
        """The sampled frames within the pixel cap and the sample's shared budget (each is fed twice)."""
        min_pixels, max_pixels = self.rules.pixel_limits(self.image_processor.temporal_patch_size * len(sampled.images))
        return [cap_pixels(image, min_pixels, max_pixels, sampled.source) for image in sampled.images]

    def model_view(self, sampled: SampledFrames) -> list[Image.Image]:
        """The frames as the model gets them, before normalisation: capped, then resized to the
        multiples of 28 pixels the image processor gives (the demo shows these)."""
        processor = self.image_processor
        factor = processor.patch_size * processor.merge_size
        views = []
        for image in self.capped_frames(sampled):
            height, width = smart_resize(image.height, image.width, factor=factor,
                                         min_pixels=processor.size["shortest_edge"], max_pixels=processor.size["longest_edge"])
            views.append(image.convert("RGB").resize((width, height), resample=Image.Resampling(processor.resample)))
        return views

    def media_inputs(self, sampled: SampledFrames) -> MediaInputs:
        """Patches and grid of one sampled media item: every frame fed twice, one grid for them all."""
        processor = self.image_processor
        repeat = processor.temporal_patch_size  # one real frame per temporal patch
        frames = [self.normalised_frame(image) for image in self.capped_frames(sampled)]
        sizes = sorted({frame.shape[1:] for frame in frames})
        if len(sizes) > 1:
            raise MediaError(f"{sampled.source}: frames of one video must share a size, got {sizes}")
        clip = np.repeat(np.stack(frames), repeat, axis=0)
        patches, grid = cut_temporal_patches(clip, processor.patch_size, processor.merge_size, repeat)
        return MediaInputs(torch.from_numpy(np.ascontiguousarray(patches)), grid, sampled)

    @property
    def max_n_frames(self) -> int:
        """The most frames one video may be sampled to (servers cap requests with it)."""
        return self.rules.n_frames

    # -- text -------------------------------------------------------------------------------------
    def render_prompt(self, text: str, media: MediaInputs | None = None, source: str | None = None) -> str:
        """The prompt string the checkpoint's chat template makes of ``text`` (and the media).

        A first-generation frame ``USER: question ASSISTANT: prefill`` (benchmark annotations) is the
        question as the user turn and a reply to continue from the pre-fill (``Answer: (``), as the
        reference renders a pre-filled assistant turn."""
        framed = split_frame(text)
        if framed is None:
            return self.render_conversation([{"role": "user", "content": text}], media, source)
        question, prefill = framed
        messages = [{"role": "user", "content": question}]
        if prefill:
            messages.append({"role": "assistant", "content": prefill})
        return self.render_conversation(messages, media, source)

    def render_conversation(
        self,
        messages: Sequence[Mapping[str, str]],
        media: MediaInputs | None = None,
        source: str | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The string the checkpoint's chat template makes of ``messages`` (``role``/``content`` dicts),
        the media in the first user turn (its placeholder's place, else first) as in the reference.

        With ``add_generation_prompt``, a conversation ending in an assistant turn is a reply to
        continue: the rendering stops right after that turn's text (transformers'
        ``continue_final_message``)."""
        rendered = self.template_messages(messages, media, source)
        continues = add_generation_prompt and rendered[-1]["role"] == "assistant"
        return self.tokenizer.apply_chat_template(
            rendered,
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt and not continues,
            continue_final_message=continues,
        )

    def template_messages(
        self, messages: Sequence[Mapping[str, str]], media: MediaInputs | None = None, source: str | None = None
    ) -> list[dict[str, Any]]:
        """``role``/``content`` messages as the chat template takes them: every content a list of typed
        parts, as the reference always passes it (a template may handle only that form); the first
        user turn's holds the media (see :func:`user_content`)."""
        media_type = None if media is None else ("image" if media.frames.kind == "image" else "video")
        n_tokens = 0 if media is None else media.n_tokens(self.merge_size)
        rendered: list[dict[str, Any]] = []
        for message in messages:
            content: Any = message["content"]
            if message["role"] == "user":
                first = not any(earlier["role"] == "user" for earlier in rendered)
                content = user_content(content, media_type if first else None, n_tokens, source)
            elif isinstance(content, str):
                content = [{"type": "text", "text": content}]
            rendered.append({"role": message["role"], "content": content})
        return rendered

    def expand_media(self, ids: Sequence[int], n_tokens: Sequence[int], source: str | None = None) -> list[int]:
        """Each ``<|vision_start|> ... <|vision_end|>`` block gets exactly its media's ``<|image_pad|>`` ids."""
        return self._expand_media(ids, n_tokens, source)[0]

    def _expand_media(
        self, ids: Sequence[int], n_tokens: Sequence[int], source: str | None = None
    ) -> tuple[list[int], list[int | None]]:
        """:meth:`expand_media`, plus where each expanded id came from (None: a media block's id)."""
        expanded: list[int] = []
        origins: list[int | None] = []
        block, position = 0, 0
        while position < len(ids):
            if ids[position] != self.vision_start_id:
                expanded.append(ids[position])
                origins.append(position)
                position += 1
                continue
            try:
                end = ids.index(self.vision_end_id, position + 1)
            except ValueError:
                raise CheckpointError(f"the chat template opened {VISION_START} without closing it") from None
            if block < len(n_tokens):
                expanded.extend([self.vision_start_id, *[self.image_token_id] * n_tokens[block], self.vision_end_id])
                origins.extend([None] * (n_tokens[block] + 2))
            block, position = block + 1, end + 1
        if block != len(n_tokens):
            where = f"{source}: " if source else ""
            raise PromptError(
                f"{where}the rendered prompt has {counted(block, 'media block')} "
                f"for {counted(len(n_tokens), 'media item')}"
            )
        return expanded, origins

    def _prepared(
        self, frames: SampledFrames | None, source: str | None = None
    ) -> tuple[MediaInputs | None, str | None]:
        """The frames' media inputs, and the name errors give them (a file's path unless ``source``
        says otherwise; frames given in memory have none)."""
        if frames is None:
            return None, source
        if source is None and not frames.source.startswith("<"):
            source = frames.source
        return self.media_inputs(frames), source

    def _pad_counts(self, media: MediaInputs | None) -> list[int]:
        """``<|image_pad|>`` ids per media block of a prompt holding ``media``."""
        return [] if media is None else [media.n_tokens(self.merge_size)]

    def _ids(self, rendered: str, media: MediaInputs | None, source: str | None) -> list[int]:
        """Token ids of a rendered prompt with the media's pads in place."""
        ids = self.tokenizer.encode(rendered, add_special_tokens=False)
        return self.expand_media(ids, self._pad_counts(media), source)

    def __call__(
        self,
        text: str | Sequence[str],
        videos: MediaItem | Sequence[MediaItem] | None = None,
        images: MediaItem | Sequence[MediaItem] | None = None,
        return_tensors: str | None = "pt",
        n_frames: int | None = None,
        start_time: float | None = None,
        end_time: float | None = None,
        padding: bool | str = True,
    ) -> BatchFeature:
        """Model inputs for one prompt or a batch, each with at most one video/image.

        ``videos``/``images`` as for :class:`~tarsier.models.tarsier.processing_tarsier.TarsierProcessor`: a list or tuple
        holds one item per prompt; a single prompt may take its item unwrapped. Whether an item is
        an image or a video comes from the item itself. Returns ``input_ids`` and ``attention_mask``
        (left-padded), plus ``pixel_values`` and ``image_grid_thw`` (one row per media item, in
        prompt order) when there is media.
        """
        check_call_options(type(self).__name__, return_tensors, padding)
        texts = [text] if isinstance(text, str) else list(text)
        items = media_per_prompt(videos if videos is not None else images, len(texts))
        prepared = [
            self.encode_item(prompt, None if item is None else self.load_media(item, n_frames, start_time, end_time))
            for prompt, item in zip(texts, items)
        ]
        return BatchFeature(self.collate(prepared))

    # -- prepared items (Describer, serving): as TarsierProcessor's --------------------------------
    def encode_item(
        self, prompt: str, frames: SampledFrames | None, source: str | None = None
    ) -> tuple[list[int], dict[str, torch.Tensor]]:
        """One prompt and its sampled media -> its ids and media inputs (``pixel_values`` and a
        one-row ``image_grid_thw``), batched later by :meth:`collate`."""
        media, source = self._prepared(frames, source)
        return self._ids(self.render_prompt(prompt, media, source), media, source), _model_inputs(media)

    # -- conversations (chat, serving): as TarsierProcessor's --------------------------------------
    def encode_conversation(
        self, messages: Sequence[Mapping[str, str]], frames: SampledFrames | None
    ) -> tuple[list[int], dict[str, torch.Tensor]]:
        """A whole conversation (``role``/``content`` dicts ending with a user turn) and its media
        -> the ids of the prompt for the next reply (pads expanded) and the media inputs."""
        media, source = self._prepared(frames)
        return self._ids(self.render_conversation(messages, media, source), media, source), _model_inputs(media)

    def close_reply(self, reply_ids: Sequence[int]) -> list[int]:
        """A generated reply as the conversation keeps it: its stop id replaced by the end of turn
        the template writes after a reply (``<|im_end|>\\n``), so later turns see what an uncached
        rendering of the conversation would hold."""
        reply = list(reply_ids)
        if reply and reply[-1] in self.eos_token_ids:
            reply.pop()
        marker = "\x00reply\x00"
        rendered = self.render_conversation(
            [{"role": "user", "content": "?"}, {"role": "assistant", "content": marker}], add_generation_prompt=False
        )
        return reply + self.tokenizer.encode(rendered.split(marker, 1)[1], add_special_tokens=False)

    def follow_up_ids(self, question: str) -> list[int]:
        """The ids a later user turn adds after a closed reply: what the template appends to a
        conversation for ``question`` and the pending assistant turn."""
        history = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "!"}]
        before = self.render_conversation(history, add_generation_prompt=False)
        after = self.render_conversation([*history, {"role": "user", "content": question}])
        if not after.startswith(before):
            raise PromptError("the chat template rewrites earlier turns when one is added; a chat cannot continue it")
        return self.tokenizer.encode(after[len(before) :], add_special_tokens=False)

    # -- training: as TarsierProcessor's ----------------------------------------------------------
    def encode_for_training(
        self, messages: Sequence[Mapping[str, str]], frames: SampledFrames | None, source: str | None = None
    ) -> tuple[list[int], list[int], dict[str, torch.Tensor]]:
        """A whole conversation (alternating user/assistant, ending with a reply) and its media ->
        ``input_ids`` (pads expanded), ``labels`` (:data:`IGNORE_INDEX` except reply tokens) and the
        media inputs.

        What is a target comes from the checkpoint's chat template: the ``{% generation %}`` blocks
        when it has them (what the reference's training masks, through transformers'
        ``return_assistant_tokens_mask``); otherwise each reply's text and the end-of-turn token
        the template writes right after it (``<|im_end|>``), so the model learns to answer and to stop.
        """
        media, source = self._prepared(frames, source)
        conversation = self.template_messages(messages, media, source)
        if _GENERATION_BLOCK.search(self.chat_template):
            encoded = self.tokenizer.apply_chat_template(
                conversation, chat_template=self.chat_template, tokenize=True, return_dict=True,
                return_assistant_tokens_mask=True,
            )
            ids = list(encoded["input_ids"])
            labels = [token if mask else IGNORE_INDEX for token, mask in zip(ids, encoded["assistant_masks"])]
        else:
            text, spans = self._reply_spans(conversation)
            encoded = self.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
            ids = list(encoded["input_ids"])
            labels = [
                token if in_spans(text, start, end, spans) else IGNORE_INDEX
                for token, (start, end) in zip(ids, encoded["offset_mapping"])
            ]
        expanded, origins = self._expand_media(ids, self._pad_counts(media), source)
        labels = [IGNORE_INDEX if origin is None else labels[origin] for origin in origins]
        return expanded, labels, _model_inputs(media)

    def _reply_spans(self, conversation: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans of its replies, each with the end-of-turn
        token that follows it: the template is rendered with a marker in place of every reply, so
        whatever it writes around a reply stays outside the span."""
        marked, replies = [], []
        for message in conversation:
            if message["role"] == "assistant":
                marked.append({**message, "content": [{"type": "text", "text": f"\x00{len(replies)}\x00"}]})
                replies.append("".join(part["text"] for part in message["content"]))
            else:
                marked.append(message)
        rendered = self.tokenizer.apply_chat_template(marked, chat_template=self.chat_template, tokenize=False)
        pieces = re.split("\x00(\\d+)\x00", rendered)
        if len(pieces) != 2 * len(replies) + 1:
            raise PromptError("the chat template does not write each assistant reply once; cannot mask labels")
        end_marks = [self.tokenizer.convert_ids_to_tokens(token) for token in self.eos_token_ids]
        text, spans = pieces[0], []
        for number, after in zip(pieces[1::2], pieces[2::2]):
            reply = replies[int(number)]
            closing = next((mark for mark in end_marks if mark and after.startswith(mark)), "")
            spans.append((len(text), len(text) + len(reply) + len(closing)))
            text += reply + after
        return text, spans

    @property
    def media_token_ids(self) -> frozenset[int]:
        """Ids of a media block: a sample cut to a length limit must not cut into them."""
        return frozenset((self.vision_start_id, self.image_token_id, self.vision_end_id))

    @property
    def non_text_ids(self) -> frozenset[int]:
        """Ids generation never emits: the media blocks' ids and the other vision placeholders."""
        others = (self.tokenizer.convert_tokens_to_ids(token) for token in ("<|video_pad|>", "<|vision_pad|>"))
        return self.media_token_ids | {token for token in others if token is not None}

    def media_token_count(self, media: Mapping[str, torch.Tensor]) -> int:
        """How many prompt ids the media inputs fill (``<|image_pad|>`` slots)."""
        grid = media.get("image_grid_thw")
        return 0 if grid is None else int(grid.prod(-1).sum()) // self.merge_size**2

    # -- decoding ---------------------------------------------------------------------------------
    def batch_decode(
        self, ids: torch.Tensor | Sequence[Sequence[int]], skip_special_tokens: bool = True, **kwargs: Any
    ) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)

    def decode(self, ids: torch.Tensor | Sequence[int], skip_special_tokens: bool = True, **kwargs: Any) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)
