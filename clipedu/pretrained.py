"""clipedu's names <-> the OpenAI/open_clip state_dict layout, and the released weights (notebook 12).

clipedu names parameters for readers (``vision.patch_embed``, ``attn.qkv``, ``mlp.fc1``); OpenAI's
released checkpoints use their own (``visual.conv1``, ``attn.in_proj_weight``, ``mlp.c_fc``). The
tensors are the same, so converting is renaming: :func:`to_openai_state_dict` and
:func:`from_openai_state_dict` are exact inverses, and the tests prove the result loads into
open_clip with ``strict=True`` and computes the same embeddings.

Loading released weights::

    model = load_openai("ViT-B/32")                        # OpenAI's file: download, SHA256, convert
    model = load_open_clip("ViT-B-32", "laion2b_s34b_b79k")  # any plain-ViT model of open_clip's zoo

Photos are prepared with :class:`clipedu.preprocess.Preprocess`, captions with
:class:`clipedu.bpe.BPETokenizer`; :func:`encode_photos` and :func:`encode_prompts` do both in batches.

Hugging Face's layout (``transformers.CLIPModel``) is a third set of names for the same tensors:
:func:`from_hf` and :func:`to_hf` convert both ways (:mod:`clipedu.hf`; ``pip install -e ".[hf]"`` in the checkout).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import tempfile
import urllib.request
import warnings
import zipfile
from http.client import HTTPException
from pathlib import Path

import torch
from tqdm.auto import tqdm

from clipedu.bpe import N_MERGES, BPETokenizer
from clipedu.clip import CLIP
from clipedu.config import CLIPConfig, TextConfig, VisionConfig
from clipedu.evaluate import encode_texts
from clipedu.hf import (  # noqa: F401 (Hugging Face's layout, kept in clipedu.hf, offered here beside OpenAI's)
    config_from_hf,
    config_to_hf,
    from_hf,
    from_hf_state_dict,
    to_hf,
    to_hf_state_dict,
)
from clipedu.preprocess import preprocess_batch
from clipedu.runtime import cache_dir

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


# =============================================================================================
# Released weights: fetch, verify, open, convert
# =============================================================================================
#
# OpenAI published each CLIP as one file whose address carries its SHA256 (the folder name), so a
# download can be checked against the address it came from. The files are TorchScript archives
# (a saved ``torch.jit`` model, weights in fp16); we only read their tensors.

# From openai/CLIP's clip/clip.py (_MODELS): the ViT models, the only ones clipedu's layout holds.
OPENAI_MODELS = {
    "ViT-B/32": "https://openaipublic.azureedge.net/clip/models/"
    "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": "https://openaipublic.azureedge.net/clip/models/"
    "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": "https://openaipublic.azureedge.net/clip/models/"
    "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": "https://openaipublic.azureedge.net/clip/models/"
    "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}
# Released too, but their image tower is a ResNet with attention pooling: not a ViT.
OPENAI_RESNETS = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64")

# Entries some TorchScript archives hold that are not weights: open_clip's causal mask buffer.
_NOT_WEIGHTS = ("attn_mask",)


class WeightsUnavailableError(RuntimeError):
    """Released weights could not be fetched (no network, a proxy, a full disk)."""


def openai_checkpoint_url(name: str) -> str:
    """The download address of a released ViT CLIP: ``"ViT-B/32"``, ``"ViT-B/16"``, ``"ViT-L/14"``, ..."""
    if name in OPENAI_MODELS:
        return OPENAI_MODELS[name]
    if name in OPENAI_RESNETS:
        raise ValueError(
            f"{name!r} is a ResNet CLIP; clipedu's model is a Vision Transformer, so only these load: "
            f"{list(OPENAI_MODELS)}"
        )
    raise ValueError(f"unknown OpenAI CLIP {name!r}; expected one of {list(OPENAI_MODELS)}")


def sha256_from_url(url: str) -> str:
    """OpenAI's addresses are ``.../clip/models/<sha256>/<file>.pt``: the folder is the checksum."""
    digest = url.rstrip("/").split("/")[-2]
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"{url} does not carry a SHA256 in its path (expected .../<64 hex digits>/<file>)")
    return digest


def openai_checkpoint_path(name: str) -> Path:
    """Where the file of ``name`` is kept once downloaded: ``<cache>/openai/<file>.pt``."""
    return cache_dir() / "openai" / openai_checkpoint_url(name).rsplit("/", 1)[-1]


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """The SHA256 of a file, read a chunk at a time (the checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stamp(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size} {stat.st_mtime_ns}"


def verify_file(path: str | Path, sha256: str) -> None:
    """Raise a ValueError unless the file's SHA256 is ``sha256``.

    Hashing ViT-L/14's 890 MB takes seconds, so a verified file gets a small marker beside it
    (``<file>.sha256``: the hash, the size and the modification time) and is not hashed again
    until it changes.
    """
    path = Path(path)
    marker = _marker(path)
    expected = f"{sha256} {_stamp(path)}"
    if marker.is_file() and marker.read_text().strip() == expected:
        return
    digest = file_sha256(path)
    if digest != sha256:
        raise ValueError(f"{path} has SHA256 {digest}, expected {sha256}: the file is damaged or not the one released")
    try:
        marker.write_text(expected + "\n")
    except OSError:  # a read-only folder: verify again next time
        pass


def download_file(url: str, dest: str | Path, sha256: str, progress: bool = True, timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` while hashing it; keep it only if the SHA256 matches.

    The bytes go to a temporary file in the same folder, which is renamed to ``dest`` only after
    the check: an interrupted or corrupted download never sits under the final name.
    """
    # torch.hub.download_url_to_file does the same (temporary file, SHA256 prefix, rename) but opens
    # the connection without a timeout: behind a firewall that drops packets it can wait forever,
    # where notebook 12 must give up and carry on offline. It also reports a bad hash as a
    # RuntimeError and leaves no verified marker (see verify_file), so this stays written out.
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    tmp = Path(tmp_name)
    digest, received, total = hashlib.sha256(), 0, None
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    bar = _progress_bar(total, dest.name) if progress else None
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                    if bar is not None:
                        bar.close()
            except (OSError, HTTPException) as err:  # no network, DNS failure, HTTP 404, timeout, full disk
                raise WeightsUnavailableError(f"could not download {url} ({type(err).__name__}: {err})") from err
        if total is not None and received != total:
            raise WeightsUnavailableError(f"the download of {url} stopped after {received} of {total} bytes")
        if digest.hexdigest() != sha256:
            raise ValueError(
                f"the file downloaded from {url} has SHA256 {digest.hexdigest()}, expected {sha256}; "
                "it was deleted. Try again later"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    _marker(dest).write_text(f"{sha256} {_stamp(dest)}\n")
    return dest


def _progress_bar(total: int | None, name: str):
    return tqdm(total=total, unit="B", unit_scale=True, desc=name)


def fetch_openai_checkpoint(name: str, download: bool = True, progress: bool = True) -> Path:
    """The verified local file of a released model: from the cache, else downloaded once.

    A cached file whose SHA256 is wrong is deleted (and downloaded again when ``download``).
    """
    url = openai_checkpoint_url(name)
    sha256 = sha256_from_url(url)
    path = openai_checkpoint_path(name)
    if path.is_file():
        try:
            verify_file(path, sha256)
            return path
        except ValueError as err:
            path.unlink()
            _marker(path).unlink(missing_ok=True)
            warnings.warn(f"{err}; deleted it", stacklevel=2)
    if not download:
        raise FileNotFoundError(f"{name} is not in the cache ({path}) and download=False")
    try:
        return download_file(url, path, sha256, progress=progress)
    except WeightsUnavailableError as err:
        raise WeightsUnavailableError(
            f"The weights of OpenAI's {name} could not be fetched: {err}.\n"
            "They need the internet once (about 340 MB for ViT-B/32). What to do:\n"
            "  - run this where there is a network, e.g. Google Colab; or\n"
            f"  - download {url} on another machine and put the file at {path}\n"
            f"    (it is checked: its SHA256 must be {sha256}); or\n"
            "  - pip install open_clip_torch and use clipedu.pretrained.load_open_clip('ViT-B-32', 'openai'),\n"
            "    which fetches the same weights from open_clip's mirrors (also online)."
        ) from err


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, by name, on the CPU.

    OpenAI's files are TorchScript archives: ``torch.jit.load(...).state_dict()``. A plain
    ``torch.save``-d state_dict (or a training checkpoint with a ``"state_dict"`` entry) is read
    with ``torch.load(weights_only=True)``, which refuses to run code from the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; its files are not
            archive = torch.jit.load(str(path), map_location="cpu")
        state_dict = dict(archive.state_dict())
    else:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"cannot read {path} as a TorchScript archive or a state_dict: {err}") from err
        if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
            state_dict = state_dict["state_dict"]
        if not isinstance(state_dict, dict):
            raise ValueError(f"{path} holds a {type(state_dict).__name__}, not a state_dict")
        # Checkpoints saved from DistributedDataParallel prefix every name with "module.".
        if state_dict and all(k.startswith("module.") for k in state_dict):
            state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return {k: v for k, v in state_dict.items() if k not in _NOT_WEIGHTS}


def _is_torchscript(path: Path) -> bool:
    # A TorchScript zip holds its Python code (``<archive>/code/...``); a torch.save zip does not.
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_openai_file(
    path: str | Path, sha256: str | None = None, device: str | torch.device | None = None
) -> CLIP:
    """A clipedu CLIP from a checkpoint file in the OpenAI layout, in fp32, in eval mode.

    ``sha256``, when given, is checked first (the same check a download gets).
    """
    if sha256 is not None:
        verify_file(path, sha256)
    model = from_openai_state_dict(read_state_dict(path))  # fp16 in the file -> fp32 here
    return model.to(device or "cpu").eval()


def load_openai(
    name: str = "ViT-B/32", device: str | torch.device | None = None, download: bool = True, progress: bool = True
) -> CLIP:
    """OpenAI's released CLIP ``name`` as a clipedu :class:`CLIP` (fp32, eval mode, on ``device``).

    Downloads the file once into :func:`clipedu.runtime.cache_dir` (checked against the SHA256 in
    its address). Offline, raises :class:`WeightsUnavailableError` saying what could not be fetched
    and where to put the file by hand.
    """
    path = fetch_openai_checkpoint(name, download=download, progress=progress)
    return load_openai_file(path, device=device)


# --- open_clip's model zoo (OpenAI's weights and LAION's, ...) -------------------------------------
# Settings of open_clip's configs that clipedu's model does not have, with the value that means
# "the plain OpenAI architecture". A model that sets any of them otherwise cannot be loaded.
_OPEN_CLIP_PLAIN = {
    "vision_cfg": {
        "ls_init_value": None, "attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable",
        "final_ln_after_pool": False, "pool_type": "tok", "timm_model_name": None, "act_kwargs": None,
        "norm_kwargs": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
        "scale_attn_inner": False, "scale_attn": False, "scale_fc": False, "block_type": None,
    },
    "text_cfg": {
        "hf_model_name": None, "ls_init_value": None, "embed_cls": False, "no_causal_mask": False,
        "final_ln_after_pool": False, "pool_type": "argmax", "proj_bias": False, "proj_type": "linear",
        "act_kwargs": None, "norm_kwargs": None, "qk_norm": False, "scaled_cosine_attn": False,
        "scale_heads": False, "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
        "block_type": None,
    },
    "": {"custom_text": False, "multimodal_cfg": None, "init_logit_bias": None},
}


def config_from_open_clip(model_cfg: dict, state_dict: dict, quick_gelu: bool | None = None) -> CLIPConfig:
    """A clipedu config for an open_clip model: shapes from the weights, the rest from its config.

    Raises a ValueError naming the setting when the model is not the plain OpenAI architecture
    (layer scale, attention pooling, a Hugging Face text tower, SigLIP's bias, ...).
    """
    check_plain_open_clip(model_cfg)
    vision_cfg, text_cfg = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    cfg = config_from_openai_state_dict(state_dict, head_width=vision_cfg.get("head_width", 64))
    return cfg.with_overrides(
        vision_mlp_ratio=float(vision_cfg.get("mlp_ratio", 4.0)), text_heads=text_cfg.get("heads", cfg.text.heads),
        text_mlp_ratio=float(text_cfg.get("mlp_ratio", 4.0)),
        quick_gelu=bool(model_cfg.get("quick_gelu", False) if quick_gelu is None else quick_gelu),
    )


def check_plain_open_clip(model_cfg: dict) -> None:
    """Raise a ValueError naming each setting of an open_clip config that clipedu's model lacks."""
    unsupported = []
    if isinstance(model_cfg.get("vision_cfg", {}).get("layers"), (list, tuple)):
        unsupported.append("vision_cfg.layers: a ResNet image tower")
    for section, plain in _OPEN_CLIP_PLAIN.items():
        values = model_cfg.get(section, {}) if section else model_cfg
        for key, default in plain.items():
            if values.get(key, default) not in (default, "default"):
                unsupported.append(f"{section + '.' if section else ''}{key}={values[key]!r}")
    if unsupported:
        raise ValueError(f"this open_clip model is not in the plain OpenAI layout clipedu builds: {unsupported}")


def load_open_clip(model_name: str, pretrained_tag: str | None, device: str | torch.device | None = None) -> CLIP:
    """A model from open_clip's zoo as a clipedu :class:`CLIP`: ``load_open_clip("ViT-B-32", "laion2b_s34b_b79k")``.

    open_clip (``pip install open_clip_torch``) downloads and caches the weights; clipedu takes
    them over by name (:func:`from_openai_state_dict`). ``pretrained_tag=None`` gives open_clip's
    random initialisation (no download). QuickGELU follows the tag when open_clip knows it (the
    ``openai`` tags use it), else the model's config.
    """
    try:  # imported here: an optional extra (open_clip_torch), used to check compatibility
        import open_clip
    except ImportError as err:
        raise ImportError("load_open_clip needs open_clip: pip install open_clip_torch") from err
    config_name = model_name.replace("/", "-")
    model_cfg = open_clip.get_model_config(config_name)
    if model_cfg is None:
        raise ValueError(f"open_clip has no model {model_name!r}; see open_clip.list_models()")
    quick_gelu = bool(model_cfg.get("quick_gelu", False))
    if pretrained_tag is not None:
        tags = open_clip.list_pretrained_tags_by_model(config_name)
        if pretrained_tag not in tags and not Path(pretrained_tag).is_file():
            raise ValueError(f"open_clip has no weights {pretrained_tag!r} for {model_name}; it has {tags}")
        quick_gelu = bool(open_clip.get_pretrained_cfg(config_name, pretrained_tag).get("quick_gelu", quick_gelu))
    check_plain_open_clip(model_cfg)  # before downloading anything
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # open_clip's QuickGELU notice: handled above
            reference = open_clip.create_model(
                config_name, pretrained=pretrained_tag, device="cpu", force_quick_gelu=quick_gelu
            )
    except RuntimeError as err:
        if pretrained_tag is None:
            raise
        raise WeightsUnavailableError(
            f"open_clip could not fetch the weights {pretrained_tag!r} of {model_name} ({err}). They need the "
            "internet once; run this where there is a network (e.g. Google Colab), or offline use "
            "clipedu.pretrained.load_openai with the file put in place by hand."
        ) from err
    state_dict = reference.state_dict()
    config = config_from_open_clip(model_cfg, state_dict, quick_gelu)
    return from_openai_state_dict(state_dict, config=config).to(device or "cpu").eval()


# --- embedding photos -------------------------------------------------------------------------------
@torch.no_grad()
def encode_photos(model: CLIP, images, batch_size: int = 128) -> torch.Tensor:
    """Unit-length embeddings (N, E) of photos, on the CPU, prepared as OpenAI prepared theirs.

    ``images``: a list of photos (PIL, arrays) or a uint8 tensor (N, C, H, W) of any size; each is
    resized (bicubic, shorter side) and centre-cropped to the model's resolution, then normalised
    with OpenAI's statistics (:mod:`clipedu.preprocess`).
    """
    model.eval()
    device = next(model.parameters()).device
    size = model.cfg.vision.image_size
    out = []
    for start in range(0, len(images), batch_size):
        x = preprocess_batch(images[start : start + batch_size], size).to(device)  # (b, 3, S, S)
        out.append(model.encode_image(x).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def encode_prompts(model: CLIP, tokenizer, texts, batch_size: int = 256) -> torch.Tensor:
    """Unit-length text embeddings (M, E) on the CPU: :func:`clipedu.evaluate.encode_texts`, which
    runs the causal text encoder only up to the last <eot> of each batch."""
    return encode_texts(model, tokenizer, texts, batch_size=batch_size)


# --- the tokenizer ----------------------------------------------------------------------------------
def clip_tokenizer(stand_in_if_missing: bool = False):
    """CLIP's BPE tokenizer (:class:`clipedu.bpe.BPETokenizer`).

    It needs OpenAI's merges file (shipped with open_clip, else downloaded once). Offline without
    it, ``stand_in_if_missing=True`` returns :func:`stand_in_tokenizer` instead, with a warning.
    """
    try:
        return BPETokenizer()
    except FileNotFoundError as err:
        if not stand_in_if_missing:
            raise
        warnings.warn(f"{err}\nUsing a byte-level stand-in tokenizer: fine for random weights, "
                      "meaningless for real ones.", stacklevel=2)
        return stand_in_tokenizer()


def stand_in_tokenizer():
    """A tokenizer with CLIP's special ids (<sot> 49406, <eot> 49407) that splits text into bytes only.

    For running the code path offline on random weights when CLIP's merges file is missing: its
    48,894 "merges" are pairs of private-use characters that never occur in text, so every caption
    becomes its UTF-8 bytes (ids below 512). Real CLIP weights need the real tokenizer.
    """
    lines = ["#version: stand-in"] + [f"{chr(0xE000 + i // 256)} {chr(0xF000 + i % 256)}" for i in range(N_MERGES)]
    folder = Path(tempfile.mkdtemp(prefix="clipedu-stand-in-"))
    path = folder / "stand_in_merges.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return BPETokenizer(path)
