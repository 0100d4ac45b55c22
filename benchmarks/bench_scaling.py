"""Data-parallel scaling: images/s of clipedu's Trainer on 1 and 2 processes (and accumulation).

    python benchmarks/bench_scaling.py                       # CPU: 1 process x 2 threads vs 2 x 1
    python benchmarks/bench_scaling.py --device cuda         # GPUs: 1 GPU vs 2 GPUs (NCCL)
    python benchmarks/bench_scaling.py --weak                # keep the per-process batch instead
    python benchmarks/bench_scaling.py --threads-per-process 1   # CPU: 1 thread per process, cores used = N

Each configuration runs the real training step (DistributedDataParallel, the gathered local-loss
form, AdamW) for ``--steps`` timed steps after ``--warmup`` untimed ones, with processes started
by torch.multiprocessing the way torchrun would (gloo on CPUs, NCCL on GPUs). By default the
global batch is the same for every process count (the same training run, spread out); ``--weak``
keeps the per-process batch and grows the global one.

Scaling efficiency compares throughput per unit of hardware with the 1-process run:
``(images/s of N) / (images/s of 1) x (hardware of 1) / (hardware of N)``. On GPUs the hardware
is the number of GPUs. On a CPU it is the number of cores: every configuration gets all
``--cores`` cores (1 process with all threads, N processes with cores/N threads each), so the
efficiency is plainly the ratio of images/s, and 1.00 means that splitting the work into
processes costs nothing. On a busy machine a process with several threads can be slowed far more
than single-threaded ones (each parallel region waits for its slowest thread); then
``--threads-per-process 1`` compares like with like: N processes on N cores against 1 on 1, so the
efficiency shows what the communication costs. Configurations take turns for ``--rounds`` rounds; the table shows the
median (and the range), because a shared machine's speed drifts.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, args, data, accum_steps, batch_size, threads, out_file):
    import torch.distributed as dist

    from clipedu import CLIP, preset
    from clipedu.data import build_tokenizer
    from clipedu.loop import TrainConfig
    from clipedu.train import Trainer

    torch.set_num_threads(threads)
    device = torch.device(args.device if args.device == "cpu" else f"cuda:{rank}")
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    try:
        tok = build_tokenizer(data)
        cfg = preset(args.preset).for_tokenizer(tok)
        torch.manual_seed(0)
        steps = args.warmup + args.steps
        train_cfg = TrainConfig(steps=steps + 1, warmup_steps=1, batch_size=batch_size, accum_steps=accum_steps,
                                precision=args.precision)
        trainer = Trainer(CLIP(cfg), tok, data, train_cfg, device=device)
        batches = trainer.loader.forever()

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if world > 1:
                dist.barrier()

        for _ in range(args.warmup):
            trainer.train_step(next(batches))
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step(next(batches))
        sync()
        seconds = time.perf_counter() - start
        if rank == 0:
            Path(out_file).write_text(f"{batch_size * args.steps / seconds}")
    finally:
        if world > 1:
            dist.destroy_process_group()


def measure(args, data, world, accum_steps, batch_size) -> float:
    """Images/s of one configuration, in fresh processes (1 process runs in a child too, so every
    configuration pays the same start-up and none inherits another's warm caches)."""
    import torch.multiprocessing as mp

    threads = args.threads_per_process or max(1, args.cores // world)  # the cores, shared out
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "rate")
        mp.spawn(_worker, args=(world, _free_port(), args, data, accum_steps, batch_size, threads, out_file),
                 nprocs=world, join=True)
        return float(Path(out_file).read_text())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=128, help="global batch (per process with --weak)")
    ap.add_argument("--weak", action="store_true", help="keep the per-process batch, grow the global batch")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    ap.add_argument("--accum", type=int, default=2, help="also time 1 process with this many micro-batches "
                    "(0: skip)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cores", type=int, default=os.cpu_count(), help="CPU cores shared by the processes")
    ap.add_argument("--threads-per-process", type=int, default=0,
                    help="CPU: this many threads in every process, so N processes use N times the cores "
                    "(default 0: --cores shared out among the processes)")
    ap.add_argument("--precision", default="auto", help="fp32, bf16, fp16 or auto (bf16/fp16 on GPUs)")
    ap.add_argument("--n", type=int, default=2048, help="ShapesWorld images to train on")
    args = ap.parse_args(argv)

    if args.device == "cuda":
        have = torch.cuda.device_count()
        if have < max(args.procs):
            print(f"--device cuda with {max(args.procs)} processes needs {max(args.procs)} GPUs; this machine has "
                  f"{have}. Measuring the process counts that fit.")
            args.procs = [p for p in args.procs if p <= have]
            if not args.procs:
                return
    from clipedu.data import ShapesWorld

    data = ShapesWorld(seed=0).generate(args.n, "train")  # made once, handed to every process
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    configs = [(w, 1) for w in args.procs]
    if args.accum > 1:
        configs.append((1, args.accum))
    rates: dict[tuple[int, int], list[float]] = {c: [] for c in configs}
    for _ in range(args.rounds):
        for world, accum in configs:  # take turns, so drift in the machine's speed hits all alike
            batch = args.batch * world if args.weak else args.batch
            rates[(world, accum)].append(measure(args, data, world, accum, batch))

    print(describe_machine(args.device))
    if hasattr(os, "getloadavg"):  # other programs' work slows every row, multi-threaded ones most
        print(f"load average (1 min) before: {load_before:.1f}, after: {os.getloadavg()[0]:.1f}")
    hardware = "GPUs" if args.device == "cuda" else "CPU cores"
    print(f"preset {args.preset} | {'per-process' if args.weak else 'global'} batch {args.batch} | precision "
          f"{args.precision} | {args.steps} timed steps after {args.warmup} | median of {args.rounds} rounds")
    if args.device == "cpu" and args.threads_per_process:
        print(f"{args.threads_per_process} thread(s) per process: N processes use N times the cores of one. "
              "Efficiency 1.00 means N processes are N times as fast as one.")
    elif args.device == "cpu":
        print(f"All {args.cores} cores in every row: 1 process x {args.cores} threads against N processes x "
              f"{max(1, args.cores // max(args.procs))} thread(s), the fair comparison on one CPU. Efficiency "
              "1.00 means that splitting the work into processes costs nothing.")
    print()
    print(f"| processes | micro-batches | global batch | {hardware} | images/s (range) | efficiency |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")

    def units(world):  # the hardware a configuration uses
        if args.device == "cuda":
            return world
        return world * args.threads_per_process if args.threads_per_process else args.cores

    base = statistics.median(rates[(args.procs[0], 1)]) / units(args.procs[0])  # images/s per unit
    for (world, accum), r in rates.items():
        med = statistics.median(r)
        efficiency = med / units(world) / base
        batch = args.batch * world if args.weak else args.batch
        print(f"| {world} | {accum} | {batch} | {units(world)} | {med:.0f} ({min(r):.0f}-{max(r):.0f}) | "
              f"{efficiency:.2f} |")
    if args.accum > 1:
        print(f"\nThe micro-batch row is 1 process with the batch in {args.accum} micro-batches: the same loss and "
              "gradients for the memory of one micro-batch, at the price of one extra forward pass per step.")


if __name__ == "__main__":
    main()
