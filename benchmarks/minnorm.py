"""Minimal-perturbation attacks, per norm: each attack's success rate, mean and median distance, the
ratio of its mean to the per-point best of every attack tried, and its cost per point (seconds and
model passes), next to the ``min-*`` ensembles with their default members; all through
``kdbench.evaluate``, so every x' is re-checked by kdbench and the distances are those results
report.  ``--cw-n 0`` skips the CW attacks.

The baseline is kdbench's own Carlini-Wagner attack of each norm (``cw-l2``, ``cw-linf-min``,
``cw-l0``, the seed-000 protocol), measured in the same run: the table prints each ensemble's cost
over that CW attack's (goal <= 0.1) and its mean over the per-point best (goals: L2 <= 1.02,
L-inf <= 1.05, L0 <= 1.10).  Distances are over the clean-correct points every attack of the norm
solved; the CW attacks, the slowest, can run on the first ``--cw-n`` of the points only (the ratios
of the others then use all points; the per-point best is over the attacks that ran on a point).

    python benchmarks/minnorm.py [--models digits,leaderboards/fashion-mnist/runs/pgd-at-s0,...]
                                 [--n 64] [--cw-n 16] [--norms L2,Linf,L0] [--others SPEC,SPEC]
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from kdbench.attacks.registry import build_attack
from kdbench.cli.evaluate import DEFAULT_WEIGHTS, split_attacks
from kdbench.data import get_dataset
from kdbench.evaluation import evaluate
from kdbench.specs import resolve_model

# attacks tried besides the default ensembles' members (the ensembles run with their defaults)
OTHERS = {"L2": ["fmn-l2"], "Linf": [], "L0": ["fmn-l0:steps=1000"]}
CW = {"L2": "cw-l2", "Linf": "cw-linf-min", "L0": "cw-l0"}
GOAL = {"L2": 1.02, "Linf": 1.05, "L0": 1.10}


def load(spec):
    """The embedded digits model, a board run directory with its committed checkpoint
    (leaderboards/checkpoints/<best.sha256>.safetensors), or any run directory with its weights
    (e.g. a seed-000 cwnet, runs/seed000-mnist5k/T1/teacher after recipes/mnist5k-seed000.sh train)."""
    if spec == "digits":
        return resolve_model("smallcnn", 10, 1, 8, weights=str(DEFAULT_WEIGHTS)).model, "digits"
    sha_file = Path(spec) / "best.sha256"
    if not sha_file.exists():
        m = resolve_model(spec)
        return m.model, m.info["name"]
    sha = sha_file.read_text().split()[0]
    m = resolve_model(spec, weights=str(Path("leaderboards/checkpoints") / f"{sha}.safetensors"))
    return m.model, m.info["name"]


def points(spec, n):
    """(model in eval mode, x, y): a model of :func:`load` and its dataset's first ``n`` seeded
    test points (kdbench evaluate's subset)."""
    model, dsname = load(spec)
    ds = get_dataset(dsname)
    idx, _ = ds.eval_indices(n, seed=0)
    return model.eval(), ds.test.images(idx), ds.test.y[idx]


def run(model, x, y, specs):
    """Per attack: distances and (seconds, passes); and the clean-correct mask."""
    d = evaluate(model, x, y, attacks=specs, eps=1e-3, device="cpu", checks=False, sensitivity=False).to_dict()
    dist = {k: torch.tensor(v, dtype=torch.float64) for k, v in d["per_sample"]["min_distance"].items()}
    att = d["attacks"]
    cost = {k: (att[k]["seconds"], att[k]["passes"]["forward"] + att[k]["passes"]["backward"]) for k in dist}
    return dist, cost, torch.tensor(d["per_sample"]["correct_clean"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="digits,leaderboards/fashion-mnist/runs/pgd-at-s0,"
                                        "leaderboards/fashion-mnist/runs/trades-s0")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--cw-n", type=int, default=16)
    ap.add_argument("--norms", default="L2,Linf,L0")
    ap.add_argument("--others", default="", help="more attacks to try, comma-separated specs (';' between "
                    "parameters), each under its own norm, e.g. 'fmn-l0:gamma=0.2,cw-l0:steps=30;lr=0.05'")
    a = ap.parse_args()
    for spec in split_attacks(a.others) if a.others else []:
        tried = OTHERS[build_attack(spec, 1e-3).min_norm]
        tried += [] if spec in tried else [spec]  # an attack already tried (fmn-l0:steps=1000) runs once
    print("| model | norm | attack | points | success | mean | median | mean / per-point best | s / point | "
          "passes / point |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for spec in a.models.split(","):
        model, x, y = points(spec, a.n)
        for norm in a.norms.split(","):
            dist, cost = {}, {}
            ens = f"min-{norm.lower()}"
            d, c, correct = run(model, x, y, [ens, *OTHERS[norm]])
            dist.update(d), cost.update(c)
            k = min(a.cw_n, len(y))
            if k:
                d, c, _ = run(model, x[:k], y[:k], [CW[norm]])
                dist[CW[norm]] = torch.cat([d[CW[norm]], torch.full((len(y) - k,), math.nan, dtype=torch.float64)])
                cost.update(c)
            ens_key = ens
            stack = torch.stack([torch.where(torch.isnan(v), math.inf, v) for key, v in dist.items() if key != ens_key])
            best = stack.min(0).values
            for key, v in dist.items():
                ran = ~torch.isnan(v) & correct
                ok = ran & torch.isfinite(v) & torch.isfinite(best) & (best > 0)
                npts = int(ran.sum())
                sec, passes = cost[key]
                ratio = (v[ok].mean() / best[ok].mean()).item() if ok.any() else math.nan
                solved = float((ran & torch.isfinite(v)).sum()) / max(npts, 1)
                print(f"| {spec} | {norm} | {key} | {npts} | {solved:.1%} "
                      f"| {v[ok].mean().item():.4g} | {v[ok].median().item():.4g} | {ratio:.3f} | "
                      f"{sec / max(npts, 1):.3f} | {passes / max(npts, 1):.0f} |")
            v = dist[ens_key]
            ok = correct & torch.isfinite(v) & torch.isfinite(best) & (best > 0)
            k_ok = max(int(correct[:k].sum()), 1)  # the CW attack's seconds per clean-correct point, as above
            ratio = f"cost ratio {cost[ens_key][0] / max(int(correct.sum()), 1) / (cost[CW[norm]][0] / k_ok):.4f} " \
                    "(goal <= 0.1)" if k else "(CW not run)"
            print(f"| {spec} | {norm} | **{ens} vs the best** | | | | | "
                  f"{(v[ok].mean() / best[ok].mean()).item():.3f} (goal <= {GOAL[norm]}) | {ratio} | |")

if __name__ == "__main__":
    main()
