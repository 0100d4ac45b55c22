"""BLIP-2 training: frozen parts stay frozen, each stage runs, the evaluation helpers measure."""

import pytest
import torch

from clipedu import CLIP, preset
from clipedu import blip2 as b2
from clipedu.data import ShapesWorld, build_tokenizer, to_float


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    data = ShapesWorld().generate(48, "train")
    tokenizer = build_tokenizer(data)
    cfg = preset("tiny", vision_width=32, vision_layers=3, vision_heads=2, text_width=32, text_layers=1,
                 text_heads=2, embed_dim=16, vocab_size=tokenizer.vocab_size)
    encoder = b2.FrozenImageEncoder.from_clip(CLIP(cfg))
    qcfg = b2.QFormerConfig(vocab_size=tokenizer.vocab_size, image_width=32, num_queries=4, width=32, layers=2,
                            heads=2, context_length=tokenizer.context_length, embed_dim=16)
    lm_cfg = b2.LMConfig.for_tokenizer(tokenizer, width=32, layers=1, heads=2, max_positions=48)
    return data, tokenizer, encoder, qcfg, lm_cfg


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_stage1_frozen_encoder_gets_no_gradient_and_does_not_change(setup):
    data, tokenizer, encoder, qcfg, _ = setup
    model = b2.Blip2Stage1(qcfg, encoder)
    model.train()
    assert not model.image_encoder.training and not model.image_encoder.vision.training
    before_encoder, before_qformer = snapshot(encoder), snapshot(model.qformer)
    images = to_float(data.images[:8])
    tokens = tokenizer([c[0] for c in data.captions[:8]])
    out = model(model.encode_images(images), tokens)
    out.loss.backward()
    assert all(p.grad is None for p in encoder.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    assert model.ln_vision.weight.grad.abs().sum() > 0 and model.qformer.query_tokens.grad.abs().sum() > 0
    counts = b2.count_parameters(model)
    assert counts["frozen"] == sum(p.numel() for p in encoder.parameters())
    # A real optimiser step through the training loop.
    features = b2.encode_dataset(encoder, data)
    history = b2.train_stage1(model, features, data, tokenizer, b2.stage_config(steps=2, batch_size=8), progress=False)
    assert same(before_encoder, snapshot(encoder))
    assert not same(before_qformer, snapshot(model.qformer))
    assert {"loss", "itc", "itm", "itg", "lr"} <= set(history.series)
    assert model.logit_scale.item() <= qcfg.max_logit_scale


def test_stage2_frozen_lm_passes_gradients_through_but_keeps_its_weights(setup):
    data, tokenizer, encoder, qcfg, lm_cfg = setup
    lm = b2.TinyLM(lm_cfg)
    stage1 = b2.Blip2Stage1(qcfg, encoder)
    captioner = b2.Blip2Captioner.from_stage1(stage1, lm)
    assert captioner.qformer is not stage1.qformer  # stage 1 stays as it was
    captioner.train()
    assert not captioner.language_model.training
    before_lm = snapshot(lm)
    features = b2.encode_dataset(encoder, data)
    tokens = tokenizer([c[0] for c in data.captions[:8]])
    captioner(features[:8], tokens).backward()
    assert all(p.grad is None for p in lm.parameters())
    assert captioner.lm_proj.weight.grad.abs().sum() > 0
    assert captioner.qformer.query_tokens.grad.abs().sum() > 0  # through the frozen LM
    history = b2.train_stage2(captioner, features, data, tokenizer, b2.stage_config(steps=2, batch_size=8),
                              progress=False)
    assert same(before_lm, snapshot(lm))
    assert torch.isfinite(torch.tensor(history.loss)).all()
    counts = b2.count_parameters(captioner)
    lm_and_encoder = sum(p.numel() for p in lm.parameters()) + sum(p.numel() for p in encoder.parameters())
    assert counts["frozen"] == lm_and_encoder


def test_language_model_pretraining_learns_the_captions(setup):
    data, tokenizer, _, _, lm_cfg = setup
    lm = b2.TinyLM(lm_cfg)
    history = b2.pretrain_language_model(lm, tokenizer, data,
                                         b2.stage_config(steps=60, batch_size=32, lr=1e-2), progress=False)
    assert history.loss[-1] < history.loss[0] - 1.0
    samples = b2.sample_text(lm, 3, max_length=tokenizer.context_length)
    assert samples.shape[0] == 3 and (samples[:, 0] == tokenizer.sot_id).all()


def test_generation_and_evaluation_helpers(setup):
    data, tokenizer, encoder, qcfg, lm_cfg = setup
    features = b2.encode_dataset(encoder, data)
    captioner = b2.Blip2Captioner.from_stage1(b2.Blip2Stage1(qcfg, encoder), b2.TinyLM(lm_cfg))
    captions = b2.generate_captions(captioner, features[:5], tokenizer, max_length=8, batch_size=2)
    assert len(captions) == 5 and all(isinstance(c, str) for c in captions)
    truth = [c[0] for c in data.captions]
    perfect = b2.caption_attribute_accuracy(truth, data)
    assert perfect == {"shape": 1.0, "colour": 1.0, "size": 1.0, "position": 1.0, "shape+colour": 1.0, "all": 1.0}
    wrong = b2.caption_attribute_accuracy(["a shape"] * len(data), data)
    assert wrong["shape"] == 0.0 and wrong["all"] == 0.0
    with pytest.raises(ValueError, match="3 captions for 48 images"):
        b2.caption_attribute_accuracy(truth[:3], data)
    report = b2.retrieval_comparison(b2.Blip2Stage1(qcfg), features[:12], data.subset(torch.arange(12)), tokenizer,
                                     k=4)
    assert set(report) == {"ITC", "ITC+ITM"}
    assert all(0.0 <= v <= 1.0 for row in report.values() for v in row.values())


def test_itm_rerank_keeps_only_the_shortlist(setup):
    data, tokenizer, encoder, qcfg, _ = setup
    model = b2.Blip2Stage1(qcfg)
    features = b2.encode_dataset(encoder, data)[:6]
    tokens = tokenizer([c[0] for c in data.captions[:6]])
    itc = b2.itc_similarities(model, features, tokens)
    assert itc.shape == (6, 6)
    i2t, t2i = b2.itm_rerank(model, features, tokens, itc, k=2)
    assert (torch.isfinite(i2t).sum(1) == 2).all() and (torch.isfinite(t2i).sum(1) == 2).all()
    shortlisted = itc.topk(2, dim=1).indices
    assert torch.isfinite(i2t.gather(1, shortlisted)).all()
    expected = model.itm_score(features[:1], tokens[shortlisted[0, :1]]) + itc[0, shortlisted[0, 0]]
    torch.testing.assert_close(i2t[0, shortlisted[0, 0]], expected[0], atol=1e-5, rtol=1e-5)


def test_attribute_keys_and_padding_trim(setup):
    data = setup[0]
    keys = b2.attribute_keys(data)
    labels = torch.stack([data.labels[k] for k in ("shape", "colour", "size", "position")], dim=1)
    same_labels = (labels[:, None] == labels[None]).all(-1)
    assert torch.equal(keys[:, None] == keys[None], same_labels)
    tokens = torch.tensor([[1, 5, 2, 0, 0], [1, 2, 0, 0, 0]])
    assert b2.training.trim_padding(tokens, 0).shape == (2, 3)


def test_training_bad_inputs(setup):
    data, tokenizer, _, qcfg, _ = setup
    with pytest.raises(ValueError, match="tokens for all 48 images"):
        b2.train_stage1(b2.Blip2Stage1(qcfg), torch.randn(10, 5, 32), data, tokenizer, b2.stage_config(steps=1))
    with pytest.raises(ValueError, match="warmup_steps"):
        b2.stage_config(steps=5, warmup_steps=5)
    with pytest.raises(ValueError, match="no trainable parameters"):
        b2.train_stage2(b2.Blip2Captioner.from_stage1(b2.Blip2Stage1(qcfg).requires_grad_(False),
                                                      b2.TinyLM(setup[4])).requires_grad_(False),
                        b2.encode_dataset(setup[2], data), data, tokenizer, b2.stage_config(steps=1, batch_size=8))
    with pytest.raises(ValueError, match="image_width=32"):
        b2.Blip2Stage1(b2.QFormerConfig(vocab_size=qcfg.vocab_size, image_width=64), setup[2])


def test_paired_captions_put_the_second_right_after_the_first():
    first = torch.tensor([[1, 5, 2, 0], [1, 5, 6, 2]])
    second = torch.tensor([[1, 7, 2, 0], [1, 8, 2, 0]])
    out = b2.language_model.paired_captions(first, second, 0)
    assert out.tolist() == [[1, 5, 2, 1, 7, 2, 0, 0], [1, 5, 6, 2, 1, 8, 2, 0]]


class Interrupt(Exception):
    pass


def _interrupted_then_resumed(make_loop, out_dir, stop_at):
    """Run ``make_loop(out_dir)`` until ``stop_at`` (a checkpoint every 3 steps), then resume it in a
    fresh loop whose model starts from other weights; returns the resumed history."""

    def stop(loop):
        if loop.step == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        make_loop(out_dir).fit(progress=False, callback=stop)
    torch.manual_seed(123)  # another process: other weights, other global random state
    return make_loop(out_dir).fit(resume=True, progress=False)


def test_stages_resume_exactly_from_their_checkpoints(setup, tmp_path):
    """Each stage checkpoints like CLIP's loop: an interrupted run resumed equals the uninterrupted one
    bit for bit, with the data order and the random draws inside a step (LM offsets, ITM negatives)."""
    data, tokenizer, encoder, qcfg, lm_cfg = setup
    features = b2.encode_dataset(encoder, data)
    cfg = b2.stage_config(steps=8, batch_size=8, lr=3e-3, log_every=1, checkpoint_every=3)

    def lm_loop(out_dir=None):
        torch.manual_seed(0)
        return b2.LanguageModelPretraining(b2.TinyLM(lm_cfg), tokenizer, data, cfg, torch.device("cpu"), out_dir)

    def stage1_loop(out_dir=None):
        torch.manual_seed(0)
        model = b2.Blip2Stage1(qcfg, encoder)
        return b2.Stage1Training(model, features, data, tokenizer, cfg, torch.device("cpu"), out_dir)

    def stage2_loop(out_dir=None):
        torch.manual_seed(0)
        captioner = b2.Blip2Captioner.from_stage1(b2.Blip2Stage1(qcfg, encoder), b2.TinyLM(lm_cfg))
        return b2.Stage2Training(captioner, features, data, tokenizer, cfg, torch.device("cpu"), out_dir)

    for name, make_loop in (("lm", lm_loop), ("stage1", stage1_loop), ("stage2", stage2_loop)):
        full = make_loop().fit(progress=False)
        resumed = _interrupted_then_resumed(make_loop, tmp_path / name, stop_at=5)
        assert resumed.step == full.step == list(range(1, 9)), name
        for key in full.series:
            if key != "examples_per_s":
                assert resumed.series[key] == full.series[key], (name, key)
        state = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
        assert state["step"] == 8 and state["history"]["name"] in ("language model", "stage 1", "stage 2")


def test_stage1_trains_in_bfloat16_autocast(setup):
    data, tokenizer, encoder, qcfg, _ = setup
    features = b2.encode_dataset(encoder, data)
    model = b2.Blip2Stage1(qcfg, encoder)
    history = b2.train_stage1(model, features, data, tokenizer,
                              b2.stage_config(steps=3, batch_size=8, precision="bf16", log_every=1), progress=False)
    assert len(history.loss) == 3 and all(torch.isfinite(torch.tensor(history.itc)))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: the weights stay fp32



def test_stage1_with_swapped_captions_and_a_weighted_itm_loss(tmp_path):
    torch.manual_seed(0)
    data = ShapesWorld(num_objects=2).generate(24, "train")
    tokenizer = build_tokenizer(data)
    encoder = b2.FrozenImageEncoder.from_clip(CLIP(preset(
        "tiny", vision_width=32, vision_layers=2, vision_heads=2, text_width=32, text_layers=1, text_heads=2,
        embed_dim=16, vocab_size=tokenizer.vocab_size)))
    qcfg = b2.QFormerConfig(vocab_size=tokenizer.vocab_size, image_width=32, num_queries=2, width=32, layers=2,
                            heads=2, context_length=tokenizer.context_length, embed_dim=16)
    features = b2.encode_dataset(encoder, data)
    cfg = b2.stage_config(steps=1, batch_size=8)

    def loop(out_dir=None, cfg=cfg, **options):
        torch.manual_seed(0)
        return b2.Stage1Training(b2.Blip2Stage1(qcfg, encoder), features, data, tokenizer, cfg,
                                 torch.device("cpu"), out_dir, **options)

    plain, swapped = loop(), loop(swapped_negatives=True, itm_weight=2.5)
    batch = next(iter(plain.loader))
    seen, itm_logits = [], swapped.model.itm_logits

    def counting(images, texts):
        seen.append(len(texts))
        return itm_logits(images, texts)

    swapped.model.itm_logits = counting
    torch.manual_seed(1)
    out = swapped.losses(batch)
    assert seen == [4 * 8]  # BLIP-2's three pairs per image, and the image with its swapped caption
    torch.testing.assert_close(out["loss"], out["itc"] + 2.5 * out["itm"] + out["itg"])
    torch.manual_seed(1)
    base = plain.losses(batch)
    torch.testing.assert_close(base["loss"], base["itc"] + base["itm"] + base["itg"])
    torch.testing.assert_close(base["itc"], out["itc"])  # ITC and ITG do not see the swaps
    with pytest.raises(ValueError, match=r"itm_weight must be a finite number >= 0, got -1"):
        loop(itm_weight=-1)
    # A checkpoint remembers the options: resuming it with others would mix two objectives.
    two_steps = b2.stage_config(steps=2, batch_size=8)
    loop(tmp_path, two_steps, swapped_negatives=True, itm_weight=2.5).fit(progress=False)
    with pytest.raises(ValueError, match=r"trained with \{'swapped_negatives': True, 'itm_weight': 2.5\}, but this "
                                         r"run asks for \{'swapped_negatives': False, 'itm_weight': 1.0\}"):
        loop(tmp_path, two_steps).fit(resume=True, progress=False)
    resumed = loop(tmp_path, b2.stage_config(steps=3, batch_size=8), swapped_negatives=True, itm_weight=2.5)
    assert resumed.fit(resume=True, progress=False).step[-1] == 3
    one_object = ShapesWorld().generate(8, "train")
    with pytest.raises(ValueError, match=r"swapped_negatives=True needs data with swapped captions .* has none"):
        b2.Stage1Training(b2.Blip2Stage1(qcfg, encoder), b2.encode_dataset(encoder, one_object), one_object,
                          tokenizer, cfg, torch.device("cpu"), swapped_negatives=True)


def test_recipe_for_each_mode_keeps_the_gpu_recipe_for_full_mode_only():
    from clipedu.blip2.training import Blip2Recipe

    fast, cpu, full = (Blip2Recipe.for_mode(m) for m in ("fast", "cpu", "full"))
    assert cpu == fast  # a laptop gets the CPU recipe, not the GPU's 8,000 steps at width 128
    assert full.qformer_width == 128 and full.stage1.steps == 3000 and fast.stage1.steps < full.stage1.steps
    assert Blip2Recipe.for_mode(True) == fast and Blip2Recipe.for_mode(False) == full  # the older flag
    with pytest.raises(ValueError, match="mode must be 'fast', 'cpu' or 'full', got 'gpu'"):
        Blip2Recipe.for_mode("gpu")
