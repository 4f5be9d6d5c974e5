#!/usr/bin/env bash
# The prepared GPU check: one script, under 8 minutes on one GPU, whose output is committed to
# benchmarks/results/gpu-check-DATE-DEVICE.md with the date and the device.
#
#   benchmarks/gpu_check.sh                 # on a machine with a GPU (after `make install`)
#   benchmarks/gpu_check.sh --dry --out DIR # CPU dry mode: a tiny model, the same code paths
#
# 1. bf16 training tokens/s and MFU: expunge's loop vs HF Trainer, a random ~1.1B Llama
#    (full fine-tuning, batch 8 x 512 tokens);
# 2. greedy match vs generate on the embedded model at batch 1, 16 and 64;
# 3. MEraser's two phases (erase, distillation recovery) on the embedded model, timed;
# 4. `accelerate launch` with configs/accelerate/fsdp.yaml on one GPU (our loop under FSDP).
# Every section has its own time limit, so one that hangs cannot eat the others' time; a failed
# section is reported as failed, with its last lines, and the script goes on.
# The dry mode is run by tests/test_gpu_check.py so that the script cannot rot.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-$ROOT/.venv/bin/python}
DRY=0
OUT=benchmarks/results
while [ $# -gt 0 ]; do
  case "$1" in
    --dry) DRY=1 ;;
    --out) OUT=$2; shift ;;
    *) echo "usage: $0 [--dry] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONWARNINGS=ignore

DEVICE=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")')
if [ "$DRY" = 0 ] && [ "$DEVICE" = cpu ]; then
  echo "no GPU here: run with --dry for the CPU dry mode" >&2
  exit 2
fi
STAMP=$(date -u +%Y-%m-%d)
SLUG=$(echo "$DEVICE" | tr -c 'A-Za-z0-9\n' '-' | tr -s '-')
REPORT="$OUT/gpu-check-$STAMP-$SLUG$([ "$DRY" = 1 ] && echo -dry).md"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if [ "$DRY" = 1 ]; then
  # tiny sizes on the CPU: what matters is that every section still runs end to end
  MODEL=$WORK/tiny-llama
  "$PY" benchmarks/gpu_check.py tiny-dir "$MODEL" >/dev/null 2>&1 || exit 1
  export EXPUNGE_CACHE=${EXPUNGE_CACHE:-$WORK/cache}
  TRAIN_ARGS=(--size tiny --steps 2 --warmup 1 --batch-size 2 --seq-len 16)
  GREEDY_ARGS=(--tiny --cases 8 --batch-size 1 4 8)
  METHOD_ARGS=(--model "$MODEL" --steps 1 --warmup 1 --set cfg.n_erase=8 --set cfg.n_recover=4)
  LIMIT=120
else
  MODEL=smollm2-135m
  TRAIN_ARGS=(--size 1b --steps 12 --warmup 2 --batch-size 8 --seq-len 512)
  GREEDY_ARGS=(--cases 64 --batch-size 1 16 64)
  METHOD_ARGS=(--model "$MODEL" --steps 20 --warmup 2)
  LIMIT=150
fi

{
  echo "# GPU check: $DEVICE ($STAMP)"
  echo
  echo "Command: \`benchmarks/gpu_check.sh$([ "$DRY" = 1 ] && echo ' --dry')\` (commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))."
  "$PY" -c 'import torch, transformers, accelerate; print(f"torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}, CUDA {torch.version.cuda}")'
  [ "$DRY" = 1 ] && echo "Dry mode: a tiny random model on the CPU; the figures only show that every section runs."
} >"$REPORT"

section() {  # section TITLE LIMIT COMMAND...: run, keep its output, record status and time
  local title=$1 limit=$2
  shift 2
  local started=$SECONDS
  local log=$WORK/section.log
  timeout "$limit" "$@" >"$log" 2>&1
  local status=$?
  {
    echo
    echo "## $title"
    echo
    echo "\`$*\` — exit $status, $((SECONDS - started)) s"
    echo
    echo '```'
    if [ $status = 0 ]; then
      grep -v '^\s*$' "$log" | tail -n 40
    else  # the error line first: a launcher's traceback would push it out of the tail
      grep -E '^([A-Za-z.]*Error|error)\b' "$log" | head -n 5
      tail -n 25 "$log"
    fi
    echo '```'
  } >>"$REPORT"
  echo "$title: exit $status ($((SECONDS - started)) s)"
}

section "1. training: expunge loop vs HF Trainer (tokens/s, MFU)" "$LIMIT" \
  "$PY" benchmarks/gpu_check.py train "${TRAIN_ARGS[@]}"
section "2. greedy match vs generate" "$LIMIT" \
  "$PY" benchmarks/bench_greedy_match.py "${GREEDY_ARGS[@]}"
section "3a. MEraser erase phase" "$LIMIT" \
  "$PY" benchmarks/bench_methods.py --method meraser_erase "${METHOD_ARGS[@]}"
section "3b. MEraser recovery phase (distillation)" "$LIMIT" \
  "$PY" benchmarks/bench_methods.py --method meraser_recover "${METHOD_ARGS[@]}"
# One process: FSDP's code path (wrapping, sharded state, gathering) on one GPU. accelerate runs
# CPU processes as plain multi-CPU data parallel; there the loop shards with torch's fully_shard
# itself (expunge.train.cpu_fsdp), so the dry mode runs the same launch through that path.
if [ "$DRY" = 1 ]; then
  # On a CPU accelerate's FSDP plugin refuses sync_module_states ("no available devices").
  FSDP_ARGS=(--mixed_precision no --fsdp_sync_module_states false --fsdp_cpu_ram_efficient_loading false)
else
  FSDP_ARGS=(--mixed_precision bf16)
fi
section "4. accelerate launch, configs/accelerate/fsdp.yaml, one process" "$LIMIT" \
  "$PY" -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml \
  --num_processes 1 "${FSDP_ARGS[@]}" --dynamo_backend no --main_process_port 29571 \
  benchmarks/gpu_check.py train "${TRAIN_ARGS[@]}" --ours-only
echo "report: $REPORT"
