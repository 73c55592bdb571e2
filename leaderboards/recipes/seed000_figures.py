"""Redraw seed 000's figures from kdbench results (see mnist5k-seed000.sh).

    python leaderboards/recipes/seed000_figures.py RUNS OUT --temps 1 2 5 10 20 30 40

Writes OUT/summary.csv (one row per temperature and chain position) and
OUT/fig3_accuracy.png, fig4_sensitivity.png, fig5_robustness.png, fig6_confidence.png,
fig7_multistep_accuracy.png, fig8_multistep_robustness.png.
"""
import argparse
import csv
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

POSITIONS = ["teacher", "step-1", "step-2", "step-3", "step-4", "step-5", "student"]
ROLE = {"teacher": "teacher", "step-1": "student (DD)", "step-2": "student via assistant"}
ATTACKS = ["cw-l0", "cw-l2", "cw-linf-min"]


def load(runs: Path, temps):
    rows = []
    for t in temps:
        for i, pos in enumerate(POSITIONS):
            d = runs / f"T{t:g}" / pos
            if not (d / "acc.json").is_file():
                continue
            acc = json.loads((d / "acc.json").read_text())
            cw = json.loads((d / "cw.json").read_text()) if (d / "cw.json").is_file() else {}
            row = {"T": t, "position": i, "model": pos, "accuracy": acc["clean_accuracy"],
                   "sensitivity_mean": acc["sensitivity"]["mean"],
                   "fraction_grad_below_1e-10": acc["sensitivity"]["fraction_below_1e-10"],
                   "confidence": acc["confidence"]}
            found = {spec.split(":")[0]: v for spec, v in (cw.get("min_perturbation") or {}).items()}
            for a in ATTACKS:  # the attack's name, whatever its parameters (cw-l0:steps=100)
                mp = found.get(a) or {}
                row[f"{a}_mean"], row[f"{a}_max"] = mp.get("mean"), mp.get("max")
                row[f"{a}_success"] = mp.get("success_rate")
            rows.append(row)
    return rows


def series(rows, pos, key):
    pts = sorted((r["T"], r[key]) for r in rows if r["model"] == pos and r.get(key) is not None)
    return [p[0] for p in pts], [p[1] for p in pts]


def lines(rows, positions, key, ax, title, ylabel):
    for pos in positions:
        xs, ys = series(rows, pos, key)
        if xs:
            ax.plot(xs, ys, marker="o", label=ROLE.get(pos, pos))
    ax.set_xscale("symlog")
    ax.set_xlabel("distillation temperature T")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("out")
    ap.add_argument("--temps", type=float, nargs="+", default=[1, 2, 5, 10, 20, 30, 40])
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = load(Path(a.runs), a.temps)
    if not rows:
        raise SystemExit(f"no results under {a.runs}")
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    three = ["teacher", "step-1", "step-2"]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    lines(rows, three, "accuracy", ax, "Fig. 3: accuracy at T = 1", "test accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout(); fig.savefig(out / "fig3_accuracy.png", dpi=120); plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    lines(rows, three, "sensitivity_mean", axes[0], "Fig. 4: mean |dF/dx|", "mean gradient amplitude")
    axes[0].set_yscale("log")
    lines(rows, three, "fraction_grad_below_1e-10", axes[1], "Fig. 4: share of gradients < 1e-10", "fraction")
    axes[0].legend(fontsize=7)
    fig.tight_layout(); fig.savefig(out / "fig4_sensitivity.png", dpi=120); plt.close(fig)
    fig, axes = plt.subplots(2, 3, figsize=(11, 6))
    for j, atk in enumerate(ATTACKS):
        lines(rows, three, f"{atk}_mean", axes[0, j], f"Fig. 5: mean rho_adv ({atk})", "mean minimal distance")
        lines(rows, three, f"{atk}_max", axes[1, j], f"Fig. 5: max ({atk})", "max minimal distance")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout(); fig.savefig(out / "fig5_robustness.png", dpi=120); plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    lines(rows, three, "confidence", ax, "Fig. 6: confidence (Eq. 14)", "confidence")
    ax.legend(fontsize=7)
    fig.tight_layout(); fig.savefig(out / "fig6_confidence.png", dpi=120); plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for t in a.temps:
        pts = sorted((r["position"], r["accuracy"]) for r in rows if r["T"] == t)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"T={t:g}")
    ax.set_xlabel("distillation step (0 = teacher)"); ax.set_ylabel("test accuracy")
    ax.set_title("Fig. 7: multi-step accuracy", fontsize=9); ax.legend(fontsize=6)
    fig.tight_layout(); fig.savefig(out / "fig7_multistep_accuracy.png", dpi=120); plt.close(fig)
    fig, axes = plt.subplots(1, len(ATTACKS), figsize=(11, 3.2))
    for j, atk in enumerate(ATTACKS):
        key = f"{atk}_mean"
        means = []
        for i, pos in enumerate(POSITIONS):
            vals = [r[key] for r in rows if r["model"] == pos and r.get(key) is not None and math.isfinite(r[key])]
            means.append(sum(vals) / len(vals) if vals else float("nan"))
        axes[j].plot(range(len(POSITIONS)), means, marker="o")
        axes[j].set_xlabel("distillation step (0 = teacher)")
        axes[j].set_title(f"Fig. 8: rho_adv ({atk}), mean over T", fontsize=9)
    fig.tight_layout(); fig.savefig(out / "fig8_multistep_robustness.png", dpi=120); plt.close(fig)
    print(f"wrote {out}/summary.csv and 6 figures")


if __name__ == "__main__":
    main()
