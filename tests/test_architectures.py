"""Encoder-only, decoder-only, prefix-LM and encoder-decoder models (notebook 16)."""

import pytest
import torch

from clipedu import architectures as A
from clipedu.attention import CrossAttention, causal_mask, prefix_mask
from clipedu.runs import run_names
from clipedu.transformer import DecoderBlock
from clipedu.viz.architecture import encoder_decoder_mask

influence_matrix = A.influence_matrix


@pytest.fixture(scope="module")
def tasks():
    return A.make_tasks(6, "train", seed=3)


def small_cfg(tasks, **kw):
    return A.ArchitectureConfig(vocab_size=tasks.tokenizer.vocab_size, width=32, layers=2, heads=2, **kw)


# --- masks and blocks -------------------------------------------------------------------------------
def test_prefix_mask_between_causal_and_full():
    assert torch.equal(prefix_mask(0, 5), causal_mask(5))
    assert prefix_mask(5, 5).all()
    m = prefix_mask(2, 5)
    assert m[0, 1] and m[1, 0]  # the prefix sees itself both ways
    assert m[4, :5].all() and not m[2, 3] and not m[0, 2]  # targets are causal; the prefix never sees them
    assert torch.equal(m, encoder_decoder_mask(2, 3) | torch.zeros(5, 5, dtype=torch.bool))


@pytest.mark.parametrize("n_prefix", [-1, 6])
def test_prefix_mask_rejects_bad_prefix(n_prefix):
    with pytest.raises(ValueError, match="prefix must hold between 0 and n=5"):
        prefix_mask(n_prefix, 5)


def test_cross_attention_lives_in_attention_and_the_qformer_uses_it():
    from clipedu.blip2 import qformer

    assert qformer.CrossAttention is CrossAttention


def test_decoder_block_is_causal_and_reads_all_of_memory():
    torch.manual_seed(0)
    block = DecoderBlock(16, 2, memory_width=12).eval()
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 12)
    out, self_w, cross_w = block(x, memory, need_weights=True)
    assert out.shape == (2, 5, 16) and self_w.shape == (2, 2, 5, 5) and cross_w.shape == (2, 2, 5, 7)
    torch.testing.assert_close(cross_w.sum(-1), torch.ones(2, 2, 5))
    later = x.clone()
    later[:, 3] += 1.0
    moved = block(later, memory)[0]
    torch.testing.assert_close(moved[:, :3], out[:, :3])  # the future never reaches the past
    assert not torch.allclose(moved[:, 3:], out[:, 3:])
    memory2 = memory.clone()
    memory2[:, 6] += 1.0
    assert (block(x, memory2)[0] - out).abs().amax(-1).min() > 0  # every target token reads the last source token
    fused = block(x, memory)[0]
    torch.testing.assert_close(fused, out, atol=1e-5, rtol=1e-5)  # fused kernels = the explicit path


# --- the tasks -------------------------------------------------------------------------------------
def test_make_tasks_layout(tasks):
    assert len(tasks) == 18
    assert tasks.task.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert tasks.prompts.shape == (18, A.PROMPT_LENGTH) and tasks.targets.shape == (18, A.ANSWER_LENGTH + 2)
    tok = tasks.tokenizer
    for i in range(18):
        assert tok.decode(tasks.targets[i]) == tasks.answers[i]
        assert (tasks.targets[i] == tok.eot_id).sum() == 1 and tasks.targets[i, 0] == tok.sot_id
    assert all(len(a.split()) == 1 for a in tasks.answers[:6])  # a shape name
    assert all(3 <= len(a.split()) <= 5 for a in tasks.answers[6:12])  # size colour shape place
    for i in range(12, 18):  # a colour, and it is not the other object's
        assert tasks.answers[i] in A.ShapesWorld.COLOURS and tasks.distractors[i] in A.ShapesWorld.COLOURS
        assert tasks.answers[i] != tasks.distractors[i]
    again = A.make_tasks(6, "train", seed=3)
    assert torch.equal(again.images, tasks.images) and again.answers == tasks.answers


def test_vqa_answer_is_the_asked_shape_colour():
    data = A.make_tasks(40, "test", seed=1).only("vqa")
    world = A.ShapesWorld(num_objects=2, seed=1).generate(40, "test")
    names = world.class_names
    for i in range(40):
        asked = data.tokenizer.vocab[data.prompts[i, 4].item()]  # "what colour is the {shape} ?"
        first = (names["shape"][world.labels["shape"][i]], names["colour"][world.labels["colour"][i]])
        second = (names["shape"][world.labels["shape2"][i]], names["colour"][world.labels["colour2"][i]])
        expected = first[1] if asked == first[0] else second[1]
        assert asked in (first[0], second[0]) and data.answers[i] == expected
        for region, colour in ((data.regions[i, 0], data.answers[i]), (data.regions[i, 1], data.distractors[i])):
            inside = data.images[i][:, region > 0.95].float().mean(1)  # (3,) mean colour of the object
            nearest = min(A.ShapesWorld.RGB, key=lambda c: (torch.tensor(A.ShapesWorld.RGB[c]) - inside).norm())
            assert nearest == colour  # regions[:, 0] is the object asked about, regions[:, 1] the other


def test_task_errors(tasks):
    with pytest.raises(ValueError, match="n must be a positive int"):
        A.make_tasks(0)
    with pytest.raises(ValueError, match="unknown task 'story'"):
        tasks.only("story")
    with pytest.raises(ValueError, match="unknown architecture 'rnn'"):
        A.build("rnn", small_cfg(tasks))
    with pytest.raises(ValueError, match="unknown architecture"):
        A.suits("rnn")
    with pytest.raises(ValueError, match="layers must be an even number"):
        A.ArchitectureConfig(vocab_size=10, layers=3)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        A.ArchitectureConfig(vocab_size=10, image_size=30)
    assert A.chance("caption") == 1 / (8 * 8 * 2 * 9)
    with pytest.raises(ValueError, match="unknown task"):
        A.chance("story")


# --- the models --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", A.ARCHITECTURES)
@pytest.mark.parametrize("features", [False, True])
def test_measured_influence_is_the_designed_mask(tasks, kind, features):
    torch.manual_seed(0)
    cfg = small_cfg(tasks, feature_width=12 if features else None)
    model = A.build(kind, cfg).eval()
    pictures = torch.randn(2, cfg.patches, 12) if features else tasks.images[:2]
    x = model.embed(pictures, tasks.prompts[:2], tasks.targets[:2, :-1])
    measured = influence_matrix(model.run, x) > 0
    assert torch.equal(measured, model.mask())


@pytest.mark.parametrize("kind", A.ARCHITECTURES)
def test_forward_shapes_and_loss(tasks, kind):
    torch.manual_seed(0)
    model = A.build(kind, small_cfg(tasks))
    logits = model(tasks.images[:3], tasks.prompts[:3], tasks.targets[:3, :-1])
    width = 1 if kind == "encoder-only" else A.ANSWER_LENGTH + 1
    assert logits.shape == (3, width, tasks.tokenizer.vocab_size)
    loss = A.task_loss(model, tasks.images[:3], tasks.prompts[:3], tasks.targets[:3])
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_loss_ignores_padding(tasks):
    torch.manual_seed(0)
    model = A.build("decoder-only", small_cfg(tasks))
    one = tasks.only("classify").select(torch.tensor([0]))  # "<sot> shape <eot> <pad>..."
    logits = model(one.images, one.prompts, one.targets[:, :-1])[0]
    wanted = one.targets[0, 1:3]
    expected = torch.nn.functional.cross_entropy(logits[:2], wanted)
    torch.testing.assert_close(A.task_loss(model, one.images, one.prompts, one.targets), expected)


def test_wrong_picture_input_is_named(tasks):
    model = A.build("encoder-only", small_cfg(tasks, feature_width=12))
    with pytest.raises(ValueError, match=r"expected patch tokens \(B, 16, 12\)"):
        model(torch.randn(2, 16, 8), tasks.prompts[:2])
    pixel_model = A.build("encoder-only", small_cfg(tasks))
    with pytest.raises(ValueError, match="expected uint8 images"):
        pixel_model(tasks.images[:2].float(), tasks.prompts[:2])


def test_greedy_answer_matches_a_written_out_loop(tasks):
    torch.manual_seed(1)
    model = A.build("encoder-decoder", small_cfg(tasks)).eval()
    said = A.answer(model, tasks.images[:4], tasks.prompts[:4], tasks.tokenizer)
    tok = tasks.tokenizer
    for i in range(4):
        words = [tok.sot_id]
        for _ in range(A.ANSWER_LENGTH + 1):
            logits = model(tasks.images[i:i + 1], tasks.prompts[i:i + 1], torch.tensor([words]))
            words.append(int(logits[0, -1].argmax()))
            if words[-1] == tok.eot_id:
                break
        assert said[i] == tok.decode(words)
    one_word = A.answer(A.build("encoder-only", small_cfg(tasks)), tasks.images[:4], tasks.prompts[:4], tok)
    assert all(w in tok.vocab for w in one_word)


def test_training_learns_and_scores(tasks):
    data = A.make_tasks(40, "train", seed=0)
    run = A.train_architecture("prefix-LM", data, steps=40, batch_size=32, lr=3e-3, cfg=small_cfg(data))
    assert len(run.losses) == 40 and sum(run.losses[-5:]) / 5 < sum(run.losses[:5]) / 5
    scores = A.evaluate_tasks(run.model, data)
    assert set(scores.accuracy) == set(A.TASKS) and 0 <= scores.distracted <= 1
    enc = A.train_architecture("encoder-only", data, steps=2, batch_size=8, cfg=small_cfg(data))
    assert set(A.evaluate_tasks(enc.model, data).accuracy) == {"classify", "vqa"}  # it cannot caption


def test_training_errors(tasks):
    with pytest.raises(ValueError, match="steps must be a positive int"):
        A.train_architecture("prefix-LM", tasks, steps=0)
    with pytest.raises(ValueError, match="mix must give the tasks"):
        A.train_architecture("prefix-LM", tasks, steps=1, mix={"vqa": -1.0})
    with pytest.raises(ValueError, match="mix must give the tasks"):
        A.train_architecture("encoder-only", tasks, steps=1, mix={"caption": 1.0})  # nothing it suits


def _kept(folder):
    """The run folders in ``folder`` (each has its lock file, ``.<name>.lock``, beside it)."""
    return [folder / name for name in run_names(folder)]


def test_a_kept_run_trains_once_then_loads(tasks, tmp_path, monkeypatch):
    kw = dict(steps=3, batch_size=8, cfg=small_cfg(tasks), keep_in=tmp_path)
    first = A.train_architecture("prefix-LM", tasks, **kw)
    (folder,) = _kept(tmp_path)
    assert folder.name.startswith("prefix-LM-") and (folder / "checkpoint.pt").exists()
    assert (tmp_path / f".{folder.name}.lock").exists()  # held while it trained: a second process waits

    def no_training(*args):
        raise AssertionError("a kept run was trained again")

    monkeypatch.setattr(A, "task_loss", no_training)
    again = A.train_architecture("prefix-LM", tasks, **kw)
    assert again.losses == first.losses and again.seconds == first.seconds and again.steps == 3
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    assert not again.model.training
    monkeypatch.undo()
    A.train_architecture("prefix-LM", tasks, **{**kw, "steps": 4})  # another setting: another folder
    A.train_architecture("prefix-LM", tasks, **kw, seed=1)  # other starting weights: another folder
    assert len(_kept(tmp_path)) == 3


def test_a_kept_run_of_another_architecture_is_a_clear_error(tasks, tmp_path):
    kw = dict(steps=2, batch_size=8, cfg=small_cfg(tasks), keep_in=tmp_path)
    A.train_architecture("prefix-LM", tasks, **kw)
    (folder,) = _kept(tmp_path)
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    torch.save({**state, "kind": "decoder-only"}, folder / "checkpoint.pt")  # a folder renamed by hand
    with pytest.raises(ValueError, match="holds a run of 'decoder-only' for 2 steps, not 'prefix-LM' for 2"):
        A.train_architecture("prefix-LM", tasks, **kw)


def test_mix_sets_the_share_of_each_task(tasks, monkeypatch):
    seen = []
    original = A.task_loss

    def spy(model, images, prompts, targets):
        seen.append(targets[:, 1].clone())
        return original(model, images, prompts, targets)

    monkeypatch.setattr(A, "task_loss", spy)
    A.train_architecture("decoder-only", tasks, steps=3, batch_size=64, cfg=small_cfg(tasks),
                         mix={"classify": 0.0, "caption": 0.0, "vqa": 1.0})
    colours = {tasks.tokenizer.index[c] for c in A.ShapesWorld.COLOURS}
    assert all(int(w) in colours for batch in seen for w in batch)  # only vqa answers (a colour) were drawn


def test_tower_tokens(tasks):
    from clipedu.clip import CLIP
    from clipedu.config import preset

    torch.manual_seed(0)
    clip = CLIP(preset("tiny"))
    with_features = A.tower_tokens(clip.vision, tasks.select(torch.arange(4)))
    assert with_features.features.shape == (4, 16, clip.vision.cfg.width)
    assert with_features.pictures is with_features.features and tasks.pictures is tasks.images
