"""Data-parallel training on 2 CPU processes (gloo) follows a 1-process run with the whole batch.

Both runs see the same batches in the same order (every process draws the same global batch and
trains on its half), start from the same weights and take the same AdamW steps. They are not
bit-identical: the 2-process forward works on half-size matrices and DDP sums two half-batch
gradients, so floating-point sums are taken in another order. Measured on a CPU after 20 AdamW
steps: losses within about 1e-6 and weights within about 5e-7. The tolerances (1e-5 for both) leave
a 10x margin, while a real mistake (each process taking the loss of its own half, or a batch
drawn in another order) moves the weights by about 4e-3 and the losses by more than 0.5.

One spawn runs every 2-process scenario (starting processes is the slow part); the tests compare
its results with 1-process runs made here.
"""

import math
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipedu import CLIP, preset
from clipedu.checkpoint import load_checkpoint
from clipedu.data import ShapesWorld, build_tokenizer
from clipedu.loop import TrainConfig
from clipedu.train import Trainer

WORLD = 2
CFG = TrainConfig(steps=20, batch_size=16, warmup_steps=2, lr=3e-4, log_every=1, seed=3)
LOSS_ATOL, WEIGHT_ATOL = 1e-5, 1e-5


class Interrupt(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data():
    return ShapesWorld(seed=0).generate(96, "train")


def _two_object_data():
    return ShapesWorld(num_objects=2, seed=0).generate(48, "train")


def _model(tokenizer, seed=0):
    torch.manual_seed(seed)
    return CLIP(preset("tiny", vision_width=32, vision_layers=1, vision_heads=2, text_width=32, text_layers=1,
                       text_heads=2, embed_dim=16, vocab_size=tokenizer.vocab_size,
                       context_length=tokenizer.context_length))


def _stop_after(trainer, step):
    """Stop every process right after the checkpoint of ``step`` (a crash, as far as the run knows)."""
    real = trainer.train_step

    def train_step(batch):
        if trainer.step == step:
            raise Interrupt
        return real(batch)

    trainer.train_step = train_step


def _weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _worker(rank, port, tmp):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    tmp = Path(tmp)
    results = {}
    try:
        data = _data()
        tok = build_tokenizer(data)
        # 1. A whole run. Rank 1 starts from other weights: DDP copies rank 0's at the start.
        trainer = Trainer(_model(tok, seed=rank), tok, data, CFG, device="cpu")
        history = trainer.fit(progress=False)
        results["full"] = {"loss": history.loss, "weights": _weights(trainer), "logged": len(history.loss)}

        # 2. Interrupted after the checkpoint at step 10; the parent resumes it in one process.
        trainer = Trainer(_model(tok), tok, data, replace(CFG, checkpoint_every=10), device="cpu",
                          out_dir=tmp / "saved_by_2")
        _stop_after(trainer, 10)
        try:
            trainer.fit(progress=False)
        except Interrupt:
            pass

        # 3. Resume a checkpoint that one process wrote (the parent, before the spawn).
        trainer = Trainer(_model(tok, seed=5), tok, data, CFG, device="cpu", out_dir=tmp / "saved_by_1")
        history = trainer.fit(resume=True, progress=False)
        results["resumed"] = {"loss": history.loss, "weights": _weights(trainer)}

        # 4. Gradients of one step: plain, accumulated over 2 micro-batches per process, hard negatives.
        batch = next(iter(Trainer(_model(tok), tok, data, CFG, device="cpu").loader))
        for name, cfg in (("grad", CFG), ("grad_accum", replace(CFG, accum_steps=2))):
            trainer = Trainer(_model(tok), tok, data, cfg, device="cpu")
            out = trainer.compute_gradients(batch)
            results[name] = {"loss": out["loss"], **{n: p.grad.clone() for n, p in trainer.model.named_parameters()}}
        hard = _two_object_data()
        hard_tok = build_tokenizer(hard)
        cfg = replace(CFG, hard_negatives=True, accum_steps=2)
        trainer = Trainer(_model(hard_tok), hard_tok, hard, cfg, device="cpu")
        out = trainer.compute_gradients(next(iter(trainer.loader)))
        results["grad_hard"] = {"loss": out["loss"], **{n: p.grad.clone() for n, p in trainer.model.named_parameters()}}

        # 5. Bad set-ups, before anything collective happens.
        for name, cfg in (("odd_batch", replace(CFG, batch_size=15)), ("odd_micro", replace(CFG, accum_steps=16))):
            try:
                Trainer(_model(tok), tok, data, cfg, device="cpu")
            except ValueError as exc:
                results[name] = str(exc)
        torch.save(results, tmp / f"rank{rank}.pt")
        dist.barrier()  # no rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    data = _data()
    tok = build_tokenizer(data)
    # The 1-process run that scenario 3 resumes on 2 processes: interrupted after step 10.
    trainer = Trainer(_model(tok), tok, data, replace(CFG, checkpoint_every=10), device="cpu",
                      out_dir=tmp / "saved_by_1")
    _stop_after(trainer, 10)
    with pytest.raises(Interrupt):
        trainer.fit(progress=False)
    mp.spawn(_worker, args=(_free_port(), str(tmp)), nprocs=WORLD, join=True)
    return tmp, [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def reference():
    """The 1-process run with the whole batch of 16."""
    data = _data()
    tok = build_tokenizer(data)
    trainer = Trainer(_model(tok), tok, data, CFG, device="cpu")
    history = trainer.fit(progress=False)
    return {"loss": history.loss, "weights": _weights(trainer)}


def _close_weights(got, expected):
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=WEIGHT_ATOL, msg=lambda m, k=k: f"{k}: {m}")


def _close_gradients(got, model):
    """Each gradient within 1e-5 of its largest entry: sums over 8 rows twice vs 16 rows once."""
    for n, p in model.named_parameters():
        error = (got[n] - p.grad).abs().max().item()
        assert error <= 1e-5 * p.grad.abs().max().item() + 1e-9, f"{n}: off by {error:.2e}"


def test_two_processes_follow_one_process_with_the_whole_batch(spawned, reference):
    _, (rank0, rank1) = spawned
    assert len(rank0["full"]["loss"]) == 20
    assert rank1["full"]["logged"] == 0  # rank 0 alone keeps the history
    torch.testing.assert_close(torch.tensor(rank0["full"]["loss"]), torch.tensor(reference["loss"]),
                               rtol=0, atol=LOSS_ATOL)
    _close_weights(rank0["full"]["weights"], reference["weights"])
    for k, v in rank0["full"]["weights"].items():  # the processes never drift apart
        torch.testing.assert_close(rank1["full"]["weights"][k], v, rtol=0, atol=0)


def test_one_step_gradients_equal_the_whole_batch(spawned):
    _, (rank0, rank1) = spawned
    data = _data()
    tok = build_tokenizer(data)
    trainer = Trainer(_model(tok), tok, data, CFG, device="cpu")
    out = trainer.compute_gradients(next(iter(trainer.loader)))
    for name in ("grad", "grad_accum"):
        torch.testing.assert_close(rank0[name]["loss"], out["loss"].detach(), rtol=0, atol=1e-6)
        for r in (rank0, rank1):  # DDP leaves the averaged gradient on every process
            _close_gradients(r[name], trainer.model)


def test_hard_negatives_are_gathered_like_the_captions(spawned):
    _, (rank0, _) = spawned
    data = _two_object_data()
    tok = build_tokenizer(data)
    trainer = Trainer(_model(tok), tok, data, replace(CFG, hard_negatives=True), device="cpu")
    out = trainer.compute_gradients(next(iter(trainer.loader)))
    torch.testing.assert_close(rank0["grad_hard"]["loss"], out["loss"].detach(), rtol=0, atol=1e-6)
    _close_gradients(rank0["grad_hard"], trainer.model)


def test_checkpoint_of_two_processes_resumes_in_one(spawned, reference):
    tmp, _ = spawned
    assert load_checkpoint(tmp / "saved_by_2")["step"] == 10
    assert not any(k.startswith("module.") for k in load_checkpoint(tmp / "saved_by_2")["model"])
    data = _data()
    tok = build_tokenizer(data)
    trainer = Trainer(_model(tok, seed=9), tok, data, CFG, device="cpu", out_dir=tmp / "saved_by_2")
    history = trainer.fit(resume=True, progress=False)
    torch.testing.assert_close(torch.tensor(history.loss), torch.tensor(reference["loss"]), rtol=0, atol=LOSS_ATOL)
    _close_weights(_weights(trainer), reference["weights"])


def test_checkpoint_of_one_process_resumes_in_two(spawned, reference):
    _, (rank0, _) = spawned
    assert len(rank0["resumed"]["loss"]) == 20  # the 10 logged before the checkpoint and 10 after
    torch.testing.assert_close(torch.tensor(rank0["resumed"]["loss"]), torch.tensor(reference["loss"]),
                               rtol=0, atol=LOSS_ATOL)
    _close_weights(rank0["resumed"]["weights"], reference["weights"])


def test_bad_set_ups_are_clear_errors(spawned):
    _, ranks = spawned
    for r in ranks:
        assert "global batch_size 15 does not divide among world_size 2 processes" in r["odd_batch"]
        assert "holds 8 pairs of the batch of 16, which does not split into accum_steps=16" in r["odd_micro"]


def test_torchrun_runs_the_command_line(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLIPEDU_RUNS": str(tmp_path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "clipedu", "train", "--steps", "4", "--batch-size", "32", "--fast",
           "--quiet", "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("evaluation on the shapes test split") == 1  # rank 0 alone reports
    assert "2 processes" in done.stdout
    state = load_checkpoint(out)
    assert state["step"] == 4 and state["train_config"]["batch_size"] == 32
    assert (out / "metrics.json").exists() and (out / "training.png").exists()


def test_per_device_loss_is_the_global_loss_with_the_cross_device_cells_removed():
    from clipedu.distributed import per_device_clip_loss
    from clipedu.losses import clip_loss

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(img + torch.randn(12, 8, generator=g), dim=-1)
    torch.testing.assert_close(per_device_clip_loss(img, txt, 10.0, chunks=1), clip_loss(img, txt, 10.0))
    blocks = torch.stack([clip_loss(img[i:i + 4], txt[i:i + 4], 10.0) for i in (0, 4, 8)]).mean()
    torch.testing.assert_close(per_device_clip_loss(img, txt, 10.0, chunks=3), blocks)
    same = torch.ones(12, 8) / 8**0.5  # a model that cannot tell pairs apart: ln(block size)
    assert abs(per_device_clip_loss(same, same, 10.0, chunks=3).item() - math.log(4)) < 1e-5
    with pytest.raises(ValueError, match="chunks must be a positive int that divides the batch"):
        per_device_clip_loss(img, txt, 10.0, chunks=5)
