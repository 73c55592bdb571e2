"""Redraw seed 000's figures from kdbench results (see mnist5k-seed000.sh).

    python recipes/seed000_figures.py RUNS OUT --temps 1 2 5 10 20 30 40

Writes OUT/summary.csv (one row per temperature and chain position), OUT/claims.md (each of the
paper's claims with the statistic our data gives for it and the rule that decides it),
OUT/ensemble_vs_cw.md (where both were run: kdbench's rho_adv ensembles against the paper's
Carlini-Wagner attacks, point by point) and
OUT/fig3_accuracy.png, fig4_sensitivity.png, fig5_robustness.png, fig6_confidence.png,
fig7_multistep_accuracy.png, fig8_multistep_robustness.png.
"""
import argparse
import csv
import json
import math
from pathlib import Path

import matplotlib
from scipy.stats import spearmanr, wilcoxon

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

POSITIONS = ["teacher", "step-1", "step-2", "step-3", "step-4", "step-5", "student"]
ROLE = {"teacher": "teacher", "step-1": "student (DD)", "step-2": "student via assistant",
        "student": "last link (step 6)"}
# rho_adv: kdbench's ensembles (minnorm.json: per point the smallest verified distance over each
# norm's strongest attacks, issue 20) and the paper's Carlini-Wagner attacks (cw.json), each where run
ATTACKS = ["min-l0", "min-l2", "min-linf", "cw-l0", "cw-l2", "cw-linf-min"]


def load(runs: Path, temps):
    rows = []
    for t in temps:
        for i, pos in enumerate(POSITIONS):
            d = runs / f"T{t:g}" / pos
            if not (d / "acc.json").is_file():
                continue
            acc = json.loads((d / "acc.json").read_text())
            found, dist = {}, {}
            for f in ("cw.json", "minnorm.json"):
                res = json.loads((d / f).read_text()) if (d / f).is_file() else {}
                for spec, v in (res.get("min_perturbation") or {}).items():
                    found.setdefault(spec.split(":")[0], v)
                per = res.get("per_sample") or {}
                for spec, ds in (per.get("min_distance") or {}).items():
                    dist.setdefault(spec.split(":")[0], {i: v for i, v in zip(per.get("index", []), ds)
                                                         if v is not None and math.isfinite(v)})
            row = {"T": t, "position": i, "model": pos, "n": acc["n"], "accuracy": acc["clean_accuracy"],
                   "sensitivity_mean": acc["sensitivity"]["mean"],
                   "fraction_grad_below_1e-10": acc["sensitivity"]["fraction_below_1e-10"],
                   "confidence": acc["confidence"]}
            for a in ATTACKS:  # the attack's name, whatever its parameters (cw-l0:steps=100)
                mp = found.get(a) or {}
                row[f"{a}_mean"], row[f"{a}_max"] = mp.get("mean"), mp.get("max")
                row[f"{a}_success"] = mp.get("success_rate")
            row["_dist"] = dist
            rows.append(row)
    return rows


def series(rows, pos, key):
    pts = sorted((r["T"], r[key]) for r in rows if r["model"] == pos and r.get(key) is not None)
    return [p[0] for p in pts], [p[1] for p in pts]


def lines(rows, positions, key, ax, title, ylabel):
    """One line per chain position over T, the temperatures evenly spaced (as the paper plots them)."""
    ts = sorted({r["T"] for r in rows})
    for pos in positions:
        xs, ys = series(rows, pos, key)
        if xs:
            ax.plot([ts.index(x) for x in xs], ys, marker="o", label=ROLE.get(pos, pos))
    ax.set_xticks(range(len(ts)), [f"{t:g}" for t in ts])
    ax.set_xlabel("distillation temperature T")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)


def _finite(rows, key, pos=None):
    return [r for r in rows if (pos is None or r["model"] == pos) and r.get(key) is not None
            and math.isfinite(r[key])]


def _trend(rows, pos, key):
    """Spearman's rho of KEY against T over one chain position, or None with fewer than 3 T."""
    pts = _finite(rows, key, pos)
    if len(pts) < 3:
        return None
    rho = spearmanr([r["T"] for r in pts], [r[key] for r in pts]).statistic
    return None if math.isnan(rho) else float(rho)


def _paired_stats(rows, atk, pos, other):
    """Per-point paired comparison of POS's minimal distances with OTHER's at the same T on the
    same test points, pooled over T: (mean difference, its standard error, n, Wilcoxon p), or
    None with fewer than 10 pairs or no difference at all."""
    diffs = []
    for r in rows:
        if r["model"] != pos:
            continue
        o = next((q for q in rows if q["T"] == r["T"] and q["model"] == other), None)
        if o is None:
            continue
        a, b = r["_dist"].get(atk, {}), o["_dist"].get(atk, {})
        diffs += [a[i] - b[i] for i in a.keys() & b.keys()]
    if len(diffs) < 10 or not any(diffs):
        return None
    mean = sum(diffs) / len(diffs)
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
    return mean, se, len(diffs), float(wilcoxon(diffs).pvalue)


def _paired(rows, atk, pos, others):
    """_paired_stats of POS against each of OTHERS, as text for the claims table."""
    out = []
    for other in others:
        st = _paired_stats(rows, atk, pos, other)
        if st is not None:
            mean, se, n, p = st
            out.append(f"vs {ROLE[other]}: mean paired difference {mean:+.3g} (se {se:.2g}) over {n} "
                       f"points, Wilcoxon p = {p:.2g}")
    return ("; " + "; ".join(out)) if out else ""


def _fmt(v, spec=".2f"):
    return "n/a" if v is None else format(v, spec)


def claims(rows, n_acc):
    """The paper's claims (seed 000, Sec. VI) as (claim, what we measured, verdict) triples.

    A trend over T is Spearman's rho over the temperatures; "supported" needs the sign the paper
    states for every chain position it names, and |rho| >= 0.5 (7 temperatures: rho = 0.5 is
    weak evidence; the table gives rho so a reader can apply a stricter rule).  A claim of no
    accuracy change is "consistent" when the largest difference is within two standard errors of
    a difference of two accuracies on N_ACC test points: we cannot resolve the paper's 0.15 %.
    Robustness rising with the number of distillation steps needs both rho >= 0.5 over the step
    means and the last link (step 6) above the one-step DD student per point (Wilcoxon p < 0.05,
    pooled over the temperatures that have the whole chain)."""
    out = []
    three = ["teacher", "step-1", "step-2"]
    se = lambda p: math.sqrt(max(p * (1 - p), 1e-12) / n_acc)  # noqa: E731
    base = next((r for r in rows if r["model"] == "teacher" and r["T"] == min(x["T"] for x in rows)), None)
    if base is not None:
        devs = [abs(r["accuracy"] - base["accuracy"]) for r in rows if r["model"] in three]
        tol = 2 * math.sqrt(2) * se(base["accuracy"])
        out.append(("Accuracy varies very little with distillation (MNIST: at most 0.15 % from the T = 1 teacher)",
                    f"largest deviation {100 * max(devs):.2f} % (two standard errors of a difference on "
                    f"{n_acc} points: {100 * tol:.2f} %)",
                    "consistent (within sampling error)" if max(devs) <= tol else "not supported"))
    rhos = {pos: _trend(rows, pos, "accuracy") for pos in three}
    ok = all(v is not None and v <= -0.5 for v in rhos.values())
    out.append(("Accuracy decreases with temperature", "Spearman rho(T, accuracy): " + ", ".join(
        f"{ROLE[p]} {_fmt(v)}" for p, v in rhos.items()), "supported" if ok else "not supported"))
    wins, total = 0, 0
    for t in sorted({r["T"] for r in rows}):
        at = {r["model"]: r["accuracy"] for r in rows if r["T"] == t}
        for pos in ("step-1", "step-2"):
            if "teacher" in at and pos in at:
                total += 1
                wins += at[pos] >= at["teacher"]
    out.append(("At a fixed T the distilled models are at least as accurate as the teacher",
                f"{wins} of {total} (T, distilled model) pairs", "supported" if total and wins >= 0.75 * total
                else "not supported"))
    rs, rf = _trend(rows, "teacher", "sensitivity_mean"), _trend(rows, "teacher", "fraction_grad_below_1e-10")
    students = "; ".join(f"{ROLE[p]}: {_fmt(_trend(rows, p, 'sensitivity_mean'))}, "
                         f"{_fmt(_trend(rows, p, 'fraction_grad_below_1e-10'))}" for p in ("step-1", "step-2"))
    out.append(("Higher T gives the teachers smaller gradients and more near-zero gradients (< 1e-10)",
                f"teachers: rho(T, mean gradient amplitude) {_fmt(rs)}, rho(T, share < 1e-10) {_fmt(rf)} "
                f"(the same two for the {students})",
                "supported" if rs is not None and rf is not None and rs <= -0.5 and rf >= 0.5
                else "supported for the share of near-zero gradients, not for the mean"
                if rf is not None and rf >= 0.5 else "not supported"))
    for atk in ATTACKS:
        key = f"{atk}_mean"
        if not _finite(rows, key):
            continue
        rhos = {pos: _trend(rows, pos, key) for pos in three}
        ok = all(v is not None and v >= 0.5 for v in rhos.values())
        out.append((f"Robustness (mean rho_adv, {atk}) increases with T",
                    "Spearman rho(T, mean distance): " + ", ".join(f"{ROLE[p]} {_fmt(v)}" for p, v in rhos.items()),
                    "supported" if ok else "not supported"))
        by_t = {}
        for r in _finite(rows, key):
            by_t.setdefault(r["T"], {})[r["model"]] = r[key]
        full = [d for d in by_t.values() if all(p in d for p in three)]
        if full:
            wins = sum(d["step-2"] > max(d["teacher"], d["step-1"]) for d in full)
            m = {p: sum(d[p] for d in full) / len(full) for p in three}
            paired = _paired(rows, atk, "step-2", ("teacher", "step-1"))
            out.append((f"The student via the assistant is more robust than the teacher and the assistant ({atk})",
                        f"highest of the three at {wins} of {len(full)} temperatures; mean over T: "
                        + ", ".join(f"{ROLE[p]} {m[p]:.3g}" for p in three) + paired,
                        "supported" if wins > len(full) / 2 and m["step-2"] > max(m["teacher"], m["step-1"])
                        else "not supported"))
    means = {atk: [r[f"{atk}_mean"] for r in _finite(rows, f"{atk}_mean")] for atk in ATTACKS}
    if any(means.values()):
        out.append(("L2 is the most efficient attack (least perturbation), L0 the least",
                    "mean distance over all models: " + ", ".join(
                        f"{atk} {sum(v) / len(v):.3g}" for atk, v in means.items() if v),
                    "not testable: distances in different norms share no scale"))
    conf = [r["confidence"] for r in rows if r["model"] in three]
    rc = {pos: _trend(rows, pos, "confidence") for pos in three}
    out.append(("Confidence shows no trend over T and little difference between models",
                f"range {min(conf):.3f}-{max(conf):.3f}; rho(T, confidence): "
                + ", ".join(f"{ROLE[p]} {_fmt(v)}" for p, v in rc.items()),
                "supported" if max(conf) - min(conf) <= 0.05 and all(v is None or abs(v) < 0.5 for v in rc.values())
                else "not supported"))
    spans = []
    for t in sorted({r["T"] for r in rows}):
        accs = [r["accuracy"] for r in rows if r["T"] == t and r["position"] >= 1]
        if len(accs) >= 2:
            spans.append(max(accs) - min(accs))
    if spans:
        tol = 2 * math.sqrt(2) * se(sum(r["accuracy"] for r in rows) / len(rows))
        out.append(("More distillation steps do not change accuracy significantly",
                    f"largest spread over steps 1-6 at one T {100 * max(spans):.2f} % (tolerance {100 * tol:.2f} %)",
                    "consistent (within sampling error)" if max(spans) <= tol else "not supported"))
    for atk in ATTACKS:
        key = f"{atk}_mean"
        have = _finite(rows, key)
        xs = sorted({r["position"] for r in have})
        temps = [t for t in sorted({r["T"] for r in have})  # the temperatures with every step
                 if {r["position"] for r in have if r["T"] == t} == set(xs)]
        steps = [(r["position"], r[key]) for r in have if r["T"] in temps]
        if len(xs) < 3 or max(xs) < 3 or not temps:  # not run beyond the main comparison (CW_ROLES)
            continue
        means = [sum(v for p, v in steps if p == x) / sum(1 for p, _ in steps if p == x) for x in xs]
        rho = float(spearmanr(xs, means).statistic)
        rho = None if math.isnan(rho) else rho
        # the trend in the step means, and the last link against the one-step (DD) student per point
        last = _paired_stats([r for r in have if r["T"] in temps], atk, "student", "step-1")
        verdict = "supported" if rho is not None and rho >= 0.5 and last and last[0] > 0 and last[3] < 0.05 \
            else "not supported"
        if rho is not None and rho >= 0.5 and verdict != "supported":
            verdict = "not supported: the means rise, but the last link is not significantly above the DD student"
        if len(xs) < len(POSITIONS) or len(temps) < 2:
            verdict = "not decided yet: needs every step of the chain at two temperatures or more"
        out.append((f"Robustness ({atk}) increases with the number of distillation steps",
                    f"mean over T = {', '.join(f'{t:g}' for t in temps)} by step (0 = teacher) "
                    f"{', '.join(f'{x}: {m:.3g}' for x, m in zip(xs, means))}; "
                    f"Spearman rho {_fmt(rho)}" + _paired([r for r in have if r["T"] in temps], atk, "student",
                                                          ("step-1",)), verdict))
    return out


PAIRS = [("min-l0", "cw-l0"), ("min-l2", "cw-l2"), ("min-linf", "cw-linf-min")]


def ensemble_vs_cw(rows):
    """Per norm, the ensemble's distance against the paper's CW attack on the same points of the
    models that ran both: (ensemble, cw, points, mean of ensemble / cw, share smaller, share
    larger, mean of ensemble / the per-point best of the two, points where only one of the two
    found an example)."""
    out = []
    for ens, cw in PAIRS:
        ratios, one = [], 0
        for r in rows:
            a, b = r["_dist"].get(ens, {}), r["_dist"].get(cw, {})
            if a and b:
                ratios += [a[i] / b[i] for i in a.keys() & b.keys() if b[i] > 0]
                one += len(a.keys() ^ b.keys())
        if ratios:
            n = len(ratios)
            out.append((ens, cw, n, sum(ratios) / n, sum(q < 1 - 1e-9 for q in ratios) / n,
                        sum(q > 1 + 1e-9 for q in ratios) / n, sum(max(q, 1.0) for q in ratios) / n, one))
    return out


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
        w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if not k.startswith("_")], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    n_acc = min(r["n"] for r in rows)
    with open(out / "claims.md", "w") as f:
        f.write("| the paper's claim (seed 000, Sec. VI) | our data | verdict |\n|---|---|---|\n")
        for claim, measured, verdict in claims(rows, n_acc):
            f.write(f"| {claim} | {measured} | {verdict} |\n")
    pairs = ensemble_vs_cw(rows)
    if pairs:
        with open(out / "ensemble_vs_cw.md", "w") as f:
            f.write("| rho_adv | paper's attack | points (models that ran both) | mean of ensemble / CW per point | "
                    "ensemble smaller | ensemble larger | mean of ensemble / best of both | found by one only |\n"
                    "|---|---|---|---|---|---|---|---|\n")
            for ens, cw, n, mean, smaller, larger, best, one in pairs:
                f.write(f"| {ens} | {cw} | {n} | {mean:.3f} | {smaller:.0%} | {larger:.0%} | {best:.3f} | {one} |\n")
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
    present = [atk for atk in ATTACKS if _finite(rows, f"{atk}_mean")]
    fig, axes = plt.subplots(2, len(present), figsize=(3.7 * len(present), 6), squeeze=False)
    for j, atk in enumerate(present):
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
    fig, axes = plt.subplots(1, len(present), figsize=(3.7 * len(present), 3.2), squeeze=False)
    axes = axes[0]
    for j, atk in enumerate(present):
        key = f"{atk}_mean"
        means = []
        for i, pos in enumerate(POSITIONS):
            vals = [r[key] for r in rows if r["model"] == pos and r.get(key) is not None and math.isfinite(r[key])]
            means.append(sum(vals) / len(vals) if vals else float("nan"))
        axes[j].plot(range(len(POSITIONS)), means, marker="o")
        axes[j].set_xlabel("distillation step (0 = teacher)")
        axes[j].set_title(f"Fig. 8: rho_adv ({atk}), mean over T", fontsize=9)
    fig.tight_layout(); fig.savefig(out / "fig8_multistep_robustness.png", dpi=120); plt.close(fig)
    print(f"wrote {out}/summary.csv, {out}/claims.md and 6 figures")


if __name__ == "__main__":
    main()
