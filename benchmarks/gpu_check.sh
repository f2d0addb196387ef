#!/usr/bin/env bash
# How well trials pack onto one GPU, measured on the machine at hand: the reference workload
# (the multi-base addition encoder-decoder) with 1, 2, 4 and 8 trials sharing the GPU
# (gpus_per_trial 1, 0.5, 0.25, 0.125), 2 x k identical trials each. For each packing it prints
# trials per hour and the GPU's peak memory, and appends the table, with a line describing the
# machine, to benchmarks/RESULTS.md. Under 8 minutes: each packing gets GPU_CHECK_BUDGET_S
# seconds (default 80), after which the sweep is interrupted and only finished trials count.
#
#   bash benchmarks/gpu_check.sh             # on a machine with an NVIDIA GPU
#   bash benchmarks/gpu_check.sh --dry-run   # print the sweep files it would run; no GPU needed
#
# Settings, from the environment: GPU_CHECK_GPU (the GPU's index, default 0),
# GPU_CHECK_BUDGET_S, GPU_CHECK_SAMPLES (rows, default 2000), GPU_CHECK_EPOCHS (default 2),
# GPU_CHECK_PACKINGS (default "1 2 4 8"), GPU_CHECK_RESULTS (default benchmarks/RESULTS.md),
# PYTHON (default python3). The code that runs is this checkout's, with its dependencies
# installed (`pip install -e .`, and `tensorflow[and-cuda]` for TensorFlow to see the GPU).
set -euo pipefail

# Only shell builtins before the GPU check, so that it answers even where little is installed.
refuse() {
    echo "gpu_check: $*" >&2
    exit 2
}

dry_run=0
case "${1:-}" in
    "") ;;
    --dry-run) dry_run=1 ;;
    -h | --help)
        echo "usage: bash benchmarks/gpu_check.sh [--dry-run]  (settings: see the script's header)"
        exit 0
        ;;
    *) refuse "unknown argument '$1'; accepted: --dry-run, --help" ;;
esac

gpu=${GPU_CHECK_GPU:-0}
if ((!dry_run)); then
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        refuse "no NVIDIA GPU here (nvidia-smi not found); run it on a machine with one"
    fi
    if ! nvidia-smi --id="$gpu" --query-gpu=name --format=csv,noheader >/dev/null 2>&1; then
        refuse "nvidia-smi finds no GPU $gpu; set GPU_CHECK_GPU to an index nvidia-smi -L lists"
    fi
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
budget_s=${GPU_CHECK_BUDGET_S:-80}
samples=${GPU_CHECK_SAMPLES:-2000}
epochs=${GPU_CHECK_EPOCHS:-2}
read -r -a packings <<<"${GPU_CHECK_PACKINGS:-1 2 4 8}"
results=${GPU_CHECK_RESULTS:-$repo/benchmarks/RESULTS.md}
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")

# One sweep of 2 x k copies of one configuration of the reference grid, k to a GPU, trained for
# fewer epochs on fewer rows than the reference so that all packings fit in minutes. `replica`
# only numbers the copies (the model function ignores parameters it does not know), so every
# packing trains the same models and differs only in how many share the GPU.
write_sweep() {
    local k=$1 dir=$2 replicas
    replicas=$(seq -s ', ' 0 $((2 * k - 1)))
    cat >"$dir/sweep.yaml" <<EOF
name: gpu-check-k$k
description: GPU packing check, $k trial(s) per GPU.
model: orchestrator.tasks.multibase_addition:build_and_fit
data:
  function: orchestrator.tasks.multibase_addition:load_data
  options: {n_samples: $samples, max_operand: 255, terms: 2, bases: [b, o, d, h], seed: 0}
params:
  architecture: [encoder_decoder]
  lr: [0.01]
  layer_1_text_input_neuron: [128]
  layer_1_base_input_neuron: [128]
  concatenated_layer_neuron: [128]
  epochs: [$epochs]
  batch: [32]
  replica: [$replicas]
metric: val_acc
mode: max
resources:
  cpus_per_trial: 1
  gpus_per_trial: $(awk -v k="$k" 'BEGIN { print 1 / k }')
  max_concurrent_trials: $k
tracking: sqlite:///$dir/mlflow.db
storage: $dir/ray_results
EOF
}

if ((dry_run)); then
    trap 'rm -rf "$work"' EXIT
    for k in "${packings[@]}"; do
        mkdir -p "$work/k$k"
        write_sweep "$k" "$work/k$k"
        echo "--- # the sweep for $k trial(s) per GPU"
        cat "$work/k$k/sweep.yaml"
    done
    exit 0
fi

for tool in awk seq timeout; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        refuse "'$tool' not found; it comes with coreutils (or awk) on any Linux"
    fi
done

# The GPU under test is the only one Ray and TensorFlow see, numbered as nvidia-smi numbers it.
export CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=$gpu
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" TF_CPP_MIN_LOG_LEVEL=2
unset RAY_ADDRESS # A local Ray on this machine, never a cluster named in the environment.

if ! "$python" -c "import orchestrator.cli.main, ray, mlflow" >/dev/null 2>&1; then
    refuse "$python cannot import orchestrator, ray and mlflow; pip install -e '$repo'"
fi
probe="import sys, tensorflow as tf; sys.exit(not tf.config.list_physical_devices('GPU'))"
if ! "$python" -c "$probe" >/dev/null 2>&1; then
    refuse "TensorFlow sees no GPU; pip install 'tensorflow[and-cuda]' for $python"
fi

query() { nvidia-smi --id="$gpu" --query-gpu="$1" --format=csv,noheader,nounits | head -n 1; }

# Trials that ended (finished or diverged), failed trials, and the seconds from the first trial's
# start to the last one's end, read back from the sweep's MLflow store.
summarize() {
    "$python" - "$1" "$2" <<'EOF'
import sys

from mlflow.tracking import MlflowClient

from orchestrator.tracking import tags

store, experiment = sys.argv[1], sys.argv[2]
client = MlflowClient(f"sqlite:///{store}")
found = client.get_experiment_by_name(experiment)
runs = []
if found is not None:
    runs = client.search_runs(
        [found.experiment_id], filter_string=f"tags.`{tags.KIND}` = 'trial'", max_results=10000
    )
ended = [
    run
    for run in runs
    if run.data.tags.get(tags.STATUS) in ("finished", "diverged") and run.info.end_time
]
failed = sum(run.data.tags.get(tags.STATUS) == "failed" for run in runs)
span = 0.0
if ended:
    first = min(run.info.start_time for run in ended)
    span = (max(run.info.end_time for run in ended) - first) / 1000
print(len(ended), failed, f"{span:.1f}")
EOF
}

idle_mib=$(query memory.used)
rows=()
base_rate=""
for k in "${packings[@]}"; do
    dir="$work/k$k"
    mkdir -p "$dir"
    write_sweep "$k" "$dir"
    echo "gpu_check: $k trial(s) per GPU, $((2 * k)) trials, at most ${budget_s} s" >&2

    nvidia-smi --id="$gpu" --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 \
        >"$dir/memory.csv" 2>/dev/null &
    sampler=$!
    started_at=$(date +%s.%N)
    code=0
    (cd "$dir" && timeout --signal=INT --kill-after=20 "$budget_s" \
        "$python" -m orchestrator.cli.main run sweep.yaml >run.log 2>&1) || code=$?
    finished_at=$(date +%s.%N)
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true

    note=""
    case $code in
        0) ;;
        1) note="some trials failed" ;;
        124 | 130 | 137) note="budget of ${budget_s} s reached" ;;
        *)
            echo "gpu_check: the sweep of $k trial(s) per GPU stopped (exit $code):" \
                "$(tail -n 1 "$dir/run.log")" >&2
            exit 1
            ;;
    esac

    if (($(nproc) < k)); then
        note="${note:+$note; }$(nproc) CPUs: fewer than $k trials at once"
    fi
    if ! summary=$(summarize "$dir/mlflow.db" "gpu-check-k$k" 2>"$dir/summary.log"); then
        echo "gpu_check: cannot read the trials back: $(tail -n 1 "$dir/summary.log")" >&2
        exit 1
    fi
    read -r trials failed span <<<"$summary"
    wall=$(awk -v a="$started_at" -v b="$finished_at" 'BEGIN { printf "%.0f", b - a }')
    peak=$(awk 'BEGIN { m = 0 } $1 + 0 > m { m = $1 + 0 } END { print m }' "$dir/memory.csv")
    rate=$(awk -v n="$trials" -v s="$span" \
        'BEGIN { if (s > 0) printf "%.0f", n / s * 3600; else print 0 }')
    if [[ -z $base_rate && $rate != 0 ]]; then base_rate=$rate; fi
    gain=$(awk -v r="$rate" -v b="$base_rate" \
        'BEGIN { if (b > 0) printf "%.2f", r / b; else print "-" }')
    fraction=$(awk -v k="$k" 'BEGIN { print 1 / k }')
    row="| $k | $fraction | $trials of $((2 * k)) | $failed | $span | $rate | $gain | $wall"
    rows+=("$row | $peak | $note |")
done

gpu_name=$(query name)
gpu_mib=$(query memory.total)
driver=$(query driver_version)
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo "unknown")

{
    echo "## $(date -u '+%Y-%m-%d %H:%M UTC'): $gpu_name ($gpu_mib MiB), driver $driver," \
        "$(nproc) CPUs${cpu_model:+ ($cpu_model)}"
    echo
    echo "Commit $commit. Workload: encoder_decoder, 128 units everywhere, batch 32, lr 0.01,"
    echo "$samples rows, $epochs epoch(s); 2 x k identical trials, 1 CPU each; budget"
    echo "${budget_s} s per packing. GPU memory before the first sweep: $idle_mib MiB. Trials/hour"
    echo "counts the trials that ended, over the time from the first one's start to the last one's"
    echo "end; wall is the whole command, Ray's start and stop included."
    echo
    echo "| trials per GPU | gpus_per_trial | trials ended | failed | span (s) | trials/hour |" \
        "vs 1 per GPU | wall (s) | peak GPU MiB | note |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    printf '%s\n' "${rows[@]}"
    echo
} >"$work/table.md"

cat "$work/table.md"
if [[ ! -f $results ]]; then
    title="# GPU packing results\n\nAppended by benchmarks/gpu_check.sh, one run a section.\n\n"
    printf '%b' "$title" >"$results"
fi
cat "$work/table.md" >>"$results"
echo "gpu_check: appended to $results; sweep logs and MLflow stores in $work" >&2
