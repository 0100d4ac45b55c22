"""The distributed contrastive losses on 2 CPU processes (gloo) equal one process on the whole batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from clipedu.losses import clip_loss, siglip_loss

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batch(b_global=8, e=16):
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(b_global, e, generator=g), dim=-1)
    txt = F.normalize(img + torch.randn(b_global, e, generator=g), dim=-1)
    return img, txt


def _worker(rank, port, out_dir, mode):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    from clipedu.distributed import distributed_clip_loss, distributed_siglip_loss, leave_group

    try:
        img, txt = _global_batch()
        b = img.shape[0] // WORLD
        start = rank * b - (rank if mode == "mismatch" else 0)  # mismatch: rank 1 holds 5 pairs
        img = img[start : (rank + 1) * b].clone().requires_grad_()
        txt = txt[start : (rank + 1) * b].clone().requires_grad_()
        scale = torch.tensor(10.0, requires_grad=True)
        try:
            if mode == "siglip":
                loss = distributed_siglip_loss(img, txt, scale, -5.0)
            else:
                loss = distributed_clip_loss(img, txt, scale)
        except ValueError as exc:
            torch.save({"error": str(exc)}, f"{out_dir}/rank{rank}.pt")
            return
        loss.backward()
        torch.save({"loss": loss.detach(), "img": img.grad, "txt": txt.grad, "scale": scale.grad},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        leave_group()  # a barrier first, then gloo torn down (torch 2.3 could hang otherwise)


def _run(tmp_path, mode):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), mode), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("mode", ["clip", "siglip"])
def test_distributed_loss_and_gradients_equal_one_process(tmp_path, mode):
    results = _run(tmp_path, mode)
    img, txt = _global_batch()
    img, txt = img.clone().requires_grad_(), txt.clone().requires_grad_()
    scale = torch.tensor(10.0, requires_grad=True)
    loss = siglip_loss(img, txt, scale, -5.0) if mode == "siglip" else clip_loss(img, txt, scale)
    loss.backward()
    # The mean over processes of the local losses is the global loss ...
    mean_loss = sum(r["loss"] for r in results) / WORLD
    torch.testing.assert_close(mean_loss, loss.detach(), rtol=0, atol=1e-6)
    # ... and the mean of the gradients (what DDP computes) is the global gradient.
    torch.testing.assert_close(torch.cat([r["img"] for r in results]) / WORLD, img.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat([r["txt"] for r in results]) / WORLD, txt.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(sum(r["scale"] for r in results) / WORLD, scale.grad, rtol=0, atol=1e-6)


def test_mismatched_batch_sizes_across_processes_are_a_clear_error(tmp_path):
    results = _run(tmp_path, "mismatch")
    for r in results:
        assert "differ in shape across processes: [(4, 16), (5, 16)]" in r["error"]


def test_leave_group_without_a_group_does_nothing():
    from clipedu.distributed import leave_group

    leave_group()
    leave_group(together=False)
    assert not dist.is_initialized()


def test_not_distributed_falls_back_to_the_plain_loss():
    from clipedu.distributed import current, distributed_clip_loss, distributed_siglip_loss

    assert not current().enabled
    img, txt = _global_batch()
    torch.testing.assert_close(distributed_clip_loss(img, txt, 10.0), clip_loss(img, txt, 10.0))
    torch.testing.assert_close(distributed_siglip_loss(img, txt, 10.0, -5.0), siglip_loss(img, txt, 10.0, -5.0))
