"""Run every notebook top to bottom on a fresh kernel and print how long each took.

    python benchmarks/bench_notebooks.py                 # fast mode (what CI runs), all notebooks
    python benchmarks/bench_notebooks.py --mode cpu      # cpu mode (a laptop or a Colab CPU runtime)
    python benchmarks/bench_notebooks.py --full          # full mode (for a GPU); the same as --mode full
    python benchmarks/bench_notebooks.py 06 07           # only these numbers
    python benchmarks/bench_notebooks.py 11 17 --seeds 1 2   # each with setup seeds 1 and 2 (CLIPEDU_SEED)

Targets: fast mode on a CPU <= 60 s for 00-05, <= 90 s from 06 on (the notebooks that train); cpu mode
on a laptop CPU <= 5 min each; full mode on a Colab-class GPU <= 10 min each. Notebooks that train
reuse notebook 06's checkpoint when it is there (train-or-load), so run the whole series in order,
as CI does, for the figures that matter; ``--fresh`` points the runs folder at an empty temporary
one first.

``--seeds`` runs each notebook once per seed, with ``CLIPEDU_SEED`` set (it replaces the seed of
every notebook's ``runtime.setup()``): a lesson asserts its outcome with a margin, and a margin
measured on seed 0 alone can rest on one trajectory. The table then says which seed failed where.
Kept runs follow the seed (their folder names fingerprint the starting weights); notebook 06's
course model and notebook 07's pair models do not (their recipes carry their own seed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

MODES = ("fast", "cpu", "full")


def target_seconds(name: str, mode: str) -> int:
    if mode == "full":
        return 600
    if mode == "cpu":
        return 300
    return 60 if int(name[:2]) <= 5 else 90


def run_notebook(path: Path, timeout: int) -> tuple[float, str]:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    try:
        client.execute()
        status = "ok"
    except Exception as exc:  # report and go on with the next notebook
        # A cell's error carries its own name and message; the exception's text starts with a banner.
        name = getattr(exc, "ename", None) or type(exc).__name__
        value = str(getattr(exc, "evalue", None) or exc).strip()
        status = f"FAILED: {name}: {value.splitlines()[0][:120] if value else ''}"
    return time.perf_counter() - start, status


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("numbers", nargs="*", help="two-digit notebook numbers (default: all)")
    ap.add_argument("--mode", choices=MODES, default="fast", help="the notebooks' mode (default: fast, what CI runs)")
    ap.add_argument("--full", action="store_true", help="full mode; the same as --mode full")
    ap.add_argument("--fresh", action="store_true", help="start from an empty runs folder (no saved checkpoints)")
    ap.add_argument("--timeout", type=int, default=1200, help="per-cell timeout in seconds")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="run each notebook once per setup seed (CLIPEDU_SEED); default: the notebooks' own")
    args = ap.parse_args(argv)

    mode = "full" if args.full else args.mode
    os.environ["CLIPEDU_MODE"] = mode  # overrides CI and CLIPEDU_FAST in every kernel
    if args.fresh:
        os.environ["CLIPEDU_RUNS"] = tempfile.mkdtemp(prefix="clipedu-runs-")
    paths = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.numbers:
        paths = [p for p in paths if p.name[:2] in args.numbers]

    import torch

    print(describe_machine("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"mode: {mode} | runs folder: {os.environ.get('CLIPEDU_RUNS', 'default')}\n")
    print("| notebook | seed | seconds | target | status |")
    print("| --- | ---: | ---: | ---: | --- |")
    failures = 0
    total = 0.0
    runs = 0
    for path in paths:
        for seed in args.seeds or [None]:
            if seed is not None:
                os.environ["CLIPEDU_SEED"] = str(seed)  # every kernel started from here inherits it
            seconds, status = run_notebook(path, args.timeout)
            total, runs = total + seconds, runs + 1
            target = target_seconds(path.name, mode)
            if status == "ok" and seconds > target:
                status = "ok, over target"
            failures += not status.startswith("ok")
            shown = seed if seed is not None else os.environ.get("CLIPEDU_SEED", "own")
            print(f"| {path.name} | {shown} | {seconds:.0f} | {target} | {status} |", flush=True)
    print(f"\ntotal: {total:.0f} s for {runs} runs of {len(paths)} notebooks")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
