"""TarsierProcessor: media -> ``pixel_values``, prompt -> ``input_ids``, exactly like the reference.

Pixels: each frame is stretched to a square (side = max(w, h), PIL's default resampling) or, in
pad mode, pasted centred on a square of the mean colour; then CLIP preprocessing (shortest edge to
336 bicubic, centre crop, 1/255, mean/std).

Text: the reference prompt rules (:mod:`tarsier.models.tarsier.prompting_tarsier`), tokenised with BOS by the checkpoint's
own ``tokenizer.json`` loaded verbatim (as the reference's fast tokenizer did), then every
``<image>`` id expanded to the frame's full layout of patch slots and separator ids (601 ids for
336 px). Batches are left-padded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, PreTrainedTokenizerBase

from tarsier.errors import CheckpointError, PromptError
from tarsier.media import SampledFrames, load_frames
from tarsier.models.family import Checkpoint
from tarsier.models.processing_common import (
    BatchingProcessor,
    MediaItem,
    check_call_options,
    frames_in_memory,
    media_per_prompt,
)
from tarsier.models.tarsier.configuration_tarsier import TarsierConfig
from tarsier.models.tarsier.family import DEFAULT_N_FRAMES
from tarsier.models.tarsier.prompting_tarsier import CHAT_TEMPLATES, ChatTemplate, format_prompt, template_for_eos
from tarsier.prompting import IGNORE_INDEX, IMAGE_PLACEHOLDER, counted, in_spans

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImageSettings:
    """CLIP preprocessing as declared in ``preprocessor_config.json``."""

    size: int = 336  # shortest edge after resizing
    crop_size: int = 336
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    rescale_factor: float = 1 / 255
    resample: int = Image.Resampling.BICUBIC

    @classmethod
    def from_file(cls, path: Path) -> ImageSettings:
        data = json.loads(path.read_text())
        size = data.get("size", 336)
        crop = data.get("crop_size", 336)
        return cls(
            size=size.get("shortest_edge", 336) if isinstance(size, dict) else int(size),
            crop_size=crop.get("height", 336) if isinstance(crop, dict) else int(crop),
            mean=tuple(data.get("image_mean", CLIP_MEAN)),
            std=tuple(data.get("image_std", CLIP_STD)),
            rescale_factor=data.get("rescale_factor", 1 / 255),
            resample=data.get("resample", Image.Resampling.BICUBIC),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": self.size},
            "do_center_crop": True,
            "crop_size": {"height": self.crop_size, "width": self.crop_size},
            "do_rescale": True,
            "rescale_factor": self.rescale_factor,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
            "resample": int(self.resample),
        }


@dataclass
class FrameLayout:
    """How one ``<image>`` placeholder expands in ``input_ids`` (from the model config)."""

    image_token_id: int
    frame_token_ids: list[int] = field(repr=False)

    @classmethod
    def from_config(cls, config: TarsierConfig) -> FrameLayout:
        return cls(image_token_id=config.image_token_index, frame_token_ids=config.frame_token_ids())


def square_frame(image: Image.Image, pad_to_square: bool, background: tuple[int, int, int]) -> Image.Image:
    """Make a frame square: stretch (the reference default) or pad with ``background``."""
    width, height = image.size
    side = max(width, height)
    if not pad_to_square:
        return image.resize((side, side))
    if width == height:
        return image
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def clip_geometry(image: Image.Image, settings: ImageSettings) -> Image.Image:
    """CLIP's resize (shortest side to ``size``) and centre crop of one RGB image: what the model sees."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(settings.size * long / short)
    new_size = (settings.size, new_long) if width <= height else (new_long, settings.size)
    image = image.resize(new_size, resample=settings.resample)
    left = (image.width - settings.crop_size) // 2
    top = (image.height - settings.crop_size) // 2
    return image.crop((left, top, left + settings.crop_size, top + settings.crop_size))


def clip_pixels(image: Image.Image, settings: ImageSettings) -> np.ndarray:
    """CLIP preprocessing of one RGB image -> float32 ``[3, crop, crop]``."""
    pixels = np.asarray(clip_geometry(image, settings), dtype=np.float64) * settings.rescale_factor
    pixels = (pixels - np.asarray(settings.mean)) / np.asarray(settings.std)
    return pixels.astype(np.float32).transpose(2, 0, 1)


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, with ``tokenizer.json`` taken verbatim when present.

    transformers 5's ``LlamaTokenizer`` rebuilds normalisation from its own rules, which changes
    how text after ``<image>`` is split compared with the reference; the raw file does not.
    """
    from tokenizers import AddedToken, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    settings: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            settings.update(json.loads((folder / name).read_text()))
    special = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = settings.get(key)
        special[key] = value.get("content") if isinstance(value, dict) else value

    if (folder / "tokenizer.json").is_file():
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=str(folder / "tokenizer.json"),
            **{k: v for k, v in special.items() if v is not None},
        )
        backend = tokenizer.backend_tokenizer
        # Like the reference's LlamaTokenizerFast: BOS (and optionally EOS) around every encoding.
        bos, eos = tokenizer.bos_token, tokenizer.eos_token
        add_bos, add_eos = settings.get("add_bos_token", True), settings.get("add_eos_token", False)
        if bos is not None or eos is not None:
            single = ([f"{bos}:0"] if add_bos and bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos and eos else [])
            pair = single + ([f"{bos}:1"] if add_bos and bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos and eos else [])
            tokens = [(t, tokenizer.convert_tokens_to_ids(t)) for t in {bos, eos} if t]
            backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=tokens)
    elif (folder / "tokenizer.model").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    else:
        raise CheckpointError(f"{folder}: no tokenizer.json or tokenizer.model")

    if (folder / "added_tokens.json").is_file():
        added = json.loads((folder / "added_tokens.json").read_text())
        for content, token_id in sorted(added.items(), key=lambda item: item[1]):
            if tokenizer.convert_tokens_to_ids(content) != token_id:
                tokenizer.add_tokens([AddedToken(content, special=True, normalized=False)], special_tokens=True)
                if tokenizer.convert_tokens_to_ids(content) != token_id:
                    raise CheckpointError(f"{folder}/added_tokens.json: {content} should have id {token_id}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # Llama has no pad token; the config pads with id 0 (<unk>)
    tokenizer.padding_side = "left"
    return tokenizer


class TarsierProcessor(BatchingProcessor):
    """Turns (prompt, media) pairs into model inputs; decodes generated ids back to text.

    :meth:`from_pretrained` gives a ``Tarsier2Processor`` for a Tarsier2 checkpoint. Both offer what
    the rest of the package uses (:class:`~tarsier.models.interface.FamilyProcessor`): ``__call__``,
    ``load_media``, :meth:`encode_item`, :meth:`collate`, ``pad``, ``decode``/``batch_decode``,
    ``eos_token_ids``, ``max_n_frames``, ``tokenizer``; for conversations (chat, serving),
    :meth:`encode_conversation`, :meth:`close_reply`, :meth:`follow_up_ids` and :meth:`media_token_count`;
    for training, :meth:`encode_for_training` and ``media_token_ids``.
    """

    default_n_frames = DEFAULT_N_FRAMES

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        layout: FrameLayout,
        image_settings: ImageSettings | None = None,
        max_n_frames: int = 8,
        do_image_padding: bool = False,
        chat_template: ChatTemplate | None = None,
        generation_config: dict[str, Any] | None = None,
    ):
        self.tokenizer = tokenizer
        self.layout = layout
        self.generation_config = generation_config or {}  # generation_config.json: defaults generation honours
        self.image_settings = image_settings or ImageSettings()
        self.max_n_frames = max_n_frames
        self.do_image_padding = do_image_padding
        self.chat_template = chat_template or template_for_eos(tokenizer.eos_token)
        image_token = tokenizer.convert_ids_to_tokens(layout.image_token_id)
        if image_token is None:
            raise CheckpointError(f"the tokenizer has no token with the image id {layout.image_token_id}")

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        max_n_frames: int | None = None,
        do_image_padding: bool = False,
        chat_template: str | ChatTemplate | None = None,
        **hub_kwargs: Any,
    ) -> Any:
        """Load from a checkpoint folder or hub id, of either family (config.json says which).

        ``max_n_frames`` (None: the family's default, 8 here) is the frames sampled per video. A
        Tarsier2 checkpoint gives a ``Tarsier2Processor`` (through the registry), so code written for
        Tarsier needs no second loader; ``do_image_padding`` and ``chat_template`` are
        first-generation settings and must stay unset for it.
        """
        from tarsier.models import auto

        checkpoint = auto.read_checkpoint(name_or_path, weights=False, **hub_kwargs)
        first_generation = {"do_image_padding": True} if do_image_padding else {}
        if chat_template is not None:
            first_generation["chat_template"] = chat_template
        return auto.load_processor(checkpoint, max_n_frames=max_n_frames, **first_generation)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Checkpoint,
        max_n_frames: int | None = None,
        do_image_padding: bool = False,
        chat_template: str | ChatTemplate | None = None,
    ) -> TarsierProcessor:
        """The processor of a checkpoint read by the registry (its config.json is not read again)."""
        folder = checkpoint.folder
        max_n_frames = cls.default_n_frames if max_n_frames is None else max_n_frames
        image_settings = None
        if (folder / "preprocessor_config.json").is_file():
            image_settings = ImageSettings.from_file(folder / "preprocessor_config.json")
        if isinstance(chat_template, str):
            if chat_template not in CHAT_TEMPLATES:
                raise PromptError(f"unknown chat template {chat_template!r}; known: {', '.join(CHAT_TEMPLATES)}")
            chat_template = CHAT_TEMPLATES[chat_template]
        return cls(
            tokenizer=load_tokenizer(folder),
            layout=FrameLayout.from_config(checkpoint.model_config),
            image_settings=image_settings,
            max_n_frames=max_n_frames,
            do_image_padding=do_image_padding,
            chat_template=chat_template,
            generation_config=checkpoint.generation_config,
        )

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write the tokenizer files and ``preprocessor_config.json`` (the model writes config.json)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(folder))
        (folder / "preprocessor_config.json").write_text(json.dumps(self.image_settings.to_dict(), indent=2) + "\n")

    # -- media ------------------------------------------------------------------------------------
    def load_media(
        self,
        media: MediaItem,
        n_frames: int | None = None,
        start_time: float | None = None,
        end_time: float | None = None,
    ) -> SampledFrames:
        """Sample frames from ONE media item: a path (video, GIF, image, frame folder), a list of
        frame files, a PIL image, a list of PIL images, or :class:`SampledFrames`.

        A list is one video made of its frames here (this takes a single item, never a batch).
        ``n_frames`` is capped by ``max_n_frames`` (as in the reference). PIL images are taken as
        already sampled.
        """
        given = frames_in_memory(media)
        if given is not None:
            return given
        wanted = min(n_frames, self.max_n_frames) if n_frames else self.max_n_frames
        return load_frames(media, n_frames=wanted, start_time=start_time, end_time=end_time)

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``[n, 3, crop, crop]`` float32 pixels for RGB frames."""
        arrays = [clip_pixels(self._squared(image), self.image_settings) for image in images]
        size = self.image_settings.crop_size
        return torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros(0, 3, size, size)

    def model_view(self, frames: SampledFrames) -> list[Image.Image]:
        """The frames as the model gets them, before normalisation: squared (stretched, or padded
        with ``do_image_padding``), resized and cropped to 336 x 336 (the demo shows these)."""
        return [clip_geometry(self._squared(image), self.image_settings) for image in frames.images]

    def _squared(self, image: Image.Image) -> Image.Image:
        background = tuple(int(x * 255) for x in self.image_settings.mean)
        return square_frame(image.convert("RGB"), self.do_image_padding, background)

    def _media_inputs(self, frames: SampledFrames | None) -> dict[str, torch.Tensor]:
        """The model's media inputs for sampled frames ({} for none)."""
        return {} if frames is None else {"pixel_values": self.pixel_values(frames.images)}

    # -- prepared items (Describer, serving) ------------------------------------------------------
    def encode_item(
        self, prompt: str, frames: SampledFrames | None, source: str | None = None
    ) -> tuple[list[int], dict[str, torch.Tensor]]:
        """One prompt and its sampled media -> its ids and media inputs, batched later by :meth:`collate`.

        ``source`` names the media in errors (default: ``frames.source``).
        """
        count = 0 if frames is None else len(frames.images)
        source = source if source is not None or frames is None else frames.source
        ids = self.encode_prompt(self.format_prompt(prompt, count, source), count, source=source)
        return ids, self._media_inputs(frames)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The ids that end a reply."""
        eos = self.tokenizer.eos_token_id
        return () if eos is None else (eos,)

    # -- conversations (chat, serving): as Tarsier2Processor's -------------------------------------
    def encode_conversation(
        self, messages: Sequence[Mapping[str, str]], frames: SampledFrames | None
    ) -> tuple[list[int], dict[str, torch.Tensor]]:
        """A whole conversation (``role``/``content`` dicts ending with a user turn) and its media
        -> the ids of the prompt for the next reply and the media inputs. The frames' placeholders
        lead the first user turn."""
        n_frames = 0 if frames is None else len(frames.images)
        ids = self.encode_prompt(self.chat_template.render(messages, n_frames), n_frames)
        return ids, self._media_inputs(frames)

    def close_reply(self, reply_ids: Sequence[int]) -> list[int]:
        """A generated reply as the conversation keeps it: ending with the template's separator,
        which a reply cut by its token limit lacks."""
        end_id = self.tokenizer.convert_tokens_to_ids(self.chat_template.assistant_sep)
        return list(reply_ids) if reply_ids and reply_ids[-1] == end_id else [*reply_ids, end_id]

    def follow_up_ids(self, question: str) -> list[int]:
        """The ids a later user turn adds after a closed reply: the question and the pending
        assistant turn (``USER: ... ASSISTANT: ``)."""
        return self.encode_prompt(self.chat_template.user_turn(question), 0, add_bos=False)

    def media_token_count(self, media: Mapping[str, torch.Tensor]) -> int:
        """How many prompt ids the media inputs fill (the frames' full layouts)."""
        pixels = media.get("pixel_values")
        return 0 if pixels is None else pixels.shape[0] * len(self.layout.frame_token_ids)

    # -- training: as Tarsier2Processor's ---------------------------------------------------------
    def encode_for_training(
        self, messages: Sequence[Mapping[str, str]], frames: SampledFrames | None, source: str | None = None
    ) -> tuple[list[int], list[int], dict[str, torch.Tensor]]:
        """A whole conversation (alternating user/assistant, ending with a reply) and its media ->
        ``input_ids``, ``labels`` (:data:`IGNORE_INDEX` except reply tokens) and the media inputs."""
        n_frames = 0 if frames is None else len(frames.images)
        ids, labels = self.labelled_ids(messages, n_frames)
        return ids, labels, self._media_inputs(frames)

    def labelled_ids(self, messages: Sequence[Mapping[str, str]], n_frames: int) -> tuple[list[int], list[int]]:
        """``input_ids`` (frames expanded to their layout) and ``labels``: only assistant replies and
        the separator that ends each (``</s>``) are targets, so the model learns to answer and to stop.

        The rendered conversation is tokenised once, with character offsets, and a token is a target
        when it starts inside a reply (:func:`~tarsier.prompting.in_spans`); tokenising the pieces
        separately would be wrong, since SentencePiece merges across piece boundaries.
        """
        text, spans = "", []
        for piece, is_reply in self.chat_template.segments(messages, n_frames):
            if is_reply:
                spans.append((len(text), len(text) + len(piece)))
            text += piece
        encoded = self.tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
        frame_ids = self.layout.frame_token_ids
        ids: list[int] = []
        labels: list[int] = []
        frames = 0
        for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
            if token == self.layout.image_token_id:
                ids.extend(frame_ids)
                labels.extend([IGNORE_INDEX] * len(frame_ids))
                frames += 1
            else:
                ids.append(token)
                labels.append(token if in_spans(text, start, end, spans) else IGNORE_INDEX)
        if frames != n_frames:
            raise PromptError(f"the conversation holds {counted(frames, '<image> token')} for {counted(n_frames, 'frame')}")
        return ids, labels

    @property
    def media_token_ids(self) -> frozenset[int]:
        """Ids that belong to a frame's layout: a sample cut to a length limit must not cut into them."""
        return frozenset(self.layout.frame_token_ids)

    @property
    def non_text_ids(self) -> frozenset[int]:
        """Ids generation never emits: ``<image>`` and the row and frame separators (32002, 32003)."""
        return self.media_token_ids

    # -- text -------------------------------------------------------------------------------------
    def format_prompt(self, prompt: str, n_frames: int, source: str | None = None) -> str:
        return format_prompt(prompt, n_frames, source)

    def expand_image_tokens(self, ids: Sequence[int], n_frames: int, source: str | None = None) -> list[int]:
        """Replace each ``<image>`` id by the frame layout; the count must match the frames."""
        image_id = self.layout.image_token_id
        found = sum(1 for token in ids if token == image_id)
        if found != n_frames:
            where = f"{source}: " if source else ""
            raise PromptError(
                f"{where}the prompt has {counted(found, IMAGE_PLACEHOLDER + ' token')} but the media gave "
                f"{counted(n_frames, 'frame')}"
            )
        expanded: list[int] = []
        for token in ids:
            expanded.extend(self.layout.frame_token_ids if token == image_id else (token,))
        return expanded

    def encode_prompt(self, prompt_text: str, n_frames: int, add_bos: bool = True, source: str | None = None) -> list[int]:
        """Token ids of an already formatted prompt, placeholders expanded."""
        ids = self.tokenizer.encode(prompt_text, add_special_tokens=add_bos)
        return self.expand_image_tokens(ids, n_frames, source)

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
        """Model inputs for one prompt or a batch of prompts, each with its own video/image.

        ``videos``/``images`` (the same for this model): a list or tuple ALWAYS holds one item per
        prompt, as in Hugging Face processors, and its length must equal the number of prompts. An
        item is a video/GIF/image path, a frame folder, a PIL image, :class:`SampledFrames`, or ONE
        video given as its frames: a nested list of frame files or of PIL images
        (``videos=[["f1.jpg", "f2.jpg"]]``). Nothing is guessed from file extensions. A single
        prompt may also take its item unwrapped (``videos="clip.mp4"``). ``padding`` takes Hugging
        Face's ``True`` / ``"longest"``: a batch is always left-padded to its longest prompt.
        """
        check_call_options(type(self).__name__, return_tensors, padding)
        texts = [text] if isinstance(text, str) else list(text)
        items = media_per_prompt(videos if videos is not None else images, len(texts))

        sequences, frames = [], []
        for position, (prompt, item) in enumerate(zip(texts, items)):
            sampled = None if item is None else self.load_media(item, n_frames, start_time, end_time)
            count = 0 if sampled is None else len(sampled.images)
            source = None if sampled is None else _media_name(sampled, position, len(texts))
            sequences.append(self.encode_prompt(self.format_prompt(prompt, count, source), count, source=source))
            if sampled is not None:
                frames.extend(sampled.images)
        batch: dict[str, Any] = self.pad(sequences)
        if frames:
            batch["pixel_values"] = self.pixel_values(frames)
        return BatchFeature(batch)

    # -- decoding ---------------------------------------------------------------------------------
    def batch_decode(self, ids: torch.Tensor | Sequence[Sequence[int]], skip_special_tokens: bool = True, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(self._drop_layout_ids(ids), skip_special_tokens=skip_special_tokens, **kwargs)

    def decode(self, ids: torch.Tensor | Sequence[int], skip_special_tokens: bool = True, **kwargs: Any) -> str:
        return self.tokenizer.decode(self._drop_layout_ids([ids])[0], skip_special_tokens=skip_special_tokens, **kwargs)

    def _drop_layout_ids(self, rows: torch.Tensor | Sequence[Sequence[int]]) -> list[list[int]]:
        # Separator ids are embedding rows, not tokenizer tokens: drop them (and patch slots) before decoding.
        layout_ids = set(self.layout.frame_token_ids)
        return [[int(t) for t in row if int(t) not in layout_ids] for row in rows]


def _media_name(sampled: SampledFrames, position: int, n_prompts: int) -> str | None:
    """How errors name a media item: its path, else (PIL images) its place in a batch."""
    if sampled.source and not sampled.source.startswith("<"):
        return sampled.source
    return f"media item {position + 1} of {n_prompts}" if n_prompts > 1 else None

