#!/usr/bin/env bash
# Every method of Distillation methods I on Fashion-MNIST under one budget: smallcnn student,
# one kdbench PGD-AT teacher (plus a natural teacher for MTARD / IAD-II), a 5 000-image training
# subset, 3 epochs each; then clean and PGD-20 (torchattacks) accuracy on 1 000 test points.
#   bash benchmarks/methods_fmnist.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-runs/fmnist-methods}
KD=${KD:-kdbench}
COMMON="--dataset fashion-mnist --model smallcnn --train-subset 5000 --no-progress"
[ -f "$OUT/teacher/state.pt" ] || $KD train --method pgd-at $COMMON --epochs 5 --out "$OUT/teacher"
[ -f "$OUT/natural/state.pt" ] || $KD train --method natural $COMMON --epochs 5 --out "$OUT/natural"
for m in pgd-at trades ard iad rslad adaad adaiad dd takd iad-ii mtard; do
  teachers="--teacher $OUT/teacher"
  case $m in pgd-at|trades) teachers="";; iad-ii|mtard) teachers="--teacher $OUT/teacher --teacher $OUT/natural";; esac
  extra=""
  case $m in dd|takd) extra="--set method_params.T=5";; esac
  [ -f "$OUT/$m/state.pt" ] || $KD train --method $m $COMMON --epochs 3 $teachers $extra --out "$OUT/$m"
  $KD evaluate --model "$OUT/$m" --num-points 1000 --attacks pgd --db "$OUT/results.db" --out "$OUT/$m/eval.json" \
    --no-progress > /dev/null
  python - "$OUT/$m" <<'PY'
import json, sys
d = sys.argv[1]
r = json.load(open(f"{d}/eval.json"))
h = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
s = sum(x["seconds"] for x in h) / len(h)
print(f"{d.split('/')[-1]:8s} clean {r['clean_accuracy']:.4f}  PGD-20 {r['attacks']['pgd']['robust_accuracy']:.4f}  "
      f"{s:.1f} s/epoch")
PY
done
