#!/usr/bin/env bash
# The Fashion-MNIST main board (leaderboards/fashion-mnist/board.{csv,md,json}): every method under one budget.
#
#   bash recipes/fashion-mnist.sh [restore|train|eval|save|board|all]     (default: all)
#
# Budget (sized for a 2-core CPU machine): a seeded 5 000-image training subset, smallcnn students
# (94 k parameters) trained 5 epochs, batch 128, SGD lr 0.1, eps 0.1 (L-inf), PGD-10 inner steps;
# teachers smallcnn width 48 (211 k parameters) trained 10 epochs on the same budget (natural,
# PGD-AT, TRADES) plus a small naturally trained ViT (Adam) for DARHT's heterogeneous setting
# (teachers differing in architecture and training algorithm, as the DARHT paper's natural ViTs).  Every step skips
# what is already done, so the recipe resumes where it stopped (an interrupted training run
# continues with --resume).  TAKD is seed 000's chain: PGD-AT teacher -> assistant -> student, all
# smallcnn, each link the DD budget (the row's cost counts both links).  Checkpoints are selected
# by the training monitor on 500 of the evaluation points (eval.split=test, the papers' practice;
# docs/training.md measures what that does and offers eval.split=holdout).  Evaluation on 1 000 test
# points: the standard suite for seed 0 (reached through the quick suite, whose attacks the store
# reuses) with the distillation metrics against the run's teachers, the quick suite without the
# validity checks on SEED_N (500) of the same points for seeds 1 and 2 (the board's seed statistics
# use the points all seeds share); all results go to one SQLite store, in chunks of 250 points (what an interruption loses).  Two workers (OMP_NUM_THREADS=1 each) may run a stage
# at once: runs and evaluations are locked.
# Cost measured on a 2-core CPU: a student trains in 2 (DD) to 20 minutes (SmaraAD) with two
# workers; the quick suite takes about 20 minutes per robust smallcnn at one thread (APGD-T's 9
# targets x 100 steps on every robust point dominate); the standard suite's Square and AutoAttack
# add about 70 more when AutoAttack runs as one reference call (measured on pgd-at and trades,
# four workers sharing the two cores: 17-28 minutes per 250-point AutoAttack chunk, 10 per Square
# chunk), about half that composed per point (kdbench's default since 6d597db: AutoAttack reuses
# the suite's APGD-CE, APGD-T and Square and runs only FAB-T; docs/evaluate.md); the width-48
# teachers cost about 3x a student.
# "restore" rebuilds the committed finished runs (BOARD/runs/<run>/: config, metrics and best.sha256,
# the weights from the content-addressed STORE/<sha256>.safetensors) and the results store
# (BOARD/results.db) under RUNS; "save" commits them the same way.
set -euo pipefail
STAGE=${1:-all}
RUNS=${RUNS:-runs/board-fmnist}
BOARD=${BOARD:-leaderboards/fashion-mnist}  # the board's outputs: board.*, results/, plots/, runs/, results.db
STORE=${STORE:-leaderboards/checkpoints}  # every committed checkpoint, by content hash
SEEDS=${SEEDS:-"0 1 2"}
METHODS=${METHODS:-"natural pgd-at trades ard iad iad-ii rslad mtard adaad darht darht-het smaraad smaraadpp agkd-bml dd takd"}
KD=${KD:-kdbench}
N=${N:-1000}
SEED_N=${SEED_N:-500}  # seeds 1-2: the first SEED_N of the same seeded sample (a subset of seed 0's points)
SUITE0=${SUITE0:-standard}
COMMON="--dataset fashion-mnist --train-subset 5000 --batch-size 128 --no-progress"
T48="--model smallcnn --set model_kwargs.width=48 --epochs 10"

finished() {  # finished DIR: the run in DIR has trained all its epochs
  [ -f "$1/best.safetensors" ] && [ -f "$1/metrics.jsonl" ] && python - "$1" <<'PY'
import sys, yaml
d = sys.argv[1]
cfg = yaml.safe_load(open(f"{d}/config.yaml"))
sys.exit(0 if sum(1 for _ in open(f"{d}/metrics.jsonl")) >= cfg["epochs"] else 1)
PY
}

run() {  # run DIR ARGS...: train into DIR unless finished; resume an interrupted run
  local dir=$1; shift
  finished "$dir" && return 0
  mkdir -p "$(dirname "$dir")"
  mkdir "$dir.lock" 2>/dev/null || { echo "another worker trains $dir"; return 0; }  # WORKERS=2: parallel runs
  local rc=0
  if [ -f "$dir/state.pt" ]; then $KD train --out "$dir" --resume --no-progress || rc=$?
  else $KD train "$@" --out "$dir" || rc=$?; fi
  rmdir "$dir.lock"
  [ $rc = 0 ] || echo "FAILED ($rc): $dir"
}

teachers() {
  run "$RUNS/teacher-natural" --method natural $COMMON $T48 --seed 0
  run "$RUNS/teacher-pgd-at" --method pgd-at $COMMON $T48 --seed 0
  run "$RUNS/teacher-trades" --method trades $COMMON $T48 --seed 0
  # the ViT: naturally trained with Adam (PGD-AT from scratch does not get off the ground in this budget)
  run "$RUNS/teacher-vit" --method natural $COMMON --model vit --epochs 10 --seed 0 --set optimizer.name=adam \
    --set optimizer.lr=0.001 --set optimizer.weight_decay=0
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
  for dir in $(echo "$t" | tr ' ' '\n' | grep "^$RUNS/"); do  # never distil from an unfinished teacher
    finished "$dir" || { echo "waiting for $dir: $id-s$s later"; return 0; }
  done
  if [ "$m" = takd ]; then
    chain "$RUNS/$id-s$s" --method takd --name "$id" $COMMON --model smallcnn --epochs 5 --seed "$s" $t $extra
  else run "$RUNS/$id-s$s" --method "$m" --name "$id" $COMMON --model smallcnn --epochs 5 --seed "$s" $t $extra; fi
}

chain() {  # chain ROOT ARGS...: teacher -> assistant -> student under ROOT (ROOT/assistant, ROOT/student)
  local root=$1; shift
  finished "$root/student" && return 0
  mkdir -p "$root"
  mkdir "$root.lock" 2>/dev/null || { echo "another worker trains $root"; return 0; }
  local rc=0
  $KD train "$@" --chain 2 --resume --out "$root" || rc=$?
  rmdir "$root.lock"
  [ $rc = 0 ] || echo "FAILED ($rc): $root"
}

trained() {  # trained NAME: the directory holding the run's final model
  if [ -d "$1/student" ] || [ "$(basename "$1" | sed 's/-s[0-9]*$//')" = takd ]; then echo "$1/student"; else echo "$1"; fi
}

evaluate() {  # evaluate DIR SUITE N [ARGS...]: skipped when done or when the run has not finished training
  local dir=$1 suite=$2 n=$3; shift 3
  dir=$(trained "$dir")
  [ -f "$dir/eval-$suite.json" ] && return 0
  finished "$dir" || { echo "not trained yet: $dir"; return 0; }
  mkdir "$dir.eval-lock" 2>/dev/null || { echo "another worker evaluates $dir"; return 0; }
  local rc=0
  $KD evaluate --model "$dir" --dataset fashion-mnist --num-points "$n" --suite "$suite" --db "$RUNS/results.db" \
    --chunk-size 250 --resume --out "$dir/eval-$suite.json" --no-progress "$@" > "$dir/eval-$suite.log" || rc=$?
  rmdir "$dir.eval-lock"
  [ $rc = 0 ] || echo "FAILED evaluation ($rc): $dir"
}

committed() {  # committed save|restore SRC DEST [SRC DEST ...]: runs to or from BOARD/runs and STORE
  [ $# -gt 1 ] || return 0
  python - "$STORE" "$@" <<'PY'
import sys
from kdbench.rundir import restore_run, save_run
store, how, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
for src, dest in zip(pairs[::2], pairs[1::2]):
    save_run(src, dest, store) if how == "save" else restore_run(src, store, dest)
PY
}

if [ "$STAGE" = restore ] || [ "$STAGE" = all ]; then
  # finished runs are committed (config, metrics, weights by hash): bring them back instead of retraining
  mkdir -p "$RUNS"
  todo=()
  for p in "$BOARD"/runs/*/best.sha256 "$BOARD"/runs/*/*/best.sha256; do  # */*/: the links of chains
    [ -f "$p" ] || continue
    d=$(dirname "$p"); n=${d#"$BOARD"/runs/}
    [ -e "$RUNS/$n/best.safetensors" ] || todo+=("$d" "$RUNS/$n")
  done
  committed restore "${todo[@]}"
  [ -f "$RUNS/results.db" ] || [ ! -f "$BOARD/results.db" ] || cp "$BOARD/results.db" "$RUNS/results.db"
fi
if [ "$STAGE" = train ] || [ "$STAGE" = all ]; then
  # Several workers may run this stage at once (one thread each is faster than one worker with two
  # on small CNNs): each run is locked while it trains, and students wait for their teachers.
  for pass in 1 2 3 4 5 6 7 8; do
    teachers
    for s in $SEEDS; do for m in $METHODS; do student "$m" "$s"; done; done
    todo=0
    for s in $SEEDS; do for m in $METHODS; do finished "$(trained "$RUNS/$m-s$s")" || todo=1; done; done
    [ $todo = 0 ] && break
    sleep 60
  done
fi
if [ "$STAGE" = eval ] || [ "$STAGE" = all ]; then
  # Cheapest rows first: the quick suite for seed 0 (students, then teachers), then for the other
  # seeds (the board's seed statistics), then the standard suite for seed 0 (students, then
  # teachers), which takes the quick suite's attacks from the store and adds AutoAttack and
  # Square (about 70 core-minutes per robust smallcnn), with the distillation metrics against the
  # run's teachers.
  for s in $SEEDS; do [ "$s" = 0 ] || continue
    for m in $METHODS; do evaluate "$RUNS/$m-s0" quick "$N" --no-teachers; done
    for t in natural pgd-at trades vit; do evaluate "$RUNS/teacher-$t" quick "$N"; done
  done
  for s in $SEEDS; do [ "$s" = 0 ] && continue
    for m in $METHODS; do evaluate "$RUNS/$m-s$s" quick "$SEED_N" --no-teachers --no-checks; done
  done
  for s in $SEEDS; do [ "$s" = 0 ] || continue
    for m in $METHODS; do evaluate "$RUNS/$m-s0" "$SUITE0" "$N"; done
    for t in natural pgd-at trades vit; do evaluate "$RUNS/teacher-$t" "$SUITE0" "$N"; done
  done
fi
if [ "$STAGE" = save ] || [ "$STAGE" = all ]; then
  # keep every finished run (under 1 MB of weights each) and the results store, evaluation
  # progress included, so the next machine resumes instead of retraining
  todo=()
  for d in "$RUNS"/*/ "$RUNS"/*/*/; do  # */*/: the links of teacher-assistant chains
    n=${d#"$RUNS"/}; n=${n%/}
    case "$n" in *lock*) continue;; esac
    finished "$d" || continue
    todo+=("$d" "$BOARD/runs/$n")
  done
  committed save "${todo[@]}"
  [ ! -f "$RUNS/results.db" ] || cp "$RUNS/results.db" "$BOARD/results.db"
fi
if [ "$STAGE" = board ] || [ "$STAGE" = all ]; then
  $KD leaderboard --db "$RUNS/results.db" --dataset fashion-mnist --out "$BOARD/board" \
    --title "kdbench leaderboard: Fashion-MNIST (smallcnn students, 5 000-image subset, 5 epochs)" \
    --results "$BOARD/results" --plots "$BOARD/plots" --checkpoints "$BOARD/runs" --checkpoint-store "$STORE"
fi
