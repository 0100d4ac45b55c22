"""Configurations for the two towers and the whole CLIP model, plus named presets.

A model is built from its config and nothing else, so a config saved with a checkpoint is enough to
rebuild the model. Presets:

- ``tiny``: trains on ShapesWorld on a laptop CPU in minutes (32 px, patch 8, width 96).
- ``small``: a Colab-GPU model for CIFAR-sized photos (32 px, patch 4, width 256).
- ``ViT-B/32``: exactly OpenAI's released ViT-B/32 layout, so its weights load into clipedu.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 32
    patch_size: int = 8
    channels: int = 3
    width: int = 128
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def validate(self) -> None:
        _positive(self, "image_size", "patch_size", "channels", "width", "layers", "heads")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.width % self.heads:
            raise ValueError(f"vision width ({self.width}) must be divisible by heads ({self.heads})")


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 512
    context_length: int = 24
    width: int = 128
    layers: int = 3
    heads: int = 4
    mlp_ratio: float = 4.0
    eot_token_id: int = 2  # the end-of-text token whose output is the sentence embedding
    pad_token_id: int = 0

    def validate(self) -> None:
        _positive(self, "vocab_size", "context_length", "width", "layers", "heads")
        if self.width % self.heads:
            raise ValueError(f"text width ({self.width}) must be divisible by heads ({self.heads})")
        for name in ("eot_token_id", "pad_token_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise ValueError(f"{name} must be in [0, {self.vocab_size}), got {value}")


@dataclass(frozen=True)
class CLIPConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 128
    quick_gelu: bool = False  # OpenAI's released models use x * sigmoid(1.702 x)
    init_logit_scale: float = math.log(1 / 0.07)  # log of 1/temperature; CLIP starts at tau = 0.07
    max_logit_scale: float = math.log(100.0)  # the clamp: temperature never goes below 0.01

    def __post_init__(self):
        # Accept plain dicts (a config read back from JSON or a checkpoint).
        if isinstance(self.vision, dict):
            object.__setattr__(self, "vision", VisionConfig(**self.vision))
        if isinstance(self.text, dict):
            object.__setattr__(self, "text", TextConfig(**self.text))
        self.vision.validate()
        self.text.validate()
        _positive(self, "embed_dim")
        if self.init_logit_scale > self.max_logit_scale:
            raise ValueError(
                f"init_logit_scale ({self.init_logit_scale:.3f}) is above max_logit_scale "
                f"({self.max_logit_scale:.3f})"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CLIPConfig:
        if not isinstance(d, dict) or "vision" not in d or "text" not in d:
            raise ValueError(f"expected a dict with 'vision' and 'text' entries, got {d!r:.200}")
        return cls(**d)

    def for_tokenizer(self, tokenizer, **overrides) -> CLIPConfig:
        """A copy whose text tower fits ``tokenizer``: its vocabulary size, end-of-text and padding
        ids and context length (plus any ``overrides``, as :meth:`with_overrides` takes them).
        ``preset("tiny").for_tokenizer(tokenizer)`` is the course model for that vocabulary.
        """
        return self.with_overrides(**{"vocab_size": tokenizer.vocab_size, "eot_token_id": tokenizer.eot_id,
                                      "pad_token_id": tokenizer.pad_id, "context_length": tokenizer.context_length,
                                      **overrides})

    def with_overrides(self, **overrides) -> CLIPConfig:
        """A copy with some fields changed.

        Keys are top-level fields (``embed_dim``), tower fields with a prefix (``vision_width``,
        ``text_layers``), or tower fields whose name is unambiguous (``patch_size``,
        ``vocab_size``).
        """
        top, vision, text = {}, {}, {}
        top_names = {f.name for f in fields(CLIPConfig)} - {"vision", "text"}
        vision_names = {f.name for f in fields(VisionConfig)}
        text_names = {f.name for f in fields(TextConfig)}
        for key, value in overrides.items():
            if key in top_names:
                top[key] = value
            elif key.startswith("vision_") and key[7:] in vision_names:
                vision[key[7:]] = value
            elif key.startswith("text_") and key[5:] in text_names:
                text[key[5:]] = value
            elif key in vision_names and key not in text_names:
                vision[key] = value
            elif key in text_names and key not in vision_names:
                text[key] = value
            elif key in vision_names and key in text_names:
                raise ValueError(f"{key!r} is ambiguous: say vision_{key} or text_{key}")
            else:
                raise ValueError(
                    f"unknown config field {key!r}; expected one of {sorted(top_names)}, "
                    f"vision_<{'|'.join(sorted(vision_names))}> or "
                    f"text_<{'|'.join(sorted(text_names))}>"
                )
        return replace(
            self, vision=replace(self.vision, **vision), text=replace(self.text, **text), **top
        )


def _positive(cfg, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{type(cfg).__name__}.{name} must be a positive int, got {value!r}")


_PRESETS = {
    # A CPU model for ShapesWorld: 16 patches of 8x8, so a training step takes milliseconds.
    # A narrow image tower and a shallow text one learn every attribute fastest per second on a CPU
    # (notebook 06 shows the measurements): captions are short and their words few.
    "tiny": CLIPConfig(
        vision=VisionConfig(image_size=32, patch_size=8, width=96, layers=4, heads=4),
        text=TextConfig(vocab_size=512, context_length=24, width=64, layers=2, heads=4),
        embed_dim=128,
    ),
    # A Colab-GPU model for 32x32 photos (CIFAR): 64 patches of 4x4.
    "small": CLIPConfig(
        vision=VisionConfig(image_size=32, patch_size=4, width=256, layers=6, heads=8),
        text=TextConfig(vocab_size=1024, context_length=32, width=256, layers=4, heads=8),
        embed_dim=256,
    ),
    # OpenAI's released ViT-B/32: same shapes, so its weights load with strict=True.
    "ViT-B/32": CLIPConfig(
        vision=VisionConfig(image_size=224, patch_size=32, width=768, layers=12, heads=12),
        text=TextConfig(
            vocab_size=49408, context_length=77, width=512, layers=12, heads=8,
            eot_token_id=49407, pad_token_id=0,
        ),
        embed_dim=512,
        quick_gelu=True,
    ),
}


def preset_names() -> list[str]:
    return list(_PRESETS)


def preset(name: str, **overrides) -> CLIPConfig:
    """A named configuration (``"tiny"``, ``"small"``, ``"ViT-B/32"``), optionally with overrides.

    >>> preset("tiny", vocab_size=200).text.vocab_size
    200
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {preset_names()}")
    cfg = _PRESETS[name]
    return cfg.with_overrides(**overrides) if overrides else cfg
