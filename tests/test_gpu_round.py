"""benchmarks/gpu_round.sh: its dry run lists every step within 8 minutes and catches bad arguments;
without a GPU it refuses to run, and a run records skipped and timed-out steps in its table."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_round.sh"
STEPS = ["machine", "model_fp32", "model_bf16", "data", "quality", "blip2", "notebooks", "cifar10_small",
         "zero_shot_cifar"]
ROUND_SECONDS = 480

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def gpu_round(*args, **env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GPU_ROUND_")}
    environ.update(PYTHON=sys.executable, PYTHONPATH=str(ROOT), **env)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=600)


def budgets(stdout: str) -> dict[str, int]:
    return {name: int(seconds) for name, seconds in re.findall(r"^step (\w+): budget (\d+) s: ", stdout, flags=re.M)}


@pytest.fixture(scope="module")
def dry_run():
    return gpu_round("--dry-run")


def test_dry_run_lists_every_step_within_the_round(dry_run):
    assert dry_run.returncode == 0, dry_run.stdout + dry_run.stderr
    found = budgets(dry_run.stdout)
    assert list(found) == STEPS
    assert all(seconds > 0 for seconds in found.values())
    assert sum(found.values()) <= ROUND_SECONDS
    assert f"total budget: {sum(found.values())} s (limit {ROUND_SECONDS} s)" in dry_run.stdout
    for name in STEPS[1:]:  # every command runs under its own budget and had its arguments checked
        line = next(line for line in dry_run.stdout.splitlines() if line.startswith(f"step {name}:"))
        assert f"timeout {found[name]} python " in line
        assert f"  {name}: arguments ok" in dry_run.stdout
    assert "--amp bf16" in dry_run.stdout and "--budgets 60" in dry_run.stdout
    assert "--dataset cifar10 --preset small" in dry_run.stdout
    assert "not in this round: bench_scaling.py" in dry_run.stdout
    assert dry_run.stdout.rstrip().endswith("dry run: ok")


BAD_ARGUMENTS = {  # step: (a bad argument, what the check says)
    "model_bf16": ("--amp bf17", "invalid choice: 'bf17'"),
    "quality": ("--budgets -5", "--budgets must be positive"),
    "blip2": ("--stage1-steps 0", "steps must be a positive int, got 0"),
    "cifar10_small": ("--preset huge", "invalid choice: 'huge'"),
    "data": ("--device cdua", "cdua"),
}


def test_a_bad_argument_fails_the_dry_run():
    done = gpu_round("--dry-run", "--only", "model_fp32," + ",".join(BAD_ARGUMENTS),
                     **{f"GPU_ROUND_ARGS_{step}": bad for step, (bad, _) in BAD_ARGUMENTS.items()})
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert "  model_fp32: arguments ok" in lines
    for step, (_, message) in BAD_ARGUMENTS.items():
        assert any(line.startswith(f"  {step}: BAD ARGUMENT") for line in lines), step
        assert message in done.stdout + done.stderr, step
    assert lines[-1] == "dry run: FAILED"


def test_budgets_over_eight_minutes_fail_the_dry_run():
    done = gpu_round("--dry-run", "--only", "machine", GPU_ROUND_BUDGET_machine="481")
    assert done.returncode == 1
    assert "the budgets add up to 481 s, over the 480 s of a round" in done.stderr


@pytest.mark.parametrize("args, env, message", [
    (["--bogus"], {}, "unknown option '--bogus'; expected --dry-run, --only, --out or --help"),
    (["--only", "nope"], {}, "unknown step 'nope'; expected one of: machine model_fp32"),
    (["--dry-run"], {"GPU_ROUND_BUDGET_data": "soon"},
     "budget of data must be a positive number of seconds, got 'soon'"),
])
def test_bad_options_are_refused(args, env, message):
    done = gpu_round(*args, **env)
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the round would run")
def test_without_cuda_the_round_refuses_to_run(tmp_path):
    done = gpu_round("--only", "data", "--out", str(tmp_path / "round.md"), GPU_ROUND_BUDGET_machine="120")
    assert done.returncode == 1
    assert "no CUDA device here; this round is for a GPU" in done.stderr
    assert not (tmp_path / "round.md").exists()


def test_a_round_records_skipped_and_timed_out_steps(tmp_path):
    out = tmp_path / "round.md"
    done = gpu_round("--only", "cifar10_small,data", "--out", str(out), GPU_ROUND_ALLOW_CPU="1",
                     GPU_ROUND_BUDGET_data="1", GPU_ROUND_BUDGET_machine="120",  # a busy machine: time to start
                     CLIPEDU_DATA=str(tmp_path / "data"))
    assert done.returncode == 0, done.stdout + done.stderr
    table = out.read_text()
    assert table.startswith("# GPU round (")
    assert re.search(r"^machine: CPU: .* \| torch .* \| python ", table, flags=re.M)
    assert "| machine | 120 |" in table
    assert (f"| cifar10_small | 60 | 0 | skipped: CIFAR-10 is not in {tmp_path / 'data' / 'cifar-10-batches-py'} "
            "and this machine cannot download it |") in table
    assert "| data | 1 | 1 | timed out at 1 s" in table
    assert "## data: " in table and "`timeout 1 python benchmarks/bench_data.py --device cuda`" in table
