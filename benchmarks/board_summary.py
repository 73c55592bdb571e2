"""Per-run summary of a board's runs: the training monitor's last clean / PGD-20 accuracy
(500 test points), kdbench evaluate's PGD-20 on 1 000 points where an evaluation exists, and the
mean epoch time against PGD-AT's (same budget, same machine, same worker count).

    python benchmarks/board_summary.py runs/board-fmnist [--seed 0]
"""
import argparse
import json
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rows = []
    for d in sorted(Path(a.runs).glob(f"*-s{a.seed}")):
        if not (d / "metrics.jsonl").is_file():
            continue
        h = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        ev = None
        for suite in ("standard", "quick"):
            if (d / f"eval-{suite}.json").is_file():
                ev = json.loads((d / f"eval-{suite}.json").read_text())
                break
        rows.append((d.name[:-len(f"-s{a.seed}")], len(h), h[-1].get("clean_acc"), h[-1].get("pgd_acc"),
                     ev["clean_accuracy"] if ev else None, ev["attacks"]["pgd"]["robust_accuracy"] if ev else None,
                     sum(r["seconds"] for r in h) / len(h)))
    base = next((r[6] for r in rows if r[0] == "pgd-at"), None)
    print(f"{'run':10s} ep  monitor clean/PGD-20   evaluate clean/PGD-20 (n=1000)   s/epoch  vs PGD-AT")
    for name, ep, mc, mp, ec, ep20, sec in rows:
        fmt = lambda v: "  -  " if v is None else f"{100 * v:5.1f}"  # noqa: E731
        ratio = f"{sec / base:.2f}x" if base else "-"
        print(f"{name:10s} {ep:2d}  {fmt(mc)} / {fmt(mp)}          {fmt(ec)} / {fmt(ep20)}                 "
              f"{sec:6.1f}  {ratio}")


if __name__ == "__main__":
    main()
