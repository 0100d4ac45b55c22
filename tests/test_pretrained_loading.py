"""Released weights, offline: a real TorchScript archive in OpenAI's layout goes through the same
download-verify-open-convert path as OpenAI's files, and OpenAI's preprocessing is matched exactly."""

import hashlib
import io
import json
import urllib.error
import urllib.request
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from clipedu import CLIP, preset
from clipedu import pretrained as P
from clipedu.preprocess import Preprocess, center_crop, preprocess_batch, resize_shorter_side
from clipedu.tokenizer import WordTokenizer

VOCAB = 120
CFG = preset(
    "tiny", vision_width=128, vision_layers=2, vision_heads=2, text_width=128, text_layers=2,
    text_heads=2, vocab_size=VOCAB, context_length=16, eot_token_id=VOCAB - 1, embed_dim=64,
    quick_gelu=True,
)
NAME = "Test-ViT"


# --- a TorchScript archive that holds tensors under OpenAI's names --------------------------------
class Holder(nn.Module):
    def forward(self) -> int:  # TorchScript wants a method to compile; the archive is read for its tensors
        return 0


def scripted_archive(state_dict: dict, path):
    """Save a real TorchScript archive whose ``state_dict()`` is ``state_dict`` (nested modules by name)."""
    root = Holder()
    for key, value in state_dict.items():
        *folders, leaf = key.split(".")
        module = root
        for name in folders:
            if not hasattr(module, name):
                module.add_module(name, Holder())
            module = getattr(module, name)
        if value.dtype.is_floating_point:
            module.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
        else:
            module.register_buffer(leaf, value.clone())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(root).save(str(path))
    return path


def released_like(model: CLIP) -> dict:
    """What OpenAI's files hold: fp16 weights under OpenAI's names plus three settings."""
    sd = {k: v.half() for k, v in P.to_openai_state_dict(model).items()}
    sd.update(input_resolution=torch.tensor(32), context_length=torch.tensor(16), vocab_size=torch.tensor(VOCAB))
    return sd


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """(bytes of the archive, its SHA256, the fp32 model holding the same fp16-rounded weights)."""
    torch.manual_seed(1)
    model = CLIP(CFG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())  # the weights the fp16 file can hold
    path = scripted_archive(released_like(model), tmp_path_factory.mktemp("ts") / "archive.pt")
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest(), model


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, length: int | None = None):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data) if length is None else length)}


@pytest.fixture
def server(monkeypatch, tmp_path, archive):
    """The cache in tmp_path, a model NAME whose address carries the archive's SHA256, and a fake
    network serving ``served["data"]``; ``served["calls"]`` counts the downloads."""
    data, sha, _ = archive
    monkeypatch.setenv("CLIPEDU_DATA", str(tmp_path / "data"))
    monkeypatch.setitem(P.OPENAI_MODELS, NAME, f"https://openaipublic.example/clip/models/{sha}/Test-ViT.pt")
    served = {"data": data, "calls": 0, "length": None}

    def urlopen(url, timeout=None):
        served["calls"] += 1
        if served["data"] is None:
            raise urllib.error.URLError("[Errno -2] Name or service not known")
        return FakeResponse(served["data"], served["length"])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return served


def _inputs(b=4):
    g = torch.Generator().manual_seed(3)
    images = torch.randn(b, 3, 32, 32, generator=g)
    tokens = torch.zeros(b, 16, dtype=torch.long)
    for i in range(b):
        tokens[i, 0] = VOCAB - 2
        tokens[i, 1 : 4 + i] = torch.randint(1, VOCAB - 2, (3 + i,), generator=g)
        tokens[i, 4 + i] = VOCAB - 1
    return images, tokens


def _same_model(a: CLIP, b: CLIP):
    images, tokens = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(a.encode_image(images), b.encode_image(images), rtol=0, atol=1e-5)
        torch.testing.assert_close(a.encode_text(tokens), b.encode_text(tokens), rtol=0, atol=1e-5)


# --- the download path ----------------------------------------------------------------------------
def test_archive_downloads_verifies_and_loads_in_fp32(server, archive):
    model = P.load_openai(NAME, progress=False)
    path = P.openai_checkpoint_path(NAME)
    assert path.is_file() and path.with_name(path.name + ".sha256").is_file()
    assert not list(path.parent.glob("*.part"))
    assert server["calls"] == 1
    assert all(p.dtype == torch.float32 for p in model.parameters()) and not model.training
    assert model.cfg.vision == CFG.vision and model.cfg.text == CFG.text
    _same_model(model, archive[2])
    P.load_openai(NAME, progress=False)  # from the cache: no second download
    assert server["calls"] == 1


def test_damaged_cache_is_deleted_and_fetched_again(server):
    path = P.openai_checkpoint_path(NAME)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a file")
    with pytest.warns(UserWarning, match="deleted"):
        P.load_openai(NAME, progress=False)
    assert server["calls"] == 1 and P.file_sha256(path) == P.sha256_from_url(P.OPENAI_MODELS[NAME])


def test_edited_file_is_noticed_despite_its_marker(server):
    P.fetch_openai_checkpoint(NAME, progress=False)
    path = P.openai_checkpoint_path(NAME)
    path.write_bytes(path.read_bytes()[:-1] + b"x")  # same size, new mtime: the marker no longer fits
    with pytest.raises(ValueError, match="has SHA256"):
        P.verify_file(path, P.sha256_from_url(P.OPENAI_MODELS[NAME]))


def test_download_with_the_wrong_hash_is_rejected_and_not_kept(server):
    server["data"] = b"not the released file"
    with pytest.raises(ValueError, match="expected"):
        P.load_openai(NAME, progress=False)
    path = P.openai_checkpoint_path(NAME)
    assert not path.exists() and not list(path.parent.glob("*.part"))


def test_cut_off_download_is_an_error(server, archive):
    server["length"] = len(archive[0]) + 100
    with pytest.raises(P.WeightsUnavailableError, match="stopped after"):
        P.load_openai(NAME, progress=False)
    assert not P.openai_checkpoint_path(NAME).exists()


def test_offline_error_says_what_could_not_be_fetched_and_what_to_do(server):
    server["data"] = None
    with pytest.raises(P.WeightsUnavailableError) as info:
        P.load_openai(NAME, progress=False)
    message = str(info.value)
    assert P.OPENAI_MODELS[NAME] in message and str(P.openai_checkpoint_path(NAME)) in message
    assert "Colab" in message and "open_clip" in message and "Name or service not known" in message


def test_offline_but_file_put_in_place_by_hand(server, archive):
    server["data"] = None
    path = P.openai_checkpoint_path(NAME)
    path.parent.mkdir(parents=True)
    path.write_bytes(archive[0])
    _same_model(P.load_openai(NAME, progress=False), archive[2])
    assert server["calls"] == 0


def test_model_names():
    assert {"ViT-B/32", "ViT-B/16", "ViT-L/14"} <= set(P.OPENAI_MODELS)
    for url in P.OPENAI_MODELS.values():
        assert url.startswith("https://openaipublic.azureedge.net/clip/models/") and len(P.sha256_from_url(url)) == 64
    with pytest.raises(ValueError, match="ResNet.*ViT-B/32"):
        P.openai_checkpoint_url("RN50")
    with pytest.raises(ValueError, match="unknown OpenAI CLIP 'ViT-H/14'.*ViT-B/16"):
        P.load_openai("ViT-H/14")


# --- opening files --------------------------------------------------------------------------------
def test_local_file_sha256_is_checked(tmp_path, archive):
    data, sha, model = archive
    path = tmp_path / "a.pt"
    path.write_bytes(data)
    _same_model(P.load_openai_file(path, sha256=sha), model)
    with pytest.raises(ValueError, match="has SHA256"):
        P.load_openai_file(path, sha256="0" * 64)


def test_plain_state_dict_files_load_too(tmp_path, archive):
    model = archive[2]
    plain, wrapped = tmp_path / "plain.pt", tmp_path / "wrapped.pt"
    torch.save(released_like(model), plain)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in P.to_openai_state_dict(model).items()}},
               wrapped)
    _same_model(P.load_openai_file(plain), model)
    _same_model(P.load_openai_file(wrapped), model)
    with pytest.raises(FileNotFoundError):
        P.read_state_dict(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read"):
        P.read_state_dict(tmp_path / "junk.pt")


# --- open_clip: same random weights, same numbers -------------------------------------------------
@pytest.fixture(scope="module")
def open_clip_tiny(tmp_path_factory):
    open_clip = pytest.importorskip("open_clip")
    oc_cfg = {
        "embed_dim": 64, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8, "head_width": 64},
        "text_cfg": {"context_length": 16, "vocab_size": VOCAB, "width": 128, "heads": 2, "layers": 2},
    }
    path = tmp_path_factory.mktemp("oc") / "clipedu-test-loading.json"
    path.write_text(json.dumps(oc_cfg))
    open_clip.add_model_config(path)
    return open_clip


def test_open_clip_torchscript_archive_loads_and_matches_open_clip(open_clip_tiny, tmp_path):
    # open_clip's own model, scripted and saved in fp16 like OpenAI's files: a TorchScript archive we
    # did not lay out ourselves.
    reference = open_clip_tiny.create_model("clipedu-test-loading", pretrained=None).eval()
    torch.manual_seed(7)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn_like(p).mul_(0.05).half().float())
    half = open_clip_tiny.create_model("clipedu-test-loading", pretrained=None).eval()
    half.load_state_dict(reference.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(half.half()).save(str(tmp_path / "oc.pt"))
    model = P.load_openai_file(tmp_path / "oc.pt")
    images, tokens = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), reference.encode_image(images, normalize=True),
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(model.encode_text(tokens), reference.encode_text(tokens, normalize=True),
                                   rtol=0, atol=1e-5)


def test_load_open_clip_matches_the_open_clip_model(open_clip_tiny, monkeypatch):
    made = []
    create = open_clip_tiny.create_model

    def spy(*args, **kwargs):
        made.append(create(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(open_clip_tiny, "create_model", spy)
    model = P.load_open_clip("clipedu-test-loading", None)
    assert model.cfg.quick_gelu and model.cfg.vision.heads == 2 and model.cfg.text.heads == 2
    images, tokens = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), made[0].encode_image(images, normalize=True),
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(model.encode_text(tokens), made[0].encode_text(tokens, normalize=True),
                                   rtol=0, atol=1e-5)


def test_load_open_clip_offline_and_bad_names(open_clip_tiny, monkeypatch):
    import open_clip.factory

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(P.WeightsUnavailableError, match="'openai' of ViT-B-32.*network"):
        P.load_open_clip("ViT-B-32", "openai")
    with pytest.raises(ValueError, match="no weights 'imagenet'.*'openai'"):
        P.load_open_clip("ViT-B-32", "imagenet")
    with pytest.raises(ValueError, match="no model 'ViT-Q-99'"):
        P.load_open_clip("ViT-Q-99", None)
    with pytest.raises(ValueError, match="attentional_pool"):
        P.load_open_clip("coca_ViT-B-32", None)
    with pytest.raises(ValueError, match="ResNet"):
        P.load_open_clip("RN50", None)


def test_open_clip_openai_tag_means_quick_gelu(open_clip_tiny):
    cfg = P.config_from_open_clip(open_clip_tiny.get_model_config("ViT-B-32"), P.to_openai_state_dict(CLIP(CFG)),
                                  quick_gelu=True)
    assert cfg.quick_gelu
    assert not P.config_from_open_clip({"text_cfg": {"heads": 2}}, P.to_openai_state_dict(CLIP(CFG))).quick_gelu


# --- preprocessing --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def china():
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("china.jpg"))  # 640 x 427, a real photo


def test_preprocess_equals_open_clip_bit_for_bit(china):
    open_clip = pytest.importorskip("open_clip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transform = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None, device="meta")[2]
    ours = Preprocess()
    variants = (china, china.rotate(90, expand=True), china.convert("L"), china.convert("RGBA"), china.resize((45, 31)))
    for image in variants:
        assert torch.equal(ours(image), transform(image)), (image.size, image.mode)  # tolerance: none


def test_preprocess_steps(china):
    resized = resize_shorter_side(china, 224)
    assert resized.size == (335, 224)  # int(224 * 640 / 427)
    assert center_crop(resized, 224).size == (224, 224)
    # (335 - 224) / 2 = 55.5 rounds to 56: the crop starts one column later than flooring would
    assert np.array_equal(np.asarray(center_crop(resized, 224)), np.asarray(resized)[:, 56:280])
    x = Preprocess()(np.asarray(china))
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert torch.equal(Preprocess()(torch.from_numpy(np.array(china)).permute(2, 0, 1).contiguous()), x)


def test_preprocess_bad_input_is_a_clear_error(china):
    with pytest.raises(ValueError, match="uint8"):
        Preprocess()(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        Preprocess()(torch.zeros(1, 3, 10, 10, dtype=torch.uint8))
    with pytest.raises(ValueError, match="PIL image"):
        Preprocess()("china.jpg")
    with pytest.raises(ValueError, match="resize it first"):
        center_crop(china, 1000)
    with pytest.raises(ValueError, match="at least one"):
        preprocess_batch([])


# --- encoding photos and prompts ------------------------------------------------------------------
def test_encode_photos_preprocesses_each_photo(china):
    model = CLIP(CFG).eval()
    photos = [china, china.resize((50, 40)), np.asarray(china.resize((32, 32)))]
    with torch.no_grad():
        expected = model.encode_image(torch.stack([Preprocess(32)(p) for p in photos]))
    torch.testing.assert_close(P.encode_photos(model, photos, batch_size=2), expected)
    batch = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    assert P.encode_photos(model, batch).shape == (3, 64)


def test_encode_prompts_cuts_padding_without_changing_embeddings():
    captions = ["a red circle", "a big blue square on the left", "green"]
    tok = WordTokenizer.build(captions, context_length=16)
    model = CLIP(preset("tiny", vocab_size=tok.vocab_size, context_length=16, eot_token_id=tok.eot_id)).eval()
    with torch.no_grad():
        full = model.encode_text(tok(captions, context_length=16))
    torch.testing.assert_close(P.encode_prompts(model, tok, captions, batch_size=2), full, rtol=0, atol=1e-6)


# --- the tokenizer, offline ---------------------------------------------------------------------------
def test_stand_in_tokenizer_has_clips_special_ids_and_splits_into_bytes():
    tok = P.stand_in_tokenizer()
    assert (tok.vocab_size, tok.sot_id, tok.eot_id) == (49408, 49406, 49407)
    # No merge ever applies: "a", then "c" "a" "t" byte by byte, the last of each word marked as ending it.
    assert tok.pieces("a cat") == ["a</w>", "c", "a", "t</w>"]
    assert tok(["a cat"])[0, :7].tolist() == [49406, 320, 66, 64, 339, 49407, 0]


def test_clip_tokenizer_falls_back_only_when_asked(monkeypatch):
    import clipedu.bpe as bpe

    find = bpe.find_merges_file

    def missing(path=None):
        if path is None:
            raise FileNotFoundError("no merges file here")
        return find(path)

    monkeypatch.setattr(bpe, "find_merges_file", missing)
    with pytest.raises(FileNotFoundError):
        P.clip_tokenizer()
    with pytest.warns(UserWarning, match="stand-in"):
        tok = P.clip_tokenizer(stand_in_if_missing=True)
    assert tok.eot_id == 49407
