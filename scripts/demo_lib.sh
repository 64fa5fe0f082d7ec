# Shared steps of the offline demos (sourced by scripts/demo_*.sh): every step is skipped when
# its result exists and resumed when it was interrupted.

# --resume when RUN_DIR holds an interrupted run.
resume_flag() { [ -f "$1/last.pth" ] && echo --resume || true; }

# ensure_teacher DATASET MODEL TRAIN_SCRATCH_ARGS...: train the teacher unless
# checkpoints/pretrained/DATASET_MODEL.pth exists.
ensure_teacher() {
  local dataset=$1 model=$2
  shift 2
  if [ ! -f "checkpoints/pretrained/${dataset}_${model}.pth" ]; then
    python train_scratch.py --model "$model" --dataset "$dataset" "$@" \
      $(resume_flag "checkpoints/scratch/${dataset}_${model}")
  fi
}

# distil CONFIG RUN_DIR EXTRA_ARGS...: datafree_kd.py with CONFIG, resumed from RUN_DIR if interrupted.
distil() {
  local config=$1 run_dir=$2
  shift 2
  python datafree_kd.py --config "$config" $(resume_flag "$run_dir") "$@"
}
