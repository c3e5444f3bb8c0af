"""Tarsier: CLIP ViT per frame -> 2-layer MLP projector -> Llama causal LM.

Parameter names follow the official checkpoints (``vision_tower.``, ``multi_modal_projector.``,
``language_model.``) so ``from_pretrained`` reads ``omni-research/Tarsier-7b`` as published and
``save_pretrained`` writes the same layout back.

The processor expands every ``<image>`` placeholder into the frame's full layout (patch slots
``image_token_index`` with separator ids ``image_newline_idx`` after each row and
``image_new_idx`` after the frame). The model therefore only fills patch slots with projected
vision features; the separators are embedded like ordinary tokens, which is exactly what the
reference computes. Because ``input_ids`` already have the final length, attention masks, left
padding, position ids, labels and the KV cache need no special handling for images.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import CLIPVisionConfig, GenerationMixin, LlamaForCausalLM, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.clip.modeling_clip import CLIPEncoder, CLIPVisionEmbeddings

from tarsier.checkpoints import bundled_or_given
from tarsier.errors import TarsierError
from tarsier.models.tarsier.configuration_tarsier import TarsierConfig

# from_pretrained arguments that say where config.json comes from (the family is read from it).
_CONFIG_LOCATION_KWARGS = ("cache_dir", "force_download", "proxies", "token", "local_files_only", "revision")


class CLIPVisionTransformer(nn.Module):
    """transformers' CLIP vision blocks, arranged under the names the checkpoints use.

    transformers 5 flattened ``CLIPVisionModel`` (no ``vision_model`` level) and renames weights on
    load; composing the same blocks ourselves keeps ``vision_tower.vision_model.*`` exact in both
    directions and lets us stop the encoder early.
    """

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        # Tarsier never uses the pooled output; the layer is kept so checkpoints round-trip.
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor, n_layers: int) -> torch.Tensor:
        """Hidden states after the first ``n_layers`` encoder layers (== ``hidden_states[n_layers]``)."""
        hidden = self.embeddings(pixel_values.to(dtype=self.embeddings.patch_embedding.weight.dtype))
        hidden = self.pre_layrnorm(hidden)
        for layer in self.encoder.layers[:n_layers]:
            hidden = layer(hidden, None)
        return hidden


class TarsierVisionTower(nn.Module):
    """The per-frame image encoder; one attribute deep to match ``vision_tower.vision_model.*``."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.vision_model = CLIPVisionTransformer(config)


class TarsierProjector(nn.Module):
    """Maps CLIP patch features to the LLM width: linear -> activation -> linear."""

    def __init__(self, config: TarsierConfig):
        super().__init__()
        text_width = config.text_config.hidden_size
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, text_width, bias=True)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(text_width, text_width, bias=True)

    def forward(self, patch_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(patch_features)))


class TarsierForConditionalGeneration(PreTrainedModel, GenerationMixin):
    config_class = TarsierConfig
    config: TarsierConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPEncoderLayer", "LlamaDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: TarsierConfig):
        super().__init__(config)
        # The vision blocks are plain modules, so no sub-model resolves their attention kernel.
        if config.vision_config._attn_implementation is None:
            config.vision_config._attn_implementation = config._attn_implementation or "sdpa"
        self.vision_tower = TarsierVisionTower(config.vision_config)
        self.multi_modal_projector = TarsierProjector(config)
        self.language_model = LlamaForCausalLM(config.text_config)
        self.post_init()

    # -- embeddings plumbing (used by generation, resizing and training code) --------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> PreTrainedModel:
        """As transformers', and also by the name of a bundled model (``shapes-demo``), like the processor.

        Either family loads through this one call: the registry reads config.json once and a Tarsier2
        checkpoint gives a ``Tarsier2ForConditionalGeneration``, so code written for Tarsier needs no
        second loader.
        """
        path = bundled_or_given(pretrained_model_name_or_path)
        if cls is TarsierForConditionalGeneration and kwargs.get("config") is None:
            from tarsier.models import auto

            location = {key: kwargs[key] for key in _CONFIG_LOCATION_KWARGS if key in kwargs}
            checkpoint = auto.read_checkpoint(path, weights=False, **location)
            kwargs["config"] = checkpoint.model_config
            kwargs.setdefault("generation_config", checkpoint.generation_defaults)
            if checkpoint.model_class is not cls:
                return checkpoint.model_class.from_pretrained(path, *args, **kwargs)
        return super().from_pretrained(path, *args, **kwargs)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    # -- what training asks of either family (tarsier.train) -------------------------------------
    projector_prefix = "multi_modal_projector."  # parameters that may train at optim.projector_lr

    def vision_encoder_modules(self) -> list[nn.Module]:
        """The vision transformer without the projector: training keeps it frozen, in eval mode,
        unless told otherwise (the Tarsier recipe)."""
        return [self.vision_tower]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The language model initialises its own modules; the vision blocks and projector are ours.
        # transformers' `init` helpers leave tensors loaded from a checkpoint untouched.
        std = self.config.text_config.initializer_range
        if isinstance(module, CLIPVisionEmbeddings):
            init.normal_(module.class_embedding, std=std)
            init.copy_(module.position_ids, torch.arange(module.num_positions).expand((1, -1)))
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    # -- vision ---------------------------------------------------------------------------------
    @property
    def vision_layers_used(self) -> int:
        """How many CLIP encoder layers run: enough to reach ``vision_feature_layer``, no more."""
        total = self.config.vision_config.num_hidden_layers
        layer = self.config.vision_feature_layer
        if not isinstance(layer, int):
            raise ValueError("Tarsier selects a single vision feature layer; got a list")
        used = layer if layer >= 0 else total + 1 + layer  # hidden_states[k] is the output after k layers
        if not 0 <= used <= total:
            raise ValueError(f"vision_feature_layer {layer} is out of range for {total} encoder layers")
        return used

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frames ``[N, 3, H, W]`` -> projected patch features ``[N, grid*grid, text_width]``.

        Runs the CLIP encoder only up to the selected layer and keeps no intermediate states:
        the reference computed every layer and stored all hidden states just to pick one.
        """
        hidden = self.vision_tower.vision_model(pixel_values, self.vision_layers_used)
        if self.config.vision_feature_select_strategy == "default":
            hidden = hidden[:, 1:]  # drop CLS
        return self.multi_modal_projector(hidden)

    def embed_inputs(self, input_ids: torch.LongTensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with every patch slot replaced by its frame's projected patch feature."""
        embeds = self.get_input_embeddings()(input_ids)
        slots = input_ids == self.config.image_token_index
        n_slots = int(slots.sum())
        if pixel_values is None:
            if n_slots:
                raise TarsierError(f"input_ids hold {n_slots} image patch slots but no pixel_values were given")
            return embeds
        features = self.get_image_features(pixel_values)
        if n_slots != features.shape[0] * features.shape[1]:
            raise TarsierError(
                f"input_ids hold {n_slots} image patch slots but pixel_values give {features.shape[0]} frames x "
                f"{features.shape[1]} patches; each <image> must be expanded by the processor"
            )
        return embeds.masked_scatter(slots.unsqueeze(-1), features.to(embeds.dtype))

    # -- what the decode loop asks of either family (tarsier.models.interface) -------------------------------
    def prefill_positions(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor, media: Mapping[str, torch.Tensor]
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """Position ids ``[B, L]`` of a left-padded prompt and each row's delta ``[B, 1]`` (always 0).

        Positions count attended tokens only, so left padding never shifts a sequence; the token
        after ``n`` attended tokens sits at ``n + delta``. Frames take one position per slot here,
        hence no delta (Tarsier2's M-RoPE has one).
        """
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return positions, torch.zeros(input_ids.shape[0], 1, dtype=torch.long, device=input_ids.device)

    def media_by_row(self, input_ids: torch.LongTensor, media: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Each batch row's own media inputs (its frames' ``pixel_values``), to prefill rows one at a time."""
        pixel_values = media.get("pixel_values")
        frames = ((input_ids == self.config.image_token_index).sum(1) // self.config.patch_grid**2).tolist()
        rows, first = [], 0
        for count in frames:
            rows.append({"pixel_values": pixel_values[first : first + count]} if count and pixel_values is not None else {})
            first += count
        return rows

    # -- forward --------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits over the whole (expanded) sequence; ``loss`` is the shifted cross-entropy over
        positions whose label is not ``ignore_index`` when ``labels`` are given."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(input_ids, pixel_values)
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            # Positions count attended tokens only, so left padding never shifts a sequence.
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            position_ids = positions[:, -inputs_embeds.shape[1] :]
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
