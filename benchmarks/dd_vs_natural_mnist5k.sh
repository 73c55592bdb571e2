#!/usr/bin/env bash
# rho_adv and sensitivity of a naturally trained and a defensively distilled (T = 100) model on
# mnist5k (issue "Minimal-perturbation robustness"): the reference procedure of methods.md 8.1 --
# a 1-epoch init at T = 1, a teacher from it at T = 100 on hard labels, a student from the same
# init at T = 100 on the teacher's soft labels, tested at T = 1 -- beside a natural model from the
# same init.  cwnet (Papernot/Carlini 9-layer net), SGD Nesterov, no augmentation, EPOCHS epochs.
#   bash benchmarks/dd_vs_natural_mnist5k.sh [RUNS_DIR]
# INIT_EPOCHS (5: the reference's one epoch of full MNIST is 469 steps, of mnist5k 39 -- too few
# for the cwnet to leave chance, after which training at T = 100, whose gradients are 1/T smaller,
# does not start either: 5 epochs at T = 1 reach 95 %), EPOCHS (20), CW_N (100 points for the minimal-perturbation attacks) and CW_ATTACKS (Carlini's
# settings by default; e.g. "cw-l0:steps=100,cw-l2,cw-linf-min" for a quicker, weaker CW-L0) scale it.
set -euo pipefail
RUNS=${1:-runs/dd-vs-natural}
EPOCHS=${EPOCHS:-20}
INIT_EPOCHS=${INIT_EPOCHS:-5}
LR=${LR:-0.05}
KD=${KD:-kdbench}
CW_N=${CW_N:-100}
CW_ATTACKS=${CW_ATTACKS:-cw-l0,cw-l2,cw-linf-min}
BASE="--config configs/dd/mnist5k.yaml --lr $LR --no-progress"
NOTEACHER="--set teachers=[]"  # the config names a teacher: drop it where none is wanted (not with --teacher)
done_() { [ -f "$1/metrics.jsonl" ] && [ "$(wc -l < "$1/metrics.jsonl")" -ge "$2" ]; }
done_ "$RUNS/init" "$INIT_EPOCHS" || $KD train $BASE $NOTEACHER --method natural --set method_params={} \
  --epochs "$INIT_EPOCHS" --out "$RUNS/init"
done_ "$RUNS/natural" "$EPOCHS" || $KD train $BASE $NOTEACHER --method natural --set method_params={} \
  --epochs "$EPOCHS" --init-from "$RUNS/init" --out "$RUNS/natural"
done_ "$RUNS/dd-teacher" "$EPOCHS" || $KD train $BASE $NOTEACHER --method dd --set method_params.T=100 \
  --epochs "$EPOCHS" --init-from "$RUNS/init" --out "$RUNS/dd-teacher"
done_ "$RUNS/dd-student" "$EPOCHS" || $KD train $BASE --method dd --set method_params.T=100 --epochs "$EPOCHS" \
  --teacher "$RUNS/dd-teacher" --init-from "$RUNS/init" --out "$RUNS/dd-student"
for m in natural dd-student; do
  [ -f "$RUNS/$m/acc.json" ] || $KD evaluate --model "$RUNS/$m" --n 1000 --attacks pgd,cw-linf --db "" \
    --no-teachers --out "$RUNS/$m/acc.json" --no-progress > "$RUNS/$m/acc.txt"
  [ -f "$RUNS/$m/cw.json" ] || $KD evaluate --model "$RUNS/$m" --n "$CW_N" --attacks "$CW_ATTACKS" \
    --no-checks --no-teachers --db "" --out "$RUNS/$m/cw.json" --no-progress > "$RUNS/$m/cw.txt"
done
python - "$RUNS" <<'PY'
import json, sys
r = sys.argv[1]
for m in ("natural", "dd-student"):
    a, c = json.load(open(f"{r}/{m}/acc.json")), json.load(open(f"{r}/{m}/cw.json"))
    mp = c["min_perturbation"]
    flags = ",".join(f["name"] for f in a["validity"]["flags"]) or "none"
    print(f"{m:10s} clean {a['clean_accuracy']:.4f}  PGD {a['attacks']['pgd']['robust_accuracy']:.4f}  "
          f"CW-inf {a['attacks']['cw-linf']['robust_accuracy']:.4f}  worst {a['worst_case']['robust_accuracy']:.4f}  "
          f"sensitivity {a['sensitivity']['mean']:.3g} (<1e-10: {a['sensitivity']['fraction_below_1e-10']:.1%})  "
          f"flags {flags}")
    print("           rho_adv mean (success): " + ", ".join(
        f"{k} {v['mean']:.3f} ({v['success_rate']:.0%})" for k, v in mp.items() if v["mean"] is not None))
PY
