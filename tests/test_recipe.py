"""The recipe: which parameters decay, the schedule, the precision, and one optimiser step."""

import warnings

import pytest
import torch
from torch import nn

from clipedu import CLIP
from clipedu.recipe import (
    Precision,
    fused_adamw_on,
    make_optimizer,
    make_scheduler,
    optimizer_step,
    parameter_groups,
    resolve_precision,
)


def test_no_weight_decay_on_gains_biases_embeddings_and_scale(tiny_config):
    model = CLIP(tiny_config)
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "logit_scale" not in decayed and "text.token_embed.weight" not in decayed
    assert "vision.pos_embed" not in decayed and "vision.cls_token" not in decayed
    assert not any(n.endswith(".bias") or ".ln_" in n for n in decayed)
    assert "vision.transformer.blocks.0.attn.qkv.weight" in decayed and "text.proj" in decayed
    assert no_decay["weight_decay"] == 0.0


def test_warmup_then_cosine_schedule():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, warmup_steps=10, total_steps=110)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch 2.3 warned at the milestone on every run
        for _ in range(110):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[10] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # rising during warm-up
    assert lrs[60] == pytest.approx(0.5, abs=0.02) and lrs[-1] < 0.001  # cosine to zero


def test_precision_choice():
    assert resolve_precision("auto", torch.device("cpu")) == (None, False)
    assert resolve_precision("bf16", torch.device("cpu")) == (torch.bfloat16, False)
    with pytest.raises(ValueError, match="fp16 training needs a CUDA GPU"):
        resolve_precision("fp16", torch.device("cpu"))


def test_frozen_parameters_are_in_no_group_and_a_frozen_model_is_refused(tiny_config):
    model = CLIP(tiny_config)
    model.vision.requires_grad_(False)
    groups = parameter_groups(model, 0.1)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert not any(id(p) in grouped for p in model.vision.parameters())
    assert all(id(p) in grouped for p in model.text.parameters())
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        make_optimizer(parameter_groups(model, 0.1), 1e-3, (0.9, 0.98), 1e-6, torch.device("cpu"))


def test_optimizer_step_clips_the_norm_of_all_gradients_together_then_steps_and_schedules():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([a, b], lr=1.0)
    sched = make_scheduler(opt, warmup_steps=0, total_steps=10)
    a.grad, b.grad = torch.full((3,), 3.0), torch.full((4,), 4.0)  # total norm sqrt(27 + 64) = sqrt(91)
    optimizer_step(opt, sched, [a, b], grad_clip=1.0)
    factor = 1.0 / 91**0.5
    torch.testing.assert_close(a.detach(), torch.full((3,), -3.0 * factor), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.detach(), torch.full((4,), -4.0 * factor), rtol=1e-5, atol=1e-6)
    assert opt.param_groups[0]["lr"] < 1.0  # the schedule moved on
    a.grad, b.grad = torch.full((3,), 3.0), torch.full((4,), 4.0)
    before = a.detach().clone()
    lr = opt.param_groups[0]["lr"]
    optimizer_step(opt, sched, [a, b], grad_clip=0)  # 0: no clipping
    torch.testing.assert_close(a.detach(), before - lr * 3.0)


def test_precision_on_the_cpu_autocasts_only_when_asked():
    cpu = torch.device("cpu")
    plain, bf16 = Precision("auto", cpu), Precision("bf16", cpu)
    assert plain.scaler is None and bf16.scaler is None
    x = torch.randn(4, 4)
    with plain.autocast():
        assert (x @ x).dtype == torch.float32
    with bf16.autocast():
        assert (x @ x).dtype == torch.bfloat16
    w = nn.Parameter(torch.ones(2))
    plain.backward((w * 3).sum())
    assert w.grad.tolist() == [3.0, 3.0]


def test_the_cpu_uses_adamws_fused_kernel_where_torch_has_one_and_it_steps_as_the_plain_one(tiny_config):
    version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    assert fused_adamw_on(torch.device("cpu")) == (version >= (2, 4))
    assert not fused_adamw_on(torch.device("meta"))
    models = [CLIP(tiny_config) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fused = make_optimizer(parameter_groups(models[0], 0.1), 1e-2, (0.9, 0.98), 1e-6, torch.device("cpu"))
    plain = torch.optim.AdamW(parameter_groups(models[1], 0.1), lr=1e-2, betas=(0.9, 0.98), eps=1e-6)
    assert bool(fused.defaults["fused"]) == fused_adamw_on(torch.device("cpu"))
    for step in range(3):
        for model, optimizer in zip(models, (fused, plain)):
            torch.manual_seed(step)
            for p in model.parameters():
                p.grad = torch.randn_like(p)
            optimizer.step()
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(models[0].logit_scale, CLIP(tiny_config).logit_scale)  # they did move
