#!/usr/bin/env bash
# One GPU round: every benchmark that RESULTS.md lists as "not measured yet" for a GPU, within
# 8 minutes on one GPU, with all its tables written to one Markdown file.
#
#     PYTHONPATH=. bash benchmarks/gpu_round.sh              # run it (needs CUDA)
#     bash benchmarks/gpu_round.sh --dry-run                  # print the steps, check their arguments
#     bash benchmarks/gpu_round.sh --only model_bf16,data     # a subset of the steps
#     bash benchmarks/gpu_round.sh --out results/gpu.md       # another output file
#
# Run it from anywhere; it works from the repository root with PYTHONPATH pointing at it, and
# imports only torch, numpy, scikit-learn and matplotlib (plus open_clip, nbclient, ipywidgets and
# umap-learn when they are there). Each step runs under `timeout` with its own budget, so a slow
# step cannot eat the next ones; a step that runs out of time keeps the rows it printed. A step
# whose inputs this machine lacks (a package, CIFAR-10's files, released weights) is skipped with
# the reason in the table. The output goes to --out, else $OUT/gpu_round.md when OUT is set, else
# build/gpu_round.md.
#
# Environment:
#   PYTHON                  the interpreter (default: python, else python3)
#   GPU_ROUND_ARGS_<step>   extra arguments appended to that step's command (split on spaces;
#                           the last value of a repeated option wins), e.g.
#                           GPU_ROUND_ARGS_quality="--seeds 0 1 2"
#   GPU_ROUND_BUDGET_<step> that step's budget in seconds instead of the one below
#   GPU_ROUND_ALLOW_CPU=1   run without CUDA (to try the round itself on a CPU; the figures mean nothing)
#
# --dry-run prints every step with its budget and command, checks each command's arguments with
# its own parser and the values the parser cannot check (preset, device, dataset, BLIP-2 recipe)
# without training anything, and exits non-zero on a bad argument or when the budgets add up to
# more than 480 s.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
PY=${PYTHON:-python}
command -v "$PY" >/dev/null 2>&1 || PY=python3
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # a step killed by its timeout keeps what it printed
MAX_TOTAL=480

usage() {
    sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

DRY=0
OUTFILE=""
ONLY=""
while (($#)); do
    case $1 in
        --dry-run) DRY=1 ;;
        --out) [[ $# -ge 2 ]] || { echo "gpu_round.sh: --out needs a file name" >&2; exit 2; }
               OUTFILE=$2; shift ;;
        --out=*) OUTFILE=${1#--out=} ;;
        --only) [[ $# -ge 2 ]] || { echo "gpu_round.sh: --only needs step names" >&2; exit 2; }
                ONLY=$2; shift ;;
        --only=*) ONLY=${1#--only=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_round.sh: unknown option '$1'; expected --dry-run, --only, --out or --help" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z $OUTFILE ]]; then
    if [[ -n ${OUT:-} ]]; then OUTFILE=$OUT/gpu_round.md; else OUTFILE=$ROOT/build/gpu_round.md; fi
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/clipedu-gpu-round.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
RUNS=$WORK/runs  # an empty runs folder: the first step that needs the course model trains it

# --- the steps -------------------------------------------------------------------------------
# step NAME BUDGET_SECONDS "what it measures" PYTHON_ARGUMENTS...
STEPS=()
declare -A BUDGET TITLE ARGS
step() {
    local name=$1 budget=$2 title=$3
    shift 3
    local extra_var="GPU_ROUND_ARGS_$name" budget_var="GPU_ROUND_BUDGET_$name"
    STEPS+=("$name")
    BUDGET[$name]=${!budget_var:-$budget}
    TITLE[$name]=$title
    ARGS[$name]="$(printf '%q ' "$@")${!extra_var:-}"
}

step machine 12 "the machine and what it has installed" \
    - probe
step model_fp32 20 "model speed, fp32: clipedu vs open_clip (small preset, batch 256)" \
    benchmarks/bench_model.py --device cuda --preset small --batch 256 --repeats 15
step model_bf16 20 "model speed, bf16 autocast: clipedu vs open_clip (small preset, batch 256)" \
    benchmarks/bench_model.py --device cuda --preset small --batch 256 --repeats 15 --amp bf16
step data 25 "ShapesWorld generation, DeviceLoader vs DataLoader on the GPU" \
    benchmarks/bench_data.py --device cuda
step quality 75 "quality in 60 s of training (tiny preset, ShapesWorld, seed 0; no probes)" \
    benchmarks/bench_quality.py --device cuda --budgets 60 --seeds 0 --no-probes
step blip2 230 "BLIP-2, the full recipe with stages 1 and 2 at 1500 steps, and stage 2 without stage 1" \
    benchmarks/bench_blip2.py --device cuda --baseline --stage1-steps 1500 --stage2-steps 1500
step notebooks 18 "notebooks in full mode, in order (as many as fit the budget)" \
    benchmarks/bench_notebooks.py --full --timeout 18
step cifar10_small 60 "CIFAR-10, small preset, 30 s of training: images/s, zero-shot" \
    -m clipedu train --dataset cifar10 --preset small --minutes 0.5 --device cuda --quiet --out "$WORK/cifar10-small"
step zero_shot_cifar 20 "zero-shot CIFAR-10 with OpenAI's ViT-B/32 in clipedu (and open_clip)" \
    benchmarks/bench_zero_shot_cifar.py --device cuda
NOT_IN_ROUND="bench_scaling.py --device cuda (NCCL): needs 2 GPUs, this round is for one"

if [[ -n $ONLY ]]; then
    IFS=', ' read -r -a wanted <<<"$ONLY"
    for w in "${wanted[@]}"; do
        [[ -n ${BUDGET[$w]+x} ]] || { echo "gpu_round.sh: unknown step '$w'; expected one of: ${STEPS[*]}" >&2; exit 2; }
    done
    STEPS=("${wanted[@]}")
fi

# --- the machine: what it has (one Python start) -----------------------------------------------
PROBE_PY=$(cat <<'EOF'
import importlib.util
import sys

sys.path.insert(0, "benchmarks")
import torch
from machine import describe_machine

from clipedu.runtime import cache_dir, data_dir

cuda = torch.cuda.is_available()
print("machine=" + describe_machine("cuda" if cuda else "cpu"))
print(f"cuda={int(cuda)}")
print(f"gpus={torch.cuda.device_count() if cuda else 0}")


def installed(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


for module in ("open_clip", "nbformat", "nbclient", "ipykernel", "ipywidgets", "umap"):
    print(f"has_{module}={int(installed(module))}")
cifar = data_dir() / "cifar-10-batches-py"
files = ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]
print(f"cifar10={int(all((cifar / f).is_file() for f in files))}")
print(f"cifar10_dir={cifar}")
try:
    from clipedu.pretrained import openai_checkpoint_path
    weights = openai_checkpoint_path("ViT-B/32")
except Exception:
    weights = cache_dir() / "openai" / "ViT-B-32.pt"
print(f"vitb32={int(weights.is_file())}")
print(f"vitb32_path={weights}")
try:
    from clipedu.bpe import MERGES_FILENAME, _open_clip_copy
    merges = _open_clip_copy() is not None or (cache_dir() / MERGES_FILENAME).is_file()
except Exception:
    merges = False
print(f"merges={int(merges)}")
EOF
)
probe() { "$PY" -c "$PROBE_PY"; }

declare -A HAVE
read_probe() {
    local line
    while IFS= read -r line; do
        [[ $line == *=* ]] && HAVE[${line%%=*}]=${line#*=}
    done
}

join_comma() { local out=$1; shift; for x in "$@"; do out+=", $x"; done; echo "$out"; }

# Arguments a step gets only on a machine that has what they need.
step_extra() {
    case $1 in
        zero_shot_cifar) [[ ${HAVE[has_open_clip]:-0} == 1 ]] && echo "--open-clip" ;;
    esac
}

# Why a step cannot run on this machine (empty when it can).
skip_reason() {
    local missing=()
    case $1 in
        notebooks)
            for m in nbformat nbclient ipykernel ipywidgets umap; do
                [[ ${HAVE[has_$m]:-0} == 1 ]] || missing+=("$m")
            done
            ((${#missing[@]} == 0)) || echo "not installed here: ${missing[*]} (the notebooks need a Jupyter kernel, ipywidgets and umap-learn)"
            ;;
        cifar10_small)
            [[ ${HAVE[cifar10]:-0} == 1 ]] \
                || echo "CIFAR-10 is not in ${HAVE[cifar10_dir]:-data/cifar-10-batches-py} and this machine cannot download it"
            ;;
        zero_shot_cifar)
            [[ ${HAVE[vitb32]:-0} == 1 ]] || missing+=("OpenAI's ViT-B/32 weights (${HAVE[vitb32_path]:-cache})")
            [[ ${HAVE[cifar10]:-0} == 1 ]] || missing+=("CIFAR-10's files")
            [[ ${HAVE[merges]:-0} == 1 ]] || missing+=("CLIP's BPE merges file")
            ((${#missing[@]} == 0)) || echo "needs downloads this machine cannot make: $(join_comma "${missing[@]}")"
            ;;
    esac
}

# What a step measures less than asked for on this machine (empty when nothing).
step_note() {
    case $1 in
        model_fp32|model_bf16) [[ ${HAVE[has_open_clip]:-0} == 1 ]] || echo "clipedu only: open_clip is not installed here" ;;
        zero_shot_cifar) [[ ${HAVE[has_open_clip]:-0} == 1 ]] || echo "clipedu only: open_clip is not installed here" ;;
    esac
}

command_line() {  # the command as a person would type it
    local name=$1
    if [[ $name == machine ]]; then echo "(describe_machine and a look at what is installed)"; return; fi
    echo "timeout ${BUDGET[$name]} python ${ARGS[$name]}" | sed 's/ *$//'
}

# --- dry run: the steps, their budgets, their arguments checked -------------------------------
# Arguments on stdin, one step a line: NAME<TAB>SKIPPED<TAB>ARGS. Each command's own parser reads them (nothing
# runs past parse_args); then the values the parser takes as free text are checked.
CHECK_PY=$(cat <<'EOF'
import argparse
import runpy
import shlex
import sys
import traceback

sys.path.insert(0, "benchmarks")


class Parsed(Exception):
    def __init__(self, namespace):
        self.namespace = namespace


original = argparse.ArgumentParser.parse_args


def parse_and_stop(self, args=None, namespace=None):
    raise Parsed(original(self, args, namespace))


argparse.ArgumentParser.parse_args = parse_and_stop


def check_values(ns, script_globals):
    import torch

    from clipedu import preset
    from clipedu.data import DATASET_NAMES

    if getattr(ns, "device", None):
        device = torch.device(ns.device)  # RuntimeError on a name torch does not know
        if device.type not in ("cuda", "cpu", "mps"):
            raise ValueError(f"device {ns.device!r}: expected cuda, cpu or mps")
    if getattr(ns, "preset", None):
        if getattr(ns, "command", None) == "train" and ns.preset not in ("tiny", "small"):
            raise ValueError(f"preset {ns.preset!r} has no training recipe; expected 'tiny' or 'small'")
        preset(ns.preset)
    dataset = getattr(ns, "dataset", None)
    if dataset and not (dataset in DATASET_NAMES or dataset.startswith("folder:")):
        raise ValueError(f"dataset {dataset!r}: expected one of {', '.join(DATASET_NAMES)}")
    for name in ("budgets", "minutes", "repeats", "batch", "timeout"):
        values = getattr(ns, name, None)
        values = values if isinstance(values, list) else [values]
        if any(v is not None and v <= 0 for v in values):
            raise ValueError(f"--{name} must be positive, got {getattr(ns, name)}")
    if "recipe_from" in script_globals:  # BLIP-2: the recipe's own checks
        script_globals["recipe_from"](ns)


failures = 0
for line in sys.stdin:
    name, skipped, rest = line.rstrip("\n").split("\t", 2)
    argv = shlex.split(rest)
    script_globals = {}
    sys.argv = argv[1:] if argv[0] == "-m" else argv
    try:
        if argv[0] == "-m":
            runpy.run_module(argv[1], run_name="__main__", alter_sys=False)
        else:
            script_globals = runpy.run_path(argv[0], run_name="__gpu_round_check__")
            script_globals["main"]()
        raise RuntimeError("the command never parsed its arguments")
    except Parsed as parsed:
        try:
            check_values(parsed.namespace, script_globals)
            print(f"  {name}: arguments ok")
        except Exception as exc:
            failures += 1
            print(f"  {name}: BAD ARGUMENT: {type(exc).__name__}: {exc}")
    except SystemExit as exc:  # argparse says what was wrong on stderr
        failures += 1
        print(f"  {name}: BAD ARGUMENT (the parser exited with {exc.code}; its message is above)")
    except ImportError as exc:  # a step skipped for a missing package cannot be checked, nor run
        failures += skipped != "1"
        print(f"  {name}: cannot check here: {exc}")
    except Exception:
        failures += 1
        print(f"  {name}: check failed:\n{traceback.format_exc()}")
sys.exit(1 if failures else 0)
EOF
)
check_arguments() { "$PY" -c "$CHECK_PY"; }

total=0
for name in "${STEPS[@]}"; do
    if ! [[ ${BUDGET[$name]} =~ ^[1-9][0-9]*$ ]]; then
        echo "gpu_round.sh: budget of $name must be a positive number of seconds, got '${BUDGET[$name]}'" >&2
        exit 2
    fi
    total=$((total + BUDGET[$name]))
done

if ((DRY)); then
    echo "GPU round, dry run: ${#STEPS[@]} steps, output would go to $OUTFILE"
    for name in "${STEPS[@]}"; do
        echo "step $name: budget ${BUDGET[$name]} s: $(command_line "$name")"
        echo "    ${TITLE[$name]}"
    done
    echo "not in this round: $NOT_IN_ROUND"
    echo "total budget: $total s (limit $MAX_TOTAL s)"
    echo "on this machine:"
    read_probe < <(probe 2>/dev/null)
    echo "  ${HAVE[machine]:-machine: (could not be described)}"
    declare -A SKIPPED
    for name in "${STEPS[@]}"; do
        reason=$(skip_reason "$name")
        SKIPPED[$name]=0
        if [[ -n $reason ]]; then
            echo "  $name would be skipped: $reason"
            SKIPPED[$name]=1
        fi
    done
    echo "checking arguments:"
    status=0
    for name in "${STEPS[@]}"; do
        [[ $name == machine ]] || printf '%s\t%s\t%s\n' "$name" "${SKIPPED[$name]}" "${ARGS[$name]}"
    done | check_arguments || status=1
    if ((total > MAX_TOTAL)); then
        echo "gpu_round.sh: the budgets add up to $total s, over the $MAX_TOTAL s of a round" >&2
        status=1
    fi
    if ((status)); then echo "dry run: FAILED"; else echo "dry run: ok"; fi
    exit $status
fi

# --- the round -------------------------------------------------------------------------------
((total <= MAX_TOTAL)) || echo "gpu_round.sh: warning: the budgets add up to $total s, over the $MAX_TOTAL s of a round" >&2
mkdir -p "$(dirname "$OUTFILE")"
export CLIPEDU_RUNS=$RUNS CLIPEDU_FAST=0 CLIPEDU_MODE=full
BODY=$WORK/body.md
: >"$BODY"
SUMMARY=()
round_start=$(date +%s)

write_file() {  # the header, the summary so far, then every step's section
    {
        echo "# GPU round ($(date -u +%Y-%m-%d), \`benchmarks/gpu_round.sh\`)"
        echo
        echo "${HAVE[machine]:-machine: unknown}"
        [[ -n ${GPU_LINE:-} ]] && echo "nvidia-smi: $GPU_LINE"
        echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
        echo
        echo "| step | budget (s) | took (s) | status |"
        echo "| --- | ---: | ---: | --- |"
        printf '%s\n' "${SUMMARY[@]}"
        echo
        echo "Not in this round: $NOT_IN_ROUND."
        echo
        cat "$BODY"
    } >"$OUTFILE"
}

# The machine first: its description, and what decides the skips.
probe_out=$(timeout --kill-after=5 "${BUDGET[machine]}" "$PY" -c "$PROBE_PY")
probe_rc=$?
read_probe <<<"$probe_out"
GPU_LINE=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
if ((probe_rc != 0)); then
    if ((probe_rc == 124 || probe_rc == 137)); then
        echo "gpu_round.sh: describing the machine took more than ${BUDGET[machine]} s (GPU_ROUND_BUDGET_machine)" >&2
    else
        echo "gpu_round.sh: could not describe the machine (exit $probe_rc); is torch importable with PYTHONPATH=$ROOT?" >&2
    fi
    exit 1
fi
if [[ ${HAVE[cuda]} != 1 && ${GPU_ROUND_ALLOW_CPU:-0} != 1 ]]; then
    echo "gpu_round.sh: no CUDA device here; this round is for a GPU (check it with --dry-run)" >&2
    exit 1
fi
echo "${HAVE[machine]}"
SUMMARY+=("| machine | ${BUDGET[machine]} | $(($(date +%s) - round_start)) | ok |")

for name in "${STEPS[@]}"; do
    [[ $name == machine ]] && continue
    budget=${BUDGET[$name]}
    reason=$(skip_reason "$name")
    {
        echo "## $name: ${TITLE[$name]}"
        echo
        echo "\`$(command_line "$name")\`"
        echo
    } >>"$BODY"
    if [[ -n $reason ]]; then
        echo "$name: skipped: $reason"
        SUMMARY+=("| $name | $budget | 0 | skipped: $reason |")
        echo "Skipped: $reason." >>"$BODY"
        echo >>"$BODY"
        write_file
        continue
    fi
    echo "$name: running (budget $budget s)"
    start=$(date +%s.%N)
    eval "timeout --kill-after=10 $budget $(printf %q "$PY") ${ARGS[$name]} $(step_extra "$name")" >"$WORK/$name.out" 2>"$WORK/$name.err"
    rc=$?
    took=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
    case $rc in
        0) status=ok ;;
        124|137) status="timed out at $budget s (what it printed before is below)" ;;
        *) status="failed (exit $rc)" ;;
    esac
    note=$(step_note "$name")
    [[ -n $note ]] && status="$status; $note"
    echo "$name: $status, $took s"
    SUMMARY+=("| $name | $budget | $took | $status |")
    cat "$WORK/$name.out" >>"$BODY"
    if [[ $rc != 0 && -s $WORK/$name.err ]]; then
        { echo; echo "stderr (last 30 lines):"; echo; echo '```'; tail -n 30 "$WORK/$name.err"; echo '```'; } >>"$BODY"
    fi
    echo >>"$BODY"
    write_file
done

write_file
echo "round done in $(($(date +%s) - round_start)) s; tables in $OUTFILE"
