"""clipedu's names <-> the OpenAI/open_clip state_dict layout (notebook 12).

clipedu names parameters for readers (``vision.patch_embed``, ``attn.qkv``, ``mlp.fc1``); OpenAI's
released checkpoints use their own (``visual.conv1``, ``attn.in_proj_weight``, ``mlp.c_fc``). The
tensors are the same, so converting is renaming: :func:`to_openai_state_dict` and
:func:`from_openai_state_dict` are exact inverses, and the tests prove the result loads into
open_clip with ``strict=True`` and computes the same embeddings.
"""

from __future__ import annotations

import re

import torch

from clipedu.clip import CLIP
from clipedu.config import CLIPConfig, TextConfig, VisionConfig

# (clipedu prefix, OpenAI prefix), tried in order; the first match renames the key's start.
_PREFIXES = [
    ("vision.patch_embed.proj.weight", "visual.conv1.weight"),
    ("vision.cls_token", "visual.class_embedding"),
    ("vision.pos_embed", "visual.positional_embedding"),
    ("vision.transformer.blocks.", "visual.transformer.resblocks."),
    ("vision.", "visual."),  # ln_pre, ln_post, proj keep their names
    ("text.token_embed.", "token_embedding."),
    ("text.pos_embed", "positional_embedding"),
    ("text.transformer.blocks.", "transformer.resblocks."),
    ("text.ln_final.", "ln_final."),
    ("text.proj", "text_projection"),
    ("logit_scale", "logit_scale"),
]
# Inside a block: (clipedu suffix, OpenAI suffix).
_BLOCK_SUFFIXES = [
    ("attn.qkv.weight", "attn.in_proj_weight"),
    ("attn.qkv.bias", "attn.in_proj_bias"),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
]
# Entries of OpenAI's TorchScript checkpoints that are settings, not weights.
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def _rename(key: str, source: int) -> str:
    """Rename one key; ``source`` 0 means clipedu -> OpenAI, 1 means OpenAI -> clipedu."""
    target = 1 - source
    for pair in _PREFIXES:
        if key.startswith(pair[source]):
            key = pair[target] + key[len(pair[source]):]
            break
    else:
        raise ValueError(f"unexpected key {key!r}: not part of the {('clipedu', 'OpenAI')[source]} CLIP layout")
    if re.search(r"resblocks\.\d+\.|blocks\.\d+\.", key):
        for pair in _BLOCK_SUFFIXES:
            if pair[source] in key:
                key = key.replace(pair[source], pair[target])
                break
    return key


def to_openai_state_dict(model: CLIP) -> dict[str, torch.Tensor]:
    """A clipedu CLIP's weights under OpenAI's names (loadable by open_clip with strict=True)."""
    return {_rename(k, 0): v for k, v in model.state_dict().items()}


def _count_blocks(state_dict: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def config_from_openai_state_dict(state_dict: dict, head_width: int = 64) -> CLIPConfig:
    """Read the architecture off the tensor shapes, as OpenAI's own loader does.

    Heads are not stored anywhere; CLIP's models all use heads of width 64 (``head_width``).
    """
    required = ["visual.conv1.weight", "visual.positional_embedding", "token_embedding.weight",
                "positional_embedding", "ln_final.weight", "text_projection"]
    missing = [k for k in required if k not in state_dict]
    if missing:
        resnet = "visual.layer1.0.conv1.weight" in state_dict
        raise ValueError(
            f"not an OpenAI-layout CLIP ViT state_dict: missing {missing}"
            + (" (a ResNet CLIP? only ViT models are supported)" if resnet else "")
        )
    conv = state_dict["visual.conv1.weight"]  # (D, C, P, P)
    vision_width, channels, patch = conv.shape[0], conv.shape[1], conv.shape[-1]
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    vocab_size, text_width = state_dict["token_embedding.weight"].shape
    vision = VisionConfig(
        image_size=grid * patch, patch_size=patch, channels=channels, width=vision_width,
        layers=_count_blocks(state_dict, "visual.transformer.resblocks."),
        heads=max(1, vision_width // head_width),
    )
    text = TextConfig(
        vocab_size=vocab_size, context_length=state_dict["positional_embedding"].shape[0],
        width=text_width, layers=_count_blocks(state_dict, "transformer.resblocks."),
        heads=max(1, text_width // head_width), eot_token_id=vocab_size - 1, pad_token_id=0,
    )
    logit_scale = float(state_dict["logit_scale"]) if "logit_scale" in state_dict else CLIPConfig.init_logit_scale
    return CLIPConfig(
        vision=vision, text=text, embed_dim=state_dict["text_projection"].shape[1], quick_gelu=True,
        init_logit_scale=min(logit_scale, CLIPConfig.max_logit_scale),
    )


def from_openai_state_dict(state_dict: dict, config: CLIPConfig | None = None) -> CLIP:
    """Build a clipedu CLIP holding the weights of an OpenAI-layout state_dict.

    ``config`` defaults to one read off the shapes (:func:`config_from_openai_state_dict`); pass one
    when the model's heads are not 64 wide or it does not use QuickGELU.
    """
    state_dict = {k: v for k, v in state_dict.items() if k not in _OPENAI_EXTRAS}
    config = config or config_from_openai_state_dict(state_dict)
    model = CLIP(config)
    expected = {_rename(k, 0) for k in model.state_dict()}
    unexpected, missing = sorted(set(state_dict) - expected), sorted(expected - set(state_dict))
    if unexpected or missing:
        raise ValueError(
            "state_dict does not fit the OpenAI CLIP layout for this config: "
            + (f"unexpected key {unexpected[0]!r} (and {len(unexpected) - 1} more) " if unexpected else "")
            + (f"missing key {missing[0]!r} (and {len(missing) - 1} more)" if missing else "")
        )
    dtype = model.logit_scale.dtype
    model.load_state_dict({_rename(k, 1): v.to(dtype) for k, v in state_dict.items()})  # fp16 -> fp32
    return model
