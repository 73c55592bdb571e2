"""kdbench's CW-L0 and CW-L-inf against their reference schedule, in the same run, through
``kdbench.evaluate`` (every x' re-checked, distances as results report them).

The baseline is the reference schedule written out as parameters (methods.md 11.2/11.3: start at
x, every constant run for its full ``steps``, the ladder to ``c_max``):
``init=none,abort_early=false,patience=0``.  The defaults start from the cheapest strong attack of
the norm (``fmn-l0`` / ``fab-linf``, counted in the CW attack's cost) and drop hopeless constants
(kdbench.attacks.cw._Ladder).  Issue 20's goal: CPU seconds per point <= 1/10 of the reference's,
at an equal or smaller mean distance.

    python benchmarks/cw_speed.py [--models digits,leaderboards/fashion-mnist/runs/pgd-at-s0] [--n 8]
"""
from __future__ import annotations

import argparse
import resource

import torch

from kdbench.evaluation import evaluate
from minnorm import points

REFERENCE = "init=none,abort_early=false,patience=0"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(model, x, y, spec):
    """(distances of the clean-correct points, CPU seconds, forward + backward passes)."""
    t = cpu_seconds()
    d = evaluate(model, x, y, attacks=[spec], eps=1e-3, device="cpu", checks=False, sensitivity=False).to_dict()
    sec = cpu_seconds() - t
    key = next(iter(d["attacks"]))
    correct = torch.tensor(d["per_sample"]["correct_clean"])
    dist = torch.tensor(d["per_sample"]["min_distance"][key], dtype=torch.float64)[correct]
    p = d["attacks"][key]["passes"]
    return dist, sec, p["forward"] + p["backward"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="digits,leaderboards/fashion-mnist/runs/pgd-at-s0")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--attacks", default="cw-l0,cw-linf-min")
    a = ap.parse_args()
    print("| model | attack | points | reference: mean distance, CPU s / point, passes / point | "
          "default: mean distance, CPU s / point, passes / point | distance ratio | CPU ratio (goal <= 0.1) |")
    print("|---|---|---|---|---|---|---|")
    for spec in a.models.split(","):
        model, x, y = points(spec, a.n)
        for atk in a.attacks.split(","):
            d_ref, s_ref, p_ref = run(model, x, y, f"{atk}:{REFERENCE}")
            d_new, s_new, p_new = run(model, x, y, atk)
            k = max(len(d_ref), 1)
            both = torch.isfinite(d_ref) & torch.isfinite(d_new)
            print(f"| {spec} | {atk} | {len(d_ref)} | {d_ref[both].mean():.4g}, {s_ref / k:.1f}, {p_ref / k:.0f} | "
                  f"{d_new[both].mean():.4g}, {s_new / k:.1f}, {p_new / k:.0f} | "
                  f"{(d_new[both].mean() / d_ref[both].mean()).item():.3f} | {s_new / s_ref:.3f} |", flush=True)


if __name__ == "__main__":
    main()
