"""A caption against its swap (notebook 17): the gallery's answer key, the margins and the comparison
measure what they say, and notebook 07's pair models come from one recipe."""

import copy
import re

import pytest
import torch
import torch.nn.functional as F

from clipedu import CLIP, preset, runs
from clipedu import blip2 as b2
from clipedu.data import ShapesWorld, build_tokenizer
from clipedu.exercises import nb17


@pytest.fixture(scope="module")
def pairs():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = ShapesWorld(num_objects=2).generate(12, "test")
    tokenizer = build_tokenizer(data)
    encoder = b2.FrozenImageEncoder.from_clip(CLIP(preset(
        "tiny", vision_width=32, vision_layers=2, vision_heads=2, text_width=32, text_layers=1, text_heads=2,
        embed_dim=16, vocab_size=tokenizer.vocab_size)))
    qcfg = b2.QFormerConfig(vocab_size=tokenizer.vocab_size, image_width=32, num_queries=2, width=32, layers=1,
                            heads=2, context_length=tokenizer.context_length, embed_dim=16)
    model = b2.Blip2Stage1(qcfg, encoder).eval()
    yield data, tokenizer, model, b2.encode_dataset(encoder, data)
    torch.set_num_threads(before)


def test_swap_relevance_marks_same_scene_captions_and_never_a_swap():
    keys = torch.tensor([3, 1, 3])
    relevant = b2.swap_relevance(keys)
    assert relevant.shape == (3, 6) and relevant.dtype == torch.bool
    assert relevant[:, :3].tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    assert not relevant[:, 3:].any()
    with pytest.raises(ValueError, match=r"keys must be one id per picture, shape \(N,\); got shape \(2, 2\)"):
        b2.swap_relevance(torch.zeros(2, 2))


def test_swap_margins_are_caption_score_minus_swap_score(pairs):
    data, tokenizer, model, features = pairs
    margins = b2.swap_margins(model, features, data, tokenizer)
    captions = tokenizer([c[0] for c in data.captions])
    swaps = tokenizer([n[0] for n in data.hard_negatives])
    with torch.no_grad():
        itm = model.itm_score(features, captions) - model.itm_score(features, swaps)
    itc = b2.itc_similarities(model, features, torch.cat([captions, swaps]))
    n = len(data)
    torch.testing.assert_close(margins["ITM"], itm)
    torch.testing.assert_close(margins["ITC"], itc[:, :n].diagonal() - itc[:, n:].diagonal())


def test_word_order_comparison_counts_what_it_names(pairs):
    data, tokenizer, model, features = pairs
    result = b2.word_order_comparison(model, features, data, tokenizer, k=4)
    margins = b2.swap_margins(model, features, data, tokenizer)
    assert result["swap ITM"] == pytest.approx((margins["ITM"] > 0).float().mean().item())
    assert result["swap ITC"] == pytest.approx((margins["ITC"] > 0).float().mean().item())
    # recall@1 by ITC alone, counted by hand over the captions and the swaps
    texts = torch.cat([tokenizer([c[0] for c in data.captions]), tokenizer([n[0] for n in data.hard_negatives])])
    itc = b2.itc_similarities(model, features, texts)
    relevant = b2.swap_relevance(b2.attribute_keys(data))
    by_hand = relevant[torch.arange(len(data)), itc.argmax(1)].float().mean().item()
    assert result["i2t ITC"] == pytest.approx(by_hand)
    mistakes = b2.word_order_mistakes(itc, relevant, texts)
    assert result["i2t word order ITC"] == pytest.approx(mistakes.float().mean().item())
    assert all(0.0 <= v <= 1.0 for v in result.values())


def test_word_order_mistakes_are_wrong_firsts_with_the_captions_words():
    # four pictures; texts: captions 0-3 (caption 2 says what caption 0 says, its scene is picture 0's)
    # then swaps 4-7; token ids stand for words
    texts = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 0], [1, 2, 3, 0], [7, 8, 9, 0],
                          [3, 2, 1, 0], [6, 5, 4, 0], [3, 2, 1, 0], [9, 7, 8, 0]])
    relevant = b2.swap_relevance(torch.tensor([0, 1, 0, 2]))
    scores = torch.zeros(4, 8)
    scores[0, 2] = 1.0  # picture 0: caption 2 says the same and is right: no mistake
    scores[1, 5] = 1.0  # picture 1: its own swap: a word-order mistake
    scores[2, 4] = 1.0  # picture 2: picture 0's swap, the same words as its caption: a word-order mistake
    scores[3, 1] = 1.0  # picture 3: a wrong caption with other words: a mistake, not one of word order
    assert b2.word_order_mistakes(scores, relevant, texts).tolist() == [False, True, True, False]
    with pytest.raises(ValueError, match=r"scores \(4, 8\), relevant \(4, 6\) and texts \(8, 4\) must be"):
        b2.word_order_mistakes(scores, relevant[:, :6], texts)


def test_word_order_needs_swapped_captions_and_one_feature_row_per_picture(pairs):
    data, tokenizer, model, features = pairs
    one_object = ShapesWorld().generate(4, "test")
    with pytest.raises(ValueError, match=r"the data has no swapped captions \(hard_negatives\)"):
        b2.word_order_comparison(model, features[:4], one_object, tokenizer)
    with pytest.raises(ValueError, match=r"5 pictures' features for 12 pictures"):
        b2.swap_margins(model, features[:5], data, tokenizer)
    captioner = b2.Blip2Captioner.from_stage1(model, b2.TinyLM(b2.LMConfig.for_tokenizer(tokenizer, width=16,
                                                                                       layers=1, heads=2)))
    with pytest.raises(ValueError, match=r"the data has no swapped captions \(hard_negatives\)"):
        b2.captioner_word_order(captioner, features[:4], one_object, tokenizer)
    with pytest.raises(ValueError, match=r"5 pictures' features for 12 pictures"):
        b2.captioner_word_order(captioner, features[:5], data, tokenizer)


def test_captioner_word_order_is_stage_twos_loss_and_a_count_of_summed_losses(pairs):
    data, tokenizer, model, features = pairs
    torch.manual_seed(1)
    lm = b2.TinyLM(b2.LMConfig.for_tokenizer(tokenizer, width=16, layers=1, heads=2))
    captioner = b2.Blip2Captioner.from_stage1(model, lm)
    with torch.no_grad():  # a random lm_proj and LM: some captions win, some swaps do
        result = b2.captioner_word_order(captioner, features, data, tokenizer)
        captions = tokenizer([c[0] for c in data.captions])
        swaps = tokenizer([n[0] for n in data.hard_negatives])
        loss = captioner(features, captions)
        right, swapped = captioner.caption_losses(features, captions), captioner.caption_losses(features, swaps)
    assert result["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert result["swap"] == pytest.approx((right < swapped).float().mean().item())
    assert 0.0 < result["swap"] < 1.0  # the count, not a constant


def test_stage2_from_starts_trains_copies_alike_in_all_but_the_start(pairs):
    data, tokenizer, model, features = pairs
    torch.manual_seed(1)
    lm = b2.freeze_(b2.TinyLM(b2.LMConfig.for_tokenizer(tokenizer, width=16, layers=1, heads=2)))
    cfg = b2.stage_config(steps=6, batch_size=4, lr=1e-2, seed=3)
    torch.manual_seed(2)
    other = b2.QFormer(model.cfg)  # another start: fresh weights
    starts = {"stage 1": (model.qformer, model.ln_vision), "twin": (model.qformer, model.ln_vision),
              "other": (other, torch.nn.LayerNorm(32))}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runs = b2.stage2_from_starts(starts, lm, model.image_encoder, features, data, features, data, tokenizer, cfg)
    assert list(runs) == list(starts)
    # The same start twice gives the same run: the same lm_proj, batches and steps.
    assert runs["stage 1"][0].loss == runs["twin"][0].loss and runs["stage 1"][1] == runs["twin"][1]
    assert runs["other"][0].loss != runs["stage 1"][0].loss
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # copies trained, not these
    # Each score is captioner_word_order of that run's captioner, rebuilt here by hand.
    torch.manual_seed(cfg.seed)
    captioner = b2.Blip2Captioner(copy.deepcopy(other), torch.nn.LayerNorm(32), lm, model.image_encoder)
    history = b2.train_stage2(captioner, features, data, tokenizer, cfg, progress=False)
    assert history.loss == runs["other"][0].loss
    assert runs["other"][1] == pytest.approx(b2.captioner_word_order(captioner, features, data, tokenizer))
    with pytest.raises(ValueError, match="give at least one start"):
        b2.stage2_from_starts({}, lm, model.image_encoder, features, data, features, data, tokenizer, cfg)


def test_stage2_from_starts_keeps_its_runs_and_loads_them(pairs, tmp_path, monkeypatch):
    data, tokenizer, model, features = pairs
    torch.manual_seed(1)
    lm = b2.freeze_(b2.TinyLM(b2.LMConfig.for_tokenizer(tokenizer, width=16, layers=1, heads=2)))
    cfg = b2.stage_config(steps=4, batch_size=4, lr=1e-2, seed=3)
    starts = {"after stage 1": (model.qformer, model.ln_vision)}
    args = (lm, model.image_encoder, features, data, features, data, tokenizer, cfg)
    first = b2.stage2_from_starts(starts, *args, train_qformer=False, keep_in=tmp_path)["after stage 1"]
    (name,) = runs.run_names(tmp_path)  # the lock file beside it is not a run
    folder = tmp_path / name
    assert folder.name.startswith("after-stage-1-") and (folder / "checkpoint.pt").exists()
    assert (tmp_path / f".{folder.name}.lock").exists()  # the run was held while it trained (Loop.fit)

    def no_step(self, batch):
        raise AssertionError("a kept stage-2 run trained again")

    monkeypatch.setattr(b2.Stage2Training, "train_step", no_step)
    again = b2.stage2_from_starts(starts, *args, train_qformer=False, keep_in=tmp_path)["after stage 1"]
    assert again[0].loss == first[0].loss and again[1] == first[1]  # the same run and the same scores
    monkeypatch.undo()
    # The Q-Former trained too: another run, another folder (the fingerprint names the frozen weights).
    b2.stage2_from_starts(starts, *args, keep_in=tmp_path)
    assert len(runs.run_names(tmp_path)) == 2


def test_stage2_from_starts_with_the_qformer_frozen_trains_lm_proj_alone(pairs):
    data, tokenizer, model, features = pairs
    torch.manual_seed(1)
    lm = b2.freeze_(b2.TinyLM(b2.LMConfig.for_tokenizer(tokenizer, width=16, layers=1, heads=2)))
    cfg = b2.stage_config(steps=6, batch_size=4, lr=1e-2, seed=3)
    starts = {"stage 1": (model.qformer, model.ln_vision)}
    frozen = b2.stage2_from_starts(starts, lm, model.image_encoder, features, data, features, data, tokenizer, cfg,
                                   train_qformer=False)["stage 1"]
    trained = b2.stage2_from_starts(starts, lm, model.image_encoder, features, data, features, data, tokenizer,
                                    cfg)["stage 1"]
    assert frozen[0].loss[0] == trained[0].loss[0] and frozen[0].loss[1:] != trained[0].loss[1:]
    # The same run by hand: the Q-Former and ln_vision frozen, so lm_proj alone moves.
    torch.manual_seed(cfg.seed)
    captioner = b2.Blip2Captioner(copy.deepcopy(model.qformer), copy.deepcopy(model.ln_vision), lm, model.image_encoder)
    b2.freeze_(captioner.qformer)
    b2.freeze_(captioner.ln_vision)
    before = {k: v.clone() for k, v in captioner.state_dict().items()}
    history = b2.train_stage2(captioner, features, data, tokenizer, cfg, progress=False)
    assert history.loss == frozen[0].loss
    moved = {k.split(".")[0] for k, v in captioner.state_dict().items() if not torch.equal(v, before[k])}
    assert moved == {"lm_proj"}, moved
    assert frozen[1] == pytest.approx(b2.captioner_word_order(captioner, features, data, tokenizer))


def test_rerank_exercise_reference_agrees_with_itm_rerank(pairs):
    data, tokenizer, model, features = pairs
    texts = tokenizer([c[0] for c in data.captions])
    itc = b2.itc_similarities(model, features, texts)
    with torch.no_grad():
        itm = torch.stack([model.itm_score(features, texts[j].expand(len(data), -1)) for j in range(len(texts))], 1)
    image_to_text, _ = b2.itm_rerank(model, features, texts, itc, k=3)
    expected = nb17.rerank_scores(itc, itm, 3)
    assert torch.equal(image_to_text.isneginf(), expected.isneginf())
    keep = ~expected.isneginf()
    torch.testing.assert_close(image_to_text[keep], expected[keep], atol=1e-5, rtol=1e-5)


def test_loss_without_picture_is_the_next_token_loss_on_the_caption_tokens_alone():
    data = ShapesWorld().generate(5, "test")
    tokenizer = build_tokenizer(data)
    tokens = tokenizer([c[0] for c in data.captions])
    torch.manual_seed(0)
    lm = b2.TinyLM(b2.LMConfig.for_tokenizer(tokenizer, width=16, layers=1, heads=2)).train()
    got = b2.loss_without_picture(lm, tokens)
    assert not lm.training  # read as the frozen LM is, in eval mode
    with torch.no_grad():
        logits = lm(tokens)
    pad = lm.cfg.pad_token_id
    losses = [F.cross_entropy(logits[row, t - 1], tokens[row, t]) for row in range(len(tokens))
              for t in range(1, tokens.shape[1]) if tokens[row, t] != pad]  # each token after <sot>, no padding
    assert (tokens == pad).any() and got.item() == pytest.approx(torch.stack(losses).mean().item(), rel=1e-5)


def test_itm_floor_is_the_minimum_over_p():
    ps = torch.linspace(0.001, 0.999, 9999, dtype=torch.float64)
    for pairs_, m in ((4, 1), (4, 2), (6, 3)):
        loss = (-torch.log(ps) - m * torch.log(1 - ps)) / pairs_
        assert b2.itm_floor(pairs_, m) == pytest.approx(loss.min().item(), abs=1e-6)
    assert b2.itm_floor(3, 0) == 0.0


def test_word_order_stage1_is_seeded_kept_and_loaded_whatever_ran_before(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPEDU_RUNS", str(tmp_path))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = ShapesWorld(num_objects=2).generate(40, "train")
        tokenizer = build_tokenizer(data)
        torch.manual_seed(0)
        tower = CLIP(runs.model_config(preset("tiny", **runs.PAIR_NARROW), tokenizer))  # notebook 07's pair sizes
        encoder = b2.FrozenImageEncoder.from_clip(tower)
        features = b2.encode_dataset(encoder, data)
        args = (encoder, tower.text, tokenizer, data, features)
        first = b2.word_order_stage1(*args, seed=3, steps=2, mode="fast", device="cpu")
        assert (first.out_dir / "checkpoint.pt").exists() and first.out_dir.parent == tmp_path
        assert re.fullmatch("shapes2-word-order-stage1-fast-[0-9a-f]{12}", first.out_dir.name)
        assert first.options == {"swapped_negatives": True, "itm_weight": 3.0}
        assert first.train_config.steps == 2 and first.train_config.seed == 3
        # where it started: a Q-Former drawn after manual_seed(3), then the text tower's weights
        torch.manual_seed(3)
        start = b2.Blip2Stage1(b2.Blip2Recipe.for_mode("fast").qformer_config(tokenizer, encoder.width), encoder)
        start.qformer.init_from_text_encoder(tower.text)
        for key, value in start.qformer.state_dict().items():
            torch.testing.assert_close(first.start_qformer.state_dict()[key], value, msg=key)
        trained = first.model.qformer.state_dict()
        assert any(not torch.equal(trained[k], v) for k, v in start.qformer.state_dict().items())  # stage 1 ran
        torch.manual_seed(123)  # whatever ran before, the same call finds the same run and loads it
        torch.rand(5)
        again = b2.word_order_stage1(*args, seed=3, steps=2, mode="fast", device="cpu")
        assert again.out_dir == first.out_dir
        for key, value in trained.items():
            assert torch.equal(again.model.qformer.state_dict()[key], value), key
        other = b2.word_order_stage1(*args, seed=4, steps=2, mode="fast", device="cpu")
        assert other.out_dir != first.out_dir  # another seed draws another start: another run
    finally:
        torch.set_num_threads(before)
