#!/usr/bin/env bash
# Paper-scale reproductions on CIFAR-10 / CIFAR-100 (not run on kdbench's CPU CI; for GPU users).
#
#   bash recipes/paper-scale.sh cifar10 [train|eval|board|all]
#   STUDENT=mobilenetv2 bash recipes/paper-scale.sh cifar100
#
# Every method trains from configs/<method>/<dataset>.yaml (the official optimiser, schedule,
# attack and loss constants, teachers by RobustBench name; docs/methods.md), with a ResNet-18
# student (STUDENT=mobilenetv2 for the papers' MN-V2 rows).  Teachers named runs/... are trained
# first from their own configs (natural, the DD teacher, the ViT teachers of DARHT).  Evaluation:
# the paper suite (FGSM, PGD-20 at 2/255, CW-inf 20 steps, AutoAttack) on the full 10 000-image
# test set, 8/255.  leaderboards/paper-reported.md lists the numbers the papers report for the
# same settings, to compare with the board this writes (leaderboards/<dataset>-<student>/board.*).
# Needs the CIFAR files under --data-dir (DATA_DIR) and RobustBench checkpoints under
# ROBUSTBENCH_MODEL_DIR (see docs/install.md); resumable like every kdbench run.
set -euo pipefail
DS=${1:?dataset: cifar10 or cifar100}
STAGE=${2:-all}
STUDENT=${STUDENT:-resnet18}
RUNS=${RUNS:-runs/paper-$DS-$STUDENT}
DATA_DIR=${DATA_DIR:-data}
KD=${KD:-kdbench}
METHODS=${METHODS:-"pgd-at trades ard iad iad-ii rslad mtard adaad adaiad darht smaraad smaraadpp agkd-bml"}

train() {  # train OUT CONFIG [ARGS...]
  local out=$1 cfg=$2; shift 2
  if [ -f "$out/state.pt" ]; then $KD train --out "$out" --resume; else
    $KD train --config "$cfg" --data-dir "$DATA_DIR" --out "$out" "$@"; fi
}

if [ "$STAGE" = train ] || [ "$STAGE" = all ]; then
  # the kdbench-trained teachers some configs name
  train "runs/$DS-natural" "configs/natural/$DS.yaml"
  train "runs/$DS-vit-pgd-at" "configs/pgd-at/$DS-vit.yaml"
  [ "$DS" = cifar100 ] && train "runs/cifar100-natural-resnet18" "configs/natural/$DS.yaml" --model resnet18
  [ "$DS" = cifar10 ] && train "runs/cifar10-natural-wrn-28-10" "configs/natural/$DS.yaml" --model wrn-28-10
  for m in $METHODS; do
    model="--model $STUDENT"
    [ "$m" = agkd-bml ] && model=""  # WRN-28-10 from its natural teacher, as the official code
    [ "$m" = trades ] || [ "$m" = pgd-at ] || train "$RUNS/$m" "configs/$m/$DS.yaml" $model
  done
  train "$RUNS/pgd-at" "configs/pgd-at/$DS.yaml" --model "$STUDENT"
  train "$RUNS/trades" "configs/trades/$DS.yaml" --model "$STUDENT"
fi
if [ "$STAGE" = eval ] || [ "$STAGE" = all ]; then
  for m in $METHODS; do
    [ -f "$RUNS/$m/eval-paper.json" ] || $KD evaluate --model "$RUNS/$m" --data-dir "$DATA_DIR" --suite paper \
      --db "$RUNS/results.db" --resume --out "$RUNS/$m/eval-paper.json"
  done
fi
if [ "$STAGE" = board ] || [ "$STAGE" = all ]; then
  mkdir -p "leaderboards/$DS-$STUDENT"
  $KD leaderboard --db "$RUNS/results.db" --dataset "$DS" --out "leaderboards/$DS-$STUDENT/board" \
    --title "kdbench leaderboard: $DS, $STUDENT students (paper scale)"
fi
