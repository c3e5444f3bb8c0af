"""Tarsier2: Qwen2-VL's vision transformer and patch merger -> Qwen2-VL decoder with M-RoPE.

Everything that computes is transformers' own Qwen2-VL code: the vision transformer with its merger
(``Qwen2VisionTransformerPretrainedModel``), the decoder with its M-RoPE rotary embedding
(``Qwen2VLTextModel``) and the LM head. This module only arranges those blocks under the names the
official checkpoints use, so ``from_pretrained`` reads them and ``save_pretrained`` writes them back
with no key mapping in either direction:

- ``vision_tower.*``: the vision transformer and merger (transformers' ``model.visual.*``);
- ``language_model.model.*``: the decoder (transformers' ``model.language_model.*``);
- ``language_model.lm_head.*``: the LM head (transformers' ``lm_head.*``).

Position ids are 3-D (temporal, height, width). :meth:`Tarsier2ForConditionalGeneration.rope_positions`
computes them from the prompt and ``image_grid_thw`` for a left-padded batch, together with each
row's rope delta, so a decode loop can continue at ``attended_tokens + delta``. It follows the
reference's rule that text after a media block continues from the block's largest position + 1;
transformers 5.24's ``Qwen2VLModel.get_rope_index`` agrees except when a grid has more temporal
slots than merged rows and columns (long videos at small frame sizes), where it continues from the
block's start + max(rows, columns) instead.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel, Qwen2VLTextModel
from transformers.utils.deprecation import deprecate_kwarg

from tarsier.errors import TarsierError
from tarsier.models.tarsier2.configuration_tarsier2 import Tarsier2Config


class Tarsier2LanguageModel(nn.Module):
    """The Qwen2-VL decoder and its LM head, one attribute deep to match ``language_model.*``."""

    def __init__(self, config: Qwen2VLTextConfig):
        super().__init__()
        self.model = Qwen2VLTextModel._from_config(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)


class Tarsier2ForConditionalGeneration(PreTrainedModel, GenerationMixin):
    config_class = Tarsier2Config
    config: Tarsier2Config
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2VLDecoderLayer", "Qwen2VLVisionBlock"]
    _tied_weights_keys = {"language_model.lm_head.weight": "language_model.model.embed_tokens.weight"}
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def __init__(self, config: Tarsier2Config):
        super().__init__(config)
        self.vision_tower = Qwen2VisionTransformerPretrainedModel._from_config(config.vision_config)
        self.language_model = Tarsier2LanguageModel(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.language_model.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.language_model.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.language_model.lm_head = value

    # -- what training asks of either family (tarsier.train) -------------------------------------
    projector_prefix = "vision_tower.merger."  # Qwen2-VL's patch merger is the projector

    def vision_encoder_modules(self) -> list[nn.Module]:
        """The vision transformer without the merger: training keeps it frozen, in eval mode, unless
        told otherwise, and trains the merger with the LLM (the Tarsier2 recipe)."""
        return [module for name, module in self.vision_tower.named_children() if name != "merger"]

    # -- vision ---------------------------------------------------------------------------------
    def get_image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.LongTensor) -> torch.Tensor:
        """Patches ``[sum(t*h*w), C*2*14*14]`` -> merged features ``[sum(t*h*w) / merge**2, text_width]``."""
        pixel_values = pixel_values.to(self.vision_tower.get_dtype())
        return self.vision_tower(pixel_values, grid_thw=image_grid_thw).pooler_output

    def embed_inputs(
        self, input_ids: torch.LongTensor, pixel_values: torch.Tensor | None, image_grid_thw: torch.LongTensor | None
    ) -> torch.Tensor:
        """Token embeddings with every ``<|image_pad|>`` slot replaced by its merged vision feature."""
        embeds = self.get_input_embeddings()(input_ids)
        slots = input_ids == self.config.image_token_index
        n_slots = int(slots.sum())
        if pixel_values is None:
            if n_slots:
                raise TarsierError(f"input_ids hold {n_slots} image slots but no pixel_values were given")
            return embeds
        if image_grid_thw is None:
            raise TarsierError("pixel_values need image_grid_thw (one (t, h, w) row per image or video)")
        features = self.get_image_features(pixel_values, image_grid_thw)
        if n_slots != features.shape[0]:
            raise TarsierError(
                f"input_ids hold {n_slots} image slots but image_grid_thw gives {features.shape[0]} merged patches; "
                "the processor expands each media item to t*h*w/4 slots"
            )
        return embeds.masked_scatter(slots.unsqueeze(-1), features.to(embeds.dtype))

    # -- positions ------------------------------------------------------------------------------
    def rope_positions(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """3-D M-RoPE position ids ``[3, B, L]`` and rope deltas ``[B, 1]`` for a left-padded batch.

        Only attended tokens count; padded positions hold 0. Text advances all three coordinates by
        one per token. A media block of grid ``(t, h, w)`` starting at position ``s`` covers
        ``t * (h/m) * (w/m)`` tokens at ``(s + i, s + j, s + k)``; the next token is at the block's
        largest position + 1, i.e. ``s + max(t, h/m, w/m)``. Grids are taken in order, row by row.
        A row's delta is (its last position + 1) - (its attended tokens), so the token after
        ``n`` attended tokens (prompt and generated) sits at ``n + delta`` on all three axes.
        """
        batch, length = input_ids.shape
        device = input_ids.device
        merge = self.config.spatial_merge_size
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        grids = iter([] if image_grid_thw is None else image_grid_thw.tolist())
        positions = torch.zeros(3, batch, length, dtype=torch.long, device=device)
        deltas = torch.zeros(batch, 1, dtype=torch.long, device=device)
        for row in range(batch):
            is_slot = (input_ids[row][mask[row]] == self.config.image_token_index).tolist()
            pieces, cursor, next_position = [], 0, 0
            while True:
                start = is_slot.index(True, cursor) if True in is_slot[cursor:] else len(is_slot)
                pieces.append(torch.arange(start - cursor, device=device).expand(3, -1) + next_position)
                next_position += start - cursor
                if start == len(is_slot):
                    break
                grid = next(grids, None)
                if grid is None:
                    raise TarsierError("input_ids hold more media blocks than image_grid_thw has rows")
                t, h, w = grid[0], grid[1] // merge, grid[2] // merge
                if start + t * h * w > len(is_slot) or not all(is_slot[start : start + t * h * w]):
                    raise TarsierError(f"a media block of grid {tuple(grid)} needs {t * h * w} consecutive image slots")
                block = torch.stack(
                    torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
                ).reshape(3, -1)
                pieces.append(block.to(device) + next_position)
                next_position += max(t, h, w)
                cursor = start + t * h * w
            positions[:, row, mask[row]] = torch.cat(pieces, dim=1)
            deltas[row, 0] = next_position - len(is_slot)
        if next(grids, None) is not None:
            raise TarsierError("image_grid_thw has more rows than input_ids hold media blocks")
        return positions, deltas

    # -- what the decode loop asks of either family (tarsier.models.interface) -------------------------------
    def prefill_positions(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor, media: Mapping[str, torch.Tensor]
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """M-RoPE position ids ``[3, B, L]`` of a left-padded prompt and each row's delta ``[B, 1]``:
        the token after ``n`` attended tokens sits at ``n + delta`` (see :meth:`rope_positions`)."""
        return self.rope_positions(input_ids, attention_mask, media.get("image_grid_thw"))

    def media_by_row(self, input_ids: torch.LongTensor, media: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Each batch row's own media inputs (its grids and their patches), to prefill rows one at a time.

        Grids are taken in order; a row owns those whose merged tokens fill its image slots.
        """
        grids, pixel_values = media.get("image_grid_thw"), media.get("pixel_values")
        slots_per_row = (input_ids == self.config.image_token_index).sum(1).tolist()
        merge = self.config.spatial_merge_size
        rows, grid_index, first_patch = [], 0, 0
        for slots in slots_per_row:
            first_grid, first_row_patch = grid_index, first_patch
            while slots > 0 and grids is not None and grid_index < len(grids):
                patches = int(grids[grid_index].prod())
                slots -= patches // (merge * merge)
                first_patch += patches
                grid_index += 1
            if slots != 0:
                raise TarsierError("image_grid_thw does not match the image slots of input_ids row by row")
            if grid_index == first_grid:
                rows.append({})
            else:
                rows.append({"pixel_values": pixel_values[first_row_patch:first_patch],
                             "image_grid_thw": grids[first_grid:grid_index]})
        return rows

    def _prepare_position_ids_for_generation(self, inputs_tensor: torch.Tensor, model_kwargs: dict) -> torch.LongTensor:
        # generate() extends the last column by one per step, which is right for M-RoPE: the last
        # prompt token is text, so its three coordinates are equal.
        input_ids = model_kwargs.get("input_ids", inputs_tensor)
        if input_ids.is_floating_point():  # inputs_embeds: text only, positions count attended tokens
            return super()._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)
        positions, _ = self.rope_positions(
            input_ids, model_kwargs.get("attention_mask"), model_kwargs.get("image_grid_thw")
        )
        return positions

    # -- forward --------------------------------------------------------------------------------
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits for the (expanded) sequence; ``loss`` is the shifted cross-entropy over positions
        whose label is not ``ignore_index`` when ``labels`` are given.

        Without ``position_ids`` the M-RoPE positions are computed from ``input_ids`` (a prompt from
        its start). Continuing from a filled cache needs explicit ``position_ids`` (``[3, B, n]``,
        or ``[B, n]`` for text, which is the same on all three axes): see :meth:`rope_positions`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if position_ids is None:
            if cache is not None and cache.get_seq_length() > 0:
                raise ValueError("pass position_ids when continuing from a cache (see rope_positions)")
            if input_ids is not None:
                position_ids, _ = self.rope_positions(input_ids, attention_mask, image_grid_thw)
            elif image_grid_thw is not None:
                raise ValueError("M-RoPE positions for media need input_ids; pass position_ids with inputs_embeds")
            elif attention_mask is not None:  # text only: attended tokens count, as in rope_positions
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, image_grid_thw)
        outputs = self.language_model.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.language_model.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits,
                labels=labels,
                vocab_size=self.config.text_config.vocab_size,
                ignore_index=self.config.ignore_index,
                **kwargs,
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
