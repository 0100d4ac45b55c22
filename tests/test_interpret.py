import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from clipedu import CLIP, preset  # noqa: E402
from clipedu.data import ShapesWorld, to_float  # noqa: E402
from clipedu.interpret import (  # noqa: E402
    attention_gradients,
    attention_map,
    attention_rollout,
    cls_attention,
    colour_masks,
    foreground_masks,
    grid_map,
    mass_on,
    patch_coverage,
    pointing_game,
    relevancy,
    relevancy_from,
    rollout_map,
    stack_attentions,
    vision_attentions,
    vision_tower,
)
from clipedu.tokenizer import WordTokenizer  # noqa: E402
from clipedu.vision import VisionTransformer, ViTClassifier  # noqa: E402
from clipedu.viz.interpret import attention_explorer, plot_layers_and_heads, plot_map, plot_maps  # noqa: E402


def random_attentions(layers=3, batch=2, heads=2, tokens=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(layers, batch, heads, tokens, tokens, generator=gen).softmax(-1)


@pytest.fixture(scope="module")
def tokenizer():
    return WordTokenizer.build(["the red circle", "the blue square", "a small green star"], context_length=8)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    cfg = preset("tiny", vision_width=32, vision_layers=3, vision_heads=2, text_width=32, text_layers=1,
                 text_heads=2, embed_dim=16, vocab_size=tokenizer.vocab_size, context_length=8,
                 eot_token_id=tokenizer.eot_id, pad_token_id=tokenizer.pad_id)
    return CLIP(cfg).eval()


@pytest.fixture(scope="module")
def images():
    return ShapesWorld(seed=0).generate(3, "test").images  # uint8 (3, 3, 32, 32)


# --- reading attention ------------------------------------------------------------------------------------
def test_vision_attentions_shape_and_rows(model, images):
    a = vision_attentions(model, to_float(images))
    assert a.shape == (3, 3, 2, 17, 17)  # (L, B, H, T, T): 16 patches + CLS
    torch.testing.assert_close(a.sum(-1), torch.ones(3, 3, 2, 17))


def test_vision_tower_finds_the_tower(model):
    assert vision_tower(model) is model.vision
    vit = VisionTransformer(preset("tiny").vision, 8)
    assert vision_tower(vit) is vit
    classifier = ViTClassifier(preset("tiny", vision_width=32, vision_heads=2).vision, 3)
    assert vision_tower(classifier) is classifier.encoder
    with pytest.raises(ValueError, match="VisionTransformer"):
        vision_tower(torch.nn.Linear(2, 2))


def test_stack_attentions_checks_input():
    a = random_attentions()
    assert stack_attentions(list(a)).shape == a.shape
    with pytest.raises(ValueError, match="empty"):
        stack_attentions([])
    with pytest.raises(ValueError, match="same shape"):
        stack_attentions([a[0], a[0, :, :, :4, :4]])
    with pytest.raises(ValueError, match=r"\(L, B, H, T, T\)"):
        stack_attentions(a[0])
    with pytest.raises(ValueError, match="square"):
        stack_attentions(a[..., :4])


def test_grid_map():
    assert grid_map(torch.arange(16.0)).shape == (4, 4)
    assert grid_map(torch.zeros(2, 49)).shape == (2, 7, 7)
    assert grid_map(torch.arange(4.0))[1, 0] == 2  # row by row, as patchify orders patches
    with pytest.raises(ValueError, match="not a square"):
        grid_map(torch.zeros(2, 15))


def test_cls_attention_is_the_cls_row():
    a = random_attentions(tokens=10)  # 9 patches: a 3 x 3 grid
    m = cls_attention(a, layer=1, head=0)
    assert m.shape == (2, 3, 3)
    torch.testing.assert_close(m.flatten(1), a[1, :, 0, 0, 1:])
    torch.testing.assert_close(cls_attention(a, -1).flatten(1), a[-1, :, :, 0, 1:].mean(1))
    torch.testing.assert_close(cls_attention(a, 2, "max").flatten(1), a[2, :, :, 0, 1:].amax(1))
    # Each map plus the CLS token's weight on itself sums to 1.
    torch.testing.assert_close(m.sum((1, 2)) + a[1, :, 0, 0, 0], torch.ones(2))
    with pytest.raises(ValueError, match="head"):
        cls_attention(a, 0, head=5)
    with pytest.raises(ValueError, match="layer"):
        cls_attention(a, layer=3)


# --- rollout -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layers,tokens", [(1, 5), (4, 17), (12, 50)])
def test_rollout_rows_sum_to_one(layers, tokens):
    r = attention_rollout(random_attentions(layers, tokens=tokens))
    torch.testing.assert_close(r.sum(-1), torch.ones(2, tokens))
    assert (r >= 0).all()


def test_rollout_of_identity_attention_is_identity():
    eye = torch.eye(5).expand(1, 2, 3, 5, 5)  # one layer whose heads all attend to themselves
    torch.testing.assert_close(attention_rollout(eye), torch.eye(5).expand(2, 5, 5))
    torch.testing.assert_close(attention_rollout(eye.expand(4, 2, 3, 5, 5)), torch.eye(5).expand(2, 5, 5))


def test_rollout_by_hand():
    a = random_attentions(3)
    eye = torch.eye(5)
    expected = eye.expand(2, 5, 5)
    for layer in a:
        mixed = 0.5 * layer.mean(1) + 0.5 * eye  # rows of attention sum to 1, so this is (A + I) renormalised
        expected = mixed @ expected
    torch.testing.assert_close(attention_rollout(a), expected)
    plain = a[2].mean(1) @ a[1].mean(1) @ a[0].mean(1)
    torch.testing.assert_close(attention_rollout(a, residual=False), plain)
    torch.testing.assert_close(attention_rollout(a, start_layer=2), 0.5 * a[2].mean(1) + 0.5 * eye)
    torch.testing.assert_close(rollout_map(random_attentions(tokens=17)).sum((1, 2)) <= 1, torch.ones(2).bool())


def test_rollout_follows_a_chain():
    # Layer 0: token 2 copies token 1; layer 1: CLS copies token 2. Without residuals the CLS token ends
    # up holding token 1 alone.
    a0, a1 = torch.eye(4), torch.eye(4)
    a0[2] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    a1[0] = torch.tensor([0.0, 0.0, 1.0, 0.0])
    a = torch.stack([a0, a1]).view(2, 1, 1, 4, 4)
    r = attention_rollout(a, residual=False)
    assert r[0, 0].tolist() == [0.0, 1.0, 0.0, 0.0]
    # With the residual, CLS keeps half of itself and the rest reaches token 1 through token 2.
    torch.testing.assert_close(attention_rollout(a)[0, 0], torch.tensor([0.5, 0.25, 0.25, 0.0]))


# --- relevancy -------------------------------------------------------------------------------------------
def test_relevancy_with_uniform_gradients_is_unnormalised_rollout():
    # With every gradient 1, relu(grad * A) = A, so R = prod (I + A_l) = 2^L * rollout.
    a = random_attentions(4)
    r = relevancy_from(a, torch.ones_like(a))
    torch.testing.assert_close(r, 2**4 * attention_rollout(a))


def test_relevancy_from_obvious_cases():
    a = random_attentions(3)
    # Zero or negative gradients: nothing raised the score, R stays the identity and the map is 0.
    for g in (torch.zeros_like(a), -torch.ones_like(a)):
        torch.testing.assert_close(relevancy_from(a, g), torch.eye(5).expand(2, 5, 5))
    # One block whose CLS token attends only to patch 3, with a positive gradient there.
    one = torch.zeros(1, 1, 2, 5, 5)
    one[..., 0, 3] = 1.0
    grad = torch.zeros_like(one)
    grad[..., 0, 3] = 2.0
    r = relevancy_from(one, grad)
    assert r[0, 0, 1:].tolist() == [0.0, 0.0, 2.0, 0.0]  # 2 * 1, averaged over two identical heads
    # Only positive evidence counts: grad * A is clamped at zero before the heads are averaged.
    grad[:, :, 1] = -2.0
    assert relevancy_from(one, grad)[0, 0, 1:].tolist() == [0.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="same shape"):
        relevancy_from(a, a[:2])


def test_relevancy_by_hand_matches(model, images, tokenizer):
    x = to_float(images)
    tokens = tokenizer(["the red circle"])
    out = model.vision(x, output_attentions=True)
    for a in out.attentions:
        a.retain_grad()
    text = model.encode_text(tokens).detach()
    score = (torch.nn.functional.normalize(out.embedding, dim=-1) @ text.t()).squeeze(1)  # (B,) cosines
    (score * model.logit_scale.exp()).sum().backward()
    model.zero_grad()
    r = torch.eye(17).expand(3, 17, 17)
    for a in out.attentions:
        r = r + (a.grad * a).clamp(min=0).mean(1) @ r
    got = relevancy(model, x, tokens)
    assert got.shape == (3, 4, 4)
    torch.testing.assert_close(got, r[:, 0, 1:].reshape(3, 4, 4).detach())
    assert (got >= 0).all()


def test_relevancy_pairs_each_image_with_its_text(model, images, tokenizer):
    x = to_float(images)
    texts = tokenizer(["the red circle", "the blue square", "a small green star"])
    together = relevancy(model, x, texts)
    for i in range(3):  # an image's map does not depend on the other images in the batch
        torch.testing.assert_close(together[i], relevancy(model, x[i : i + 1], texts[i : i + 1])[0])
    # One text is shared by every image; embeddings work as well as token ids.
    shared = relevancy(model, x, texts[:1])
    torch.testing.assert_close(shared, relevancy(model, x, model.encode_text(texts[:1]).detach()))
    assert not torch.allclose(shared, together)  # the map depends on the text


def test_relevancy_needs_no_parameter_gradients(model, images, tokenizer):
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():  # and works inside no_grad, where a notebook may call it
            got = relevancy(model, to_float(images), tokenizer(["the red circle"]), score="cosine")
        assert got.shape == (3, 4, 4) and torch.isfinite(got).all()
        assert all(p.grad is None for p in model.parameters())
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def test_relevancy_checks_input(model, images, tokenizer):
    x = to_float(images)
    with pytest.raises(ValueError, match="one per image"):
        relevancy(model, x, tokenizer(["the red circle", "the blue square"]))
    with pytest.raises(ValueError, match="token ids"):
        relevancy(model, x, ["the red circle"])
    with pytest.raises(ValueError, match="score"):
        attention_gradients(model, x, tokenizer(["the red circle"]), score="dot")
    with pytest.raises(ValueError, match="CLIP"):
        relevancy(model.vision, x, tokenizer(["the red circle"]))


@pytest.mark.parametrize("image_size,patch_size,layers,heads", [(32, 4, 2, 4), (64, 16, 1, 1), (48, 8, 2, 2)])
def test_every_method_on_other_towers(image_size, patch_size, layers, heads):
    cfg = preset("tiny", image_size=image_size, patch_size=patch_size, vision_layers=layers, vision_heads=heads,
                 vision_width=16, text_width=16, text_layers=1, text_heads=1, embed_dim=8, vocab_size=20,
                 context_length=6)
    model = CLIP(cfg).eval()
    x = torch.randn(2, 3, image_size, image_size)
    grid = image_size // patch_size
    tokens = torch.tensor([[1, 5, 6, 2, 0, 0]])
    for method in ("attention", "rollout", "relevancy"):
        m = attention_map(model, x, method, layer=layers - 1, head=0 if method != "relevancy" else "mean",
                          texts=tokens)
        assert m.shape == (2, grid, grid), method
    with pytest.raises(ValueError, match="method"):
        attention_map(model, x, "gradcam")
    with pytest.raises(ValueError, match="texts"):
        attention_map(model, x, "relevancy")


# --- object masks and scores ------------------------------------------------------------------------------
def test_masks_and_coverage(images):
    fg = foreground_masks(images)
    assert fg.shape == (3, 32, 32) and fg.any((1, 2)).all() and not fg.all()
    cover = patch_coverage(fg, 8)
    assert cover.shape == (3, 4, 4)
    torch.testing.assert_close(cover.sum((1, 2)) * 64, fg.sum((1, 2)).float())
    world = ShapesWorld(seed=0)
    data = world.generate(20, "test")
    colour = world.COLOURS[data.labels["colour"][0]]
    mask = colour_masks(data.images[:1], world.RGB[colour])
    assert (mask & ~foreground_masks(data.images[:1])).sum() == 0  # the colour is on the object
    with pytest.raises(ValueError, match="uint8"):
        foreground_masks(to_float(images))
    with pytest.raises(ValueError, match="multiple"):
        patch_coverage(fg, 5)


def test_mass_and_pointing_game():
    maps = torch.tensor([[[0.0, 1.0], [3.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    region = torch.tensor([[[0.0, 1.0], [0.0, 0.0]], [[0.5, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(mass_on(maps, region), torch.tensor([0.25, 0.125]))
    assert pointing_game(maps, region).tolist() == [False, True]  # ties go to the first patch
    with pytest.raises(ValueError, match="same shape"):
        mass_on(maps, region[:1])


# --- plots and the widget -----------------------------------------------------------------------------
def test_plots(model, images):
    a = vision_attentions(model, to_float(images))
    ax = plot_map(images[0], cls_attention(a)[0], title="cls", colorbar=True)
    assert ax.get_title() == "cls"
    with pytest.raises(ValueError, match="one map"):
        plot_map(images[0], cls_attention(a))
    fig = plot_layers_and_heads(images[1], a, index=1)
    assert len(fig.axes) == 3 * 3  # 3 layers x (2 heads + mean)
    fig = plot_maps(images, {"attention": cls_attention(a), "rollout": rollout_map(a)}, titles=["a", "b", "c"])
    assert len(fig.axes) == 3 * 3
    with pytest.raises(ValueError, match="rows"):
        plot_maps(images, {"attention": cls_attention(a)[:2]})
    plt.close("all")


@pytest.mark.parametrize("method", ["attention", "rollout", "relevancy"])
def test_explorer_draws_each_method(model, images, tokenizer, method):
    plt.close("all")
    box = attention_explorer(model, images, tokenizer, ["the red circle", "the blue square"], method=method)
    picker, chooser = box.children[0].children
    layer, head = box.children[1].children
    caption = box.children[2]
    assert chooser.value == method and layer.value == 2 and head.value == "mean"
    assert len(plt.get_fignums()) == 1  # the default state drew without interaction
    # Each change redraws through the same function the notebook's default state drew with.
    picker.value, layer.value, head.value, caption.value = 2, 0, 1, "an unknown zebra word"
    assert len(plt.get_fignums()) == 5  # one redraw per change
    plt.close("all")
    with pytest.raises(ValueError, match="uint8"):
        attention_explorer(model, to_float(images), tokenizer, ["the red circle"])
    with pytest.raises(ValueError, match="method"):
        attention_explorer(model, images, tokenizer, ["the red circle"], method="saliency")
