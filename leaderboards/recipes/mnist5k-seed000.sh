#!/usr/bin/env bash
# The seed-000 study (Mandal & Gao, "Improving defensive distillation using teacher assistant")
# on mnist5k: defensive distillation, the teacher-assistant chain and 6-step chains over
# T in {1, 2, 5, 10, 20, 30, 40}.
#
#   bash leaderboards/recipes/mnist5k-seed000.sh [train|eval|figures|all]
#
# One 6-link chain per temperature (kdbench train --method takd --chain 6): the teacher is trained
# by defensive distillation at T on hard labels, then six same-architecture links, each on the
# previous model's softmax(Z/T) labels.  Link 1 is the plain defensively distilled student,
# link 2 the student of the teacher -> assistant -> student chain, links 3-6 the multi-step
# chain.  Budget: the Papernot/Carlini 9-layer net (cwnet), EPOCHS (20) epochs per model, SGD
# lr LR (0.05) Nesterov momentum 0.9, batch 128, no augmentation (the paper: 50 epochs at 0.01).
# Every model of every chain starts from one INIT (natural, INIT_EPOCHS = 5 epochs at T = 1), as
# the reference starts teacher and student from one init model: a cwnet that has not left chance
# does not start training at high T, whose gradients are 1/T smaller (measured: the T = 100 DD
# teacher stayed at chance, 8.4 %, for 5 epochs after a 1-epoch init that had not left chance).
# Models are selected on clean accuracy, and the monitor runs no PGD (eval.pgd_steps=0: PGD-20
# on its 500 points is 10 000 forward-backward passes, 2.5x an epoch's 4 000).  Evaluation at
# T = 1: accuracy, sensitivity and confidence on 1 000 test points; rho_adv under kdbench's
# batched CW-L0, CW-L2 and CW-L-inf minimal-perturbation attacks (CW_ATTACKS) on CW_N (100) points.
set -euo pipefail
STAGE=${1:-all}
RUNS=${RUNS:-runs/seed000-mnist5k}
OUT=${OUT:-leaderboards/seed000-mnist5k}
TEMPS=${TEMPS:-"1 2 5 10 20 30 40"}
EPOCHS=${EPOCHS:-20}
INIT_EPOCHS=${INIT_EPOCHS:-5}
LR=${LR:-0.05}
CW_N=${CW_N:-100}
# 100 Adam steps per constant for CW-L0 and CW-L-inf (issue 4's benchmark: 100 % success and a
# smaller L0 than ART's at 100 steps; Carlini's 1000 cost up to 10x more), Carlini's settings for
# CW-L2 (at 100 steps it succeeded on a third of the points: saturated pixels barely move)
CW_ATTACKS=${CW_ATTACKS:-"cw-l0:steps=100,cw-l2,cw-linf-min:steps=100"}
KD=${KD:-kdbench}
MODELS="teacher step-1 step-2 step-3 step-4 step-5 student"

if [ "$STAGE" = train ] || [ "$STAGE" = all ]; then
  [ -f "$RUNS/init/metrics.jsonl" ] && [ "$(wc -l < "$RUNS/init/metrics.jsonl")" -ge "$INIT_EPOCHS" ] || \
    $KD train --config configs/takd/mnist5k.yaml --set teachers=[] --method natural --set method_params={} \
      --set eval.pgd_steps=0 --epochs "$INIT_EPOCHS" --lr "$LR" --out "$RUNS/init" --no-progress
  for T in $TEMPS; do
    [ -f "$RUNS/T$T/student/best.safetensors" ] && [ -f "$RUNS/T$T/student/metrics.jsonl" ] && \
      [ "$(wc -l < "$RUNS/T$T/student/metrics.jsonl")" -ge "$EPOCHS" ] && continue
    resume=""; [ -d "$RUNS/T$T/teacher" ] && resume="--resume"
    $KD train --config configs/takd/mnist5k.yaml --set teachers=[] --set method_params.T="$T" --set eval.pgd_steps=0 \
      --epochs "$EPOCHS" --lr "$LR" --init-from "$RUNS/init" --chain 6 --out "$RUNS/T$T" --no-progress $resume
  done
fi
if [ "$STAGE" = eval ] || [ "$STAGE" = all ]; then
  for T in $TEMPS; do for m in $MODELS; do
    d="$RUNS/T$T/$m"
    [ -f "$d/acc.json" ] || $KD evaluate --model "$d" --n 1000 --attacks fgsm --no-checks --no-teachers --db "" \
      --out "$d/acc.json" --no-progress > /dev/null
    [ -f "$d/cw.json" ] || $KD evaluate --model "$d" --n "$CW_N" --attacks "$CW_ATTACKS" --no-checks \
      --no-teachers --db "$RUNS/results.db" --resume --out "$d/cw.json" --no-progress > /dev/null
  done; done
fi
if [ "$STAGE" = figures ] || [ "$STAGE" = all ]; then
  mkdir -p "$OUT"
  python leaderboards/recipes/seed000_figures.py "$RUNS" "$OUT" --temps $TEMPS
fi
