#!/usr/bin/env bash
# Do the CUDA paths work, and how fast are they? One command, about 6 minutes on one recent GPU:
#
#   bash scripts/gpu_check.sh          # on GPU 0 (NPROC=2 bash scripts/gpu_check.sh: torchrun on 2 GPUs)
#   bash scripts/gpu_check.sh --cpu    # the same steps at tiny sizes on the CPU (CI runs it)
#
# 1. torchrun: datafree_kd.py for one epoch under torchrun (NPROC processes, one per GPU, NCCL),
#    and an NCCL all-reduce checked and timed (benchmarks/dist_check.py);
# 2. ImageNet: one fast_meta_imagenet synthesis call (50 steps, batch 100, 224x224, ResNet-50 ->
#    ResNet-18) and 20 DeepInversion steps at batch 64 on the ResNet-50 teacher, with the hours
#    of the initial-pool recipe (docs/imagenet-and-torchrun.md) (21 batches of 100 images, 2,000 steps each);
# 3. epoch cost (benchmarks/epoch_cost.py --preset cifar): the published CIFAR-10 Fast-5 setting
#    (wrn40_2 -> wrn16_1, batch 256, 400 KD steps per epoch) on random CIFAR-shaped data, 2 epochs
#    per setting in fp32, fp16 (GradScaler) and bf16, with and without channels_last and
#    torch.compile; seconds per epoch and the hours of the 220-epoch schedule beside the paper's
#    0.08 h of synthesis. The settings run in order of interest until the time left is spent.
#
# Random weights throughout: costs, not accuracy. A step that fails is reported and the others
# still run; the exit status is 1 if any failed. Everything printed is also written to
# $OUT/gpu_check.txt when OUT is set, else to run/gpu_check/gpu_check.txt.
# GPU_CHECK_SECONDS (default 360; 3600 with --cpu) bounds the whole check; step 3 gets what steps 1-2 left.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
case "${1:-}" in
  "") ;;
  --cpu) MODE=cpu ;;
  -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "gpu_check.sh: unknown argument '$1'; use --cpu for the tiny CPU check, or no argument" >&2; exit 2 ;;
esac

if [ "$MODE" = gpu ] && ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: CUDA is not available here; run 'bash scripts/gpu_check.sh --cpu' for the CPU check" >&2
  exit 2
fi

REPORT_DIR=${OUT:-run/gpu_check}
mkdir -p "$REPORT_DIR"
REPORT="$REPORT_DIR/gpu_check.txt"
: > "$REPORT"
TOTAL=${GPU_CHECK_SECONDS:-360}
[ "$MODE" = cpu ] && TOTAL=${GPU_CHECK_SECONDS:-3600}   # a correctness check: every setting runs, however slow the CPU
START=$SECONDS
FAILED=()

if [ "$MODE" = gpu ]; then
  DEVICE=cuda
  NPROC=${NPROC:-1}
  KD_TINY=()
  SETTINGS=()                 # epoch_cost.py's GPU order
  COMPILE=()
  TEST_SIZE=10000
  EPOCHS=2
  FAST_IMAGENET=(--img_size 224 --batch_size 100 --g_steps 50)
  DEEPINV=(--img_size 224 --batch_size 64 --g_steps 20)
  MEGABYTES=256
  SETTING_TIMEOUT=150
  LIMIT_SCALE=1
else
  DEVICE=cpu
  NPROC=${NPROC:-2}           # two gloo processes: a real all-reduce
  KD_TINY=(--batch_size 8 --kd_steps 2 --ep_steps 2 --g_steps 1)
  SETTINGS=(--settings fp32,fp16+cl,bf16+cl+compile)   # every flag once
  COMPILE=(--compile_backend aot_eager)                 # traces in seconds; inductor would take minutes
  TEST_SIZE=64
  EPOCHS=2
  FAST_IMAGENET=(--img_size 32 --batch_size 2 --g_steps 2)
  DEEPINV=(--img_size 32 --batch_size 2 --g_steps 2)
  MEGABYTES=4
  SETTING_TIMEOUT=600
  LIMIT_SCALE=4               # a busy CPU must not fail the check on time
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi

# step NAME SECONDS COMMAND...: run it (stopped after SECONDS), keep its output in the report,
# remember a failure, go on.
step() {
  local name=$1 limit=$(($2 * LIMIT_SCALE))
  shift 2
  echo "== $name ($((SECONDS - START)) s elapsed)" | tee -a "$REPORT"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$REPORT"
  local status=${PIPESTATUS[0]}
  if [ "$status" -ne 0 ]; then
    FAILED+=("$name (exit status $status)")
    echo "!! $name failed with exit status $status" | tee -a "$REPORT"
  fi
}

{
  echo "gpu_check.sh ($MODE) on $(hostname), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  python -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '|',
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU', '| cuDNN', torch.backends.cudnn.version())"
  [ "$MODE" = gpu ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} 2>&1 | tee -a "$REPORT"

step "torchrun: NCCL/gloo all-reduce on $NPROC process(es)" 120 \
  python -m torch.distributed.run --standalone --nproc_per_node="$NPROC" benchmarks/dist_check.py \
  --megabytes "$MEGABYTES"
step "torchrun: datafree_kd.py, one epoch on $NPROC process(es)" 240 \
  python benchmarks/epoch_cost.py --preset cifar --device "$DEVICE" --nproc "$NPROC" --settings fp32 --epochs 1 \
  --no_floor --test_size "$TEST_SIZE" --setting_timeout "$SETTING_TIMEOUT" --verbose -- "${KD_TINY[@]}"
step "ImageNet: one fast_meta_imagenet call" 150 \
  python benchmarks/synthesis_call.py --method fast_meta_imagenet --student resnet18_imagenet --device "$DEVICE" \
  "${FAST_IMAGENET[@]}"
step "ImageNet: DeepInversion steps, fp32" 120 \
  python benchmarks/synthesis_call.py --method deepinv --device "$DEVICE" "${DEEPINV[@]}" \
  --recipe_steps 2000 --recipe_images 2100
step "ImageNet: DeepInversion steps, bf16 + channels_last" 120 \
  python benchmarks/synthesis_call.py --method deepinv --device "$DEVICE" "${DEEPINV[@]}" --precision bf16 \
  --channels_last --recipe_steps 2000 --recipe_images 2100

LEFT=$((TOTAL - (SECONDS - START) - 10))
[ "$LEFT" -lt 60 ] && LEFT=60
step "epoch cost: CIFAR-10 Fast-5, wrn40_2 -> wrn16_1 ($LEFT s budget)" $((LEFT + 60)) \
  python benchmarks/epoch_cost.py --preset cifar --device "$DEVICE" --epochs "$EPOCHS" --test_size "$TEST_SIZE" \
  --budget "$LEFT" --setting_timeout "$SETTING_TIMEOUT" --count_syncs --verbose "${SETTINGS[@]}" "${COMPILE[@]}" \
  --table "$REPORT_DIR/epoch_cost.txt" --json "$REPORT_DIR/epoch_cost.json" -- "${KD_TINY[@]}"

echo "== done in $((SECONDS - START)) s; report: $REPORT" | tee -a "$REPORT"
if [ "${#FAILED[@]}" -gt 0 ]; then
  printf 'gpu_check: FAILED: %s\n' "${FAILED[@]}" | tee -a "$REPORT"
  exit 1
fi
echo "gpu_check: all steps passed" | tee -a "$REPORT"
