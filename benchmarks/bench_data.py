"""How fast the data side is: making ShapesWorld, and feeding batches to a model.

    python benchmarks/bench_data.py [--device cpu|cuda] [--n 50000] [--loader-images 20000]

1. ShapesWorld generation: 50,000 captioned images (target: at most 10 s on a 2-core CPU).
2. Batches per second of clipedu's DeviceLoader against a torch DataLoader with 2 workers over
   the same images and the same pre-tokenised captions, batch 128, with the same augmentation
   (random crop after padding, flip with the mirrored caption, normalisation), done per sample
   in the Dataset's __getitem__ as a usual pipeline does (target: at least 10x).

Timings are the best of ``--repeats`` runs (the two loaders take turns), so a moment of noise
from other programs does not count against either side. Runs in under a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

from clipedu.data import DeviceLoader, ShapesWorld, build_tokenizer, to_float  # noqa: E402


class PerSampleDataset(torch.utils.data.Dataset):
    """The usual pipeline: one picture at a time, augmented in __getitem__, batched by collate."""

    def __init__(self, images: torch.Tensor, loader: DeviceLoader):
        # The same uint8 images and the same token table the DeviceLoader uses, on the CPU.
        self.images = images
        self.tokens, self.mirror_ids = loader.tokens.cpu(), loader.mirror_ids.cpu()
        self.caption_ids, self.counts = loader.caption_ids.cpu(), loader.counts.cpu()
        self.padding, self.flip = loader.crop_padding, loader.flip

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image = F.pad(self.images[i], (self.padding,) * 4)  # (C, H+2p, W+2p)
        y, x = torch.randint(0, 2 * self.padding + 1, (2,)).tolist()
        size = self.images.shape[-1]
        image = image[:, y : y + size, x : x + size]
        caption = int(self.caption_ids[i, torch.randint(int(self.counts[i]), ()).item()])
        if self.flip and torch.rand(()) < 0.5:
            image, caption = image.flip(-1), int(self.mirror_ids[caption])
        return to_float(image), self.tokens[caption], i


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=50_000, help="images to generate")
    parser.add_argument("--loader-images", type=int, default=20_000, help="images the loaders go over")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=150, help="batches timed per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the main process")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()[0]
    rows = []

    # 1. Generation.
    world = ShapesWorld(image_size=32, captions_per_image=5, seed=0)
    world.generate(1000)  # warm-up: first calls pay for allocations and thread start-up
    data = None

    def generate():
        nonlocal data
        data = world.generate(args.n)

    seconds = best_of(min(args.repeats, 2), generate)
    rows.append((f"ShapesWorld: {args.n:,} images 32x32 + 5 captions each", f"{seconds:.2f} s",
                 "<= 10 s", "yes" if seconds <= 10 * args.n / 50_000 else "NO"))
    rows.append(("  images per second", f"{args.n / seconds:,.0f}", "", ""))

    # 2. Loaders over the same images.
    data = data.subset(torch.arange(min(args.loader_images, len(data))))
    start = time.perf_counter()
    tokenizer = build_tokenizer(data)
    loader = DeviceLoader(data, tokenizer, args.batch_size, device=device, augment=True, seed=0)
    sync(device)
    setup = time.perf_counter() - start
    rows.append((f"DeviceLoader set-up: vocabulary + {loader.num_texts:,} distinct captions tokenised, "
                 f"{len(data):,} images to {device}", f"{setup:.2f} s", "", ""))

    stream = loader.forever()
    for _ in range(10):
        next(stream)  # warm-up

    def run_device_loader():
        for _ in range(args.batches):
            batch = next(stream)
        sync(device)
        return batch

    dataset = PerSampleDataset(data.images, loader)
    workers = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=2,
        persistent_workers=True, pin_memory=device.type == "cuda", prefetch_factor=4,
    )

    def worker_batches():
        while True:
            yield from workers

    worker_stream = worker_batches()
    for _ in range(10):
        next(worker_stream)  # warm-up: starts the two worker processes

    def run_dataloader():
        for _ in range(args.batches):
            images, tokens, index = next(worker_stream)
            images = images.to(device, non_blocking=True)  # a training loop would move them too
            tokens = tokens.to(device, non_blocking=True)
        sync(device)

    # Alternate the two, so a burst of work from another program slows both alike.
    device_times, worker_times = [], []
    for _ in range(args.repeats):
        device_times.append(best_of(1, run_device_loader))
        worker_times.append(best_of(1, run_dataloader))
    device_rate, worker_rate = args.batches / min(device_times), args.batches / min(worker_times)
    ratio = device_rate / worker_rate
    rows.append((f"DeviceLoader, batch {args.batch_size}, crop + flip, on {device}",
                 f"{device_rate:,.0f} batches/s", "", ""))
    rows.append((f"DataLoader, 2 workers, same work per sample, to {device}",
                 f"{worker_rate:,.0f} batches/s", "", ""))
    rows.append(("DeviceLoader / DataLoader", f"{ratio:.1f}x", ">= 10x", "yes" if ratio >= 10 else "NO"))

    print(describe_machine(device))
    # Other programs on a 2-core machine can slow multi-threaded torch ops a hundredfold: show the load.
    print(f"load average (1 min) before: {load_before:.2f}, after: {os.getloadavg()[0]:.2f}")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}} | {'result':>18} | {'target':>7} | met")
    print("-" * (width + 38))
    for name, value, target, met in rows:
        print(f"{name:<{width}} | {value:>18} | {target:>7} | {met}")


if __name__ == "__main__":
    main()
