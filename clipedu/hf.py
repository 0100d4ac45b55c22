"""clipedu <-> Hugging Face ``transformers`` (notebook 12).

Many students meet CLIP as ``transformers.CLIPModel.from_pretrained("openai/clip-vit-base-patch32")``.
It is the same architecture as clipedu's, under a third set of names::

    clipedu                          transformers
    vision.patch_embed.proj          vision_model.embeddings.patch_embedding
    vision.cls_token                 vision_model.embeddings.class_embedding
    vision.ln_pre                    vision_model.pre_layrnorm          (sic)
    vision.transformer.blocks.N.     vision_model.encoder.layers.N.
        ln_1, ln_2                       layer_norm1, layer_norm2
        attn.qkv  (3D, D)                self_attn.q_proj, k_proj, v_proj  (D, D) each
        attn.out_proj, mlp.fc1/fc2       self_attn.out_proj, mlp.fc1/fc2
    vision.proj  (D, E)              visual_projection.weight  (E, D): an nn.Linear, transposed

and the text tower alike (``text_model.embeddings.token_embedding``, ``final_layer_norm``,
``text_projection``). So converting is renaming, plus two changes of form: the fused query-key-value
matrix is split in three, and the projections are transposed. Install with ``pip install -e ".[hf]"``
in the checkout (or ``pip install transformers``)::

    from clipedu.pretrained import from_hf, to_hf

    hf_model = to_hf(model)        # a transformers.CLIPModel computing the same features
    model = from_hf(hf_model)      # and back (a CLIPModel, or its state_dict)

Where the text embedding is read. clipedu reads it at the first end-of-text token. transformers does
the same at ``eos_token_id``, except when ``eos_token_id == 2``: configs written before transformers
4.31 (among them ``openai/clip-vit-base-patch32``'s) carry that wrong id, so for them it reads the
position of the *largest* token id, which is CLIP's ``<eot>`` (49407, the last id). :func:`from_hf`
maps such a config to ``eot_token_id = vocab_size - 1``; :func:`to_hf` writes clipedu's own ids and
refuses a model whose end-of-text id is 2 (the course's word tokenizer), which transformers would
misread.

Features. ``transformers``' ``get_image_features``/``get_text_features`` return the projected
features *without* normalising them; clipedu's ``CLIP`` has the same two methods. (transformers 5
wraps the tensor in an output object, ``.pooler_output``; :func:`hf_image_features` and
:func:`hf_text_features` give the tensor under either version.)
"""

from __future__ import annotations

import math
import re

import torch

from clipedu.clip import CLIP
from clipedu.config import CLIPConfig, TextConfig, VisionConfig

# (clipedu name, transformers name), for everything outside the blocks.
_NAMES = [
    ("vision.patch_embed.proj.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("vision.cls_token", "vision_model.embeddings.class_embedding"),
    ("vision.pos_embed", "vision_model.embeddings.position_embedding.weight"),
    ("vision.ln_pre.weight", "vision_model.pre_layrnorm.weight"),
    ("vision.ln_pre.bias", "vision_model.pre_layrnorm.bias"),
    ("vision.ln_post.weight", "vision_model.post_layernorm.weight"),
    ("vision.ln_post.bias", "vision_model.post_layernorm.bias"),
    ("vision.proj", "visual_projection.weight"),
    ("text.token_embed.weight", "text_model.embeddings.token_embedding.weight"),
    ("text.pos_embed", "text_model.embeddings.position_embedding.weight"),
    ("text.ln_final.weight", "text_model.final_layer_norm.weight"),
    ("text.ln_final.bias", "text_model.final_layer_norm.bias"),
    ("text.proj", "text_projection.weight"),
    ("logit_scale", "logit_scale"),
]
# clipedu keeps projections as (D, E) matrices used as ``x @ proj``; transformers uses nn.Linear (E, D).
_TRANSPOSED = ("vision.proj", "text.proj")
# The blocks of each tower, and the names inside a block.
_TOWERS = [("vision.transformer.blocks.", "vision_model.encoder.layers."),
           ("text.transformer.blocks.", "text_model.encoder.layers.")]
_IN_BLOCK = [("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("attn.out_proj.", "self_attn.out_proj."),
             ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2.")]
_QKV = ("q_proj", "k_proj", "v_proj")  # the order of the three parts of clipedu's attn.qkv
# Buffers some transformers versions save with the weights: positions 0..N-1, not weights.
_NOT_WEIGHTS = re.compile(r".*embeddings\.position_ids$")
# transformers' configs from before v4.31 carry eos_token_id = 2 and read the text at the largest id.
LEGACY_EOS_TOKEN_ID = 2
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which clipedu's layer norms use


def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            'converting to and from Hugging Face needs transformers: pip install "transformers>=4.31"'
        ) from err
    # transformers does not declare torch as a dependency: a release newer than the installed torch
    # supports imports, but refuses to build any model ("requires the PyTorch library").
    if not transformers.utils.is_torch_available():
        raise ImportError(
            f"transformers {transformers.__version__} cannot use torch {torch.__version__} (it needs a newer "
            "torch): upgrade torch, or install a transformers release from the time of your torch"
        )
    return transformers


# --- state_dicts ---------------------------------------------------------------------------------
def to_hf_state_dict(model: CLIP) -> dict[str, torch.Tensor]:
    """A clipedu CLIP's weights under transformers' names (loadable into a ``CLIPModel`` of
    :func:`config_to_hf`'s config with ``strict=True``)."""
    ours = model.state_dict()
    out = {}
    for mine, theirs in _NAMES:
        value = ours.pop(mine)
        out[theirs] = value.t().contiguous() if mine in _TRANSPOSED else value
    for key, value in ours.items():
        prefix, index, rest = _split_block_key(key, side=0)
        if rest.startswith("attn.qkv."):
            kind = rest[len("attn.qkv."):]  # weight (3D, D) or bias (3D,)
            for name, part in zip(_QKV, value.chunk(3, dim=0)):
                out[f"{prefix}{index}.self_attn.{name}.{kind}"] = part.contiguous()
        else:
            out[f"{prefix}{index}.{_rename_in_block(rest, side=0)}"] = value
    return out


def from_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' ``CLIPModel`` weights under clipedu's names (the inverse of :func:`to_hf_state_dict`)."""
    theirs = {k: v for k, v in state_dict.items() if not _NOT_WEIGHTS.match(k)}
    out = {}
    for mine, name in _NAMES:
        if name not in theirs:
            raise ValueError(f"not a transformers CLIPModel state_dict: missing {name!r}")
        value = theirs.pop(name)
        out[mine] = value.t().contiguous() if mine in _TRANSPOSED else value
    parts: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}  # (prefix, index, kind) -> q, k, v
    for key, value in theirs.items():
        prefix, index, rest = _split_block_key(key, side=1)
        attn = re.fullmatch(r"self_attn\.([qkv]_proj)\.(weight|bias)", rest)
        if attn:
            parts.setdefault((prefix, index, attn.group(2)), {})[attn.group(1)] = value
        else:
            out[f"{prefix}{index}.{_rename_in_block(rest, side=1)}"] = value
    for (prefix, index, kind), qkv in parts.items():
        if set(qkv) != set(_QKV):
            raise ValueError(f"block {index} of {prefix!r} lacks {sorted(set(_QKV) - set(qkv))} ({kind})")
        out[f"{prefix}{index}.attn.qkv.{kind}"] = torch.cat([qkv[name] for name in _QKV], dim=0)
    return out


def _split_block_key(key: str, side: int) -> tuple[str, str, str]:
    """``vision.transformer.blocks.3.mlp.fc1.weight`` -> (the other side's prefix, "3", "mlp.fc1.weight")."""
    for pair in _TOWERS:
        match = re.match(re.escape(pair[side]) + r"(\d+)\.(.+)$", key)
        if match:
            return pair[1 - side], match.group(1), match.group(2)
    layout = ("clipedu", "transformers CLIPModel")[side]
    raise ValueError(f"unexpected key {key!r}: not part of the {layout} layout")


def _rename_in_block(rest: str, side: int) -> str:
    for pair in _IN_BLOCK:
        if rest.startswith(pair[side]):
            return pair[1 - side] + rest[len(pair[side]):]
    raise ValueError(f"unexpected name {rest!r} inside a transformer block")


# --- configs -------------------------------------------------------------------------------------
def config_to_hf(cfg: CLIPConfig):
    """The ``transformers.CLIPConfig`` of a clipedu config: same sizes, activation and special ids.

    ``logit_scale_init_value`` is the config's starting value, as in transformers; a model's current
    ``logit_scale`` travels with its weights.
    """
    transformers = _transformers()
    if cfg.text.eot_token_id == LEGACY_EOS_TOKEN_ID:
        raise ValueError(
            "this model's end-of-text token has id 2, and transformers treats eos_token_id == 2 as a config "
            "from before v4.31: it would read each text's embedding at its largest token id instead of at "
            "<eot>, so the converted model would compute other features. Only models whose eot_token_id is "
            "not 2 convert (the course's word tokenizer puts <eot> at 2; CLIP's BPE at 49407)"
        )
    act = "quick_gelu" if cfg.quick_gelu else "gelu"  # transformers' "gelu" is the exact one, as nn.GELU()
    vision, text = cfg.vision, cfg.text
    vision_config = dict(
        hidden_size=vision.width, intermediate_size=int(vision.width * vision.mlp_ratio),
        num_hidden_layers=vision.layers, num_attention_heads=vision.heads, num_channels=vision.channels,
        image_size=vision.image_size, patch_size=vision.patch_size, hidden_act=act,
        layer_norm_eps=LAYER_NORM_EPS, projection_dim=cfg.embed_dim,
    )
    text_config = dict(
        vocab_size=text.vocab_size, hidden_size=text.width, intermediate_size=int(text.width * text.mlp_ratio),
        num_hidden_layers=text.layers, num_attention_heads=text.heads, max_position_embeddings=text.context_length,
        hidden_act=act, layer_norm_eps=LAYER_NORM_EPS, projection_dim=cfg.embed_dim,
        # clipedu's config knows no start-of-text id; the model never reads it.
        eos_token_id=text.eot_token_id, pad_token_id=text.pad_token_id, bos_token_id=None,
    )
    return transformers.CLIPConfig(
        text_config=text_config, vision_config=vision_config, projection_dim=cfg.embed_dim,
        logit_scale_init_value=cfg.init_logit_scale,
    )


def config_from_hf(hf_config) -> CLIPConfig:
    """A clipedu config from a ``transformers.CLIPConfig``.

    Raises a ValueError naming the setting when the model is not one clipedu builds (another
    activation, other layer-norm epsilon, non-square images, one activation per tower).
    """
    vision, text = hf_config.vision_config, hf_config.text_config
    acts = {vision.hidden_act, text.hidden_act}
    if not acts <= {"quick_gelu", "gelu"} or len(acts) > 1:
        raise ValueError(
            "clipedu's two towers share one activation, QuickGELU ('quick_gelu') or exact GELU ('gelu'); "
            f"this model has vision {vision.hidden_act!r} and text {text.hidden_act!r}"
        )
    for tower, part in (("vision", vision), ("text", text)):
        eps = getattr(part, "layer_norm_eps", LAYER_NORM_EPS)
        if not math.isclose(eps, LAYER_NORM_EPS):
            raise ValueError(f"clipedu's layer norms use eps={LAYER_NORM_EPS}; this model's {tower} tower uses {eps}")
    image_size, patch_size = _square(vision.image_size, "image_size"), _square(vision.patch_size, "patch_size")
    eot, pad = _special_ids(text)
    scale = float(getattr(hf_config, "logit_scale_init_value", CLIPConfig.init_logit_scale))
    return CLIPConfig(
        vision=VisionConfig(
            image_size=image_size, patch_size=patch_size, channels=vision.num_channels, width=vision.hidden_size,
            layers=vision.num_hidden_layers, heads=vision.num_attention_heads,
            mlp_ratio=_mlp_ratio(vision.intermediate_size, vision.hidden_size),
        ),
        text=TextConfig(
            vocab_size=text.vocab_size, context_length=text.max_position_embeddings, width=text.hidden_size,
            layers=text.num_hidden_layers, heads=text.num_attention_heads,
            mlp_ratio=_mlp_ratio(text.intermediate_size, text.hidden_size), eot_token_id=eot, pad_token_id=pad,
        ),
        embed_dim=hf_config.projection_dim,
        quick_gelu=acts == {"quick_gelu"},
        init_logit_scale=min(scale, CLIPConfig.max_logit_scale),
    )


def _special_ids(text) -> tuple[int, int]:
    """(eot_token_id, pad_token_id) that read the text embedding where transformers reads it."""
    vocab, eos, pad = text.vocab_size, text.eos_token_id, text.pad_token_id
    if eos == LEGACY_EOS_TOKEN_ID:
        # An old config: transformers reads the largest id, which is CLIP's <eot> (the last of the
        # vocabulary); its other special ids are as stale as eos, so padding is OpenAI's 0.
        return vocab - 1, 0
    if not isinstance(eos, int) or not 0 <= eos < vocab:
        raise ValueError(f"the text config's eos_token_id must be one id in [0, {vocab}), got {eos!r}")
    return eos, pad if isinstance(pad, int) and 0 <= pad < vocab else 0


def _square(value, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"clipedu's images and patches are square; this model has {name}={list(value)}")
        value = value[0]
    return int(value)


def _mlp_ratio(hidden: int, width: int) -> float:
    ratio = hidden / width
    if int(width * ratio) != hidden:  # clipedu's MLP is int(width * mlp_ratio) wide
        raise ValueError(f"an MLP of {hidden} for width {width} is not int(width * ratio) for any float ratio")
    return ratio


def config_from_hf_state_dict(state_dict: dict, head_width: int = 64) -> CLIPConfig:
    """A config read off the tensor shapes, for a state_dict that comes without its config.

    What the shapes do not say is assumed as in OpenAI's models: heads ``head_width`` wide, QuickGELU,
    ``<eot>`` the last id of the vocabulary, padding 0. Pass ``config=`` to :func:`from_hf` otherwise.
    """
    required = ["vision_model.embeddings.patch_embedding.weight", "vision_model.embeddings.position_embedding.weight",
                "text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight",
                "text_projection.weight"]
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise ValueError(f"not a transformers CLIPModel state_dict: missing {missing}")
    conv = state_dict["vision_model.embeddings.patch_embedding.weight"]  # (D, C, P, P)
    width, channels, patch = conv.shape[0], conv.shape[1], conv.shape[-1]
    grid = round((state_dict["vision_model.embeddings.position_embedding.weight"].shape[0] - 1) ** 0.5)
    vocab, text_width = state_dict["text_model.embeddings.token_embedding.weight"].shape

    def layers(prefix):
        found = {int(m.group(1)) for k in state_dict if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
        return max(found) + 1 if found else 0

    def ratio(prefix, w):
        fc1 = state_dict.get(f"{prefix}0.mlp.fc1.weight")
        return 4.0 if fc1 is None else _mlp_ratio(fc1.shape[0], w)

    vision_prefix, text_prefix = _TOWERS[0][1], _TOWERS[1][1]
    return CLIPConfig(
        vision=VisionConfig(image_size=grid * patch, patch_size=patch, channels=channels, width=width,
                            layers=layers(vision_prefix), heads=max(1, width // head_width),
                            mlp_ratio=ratio(vision_prefix, width)),
        text=TextConfig(vocab_size=vocab, context_length=state_dict["text_model.embeddings.position_embedding.weight"]
                        .shape[0], width=text_width, layers=layers(text_prefix), heads=max(1, text_width // head_width),
                        mlp_ratio=ratio(text_prefix, text_width), eot_token_id=vocab - 1, pad_token_id=0),
        embed_dim=state_dict["text_projection.weight"].shape[0],
        quick_gelu=True,
    )


# --- models --------------------------------------------------------------------------------------
def from_hf(model_or_state_dict, config=None) -> CLIP:
    """A clipedu :class:`CLIP` (fp32, CPU, eval mode) holding the weights of a ``transformers.CLIPModel``.

    Pass the model itself (its config says the heads, activation and special ids), or its
    ``state_dict()`` with ``config`` (a clipedu ``CLIPConfig`` or a ``transformers.CLIPConfig``);
    without a config the sizes are read off the shapes (:func:`config_from_hf_state_dict`).
    """
    hf_config = None
    if isinstance(model_or_state_dict, dict):
        state_dict = model_or_state_dict
    elif hasattr(model_or_state_dict, "state_dict") and hasattr(model_or_state_dict, "config"):
        if not hasattr(model_or_state_dict.config, "vision_config"):
            raise ValueError(
                f"expected a transformers CLIPModel (both towers), got {type(model_or_state_dict).__name__}"
            )
        state_dict, hf_config = model_or_state_dict.state_dict(), model_or_state_dict.config
    else:
        raise ValueError(
            f"expected a transformers CLIPModel or its state_dict, got {type(model_or_state_dict).__name__}"
        )
    if config is not None and not isinstance(config, CLIPConfig):
        if not hasattr(config, "vision_config"):
            raise ValueError(
                f"config must be a clipedu CLIPConfig or a transformers CLIPConfig, got {type(config).__name__}"
            )
        hf_config, config = config, None
    if config is None:
        config = config_from_hf(hf_config) if hf_config is not None else config_from_hf_state_dict(state_dict)
    weights = from_hf_state_dict(state_dict)
    with torch.device("meta"):  # shapes only: every tensor is replaced by the loaded one
        model = CLIP(config)
    # Copies in fp32 on the CPU (the originals may be fp16, on a GPU, or still in use by transformers).
    weights = {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in weights.items()}
    model.load_state_dict(weights, assign=True)
    return model.eval()


def to_hf(model: CLIP):
    """A ``transformers.CLIPModel`` (eval mode, on the model's device) with a clipedu CLIP's weights.

    Its ``get_image_features``/``get_text_features`` equal the model's own (unnormalised) ones.
    """
    if not isinstance(model, CLIP):
        raise ValueError(f"expected a clipedu CLIP, got {type(model).__name__}")
    transformers = _transformers()
    hf_config = config_to_hf(model.cfg)
    hf_model = transformers.CLIPModel(hf_config)
    weights = {k: v.detach().to("cpu", torch.float32) for k, v in to_hf_state_dict(model).items()}
    missing, unexpected = hf_model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not _NOT_WEIGHTS.match(k)]
    if missing or unexpected:  # a transformers version with another layout
        raise ValueError(f"transformers' CLIPModel does not take these weights: missing {missing}, "
                         f"unexpected {unexpected}")
    return hf_model.to(next(model.parameters()).device).eval()


def hf_image_features(hf_model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, E) unnormalised image features of a transformers CLIPModel, as a tensor under transformers 4 and 5."""
    return _tensor(hf_model.get_image_features(pixel_values=pixel_values))


def hf_text_features(hf_model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, E) unnormalised text features of a transformers CLIPModel, as a tensor under transformers 4 and 5."""
    return _tensor(hf_model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def _tensor(output) -> torch.Tensor:
    # transformers 4 returns the tensor; 5 returns an output object with the tensor as pooler_output.
    return output if isinstance(output, torch.Tensor) else output.pooler_output
