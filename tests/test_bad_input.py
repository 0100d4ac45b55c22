"""Every bad input gets a ValueError that names what was expected and what came."""

import pytest
import torch

from clipedu import CLIP, preset
from clipedu.losses import clip_loss, clip_loss_loop, siglip_loss
from clipedu.tokenizer import WordTokenizer


@pytest.fixture(scope="module")
def model():
    cfg = preset("tiny", vision_width=32, vision_layers=1, vision_heads=2, text_width=32,
                 text_layers=1, text_heads=2, embed_dim=16, vocab_size=50, context_length=12)
    return CLIP(cfg)


def _tokens(b=2, length=12):
    t = torch.zeros(b, length, dtype=torch.long)
    t[:, 0], t[:, 1], t[:, 2] = 1, 7, 2
    return t


def test_wrong_image_size(model):
    with pytest.raises(ValueError, match="expected 32x32 images, got 28x28"):
        model.encode_image(torch.zeros(2, 3, 28, 28))


def test_wrong_channel_count(model):
    with pytest.raises(ValueError, match="expected 3 channels, got 1"):
        model.encode_image(torch.zeros(2, 1, 32, 32))


def test_wrong_image_dtype(model):
    with pytest.raises(ValueError, match="expected floating-point images, got torch.uint8"):
        model.encode_image(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_wrong_image_rank(model):
    with pytest.raises(ValueError, match=r"expected images of shape \(B, C, H, W\), got 3 dims .*unsqueeze"):
        model.encode_image(torch.zeros(3, 32, 32))


def test_images_not_a_tensor(model):
    with pytest.raises(ValueError, match="expected images as a torch.Tensor, got ndarray"):
        import numpy as np

        model.encode_image(np.zeros((1, 3, 32, 32), dtype="float32"))


def test_empty_image_batch(model):
    with pytest.raises(ValueError, match="empty batch"):
        model.encode_image(torch.zeros(0, 3, 32, 32))


def test_token_id_outside_vocabulary(model):
    t = _tokens()
    t[1, 1] = 50
    with pytest.raises(ValueError, match=r"token id 50 is outside the vocabulary \[0, 50\)"):
        model.encode_text(t)


def test_negative_token_id(model):
    t = _tokens()
    t[0, 3] = -1
    with pytest.raises(ValueError, match="token id -1 is outside"):
        model.encode_text(t)


def test_text_longer_than_context(model):
    with pytest.raises(ValueError, match="text of 13 tokens is longer than the context length 12"):
        model.encode_text(_tokens(length=13))


def test_tokenizer_rejects_overlong_text_unless_truncating():
    tok = WordTokenizer.build(["a red circle"], context_length=5)
    with pytest.raises(ValueError, match="text 0 has 6 tokens .* context length 5.*truncate=True"):
        tok(["a red red circle"])
    ids = tok(["a red red circle"], truncate=True)
    assert ids[0, -1].item() == tok.eot_id


def test_float_token_ids(model):
    with pytest.raises(ValueError, match="expected integer token ids"):
        model.encode_text(_tokens().float())


def test_wrong_token_rank(model):
    with pytest.raises(ValueError, match=r"expected token ids of shape \(B, L\), got 1 dims"):
        model.encode_text(_tokens()[0])


def test_empty_text_batch(model):
    with pytest.raises(ValueError, match="empty batch"):
        model.encode_text(torch.zeros(0, 12, dtype=torch.long))


def test_text_without_end_of_text(model):
    t = _tokens()
    t[1, 2] = 5
    with pytest.raises(ValueError, match="text 1 has no end-of-text token"):
        model.encode_text(t)


@pytest.mark.parametrize("loss", [clip_loss, clip_loss_loop])
def test_mismatched_batches_in_loss(loss):
    with pytest.raises(ValueError, match="got 4 images and 3 texts"):
        loss(torch.randn(4, 8), torch.randn(3, 8), 10.0)


def test_mismatched_widths_in_loss():
    with pytest.raises(ValueError, match="same width, got 8 and 9"):
        siglip_loss(torch.randn(4, 8), torch.randn(4, 9), 10.0, -10.0)


def test_empty_batch_in_loss():
    with pytest.raises(ValueError, match="empty batch"):
        clip_loss(torch.randn(0, 8), torch.randn(0, 8), 10.0)


def test_state_dict_of_another_model(model):
    other = CLIP(preset("tiny", vocab_size=50, context_length=12))
    with pytest.raises(ValueError, match=r"(?s)another config.*vision.cls_token: expected \(32,\), got \(96,\)"):
        model.load_state_dict(other.state_dict())


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'; expected one of \['tiny', 'small', 'ViT-B/32'\]"):
        preset("huge")


def test_ambiguous_and_unknown_overrides():
    with pytest.raises(ValueError, match="'width' is ambiguous: say vision_width or text_width"):
        preset("tiny", width=64)
    with pytest.raises(ValueError, match="unknown config field 'depth'"):
        preset("tiny", depth=3)


def test_image_size_not_a_multiple_of_patch():
    with pytest.raises(ValueError, match=r"image_size \(30\) must be a multiple of patch_size \(8\)"):
        preset("tiny", image_size=30)


# --- the model's boundaries: every way an input can be wrong says what was expected -----------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_images_of_another_dtype_than_the_model(model, dtype):
    with pytest.raises(ValueError, match=rf"expected torch.float32 images \(the model's dtype\), got {dtype}"):
        model.encode_image(torch.zeros(2, 3, 32, 32, dtype=dtype))


def test_images_of_another_dtype_pass_under_autocast(model):
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast converts them itself
        assert model.encode_image(torch.zeros(2, 3, 32, 32, dtype=torch.bfloat16)).shape == (2, 16)


def test_float32_images_for_a_half_precision_model(tiny_config):
    half = CLIP(tiny_config).to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"expected torch.bfloat16 images .* images.to\(torch.bfloat16\)"):
        half.encode_image(torch.zeros(1, 3, 32, 32))


def test_images_of_five_dims(model):
    with pytest.raises(ValueError, match=r"expected images of shape \(B, C, H, W\), got 5 dims"):
        model.encode_image(torch.zeros(1, 2, 3, 32, 32))


def test_token_ids_not_a_tensor(model):
    with pytest.raises(ValueError, match="expected token ids as a torch.Tensor, got list"):
        model.encode_text([[1, 7, 2]])


def test_token_ids_of_three_dims(model):
    with pytest.raises(ValueError, match=r"expected token ids of shape \(B, L\), got 3 dims \(1, 2, 12\)"):
        model.encode_text(_tokens().unsqueeze(0))


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int16, torch.float16])
def test_token_ids_of_a_dtype_embedding_cannot_read(model, dtype):
    with pytest.raises(ValueError, match=rf"token ids of dtype torch.long \(or torch.int32\), got {dtype}"):
        model.encode_text(_tokens().to(dtype))


def test_int32_token_ids_are_fine(model):
    torch.testing.assert_close(model.encode_text(_tokens().int()), model.encode_text(_tokens()))


def test_texts_of_no_tokens(model):
    with pytest.raises(ValueError, match="at least one token per text .* got L = 0"):
        model.encode_text(torch.zeros(2, 0, dtype=torch.long))


@pytest.mark.parametrize("encode", ["encode_image", "encode_text"])
def test_normalize_must_be_a_bool(model, encode):
    inputs = torch.zeros(1, 3, 32, 32) if encode == "encode_image" else _tokens(1)
    with pytest.raises(ValueError, match="normalize must be True or False, got 'no'"):
        getattr(model, encode)(inputs, normalize="no")


def test_forward_checks_both_inputs(model):
    with pytest.raises(ValueError, match="expected 32x32 images, got 28x28"):
        model(torch.zeros(2, 3, 28, 28), _tokens())
    with pytest.raises(ValueError, match="token id 50 is outside the vocabulary"):
        model(torch.zeros(2, 3, 32, 32), _tokens().fill_(50))


def test_forward_scores_any_images_against_any_texts_but_the_loss_wants_pairs(model):
    # One photo against K prompts is zero-shot scoring (OpenAI's and Hugging Face's examples do it),
    # so forward takes batches of different sizes; the training loss is where pairs are required.
    out = model(torch.zeros(3, 3, 32, 32), _tokens(2))
    assert out.logits_per_image.shape == (3, 2) and out.logits_per_text.shape == (2, 3)
    with pytest.raises(ValueError, match="got 3 images and 2 texts"):
        clip_loss(out.image_embeds, out.text_embeds, out.scale)


# --- get_dataset: options are checked before any data is made --------------------------------------
def test_get_dataset_unknown_option_names_the_ones_it_takes():
    from clipedu.data import get_dataset

    with pytest.raises(ValueError, match="unknown option 'nn' for dataset 'shapes'; it takes n, image_size, seed"):
        get_dataset("shapes", nn=10)
    with pytest.raises(ValueError, match="unknown option 'n' for dataset 'digits'; it takes image_size, seed"):
        get_dataset("digits", n=10)
    with pytest.raises(ValueError, match="unknown option 'n' for dataset 'cifar10'; it takes root, download"):
        get_dataset("cifar10", n=10)
    with pytest.raises(ValueError, match="unknown option 'n' for dataset 'folder:x'; it takes image_size"):
        get_dataset("folder:x", n=10)


@pytest.mark.parametrize("option, value, expected", [
    ("n", "10", "int"), ("n", 2.5, "int"), ("n", True, "int"), ("seed", "a", "int"), ("image_size", "32", "int"),
    ("noise", "loud", "int or float"),
])
def test_get_dataset_option_of_the_wrong_type(option, value, expected):
    from clipedu.data import get_dataset

    with pytest.raises(ValueError, match=rf"option '{option}' of dataset 'shapes' must be {expected}, got {value!r}"):
        get_dataset("shapes", **{option: value})


def test_get_dataset_wrong_types_for_other_sources():
    from clipedu.data import get_dataset

    with pytest.raises(ValueError, match="option 'download' of dataset 'cifar10' must be bool, got 'yes'"):
        get_dataset("cifar10", download="yes")
    with pytest.raises(ValueError, match="option 'test_fraction' of dataset 'digits' must be int or float, got '0.2'"):
        get_dataset("digits", test_fraction="0.2")
    with pytest.raises(ValueError, match="option 'image_key' of dataset 'folder:x' must be str or None, got 3"):
        get_dataset("folder:x", image_key=3)


@pytest.mark.parametrize("n", [-1, 0])
def test_get_dataset_count_must_be_positive(n):
    from clipedu.data import get_dataset

    with pytest.raises(ValueError, match=f"n must be a positive int, got {n}"):
        get_dataset("shapes", n=n)


def test_get_dataset_unknown_split_and_empty_folder_path():
    from clipedu.data import get_dataset

    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test', 'heldout'\), got 'val'"):
        get_dataset("shapes", "val", n=4)
    with pytest.raises(ValueError, match="'folder:' needs a path after it"):
        get_dataset("folder:")


@pytest.mark.parametrize("option, value, message", [
    ("seed", -1, "seed must be a non-negative int, got -1"),
    ("noise", -1.0, "noise must be a non-negative number of pixel levels, got -1.0"),
    ("colour_jitter", float("inf"), "colour_jitter must be a non-negative number of pixel levels, got inf"),
])
def test_get_dataset_values_out_of_range(option, value, message):
    from clipedu.data import get_dataset

    with pytest.raises(ValueError, match=message):
        get_dataset("shapes", n=4, **{option: value})


# --- training and checkpoints ----------------------------------------------------------------------
def test_trainer_with_a_batch_larger_than_the_data(model):
    from clipedu.data import ShapesWorld, build_tokenizer
    from clipedu.loop import TrainConfig
    from clipedu.train import Trainer

    data = ShapesWorld(seed=0).generate(20, "train")
    tok = build_tokenizer(data)
    cfg = preset("tiny", vision_width=32, vision_layers=1, vision_heads=2, text_width=32, text_layers=1,
                 text_heads=2, embed_dim=16).for_tokenizer(tok)
    with pytest.raises(ValueError, match=r"batch_size 32 is larger than the training data 'shapes-train' "
                                         r"\(20 images\).* at most 20"):
        Trainer(CLIP(cfg), tok, data, TrainConfig(steps=2, batch_size=32, warmup_steps=0), device="cpu")


def test_a_checkpoint_of_another_preset_names_both_configs(tmp_path):
    from clipedu.checkpoint import load_checkpoint, save_checkpoint

    small = CLIP(preset("small", vocab_size=40, context_length=16))
    save_checkpoint(tmp_path / "checkpoint.pt", {"format": "clipedu-checkpoint-1", "model": small.state_dict()})
    tiny = CLIP(preset("tiny", vocab_size=40, context_length=16))
    with pytest.raises(ValueError, match=(
            r"(?s)it holds a model of preset 'small' \(32x32 images in patches of 4, vision width 256 x 6 layers.*"
            r"vocabulary 40, context 16.*this model is preset 'tiny' \(32x32 images in patches of 8, vision width "
            r"96 x 4 layers.*model_from_checkpoint.*vision.cls_token: expected \(96,\), got \(256,\)")):
        tiny.load_state_dict(load_checkpoint(tmp_path)["model"])


def test_a_state_dict_of_another_vocabulary_says_so(model):
    other = CLIP(preset("tiny", vision_width=32, vision_layers=1, vision_heads=2, text_width=32, text_layers=1,
                        text_heads=2, embed_dim=16, vocab_size=60, context_length=12))
    with pytest.raises(ValueError, match=r"(?s)a custom config \(.*vocabulary 60, .*this model is a custom config "
                                         r"\(.*vocabulary 50, .*text.token_embed.weight: expected \(50, 32\)"):
        model.load_state_dict(other.state_dict())


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b"", b"PK\x03\x04 truncated zip"])
def test_a_file_that_is_not_a_checkpoint(tmp_path, content):
    from clipedu.checkpoint import load_checkpoint

    (tmp_path / "notes.pt").write_bytes(content)
    with pytest.raises(ValueError, match=r"notes.pt is not a clipedu checkpoint: torch.load cannot read it \("):
        load_checkpoint(tmp_path / "notes.pt")


@pytest.mark.parametrize("device, message", [
    ("tpu", r"unknown device 'tpu'; expected cpu, cuda, cuda:N or mps"),
    ("meta", r"unknown device 'meta'; expected cpu, cuda, cuda:N or mps"),
    ("cuda:99", r"device 'cuda:99' was asked for, but (CUDA is not available here|this machine has \d+ GPUs)"),
])
def test_pick_device_says_which_devices_exist(device, message):
    from clipedu.runtime import pick_device

    with pytest.raises(ValueError, match=message):
        pick_device(device)
