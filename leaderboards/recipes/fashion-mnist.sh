#!/usr/bin/env bash
# The Fashion-MNIST main board (leaderboards/fashion-mnist.{csv,md}): every method under one budget.
#
#   bash leaderboards/recipes/fashion-mnist.sh [train|eval|board|all]     (default: all)
#
# Budget (sized for a 2-core CPU machine): a seeded 5 000-image training subset, smallcnn students
# (94 k parameters) trained 5 epochs, batch 128, SGD lr 0.1, eps 0.1 (L-inf), PGD-10 inner steps;
# teachers smallcnn width 48 (211 k parameters) trained 10 epochs on the same budget (natural,
# PGD-AT, TRADES) plus a small ViT (PGD-AT) for DARHT's heterogeneous setting.  Every step skips
# what is already done, so the recipe resumes where it stopped (an interrupted training run
# continues with --resume).  Evaluation: the standard suite on 1 000 test points for seed 0, the
# quick suite on the same 1 000 points for seeds 1 and 2; all results go to one SQLite store.
set -euo pipefail
STAGE=${1:-all}
RUNS=${RUNS:-runs/board-fmnist}
BOARD=${BOARD:-leaderboards/fashion-mnist}
SEEDS=${SEEDS:-"0 1 2"}
METHODS=${METHODS:-"natural pgd-at trades ard iad iad-ii rslad mtard adaad darht darht-het smaraad smaraadpp agkd-bml dd takd"}
KD=${KD:-kdbench}
N=${N:-1000}
COMMON="--dataset fashion-mnist --train-subset 5000 --batch-size 128 --no-progress"
T48="--model smallcnn --set model_kwargs.width=48 --epochs 10"

run() {  # run DIR ARGS...: train into DIR unless finished; resume an interrupted run
  local dir=$1; shift
  if [ -f "$dir/state.pt" ] && python - "$dir" <<'PY'
import sys, yaml, torch
d = sys.argv[1]
cfg = yaml.safe_load(open(f"{d}/config.yaml"))
st = torch.load(f"{d}/state.pt", map_location="cpu", weights_only=True)
sys.exit(0 if st["epoch"] + 1 >= cfg["epochs"] else 1)
PY
  then return 0; fi
  if [ -f "$dir/state.pt" ]; then $KD train --out "$dir" --resume --no-progress; else $KD train "$@" --out "$dir"; fi
}

teachers() {
  run "$RUNS/teacher-natural" --method natural $COMMON $T48 --seed 0
  run "$RUNS/teacher-pgd-at" --method pgd-at $COMMON $T48 --seed 0
  run "$RUNS/teacher-trades" --method trades $COMMON $T48 --seed 0
  run "$RUNS/teacher-vit" --method pgd-at $COMMON --model vit --epochs 10 --seed 0
}

student() {  # student METHOD SEED
  local m=$1 s=$2 t="--teacher $RUNS/teacher-pgd-at" id=$1 extra=""
  case $m in
    natural|pgd-at|trades) t="" ;;
    iad-ii|mtard) t="--teacher $RUNS/teacher-pgd-at --teacher $RUNS/teacher-natural" ;;
    agkd-bml) t="--teacher $RUNS/teacher-natural" ;;
    darht) t="--teacher $RUNS/teacher-pgd-at --teacher $RUNS/teacher-trades" ;;
    darht-het) m=darht; t="--teacher $RUNS/teacher-pgd-at --teacher $RUNS/teacher-trades --teacher $RUNS/teacher-vit" ;;
    dd|takd) extra="--set method_params.T=5" ;;
  esac
  run "$RUNS/$id-s$s" --method "$m" $COMMON --model smallcnn --epochs 5 --seed "$s" $t $extra
}

evaluate() {  # evaluate DIR SUITE
  [ -f "$1/eval-$2.json" ] && return 0
  $KD evaluate --model "$1" --dataset fashion-mnist --num-points "$N" --suite "$2" --db "$RUNS/results.db" \
    --resume --out "$1/eval-$2.json" --no-progress
}

if [ "$STAGE" = train ] || [ "$STAGE" = all ]; then
  teachers
  for s in $SEEDS; do for m in $METHODS; do student "$m" "$s"; done; done
fi
if [ "$STAGE" = eval ] || [ "$STAGE" = all ]; then
  for t in natural pgd-at trades vit; do evaluate "$RUNS/teacher-$t" standard; done
  for s in $SEEDS; do for m in $METHODS; do
    [ "$s" = 0 ] && evaluate "$RUNS/$m-s$s" standard || evaluate "$RUNS/$m-s$s" quick
  done; done
fi
if [ "$STAGE" = board ] || [ "$STAGE" = all ]; then
  $KD leaderboard --db "$RUNS/results.db" --dataset fashion-mnist --out "$BOARD" \
    --checkpoints "$(dirname "$BOARD")/checkpoints/fashion-mnist"
fi
