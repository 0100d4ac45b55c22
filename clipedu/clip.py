"""CLIP: two encoders and one shared embedding space (notebook 05).

An image and a caption are each mapped to a unit vector in the same E-dim space; their cosine
similarity says how well they match. For a batch of B pairs, the B x B matrix of similarities,
multiplied by a learnable scale exp(logit_scale) = 1/temperature, is the logits of two
classification problems: for each image, which caption? for each caption, which image?
(:mod:`clipedu.losses` turns them into the training loss.)

Normalised or not. ``encode_image``/``encode_text`` return unit vectors unless ``normalize=False``:
clipedu's default is ready for cosines. open_clip's ``encode_image(normalize=False)`` and Hugging
Face's ``get_image_features`` return the raw projected features instead; ``get_image_features`` and
``get_text_features`` here do the same, so code written for either library gives the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clipedu.config import CLIPConfig, preset, preset_names
from clipedu.text import TextTransformer, check_tokens, eot_index
from clipedu.vision import VisionTransformer


@dataclass
class CLIPOutput:
    logits_per_image: torch.Tensor  # (B_img, B_txt) = scale * cos(image i, text j)
    logits_per_text: torch.Tensor  # (B_txt, B_img), the transpose
    image_embeds: torch.Tensor  # (B_img, E), unit length
    text_embeds: torch.Tensor  # (B_txt, E), unit length
    scale: torch.Tensor  # scalar s = exp(logit_scale) = 1/temperature, what the losses take


class CLIP(nn.Module):
    """The CLIP model: ``vision`` and ``text`` towers and the learnable ``logit_scale``."""

    def __init__(self, cfg: CLIPConfig | None = None):
        super().__init__()
        cfg = cfg or CLIPConfig()
        self.cfg = cfg
        self.vision = VisionTransformer(cfg.vision, cfg.embed_dim, cfg.quick_gelu)
        self.text = TextTransformer(cfg.text, cfg.embed_dim, cfg.quick_gelu)
        # The log of 1/temperature is learned, so the scale stays positive and moves multiplicatively.
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))

    # --- the two encoders -------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, C, H, W) float images -> (B, E) embeddings, unit length unless ``normalize=False``.

        The default differs from open_clip's, whose ``encode_image`` normalises only when asked.
        """
        _check_flag("normalize", normalize)
        x = self.vision(images).embedding
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, L) token ids -> (B, E) embeddings, unit length unless ``normalize=False``.

        The default differs from open_clip's, whose ``encode_text`` normalises only when asked.
        """
        _check_flag("normalize", normalize)
        x = self.text(tokens).embedding
        return F.normalize(x, dim=-1) if normalize else x

    # Hugging Face's names: the projected features, not normalised, as transformers' CLIPModel gives them.
    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float images -> (B, E) features, *not* normalised (``encode_image(normalize=False)``)."""
        return self.encode_image(pixel_values, normalize=False)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) token ids -> (B, E) features, *not* normalised (``encode_text(normalize=False)``).

        ``attention_mask`` (B, L) is accepted so that a Hugging Face tokenizer's output can be passed
        as ``**inputs``. The causal mask and the reading at ``<eot>`` already ignore every position
        after ``<eot>``, so the mask may only hide those: one that hides a token before ``<eot>``
        (left padding) is a ValueError.
        """
        if attention_mask is not None:
            check_tokens(input_ids, self.cfg.text)
            _check_attention_mask(attention_mask, input_ids, self.cfg.text.eot_token_id)
        return self.encode_text(input_ids, normalize=False)

    # --- similarity and temperature ---------------------------------------------------------
    @property
    def scale(self) -> torch.Tensor:
        """s = exp(logit_scale) = 1 / temperature: the multiplier of the cosines."""
        return self.logit_scale.exp()

    @property
    def temperature(self) -> float:
        """tau = 1 / exp(logit_scale); CLIP starts at 0.07."""
        return 1.0 / math.exp(self.logit_scale.item())

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep exp(logit_scale) in [1, 100] (temperature in [0.01, 1]), as CLIP does after each step."""
        self.logit_scale.clamp_(0.0, self.cfg.max_logit_scale)

    def logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """(B_img, B_txt) scaled cosine similarities from unit-length embeddings."""
        if image_embeds.shape[-1] != text_embeds.shape[-1]:
            raise ValueError(
                f"image and text embeddings must have the same width, got {image_embeds.shape[-1]} "
                f"and {text_embeds.shape[-1]}"
            )
        return self.scale * image_embeds @ text_embeds.t()

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> CLIPOutput:
        """Embeddings of both and the (B_img, B_txt) logits between every image and every text.

        The two batches may differ in size (one photo against K prompts is zero-shot scoring, as in
        OpenAI's and Hugging Face's examples); the training loss needs B_img == B_txt and says so.
        """
        image_embeds = self.encode_image(images)  # (B_img, E)
        text_embeds = self.encode_text(tokens)  # (B_txt, E)
        logits = self.logits(image_embeds, text_embeds)  # (B_img, B_txt)
        return CLIPOutput(logits, logits.t(), image_embeds, text_embeds, self.scale)

    # --- bookkeeping --------------------------------------------------------------------------
    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Like ``nn.Module.load_state_dict``, but a state_dict from another shape of model is a
        ValueError that lists what differs, instead of a long RuntimeError."""
        own = self.state_dict()
        problems = []
        for key, value in state_dict.items():
            if key in own and tuple(own[key].shape) != tuple(value.shape):
                problems.append(f"{key}: expected {tuple(own[key].shape)}, got {tuple(value.shape)}")
        if strict:
            missing = sorted(set(own) - set(state_dict))
            unexpected = sorted(set(state_dict) - set(own))
            if missing:
                problems.append(f"missing keys: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
            if unexpected:
                problems.append(f"unexpected keys: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if problems:
            theirs = _sizes_of_weights(state_dict)
            which = ""
            if theirs is not None and theirs != _sizes_of_config(self.cfg):
                ours = _describe_sizes(_sizes_of_config(self.cfg))
                which = f" it holds a model of {_describe_sizes(theirs)}; this model is {ours}."
            raise ValueError(
                f"state_dict does not fit this model (a checkpoint of another config?):{which} Build the model "
                "from the checkpoint's own config (clipedu.runs.model_from_checkpoint does).\n  "
                + "\n  ".join(problems[:12])
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


# --- naming the config a state_dict was saved from, for the message above ---------------------------
def _sizes_of_config(cfg: CLIPConfig) -> dict[str, int]:
    v, t = cfg.vision, cfg.text
    return {"image_size": v.image_size, "patch_size": v.patch_size, "vision_width": v.width,
            "vision_layers": v.layers, "text_width": t.width, "text_layers": t.layers, "vocab_size": t.vocab_size,
            "context_length": t.context_length, "embed_dim": cfg.embed_dim}


def _sizes_of_weights(state_dict) -> dict[str, int] | None:
    """The same sizes read off the weights' shapes (None when they are not a CLIP's)."""
    try:
        def layers(tower):
            prefix = f"{tower}.transformer.blocks."
            return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})

        patch = int(state_dict["vision.patch_embed.proj.weight"].shape[-1])
        grid = math.isqrt(int(state_dict["vision.pos_embed"].shape[0]) - 1)
        return {"image_size": grid * patch, "patch_size": patch,
                "vision_width": int(state_dict["vision.cls_token"].shape[0]), "vision_layers": layers("vision"),
                "text_width": int(state_dict["text.token_embed.weight"].shape[1]), "text_layers": layers("text"),
                "vocab_size": int(state_dict["text.token_embed.weight"].shape[0]),
                "context_length": int(state_dict["text.pos_embed"].shape[0]),
                "embed_dim": int(state_dict["vision.proj"].shape[1])}
    except (KeyError, IndexError, AttributeError, ValueError):
        return None


def _describe_sizes(sizes: dict[str, int]) -> str:
    """``preset 'tiny' (vision width 128, 4 layers, ...)``: the preset whose towers have these sizes
    (the vocabulary and context length follow the tokenizer, so they are not compared)."""
    towers = {k: v for k, v in sizes.items() if k not in ("vocab_size", "context_length")}
    name = next((n for n in preset_names()
                 if {k: v for k, v in _sizes_of_config(preset(n)).items() if k in towers} == towers), None)
    s = sizes
    detail = (f"{s['image_size']}x{s['image_size']} images in patches of {s['patch_size']}, vision width "
              f"{s['vision_width']} x {s['vision_layers']} layers, text width {s['text_width']} x {s['text_layers']} "
              f"layers, vocabulary {s['vocab_size']}, context {s['context_length']}, embed_dim {s['embed_dim']}")
    return f"preset {name!r} ({detail})" if name else f"a custom config ({detail})"


def _check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_attention_mask(mask: torch.Tensor, tokens: torch.Tensor, eot_token_id: int) -> None:
    """Raise a ValueError unless ``mask`` (B, L) keeps every position up to each text's ``<eot>``."""
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(tokens.shape):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"expected an attention_mask of the tokens' shape {tuple(tokens.shape)}, got {got}")
    positions = torch.arange(tokens.shape[1], device=tokens.device)  # (L,)
    needed = positions[None, :] <= eot_index(tokens, eot_token_id)[:, None]  # (B, L): up to <eot>
    hidden = needed & (mask.to(tokens.device) == 0)
    if hidden.any():
        row, col = (int(i) for i in hidden.nonzero()[0])
        raise ValueError(
            f"attention_mask hides position {col} of text {row}, before its end-of-text token; clipedu reads "
            "texts padded on the right only (the causal encoder already ignores everything after <eot>)"
        )
