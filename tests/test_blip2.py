"""BLIP-2's parts: masks, the Q-Former, the frozen encoder, the three objectives, stage 2 and decoding."""

import pytest
import torch
from torch import nn

from clipedu import CLIP
from clipedu import blip2 as b2
from clipedu.blip2.language_model import IGNORE_INDEX
from clipedu.losses import clip_loss

VOCAB, CONTEXT, IMAGE_WIDTH = 30, 10, 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: one thread is as fast, and never waits on a busy second core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def qcfg():
    return b2.QFormerConfig(vocab_size=VOCAB, image_width=IMAGE_WIDTH, num_queries=3, width=32, layers=3,
                            heads=2, context_length=CONTEXT, embed_dim=16)


def captions(b, length=CONTEXT, seed=0):
    """(B, L) token rows like the course tokenizer's: <sot> words <eot> <pad>..., of random lengths."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(b, length, dtype=torch.long)
    for i in range(b):
        n = int(torch.randint(1, length - 1, (1,), generator=gen))
        tokens[i, 0] = 1
        tokens[i, 1 : n + 1] = torch.randint(4, VOCAB, (n,), generator=gen)
        tokens[i, n + 1] = 2
    return tokens


# --- masks ----------------------------------------------------------------------------------------------
def test_mask_contents():
    q, t = 2, 3
    uni, bi, causal = b2.unimodal_mask(q, t), b2.bidirectional_mask(q, t), b2.multimodal_causal_mask(q, t)
    for m in (uni, bi, causal):
        assert m.shape == (5, 5) and m.dtype == torch.bool
    expected_uni = torch.tensor(
        [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 1, 1, 1]]
    )
    expected_causal = torch.tensor(
        [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    )
    assert torch.equal(uni, expected_uni.bool())
    assert bi.all()
    assert torch.equal(causal, expected_causal.bool())
    assert torch.equal(b2.objective_mask("multimodal_causal", q, t), causal)


def test_text_padding_is_never_a_key_and_no_row_is_empty():
    real = torch.tensor([[True, True, False], [True, True, True]])
    for kind in b2.masks.OBJECTIVE_MASKS:
        mask = b2.with_text_padding(b2.objective_mask(kind, 2, 3), real)
        assert mask.shape == (2, 1, 5, 5)
        assert not mask[0, 0, :, 4].any()  # the padding position of text 0
        assert mask.any(dim=-1).all()


def test_bad_mask_arguments():
    with pytest.raises(ValueError, match="unknown mask"):
        b2.objective_mask("causal", 2, 3)
    with pytest.raises(ValueError, match="non-negative"):
        b2.unimodal_mask(-1, 3)


# --- the Q-Former ---------------------------------------------------------------------------------------
def test_shapes_and_cross_attention_every_other_layer(qcfg):
    qf = b2.QFormer(qcfg)
    assert [layer.cross_attn is not None for layer in qf.layers] == [True, False, True]
    image = torch.randn(4, 7, IMAGE_WIDTH)
    out = qf(image, captions(4), need_weights=True)
    assert out.query_output.shape == (4, 3, 32) and out.text_output.shape == (4, CONTEXT, 32)
    assert len(out.attentions) == 3 and out.attentions[0].shape == (4, 2, 3 + CONTEXT, 3 + CONTEXT)
    assert len(out.cross_attentions) == 2 and out.cross_attentions[0].shape == (4, 2, 3, 7)


def test_unimodal_mask_equals_separate_passes(qcfg):
    qf = b2.QFormer(qcfg)
    image, tokens = torch.randn(4, 7, IMAGE_WIDTH), captions(4)
    joint = qf(image, tokens, mask="unimodal")
    torch.testing.assert_close(joint.query_output, qf(image).query_output, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(joint.text_output, qf(tokens=tokens).text_output, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["unimodal", "bidirectional", "multimodal_causal"])
@pytest.mark.parametrize("read", ["queries", "queries+first", "text"])
def test_reading_some_outputs_gives_the_same_numbers_and_gradients(qcfg, kind, read):
    """``read`` skips the last layer's unread tokens: what is read, and every weight's gradient
    from it, are those of the full pass."""
    image, tokens = torch.randn(4, 7, IMAGE_WIDTH), captions(4)
    q = qcfg.num_queries
    outputs = {}
    for how in ("all", read):
        torch.manual_seed(0)  # the same weights both times
        qf = b2.QFormer(qcfg)
        out = qf(image, tokens, mask=kind, read=how)
        x = torch.cat([t for t in (out.query_output, out.text_output) if t is not None], dim=1)
        if how == "all":
            x = x[:, {"queries": slice(0, q), "queries+first": slice(0, q + 1), "text": slice(q, None)}[read]]
        else:
            assert (out.query_output is None) == (read == "text") and (out.text_output is None) == (read == "queries")
        (x * torch.linspace(-1, 1, x.shape[-1])).sum().backward()
        # A weight only the skipped tokens use gets no gradient (None) instead of a zero one.
        outputs[how] = x, {name: torch.zeros_like(p) if p.grad is None else p.grad for name, p in qf.named_parameters()}
    (full, full_grads), (part, part_grads) = outputs["all"], outputs[read]
    torch.testing.assert_close(part, full, atol=1e-5, rtol=1e-5)
    for name in full_grads:
        torch.testing.assert_close(part_grads[name], full_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    assert any(g.abs().sum() > 0 for g in part_grads.values())


def test_bad_read_arguments(qcfg):
    qf = b2.QFormer(qcfg)
    image, tokens = torch.randn(2, 7, IMAGE_WIDTH), captions(2)
    with pytest.raises(ValueError, match="read must be one of"):
        qf(image, tokens, read="first")
    with pytest.raises(ValueError, match="need_weights=True returns every token's attention"):
        qf(image, tokens, read="queries", need_weights=True)
    with pytest.raises(ValueError, match="read='text' needs text tokens"):
        qf(image, read="text")
    with pytest.raises(ValueError, match="read='queries\\+first' needs image and text tokens"):
        qf(tokens=tokens, read="queries+first")


def test_itg_reusing_the_itc_passs_queries_gives_the_same_text_outputs_and_gradients(qcfg):
    """BLIP-2's reference code runs the queries once (ITC's pass) and lets ITG's text read their
    keys and values: the queries see no text under either mask, so nothing changes but the time."""
    image, tokens = torch.randn(4, 7, IMAGE_WIDTH), captions(4)
    inputs, _ = b2.decoder_inputs(tokens, qcfg.dec_token_id, 0)
    weight = torch.linspace(-1, 1, qcfg.width)
    results = {}
    for how in ("again", "reused"):
        torch.manual_seed(0)  # the same weights both times
        qf = b2.QFormer(qcfg)
        itc = qf(image, tokens, mask="unimodal", read="queries+first", keep_query_states=True)
        assert len(itc.query_states) == qcfg.layers and itc.query_states[0].shape == (4, qcfg.num_queries, qcfg.width)
        if how == "again":
            itg = qf(image, inputs, mask="multimodal_causal", read="text")
        else:
            itg = qf(tokens=inputs, mask="multimodal_causal", read="text", query_states=itc.query_states)
        assert itg.query_output is None
        ((itc.query_output * weight).sum() + (itg.text_output * weight).sum()).backward()
        results[how] = itg.text_output, {n: p.grad for n, p in qf.named_parameters()}
    (again, again_grads), (reused, reused_grads) = results["again"], results["reused"]
    torch.testing.assert_close(reused, again, atol=1e-5, rtol=1e-5)
    for name, grad in again_grads.items():
        torch.testing.assert_close(reused_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    # the kept states are the queries entering each layer: the first is the learned queries themselves
    torch.testing.assert_close(itc.query_states[0], qf.query_tokens.expand(4, -1, -1))


def test_stage1_reuses_itcs_queries_for_itg_and_its_losses_are_unchanged(qcfg):
    model = b2.Blip2Stage1(qcfg)
    with torch.no_grad():  # weights far from their small initial values: every layer moves the queries
        for param in model.parameters():
            param.normal_(0, 0.3)
    features, tokens = torch.randn(5, 7, IMAGE_WIDTH), captions(5)
    out = model(features, tokens, generator=torch.Generator().manual_seed(0))
    logits, labels = model.itg_logits(model.image_embeds(features), tokens)  # the queries run again
    torch.testing.assert_close(out.loss_itg, b2.lm_loss(logits, labels), atol=1e-6, rtol=1e-5)


def test_bad_query_states_give_clear_errors(qcfg):
    qf = b2.QFormer(qcfg)
    image, tokens = torch.randn(2, 7, IMAGE_WIDTH), captions(2)
    states = qf(image, keep_query_states=True).query_states
    with pytest.raises(ValueError, match="query_states must hold one \\(2, 3, 32\\) tensor per layer \\(3\\)"):
        qf(tokens=tokens, mask="multimodal_causal", read="text", query_states=states[:2])
    with pytest.raises(ValueError, match="query_states must hold one \\(3, 3, 32\\) tensor per layer"):
        qf(tokens=captions(3), mask="multimodal_causal", read="text", query_states=states)
    with pytest.raises(ValueError, match="query_states serve the multimodal causal pass .* got mask='bidirectional'"):
        qf(tokens=tokens, mask="bidirectional", read="text", query_states=states)
    with pytest.raises(ValueError, match="query_states need text tokens"):
        qf(mask="multimodal_causal", read="text", query_states=states)
    with pytest.raises(ValueError, match="keep_query_states=True keeps the queries of a pass where they see no text"):
        qf(image, tokens, mask="bidirectional", keep_query_states=True)
    with pytest.raises(ValueError, match="keep_query_states=True keeps the queries"):
        qf(tokens=tokens, keep_query_states=True)


def test_multimodal_causal_text_sees_only_the_past_and_queries_never_see_text(qcfg):
    qf = b2.QFormer(qcfg)
    image, tokens = torch.randn(2, 7, IMAGE_WIDTH), captions(2)
    changed = tokens.clone()
    changed[:, 4:] = 5  # a different future from position 4 on
    a = qf(image, tokens, mask="multimodal_causal")
    b = qf(image, changed, mask="multimodal_causal")
    torch.testing.assert_close(a.text_output[:, :4], b.text_output[:, :4])
    torch.testing.assert_close(a.query_output, b.query_output)
    torch.testing.assert_close(a.query_output, qf(image).query_output, atol=1e-5, rtol=1e-5)
    c = qf(image, changed, mask="bidirectional")  # here the queries do read the text
    assert not torch.allclose(a.query_output, c.query_output)


def test_padding_does_not_change_real_tokens(qcfg):
    qf = b2.QFormer(qcfg)
    image, tokens = torch.randn(3, 7, IMAGE_WIDTH), captions(3, length=6)
    padded = torch.cat([tokens, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    for kind in b2.masks.OBJECTIVE_MASKS:
        a, b = qf(image, tokens, mask=kind), qf(image, padded, mask=kind)
        torch.testing.assert_close(a.query_output, b.query_output, atol=1e-5, rtol=1e-5)
        real = tokens != 0
        torch.testing.assert_close(a.text_output[real], b.text_output[:, :6][real], atol=1e-5, rtol=1e-5)


def test_attention_weights_respect_the_mask(qcfg):
    qf = b2.QFormer(qcfg)
    out = qf(torch.randn(2, 7, IMAGE_WIDTH), captions(2), mask="unimodal", need_weights=True)
    weights = out.attentions[1]  # (B, H, Q+T, Q+T)
    assert torch.all(weights[:, :, :3, 3:] == 0) and torch.all(weights[:, :, 3:, :3] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


def test_explicit_and_fused_paths_agree(qcfg):
    qf = b2.QFormer(qcfg)
    image, tokens = torch.randn(2, 7, IMAGE_WIDTH), captions(2)
    a = qf(image, tokens, mask="multimodal_causal")
    b = qf(image, tokens, mask="multimodal_causal", need_weights=True)
    torch.testing.assert_close(a.text_output, b.text_output, atol=1e-5, rtol=1e-5)


# --- bad inputs -------------------------------------------------------------------------------------------
def test_bad_inputs_give_clear_errors(qcfg):
    with pytest.raises(ValueError, match="num_queries must be a positive int"):
        b2.QFormerConfig(vocab_size=VOCAB, num_queries=0)
    qf = b2.QFormer(qcfg)
    with pytest.raises(ValueError, match="width 32 .*got 48"):
        qf(torch.randn(2, 7, 48))
    with pytest.raises(ValueError, match=r"shape \(B, N, 32\)"):
        qf(torch.randn(7, IMAGE_WIDTH))
    with pytest.raises(ValueError, match="longer than the context"):
        qf(tokens=torch.ones(2, CONTEXT + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="2 images but 3 texts"):
        qf(torch.randn(2, 7, IMAGE_WIDTH), captions(3))
    with pytest.raises(ValueError, match="give image tokens, text tokens or both"):
        qf()
    stage1 = b2.Blip2Stage1(qcfg)
    with pytest.raises(ValueError, match="width 32"):
        stage1(torch.randn(2, 7, 16), captions(2))
    with pytest.raises(ValueError, match="no image encoder"):
        stage1.encode_images(torch.randn(2, 3, 32, 32))
    lm = b2.TinyLM(b2.LMConfig(vocab_size=VOCAB, width=16, layers=1, heads=2, max_positions=16))
    captioner = b2.Blip2Captioner(b2.QFormer(qcfg), nn.LayerNorm(IMAGE_WIDTH), lm)
    with pytest.raises(ValueError, match="width 32"):
        captioner(torch.randn(2, 7, 8), captions(2))
    with pytest.raises(ValueError, match="num_beams"):
        captioner.generate(torch.randn(2, 7, IMAGE_WIDTH), num_beams=0)
    with pytest.raises(ValueError, match="longer than the LM"):
        lm(torch.ones(1, 17, dtype=torch.long))


# --- the frozen image encoder -------------------------------------------------------------------------------
def test_frozen_encoder_reads_the_second_to_last_layer(tiny_config):
    clip = CLIP(tiny_config)
    encoder = b2.FrozenImageEncoder.from_clip(clip)
    images = torch.randn(2, 3, 32, 32)
    hidden = clip.vision(images, output_hidden_states=True).hidden_states
    torch.testing.assert_close(encoder(images), hidden[-2])  # all tokens, CLS included
    assert encoder(images).shape == (2, encoder.num_tokens, tiny_config.vision.width)
    assert not encoder(images).requires_grad
    with pytest.raises(ValueError, match="32x32"):
        encoder(torch.randn(2, 3, 16, 16))


# --- ITC, ITM, ITG ------------------------------------------------------------------------------------------
def test_itc_loss_is_clips_loss_with_one_positive_each():
    image, text = nn.functional.normalize(torch.randn(6, 8), dim=-1), nn.functional.normalize(torch.randn(6, 8), dim=-1)
    logits = 10 * image @ text.t()
    torch.testing.assert_close(b2.itc_loss(logits, torch.eye(6, dtype=torch.bool)), clip_loss(image, text, 10.0))


def test_itc_duplicates_are_positives_not_negatives():
    tokens = captions(4)
    tokens[2] = tokens[0]  # a duplicate caption
    positives = b2.duplicate_caption_positives(tokens)
    assert positives[0, 2] and positives[2, 0] and positives.diagonal().all() and positives.sum() == 6
    logits = torch.zeros(4, 4)
    logits[0, 2] = logits[2, 0] = 5.0  # image 0 scores the duplicate high: fine, it is right
    with_duplicates = b2.itc_loss(logits, positives)
    assert with_duplicates < b2.itc_loss(logits, torch.eye(4, dtype=torch.bool))


def test_similarity_is_the_max_over_queries():
    image = torch.zeros(2, 3, 4)
    image[0, 1, 0] = image[1, 2, 1] = 1.0  # each image has one query pointing somewhere
    text = torch.eye(4)[:2]
    expected = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(b2.query_text_similarity(image, text), expected)


def test_hard_negatives_are_never_positives():
    torch.manual_seed(0)
    keys = torch.tensor([0, 1, 0, 2, 1, 3, 0, 4])  # images 0, 2, 6 alike; 1 and 4 alike
    positives = b2.positives_from_keys(keys)
    logits = torch.randn(8, 8) * 5
    logits[positives] += 20  # positives are the most similar: the likeliest picks if not excluded
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        text_for_image, image_for_text = b2.sample_hard_negatives(logits, positives, gen)
        assert not positives[torch.arange(8), text_for_image].any()
        assert not positives[image_for_text, torch.arange(8)].any()


def test_hard_negatives_follow_the_similarity():
    positives = torch.eye(3, dtype=torch.bool)
    logits = torch.tensor([[9.0, 8.0, -8.0], [0.0, 9.0, 0.0], [0.0, 0.0, 9.0]])
    gen = torch.Generator().manual_seed(0)
    picks = torch.stack([b2.sample_hard_negatives(logits, positives, gen)[0] for _ in range(200)])
    assert (picks[:, 0] == 1).float().mean() > 0.95  # image 0's hardest negative: text 1


def test_hard_negatives_need_a_negative():
    with pytest.raises(ValueError, match="no negative"):
        b2.sample_hard_negatives(torch.zeros(3, 3), torch.ones(3, 3, dtype=torch.bool))


def test_itm_batch_pairs_and_labels():
    image = torch.arange(3).float().view(3, 1, 1).expand(3, 2, 4)  # image i is filled with i
    tokens = torch.arange(3).view(3, 1).expand(3, 5)  # text j is filled with j
    negative_text, negative_image = torch.tensor([2, 0, 1]), torch.tensor([1, 2, 0])
    images, texts, labels = b2.itm_batch(image, tokens, negative_text, negative_image)
    assert images.shape == (9, 2, 4) and texts.shape == (9, 5)
    assert labels.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    pairs = list(zip(images[:, 0, 0].long().tolist(), texts[:, 0].tolist()))
    assert pairs[:3] == [(0, 0), (1, 1), (2, 2)]  # positives
    assert pairs[3:6] == [(1, 0), (2, 1), (0, 2)]  # each text with its negative image
    assert pairs[6:] == [(0, 2), (1, 0), (2, 1)]  # each image with its negative text
    assert all(i != t for i, t in pairs[3:])



def test_itm_batch_adds_each_images_swapped_caption_as_a_fourth_negative():
    image = torch.arange(3).float().view(3, 1, 1).expand(3, 2, 4)
    tokens = torch.arange(3).view(3, 1).expand(3, 5)
    swapped = tokens + 10  # the swap of caption j is filled with j + 10
    negative_text, negative_image = torch.tensor([2, 0, 1]), torch.tensor([1, 2, 0])
    images, texts, labels = b2.itm_batch(image, tokens, negative_text, negative_image, swapped)
    three = b2.itm_batch(image, tokens, negative_text, negative_image)
    assert torch.equal(images[:9], three[0]) and torch.equal(texts[:9], three[1])  # BLIP-2's pairs first
    assert labels.tolist() == [1, 1, 1] + [0] * 9
    assert list(zip(images[9:, 0, 0].long().tolist(), texts[9:, 0].tolist())) == [(0, 10), (1, 11), (2, 12)]
    with pytest.raises(ValueError, match=r"swapped captions must have the captions' shape \(3, 5\).*got \(3, 4\)"):
        b2.itm_batch(image, tokens, negative_text, negative_image, swapped[:, :4])


def test_itg_inputs_start_with_dec_and_ignore_padding(qcfg):
    tokens = captions(2)
    inputs, labels = b2.decoder_inputs(tokens, qcfg.dec_token_id, 0)
    assert (inputs[:, 0] == VOCAB).all() and torch.equal(inputs[:, 1:], tokens[:, 1:])
    assert torch.equal(labels == IGNORE_INDEX, tokens == 0)


def test_stage1_forward(qcfg):
    model = b2.Blip2Stage1(qcfg)
    out = model(torch.randn(6, 7, IMAGE_WIDTH), captions(6))
    assert out.itc_logits.shape == (6, 6) and out.itm_logits.shape == (18, 2)
    torch.testing.assert_close(out.loss, out.loss_itc + out.loss_itm + out.loss_itg)
    assert all(torch.isfinite(x) for x in out[:4])


def test_stage1_forward_with_swapped_captions_scores_them_as_no_match(qcfg):
    model = b2.Blip2Stage1(qcfg).eval()
    features, tokens = torch.randn(4, 7, IMAGE_WIDTH), captions(4)
    swapped = captions(4, seed=1)
    out = model(features, tokens, generator=torch.Generator().manual_seed(0), swapped=swapped)
    assert out.itm_logits.shape == (16, 2) and out.itm_labels.tolist() == [1] * 4 + [0] * 12
    # the fourth block is (image i, its swap): the same logits as scoring those pairs directly
    direct = model.itm_logits(model.image_embeds(features), swapped)
    torch.testing.assert_close(out.itm_logits[12:], direct)


# --- stage 2 -----------------------------------------------------------------------------------------------
def test_caption_labels_ignore_prompt_sot_and_padding():
    tokens = torch.tensor([[1, 7, 8, 2, 0, 0]])
    labels = b2.caption_labels(tokens, pad_token_id=0, prefix_length=3)
    assert labels.tolist() == [[-100, -100, -100, -100, 7, 8, 2, -100, -100]]


def test_stage2_loss_ignores_prompt_positions(qcfg):
    lm = b2.TinyLM(b2.LMConfig(vocab_size=VOCAB, width=16, layers=1, heads=2, max_positions=16))
    captioner = b2.Blip2Captioner(b2.QFormer(qcfg), nn.LayerNorm(IMAGE_WIDTH), lm)
    features, tokens = torch.randn(2, 7, IMAGE_WIDTH), captions(2, length=8)
    logits = lm(tokens, prefix_embeds=captioner.soft_prompt(features))  # (B, 3 + 8, V)
    # By hand: position Q + i predicts caption token i + 1, for real tokens after <sot>.
    losses = []
    for row in range(2):
        for i in range(7):
            target = int(tokens[row, i + 1])
            if target != 0:
                losses.append(nn.functional.cross_entropy(logits[row, 3 + i], torch.tensor(target)))
    torch.testing.assert_close(captioner(features, tokens), torch.stack(losses).mean())
    # Whatever the logits at the prompt positions say, the loss does not change.
    labels = b2.caption_labels(tokens, 0, prefix_length=3)
    noisy = logits.clone()
    noisy[:, :2] = torch.randn_like(noisy[:, :2]) * 100  # prompt positions but the last
    torch.testing.assert_close(b2.lm_loss(noisy, labels), b2.lm_loss(logits, labels))


def test_caption_losses_are_each_captions_summed_token_losses(qcfg):
    lm = b2.TinyLM(b2.LMConfig(vocab_size=VOCAB, width=16, layers=1, heads=2, max_positions=16))
    captioner = b2.Blip2Captioner(b2.QFormer(qcfg), nn.LayerNorm(IMAGE_WIDTH), lm).eval()
    features, tokens = torch.randn(3, 7, IMAGE_WIDTH), captions(3, length=8, seed=1)
    logits = lm(tokens, prefix_embeds=captioner.soft_prompt(features))
    by_hand = torch.zeros(3)
    for row in range(3):  # position Q + i predicts caption token i + 1; padding (0) is skipped
        for i in range(7):
            if int(tokens[row, i + 1]) != 0:
                by_hand[row] += nn.functional.cross_entropy(logits[row, 3 + i], tokens[row, i + 1])
    losses = captioner.caption_losses(features, tokens)
    torch.testing.assert_close(losses, by_hand)
    n_predicted = int((tokens[:, 1:] != 0).sum())  # every real token after <sot>
    torch.testing.assert_close(losses.sum() / n_predicted, captioner(features, tokens))  # stage 2's loss
    assert losses[0] != losses[1]  # one number per caption, not the batch's mean repeated
    with pytest.raises(ValueError, match="got 3 images but 2 captions"):
        captioner.caption_losses(features, tokens[:2])


class ScriptedLM(nn.Module):
    """Row r says ``scripts[r]`` word by word whatever the prompt, then <eot>; counts its calls."""

    def __init__(self, *scripts, vocab=VOCAB):
        super().__init__()
        self.cfg = b2.LMConfig(vocab_size=vocab, width=8, layers=1, heads=1, max_positions=64)
        self.scripts, self.calls = scripts, 0

    def forward(self, tokens, prefix_embeds=None):
        self.calls += 1
        b, length = tokens.shape
        logits = torch.zeros(b, length, self.cfg.vocab_size)
        for row in range(b):
            script = self.scripts[row * len(self.scripts) // b]  # beams of one image share a script
            step = length - 1  # tokens after <sot> so far
            logits[row, -1, script[step] if step < len(script) else self.cfg.eot_token_id] = 10.0
        return logits


def test_generation_stops_at_end_of_text():
    lm = ScriptedLM([5, 6, 2])
    prompt = torch.zeros(3, 4, 8)
    out = b2.greedy_decode(lm, prompt, max_length=20)
    assert out.tolist() == [[1, 5, 6, 2]] * 3
    assert lm.calls == 3  # stopped once every row said <eot>, not at max_length
    out = b2.beam_search(ScriptedLM([5, 6, 2]), prompt, max_length=20, num_beams=3)
    assert out.tolist() == [[1, 5, 6, 2]] * 3


def test_rows_that_finish_first_are_padded():
    from clipedu.tokenizer import WordTokenizer

    out = b2.greedy_decode(ScriptedLM([5, 2, 9, 9], [5, 6, 7, 2]), torch.zeros(2, 2, 8), max_length=20)
    assert out.tolist() == [[1, 5, 2, 0, 0], [1, 5, 6, 7, 2]]  # row 0 pads after its <eot>
    out = b2.beam_search(ScriptedLM([5, 2, 9, 9], [5, 6, 7, 2]), torch.zeros(2, 2, 8), max_length=20, num_beams=2)
    assert out.tolist() == [[1, 5, 2, 0, 0], [1, 5, 6, 7, 2]]
    out = b2.greedy_decode(ScriptedLM([5, 6, 7, 2]), torch.zeros(1, 2, 8), max_length=3)
    assert out.tolist() == [[1, 5, 6]]  # max_length stops a caption that never ends
    words = WordTokenizer(["<pad>", "<sot>", "<eot>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 4)])
    assert words.decode(torch.tensor([1, 5, 2, 7, 8])) == "w1"


def test_beam_search_finds_what_greedy_misses():
    class TwoPaths(nn.Module):
        # First word: 5 (p=0.55) or 6 (p=0.45). After 5 the next word is a coin toss among 10
        # words; after 6 it is word 7 for sure. Greedy takes 5; the likelier caption starts with 6.
        def __init__(self):
            super().__init__()
            self.cfg = b2.LMConfig(vocab_size=20, width=8, layers=1, heads=1)

        def forward(self, tokens, prefix_embeds=None):
            b, length = tokens.shape
            logp = torch.full((b, length, 20), -30.0)
            for row in range(b):
                if length == 1:
                    logp[row, -1, 5], logp[row, -1, 6] = torch.tensor([0.55, 0.45]).log()
                elif length == 2 and tokens[row, 1] == 5:
                    logp[row, -1, 8:18] = torch.tensor(0.1).log()
                elif length == 2:
                    logp[row, -1, 7] = 0.0
                else:
                    logp[row, -1, 2] = 0.0
            return logp

    prompt = torch.zeros(1, 2, 8)
    assert b2.greedy_decode(TwoPaths(), prompt, 10)[0, 1].item() == 5
    assert b2.beam_search(TwoPaths(), prompt, 10, num_beams=2, length_penalty=0.0).tolist() == [[1, 6, 7, 2]]


def test_one_beam_is_greedy(qcfg):
    lm = b2.TinyLM(b2.LMConfig(vocab_size=VOCAB, width=16, layers=1, heads=2, max_positions=16))
    captioner = b2.Blip2Captioner(b2.QFormer(qcfg), nn.LayerNorm(IMAGE_WIDTH), lm)
    features = torch.randn(4, 7, IMAGE_WIDTH)
    greedy = captioner.generate(features, max_length=8)
    beam = captioner.generate(features, max_length=8, num_beams=1)
    assert torch.equal(greedy, beam)
    torch.testing.assert_close(
        b2.beam_search(lm, captioner.soft_prompt(features), 8, num_beams=1, length_penalty=0.0), greedy
    )


# --- evaluation helpers ---------------------------------------------------------------------------------------
def test_recall_at_k():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8]])
    relevant = torch.tensor([[False, False, True], [False, True, False]])
    assert b2.recall_at_k(scores, relevant, ks=(1, 2)) == {"R@1": 0.0, "R@2": 1.0}


def test_stage1_can_caption_with_its_own_decoder(qcfg):
    model = b2.Blip2Stage1(qcfg)
    with torch.no_grad():
        model.lm_head.bias.fill_(-10.0)
        model.lm_head.bias[qcfg.eot_token_id] = 10.0  # say <eot> at once
    out = model.generate(torch.randn(2, 7, IMAGE_WIDTH))
    assert out.tolist() == [[1, 2], [1, 2]]  # <sot> <eot>: stopped at the end of text


# --- the Q-Former from a trained text tower --------------------------------------------------------------
def _clip_text_tower(**overrides):
    from clipedu.config import TextConfig
    from clipedu.text import TextTransformer

    cfg = dict(vocab_size=VOCAB, width=32, layers=3, heads=2, context_length=CONTEXT + 2)
    cfg.update(overrides)
    torch.manual_seed(0)
    return TextTransformer(TextConfig(**cfg), embed_dim=16)


def test_qformer_from_a_text_tower_computes_the_towers_outputs(qcfg):
    text = _clip_text_tower()
    qformer = b2.QFormer(qcfg)
    dec_row, cross = qformer.token_embed.weight[-1].clone(), snapshot_of(qformer.layers[0].cross_attn)
    assert qformer.init_from_text_encoder(text) is qformer
    tokens = captions(5)
    real = tokens != 0
    expected = text(tokens).tokens  # (B, T, D): causal, after ln_final
    got = qformer(tokens=tokens, mask="multimodal_causal").text_output  # text only: the causal mask alone
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)
    layer, block = qformer.layers[1], text.transformer.blocks[1]
    assert torch.equal(layer.query_mlp.fc1.weight, block.mlp.fc1.weight)  # BLIP-2 copies the FFN to the queries
    assert torch.equal(qformer.token_embed.weight[-1], dec_row)  # [DEC] keeps its own row
    assert all(torch.equal(v, cross[k]) for k, v in qformer.layers[0].cross_attn.state_dict().items())


def snapshot_of(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("overrides, message", [
    (dict(width=64, heads=2), r"width 64 \(the Q-Former has 32\)"),
    (dict(layers=2), r"layers 2 \(the Q-Former has 3\)"),
    (dict(heads=4), r"heads 4 \(the Q-Former has 2\)"),
    (dict(vocab_size=VOCAB + 1), r"vocabulary 31 \(the Q-Former has 30\)"),
    (dict(context_length=CONTEXT - 1), r"9 positions, fewer than the Q-Former's context of 10"),
])
def test_qformer_from_a_text_tower_that_does_not_fit_says_what_differs(qcfg, overrides, message):
    with pytest.raises(ValueError, match=message):
        b2.QFormer(qcfg).init_from_text_encoder(_clip_text_tower(**overrides))
