"""Time one full training step (forward, backward, AdamW) of clipedu and open_clip, same config.

    python benchmarks/bench_model.py [--preset tiny] [--batch 128] [--repeats 15] [--device cpu]

Both models get the same config, batch, thread count and optimizer; runs alternate (clipedu,
open_clip, clipedu, ...) so drift in the machine's speed hits both alike. Prints the median step
time of each, the median of the per-pair ratios (clipedu / open_clip; <= 1.00 means clipedu is no
slower), parameter counts and FLOPs per step from torch.utils.flop_counter.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

from clipedu import CLIP, preset  # noqa: E402
from clipedu.losses import clip_loss  # noqa: E402


def open_clip_twin(cfg):
    """The open_clip model with clipedu's config (or None when open_clip is not installed)."""
    try:
        import open_clip
    except ImportError:
        return None
    v, t = cfg.vision, cfg.text
    oc = {
        "embed_dim": cfg.embed_dim,
        "quick_gelu": cfg.quick_gelu,
        "vision_cfg": {"image_size": v.image_size, "layers": v.layers, "width": v.width,
                       "patch_size": v.patch_size, "head_width": v.width // v.heads, "mlp_ratio": v.mlp_ratio},
        "text_cfg": {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                     "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_ratio},
    }
    path = Path(tempfile.mkdtemp()) / "clipedu-bench.json"
    path.write_text(json.dumps(oc))
    open_clip.add_model_config(path)
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # "no pretrained weights" is expected
    return open_clip.create_model("clipedu-bench", pretrained=None)


def make_batch(cfg, batch, device):
    images = torch.randn(batch, 3, cfg.vision.image_size, cfg.vision.image_size, device=device)
    tokens = torch.randint(4, cfg.text.vocab_size - 1, (batch, cfg.text.context_length), device=device)
    lengths = torch.randint(4, cfg.text.context_length, (batch,), device=device)
    positions = torch.arange(cfg.text.context_length, device=device)
    tokens[:, 0] = 1
    tokens[positions[None] == lengths[:, None]] = cfg.text.vocab_size - 1  # <eot>: also the largest id
    tokens[positions[None] > lengths[:, None]] = 0
    return images, tokens


def step_fn(model, is_open_clip, images, tokens, optimizer, amp_dtype):
    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if is_open_clip:
                img, txt, scale = model(images, tokens)[:3]
            else:
                out = model(images, tokens)
                img, txt, scale = out.image_embeds, out.text_embeds, out.scale
            loss = clip_loss(img, txt, scale)
        loss.backward()
        optimizer.step()

    return step


def timed(step, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def flops_per_step(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    cfg = preset(args.preset)
    # open_clip pools text at argmax(token id), so the end-of-text token must be the largest id.
    cfg = cfg.with_overrides(eot_token_id=cfg.text.vocab_size - 1)
    torch.manual_seed(0)
    images, tokens = make_batch(cfg, args.batch, device)

    contenders = {"clipedu": (CLIP(cfg).to(device), False)}
    twin = open_clip_twin(cfg)
    if twin is not None:
        contenders["open_clip"] = (twin.to(device), True)
    steps = {}
    for name, (model, is_oc) in contenders.items():
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        steps[name] = step_fn(model, is_oc, images, tokens, opt, amp_dtype)
        for _ in range(args.warmup):
            steps[name]()

    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():  # alternate, so machine drift hits both
            times[name].append(timed(step, device))

    print(describe_machine(device))
    print(f"preset {args.preset} | batch {args.batch} | threads {args.threads} | amp {args.amp} | "
          f"{args.repeats} timed steps each, alternating\n")
    print("| model | params | GFLOPs/step | median step (ms) | images/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, (model, _) in contenders.items():
        med = statistics.median(times[name])
        params = sum(p.numel() for p in model.parameters())
        gflops = flops_per_step(steps[name]) / 1e9
        print(f"| {name} | {params / 1e6:.2f} M | {gflops:.1f} | {med * 1e3:.1f} | {args.batch / med:.0f} |")
    if "open_clip" in times:
        ratios = [a / b for a, b in zip(times["clipedu"], times["open_clip"])]
        print(f"\nmedian ratio clipedu / open_clip: {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f}); <= 1.00 means clipedu is no slower")
    else:
        print("\nopen_clip is not installed: no comparison (pip install open_clip_torch)")


if __name__ == "__main__":
    main()
