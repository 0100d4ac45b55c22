import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipedu import CLIP, preset
from clipedu.data import ShapesWorld, build_tokenizer
from clipedu.evaluate import (
    box_probe,
    clip_paper_search,
    confusion_matrix,
    encode_texts,
    few_shot_indices,
    linear_probe,
    probability_ensemble,
    prompt_embeddings,
    retrieval_recall,
    segmentation_scores,
    shapes_zero_shot,
    swapped_caption_accuracy,
    topk_accuracy,
    zero_shot,
    zero_shot_classifier,
)


@pytest.fixture(scope="module")
def setup():
    data = ShapesWorld(seed=0).generate(64, "test")
    tok = build_tokenizer(data)
    model = CLIP(preset("tiny", vision_width=32, vision_layers=1, vision_heads=2, text_width=32, text_layers=1,
                        text_heads=2, embed_dim=16, vocab_size=tok.vocab_size)).eval()
    return model, tok, data


def test_prompt_ensemble_is_the_renormalised_mean(setup):
    model, tok, _ = setup
    names, templates = ["circle", "square"], ["the {}", "the red {}", "the small {}"]
    weights = zero_shot_classifier(model, tok, names, templates)
    assert weights.shape == (2, 16)
    torch.testing.assert_close(weights.norm(dim=1), torch.ones(2))
    manual = encode_texts(model, tok, ["the square", "the red square", "the small square"]).mean(0)
    torch.testing.assert_close(weights[1], F.normalize(manual, dim=0), rtol=1e-5, atol=1e-6)


def test_zero_shot_result_is_consistent(setup):
    model, tok, data = setup
    r = zero_shot(model, tok, data, "colour")
    assert r.logits.shape == (64, 8) and r.confusion.sum() == 64
    assert r.top1 == pytest.approx((r.predictions == r.labels).float().mean().item())
    assert r.top5 >= r.top1


def test_zero_shot_bad_inputs(setup):
    model, tok, data = setup
    with pytest.raises(ValueError, match="has no labels for 'class'"):
        zero_shot(model, tok, data, "class")
    with pytest.raises(ValueError, match="needs a \\{\\} for the class name"):
        zero_shot_classifier(model, tok, ["circle"], ["a shape"])


def test_probability_ensemble_sums_the_softmax_over_every_prompt():
    torch.manual_seed(0)
    images = F.normalize(torch.randn(5, 8), dim=-1)
    prompts = F.normalize(torch.randn(3, 4, 8), dim=-1)  # 3 classes x 4 prompts
    log_p = probability_ensemble(images, prompts, scale=20.0)
    for n in range(5):  # loop: softmax over all 12 prompts, then each class's 4 added up
        p = torch.softmax(20.0 * (prompts.reshape(12, 8) @ images[n]), dim=0).view(3, 4).sum(dim=1)
        torch.testing.assert_close(log_p[n].exp(), p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(log_p.exp().sum(dim=1), torch.ones(5))


def test_one_prompt_per_class_makes_both_ensembles_agree():
    torch.manual_seed(1)
    images = F.normalize(torch.randn(50, 8), dim=-1)
    prompts = F.normalize(torch.randn(6, 1, 8), dim=-1)
    cosines = images @ prompts[:, 0].t()
    assert torch.equal(probability_ensemble(images, prompts, 30.0).argmax(1), cosines.argmax(1))


def test_a_class_of_two_descriptions_defeats_the_embedding_mean_not_the_probabilities():
    e = torch.eye(3)
    a = torch.stack([e[0], e[1]])  # class A: two different descriptions
    b = F.normalize(0.75 * e[0] + 0.66 * e[1], dim=0)  # class B: one description between them
    image = e[:1]  # an image of A's first description
    mean_a = F.normalize(a.mean(0), dim=0)
    assert (image @ b) > (image @ mean_a)  # the average of A's prompts loses to B
    prompts = torch.stack([a, torch.stack([b, b])])  # (2 classes, 2 prompts, 3)
    assert probability_ensemble(image, prompts, 10.0).argmax(1).item() == 0  # summing picks A


def test_zero_shot_probability_ensemble_matches_the_function(setup):
    model, tok, data = setup
    r = zero_shot(model, tok, data, "size", ensemble="probability")
    prompts = prompt_embeddings(model, tok, data.class_names["size"], data.templates["size"])
    from clipedu.evaluate import encode_images
    expected = probability_ensemble(encode_images(model, data), prompts, model.scale.item())
    torch.testing.assert_close(r.logits, expected)
    assert r.top1 == pytest.approx((expected.argmax(1) == data.labels["size"]).float().mean().item())


def test_shapes_zero_shot_reads_each_prompt_set_both_ways_as_zero_shot_does(setup):
    model, tok, data = setup
    heldout = ShapesWorld(seed=0).generate(32, "heldout")
    scores = shapes_zero_shot(model, tok, data, heldout)
    assert set(scores) == {f"{n}{s}" for n in ("shape", "colour", "size", "position", "heldout_pairs")
                           for s in ("", "_embedding_mean")}
    for name, images, attribute in (("colour", data, "colour"), ("heldout_pairs", heldout, "colour_shape")):
        for ensemble, suffix in (("probability", ""), ("embedding", "_embedding_mean")):
            expected = zero_shot(model, tok, images, attribute, ensemble=ensemble).top1
            assert scores[name + suffix] == pytest.approx(expected)


def test_probability_ensemble_bad_inputs(setup):
    model, tok, data = setup
    with pytest.raises(ValueError, match=r"ensemble must be one of \('embedding', 'probability'\), got 'mean'"):
        zero_shot(model, tok, data, "colour", ensemble="mean")
    with pytest.raises(ValueError, match=r"\(classes, templates, dim\), got shape \(3, 8\)"):
        probability_ensemble(torch.randn(2, 8), torch.randn(3, 8), 1.0)
    with pytest.raises(ValueError, match="image embeddings have 8 dimensions but the prompts have 4"):
        probability_ensemble(torch.randn(2, 8), torch.randn(3, 2, 4), 1.0)


def test_topk_accuracy_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.5], [0.2, 0.3, 0.1]])
    labels = torch.tensor([1, 2, 2])
    acc = topk_accuracy(logits, labels, ks=(1, 2))
    assert acc["top1"] == pytest.approx(1 / 3) and acc["top2"] == pytest.approx(2 / 3)


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_retrieval_recall_by_hand():
    images = torch.eye(3)
    # texts 0, 1 describe image 0; text 2 image 1; text 3 image 2 but looks like image 1
    texts = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0], [0, 0.8, 0.6]])
    owner = torch.tensor([0, 0, 1, 2])
    r = retrieval_recall(images, texts, owner, ks=(1, 2))
    # image->text top-1: image 0 -> text 0 (hit), image 1 -> text 2 (hit), image 2 -> text 3 (hit)
    assert r["image_to_text_R@1"] == pytest.approx(1.0)
    # text->image top-1: text 3 -> image 1 (miss); the other three hit
    assert r["text_to_image_R@1"] == pytest.approx(0.75) and r["text_to_image_R@2"] == pytest.approx(1.0)


def test_retrieval_with_relevance_counts_equivalent_captions():
    images = torch.eye(2)
    texts = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # each text looks like the other image
    owner = torch.tensor([0, 1])
    assert retrieval_recall(images, texts, owner, ks=(1,))["image_to_text_R@1"] == 0.0
    everything = torch.ones(2, 2, dtype=torch.bool)
    assert retrieval_recall(images, texts, owner, ks=(1,), relevant=everything)["image_to_text_R@1"] == 1.0


def test_linear_probe_separates_separable_data():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 10)) * 3
    y = rng.integers(0, 4, 400)
    x = centres[y] + rng.normal(size=(400, 10))
    result = linear_probe(x[:300], y[:300], x[300:], y[300:])
    assert result.accuracy > 0.95 and result.best_c in result.validation
    noise = rng.normal(size=(400, 10))
    assert linear_probe(noise[:300], y[:300], noise[300:], y[300:]).accuracy < 0.45


def test_linear_probe_bad_inputs():
    with pytest.raises(ValueError, match="the same D"):
        linear_probe(np.zeros((4, 3)), np.array([0, 1, 0, 1]), np.zeros((2, 5)), np.array([0, 1]))
    with pytest.raises(ValueError, match="at least two classes"):
        linear_probe(np.zeros((4, 3)), np.zeros(4), np.zeros((2, 3)), np.zeros(2))


def test_clip_paper_search_walks_the_96_step_grid_to_the_peak():
    """The search finds the best of the 97 values 10**(k/8) with about 15 scores, for any peak."""
    grid = 10.0 ** (-np.arange(-48, 49) / 8)  # C = 1 / lambda, lambda from 1e-6 to 1e6
    for peak in (-48, -37, -3, 0, 21, 48):
        calls = []

        def score(c, peak=peak, calls=calls):
            calls.append(c)
            return -abs(-np.log10(c) * 8 - peak)  # unimodal in log lambda, best at lambda = 10**(peak/8)

        best, tried = clip_paper_search(score)
        assert best == pytest.approx(grid[peak + 48]), peak
        assert len(calls) == len(set(calls)) == len(tried) <= 7 + 2 * 4
        assert all(np.isclose(grid, c).any() for c in tried)  # only grid values are tried
    assert min(tried) == pytest.approx(1e-6) and max(tried) == pytest.approx(1e6)  # the two ends


def test_clip_paper_search_breaks_ties_towards_lambda_one():
    best, tried = clip_paper_search(lambda c: 1.0)
    assert best == 1.0 and len(tried) == 7 + 2 * 4
    best, tried = clip_paper_search(lambda c: float(c <= 1e-5))  # a plateau at lambda >= 1e5
    assert best == pytest.approx(1e-5) and len(tried) == 7 + 4 + 3  # the grid's end cuts neighbours


def test_linear_probe_clip_paper_protocol():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 10)) * 3
    y = rng.integers(0, 4, 400)
    x = centres[y] + rng.normal(size=(400, 10))
    result = linear_probe(x[:300], y[:300], x[300:], y[300:], protocol="clip-paper", cs=(123.0,))
    assert result.accuracy > 0.95
    assert 123.0 not in result.validation and 7 <= len(result.validation) <= 15  # cs ignored
    assert result.best_c in result.validation and result.validation[result.best_c] == max(result.validation.values())
    # without standardisation the probe depends on the features' scale; the course's does not
    course = [linear_probe(s * x[:300], y[:300], s * x[300:], y[300:]).best_c for s in (1.0, 1000.0)]
    assert course[0] == course[1]
    with pytest.raises(ValueError, match='protocol must be "course" or "clip-paper", got \'paper\''):
        linear_probe(x[:300], y[:300], x[300:], y[300:], protocol="paper")


def test_few_shot_indices_take_k_per_class():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 3)
    idx = few_shot_indices(labels, 4)
    assert np.bincount(labels[idx]).tolist() == [4, 4, 3]


def test_swapped_caption_accuracy_needs_two_objects(setup):
    model, tok, data = setup
    with pytest.raises(ValueError, match="no swapped captions"):
        swapped_caption_accuracy(model, tok, data)


def test_swapped_caption_accuracy_is_a_fraction():
    data = ShapesWorld(num_objects=2, seed=1).generate(32, "test")
    tok = build_tokenizer(data)
    model = CLIP(preset("tiny", vision_width=32, vision_layers=1, vision_heads=2, text_width=32, text_layers=1,
                        text_heads=2, embed_dim=16, vocab_size=tok.vocab_size,
                        context_length=tok.context_length)).eval()
    acc = swapped_caption_accuracy(model, tok, data)
    assert 0.0 <= acc <= 1.0


def test_box_probe_recovers_a_linear_target_and_picks_its_penalty():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 3, generator=g)
    x, tx = torch.randn(400, 12, generator=g) * 5 + 2, torch.randn(200, 12, generator=g) * 5 + 2
    y, ty = x @ w + 7, tx @ w + 7
    exact = box_probe(x, y, tx, ty)
    assert max(exact.error) < 0.05 and exact.best_alpha == 0.1 and set(exact.validation) == {0.1, 1, 10, 100, 1000}
    assert exact.predictions.shape == (200, 3)
    error = (exact.predictions.double() - ty).abs().mean(0)
    assert torch.allclose(error, torch.tensor(exact.error, dtype=torch.float64))
    # noise features: the error stays that of guessing the mean, and the strongest penalty wins
    noise = box_probe(torch.randn(400, 12, generator=g), y, torch.randn(200, 12, generator=g), ty)
    guess = (ty - y.mean(0)).abs().mean(0)
    assert all(abs(e - m) < 0.15 * m for e, m in zip(noise.error, guess.tolist()))
    assert noise.best_alpha >= 100
    one = box_probe(x.numpy(), y[:, 0].numpy(), tx.numpy(), ty[:, 0].numpy())
    assert len(one.error) == 1 and one.error[0] < 0.05


def test_box_probe_names_bad_shapes():
    with pytest.raises(ValueError, match=r"features must be \(N, D\) with the same D"):
        box_probe(torch.zeros(10, 3), torch.zeros(10, 2), torch.zeros(5, 4), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="features and targets disagree"):
        box_probe(torch.zeros(10, 3), torch.zeros(9, 2), torch.zeros(5, 3), torch.zeros(5, 2))


def test_segmentation_scores_separate_where_from_what():
    target = torch.tensor([[0, 1, 1, 0], [0, 2, 2, 0]])
    assert segmentation_scores(target, target, 3) == {"where": 1.0, "what": 1.0, "mIoU": 1.0, "accuracy": 1.0}
    wrong_class = torch.tensor([[0, 2, 2, 0], [0, 2, 2, 0]])  # every object found, half named wrong
    s = segmentation_scores(wrong_class, target, 3)
    assert s["where"] == 1.0 and s["what"] == 0.5 and s["accuracy"] == 0.75
    assert s["mIoU"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    shifted = torch.tensor([[1, 1, 0, 0], [0, 2, 2, 0]])  # right class, one object moved by one
    s = segmentation_scores(shifted, target, 3)
    assert s["where"] == pytest.approx(3 / 5) and s["what"] == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        segmentation_scores(target[:1], target, 3)
