"""kdbench evaluate against hand-written baselines, in the same run (prints ratios).

1. kdbench ``pgd`` (torchattacks, 20 steps) vs a hand-written PGD-20 loop: same model, data, batch.
2. kdbench ``autoattack`` vs pyautoattack called directly.
3. ``--cascade`` on the standard suite vs every attack on every point.
4. the standard suite with AutoAttack composed per point (the default: reuses the suite's APGD-CE,
   APGD-T and Square, runs FAB-T) vs the same suite with the single reference call
   (``autoattack:composed=false``), and how many points their AutoAttack outcomes differ on.

    python benchmarks/eval_overhead.py [--n 500]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from kdbench.data import get_dataset
from kdbench.evaluation import evaluate
from kdbench.cli.evaluate import DEFAULT_WEIGHTS
from kdbench.specs import resolve_model


def hand_pgd(model, x, y, eps, steps, batch):
    t0 = time.perf_counter()
    robust = 0
    for s in range(0, len(y), batch):
        xb, yb = x[s:s + batch], y[s:s + batch]
        with torch.no_grad():
            ok = model(xb).argmax(1) == yb
        xa = (xb + torch.empty_like(xb).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(steps):
            xa.requires_grad_(True)
            g, = torch.autograd.grad(F.cross_entropy(model(xa), yb), xa)
            xa = torch.min(torch.max(xa.detach() + eps / 4 * g.sign(), xb - eps), xb + eps).clamp(0, 1)
        with torch.no_grad():
            robust += (ok & (model(xa).argmax(1) == yb)).sum().item()
    return time.perf_counter() - t0, robust / len(y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--aa-n", type=int, default=100)
    ap.add_argument("--batch", type=int, default=256)
    a = ap.parse_args()
    model = resolve_model("smallcnn", 10, 1, 8, weights=str(DEFAULT_WEIGHTS)).model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ds = get_dataset("digits")
    idx, _ = ds.eval_indices(a.n)
    x, y = ds.test.images(idx), ds.test.y[idx]
    eps = 0.1
    hand_pgd(model, x, y, eps, 2, a.batch)  # warm-up
    th, acc_h = min((hand_pgd(model, x, y, eps, 20, a.batch) for _ in range(3)), key=lambda t: t[0])
    tk = min(_timed(lambda: evaluate(model, x, y, attacks=["pgd"], eps=eps, batch_size=a.batch, device="cpu",
                                     checks=False, sensitivity=False)) for _ in range(3))
    print(f"PGD-20, {a.n} digits points: hand-written {th:.2f}s, kdbench (attack path: checks and gradient probe "
          f"off) {tk:.2f}s, ratio {tk / th:.3f} (goal <= 1.05)")
    tf = min(_timed(lambda: evaluate(model, x, y, attacks=["pgd"], eps=eps, batch_size=a.batch, device="cpu"))
             for _ in range(3))
    print(f"  the default evaluation adds the sensitivity/gradient probe (1 forward + 2 backward per point) and "
          f"the validity budget checks: {tf:.2f}s, ratio {tf / th:.3f}")

    from pyautoattack import AutoAttack

    xs, ys = x[:a.aa_n], y[:a.aa_n]
    t0 = time.perf_counter()
    AutoAttack(model, device="cpu", eps=eps, norm="Linf", seed=0, version="standard").run_standard_evaluation(
        xs, ys, batch_size=a.batch)
    td = time.perf_counter() - t0
    tk = _timed(lambda: evaluate(model, xs, ys, attacks=["autoattack"], eps=eps, batch_size=a.batch, seed=0,
                                 device="cpu", checks=False, sensitivity=False))
    print(f"AutoAttack standard, {a.aa_n} points: pyautoattack {td:.2f}s, kdbench {tk:.2f}s, "
          f"ratio {tk / td:.3f} (goal <= 1.05)")

    t_all = _timed(lambda: evaluate(model, xs, ys, suite="standard", eps=eps, batch_size=a.batch, device="cpu"))
    t_cas = _timed(lambda: evaluate(model, xs, ys, suite="standard", eps=eps, batch_size=a.batch, device="cpu",
                                    cascade=True))
    print(f"standard suite, {a.aa_n} points: every attack on every point {t_all:.2f}s, cascade {t_cas:.2f}s, "
          f"speed-up {t_all / t_cas:.2f}x")

    from kdbench.attacks.suites import suite

    kw = dict(eps=eps, batch_size=a.batch, seed=0, device="cpu", checks=False, sensitivity=False)
    ref_specs = [s if s != "autoattack" else "autoattack:composed=false" for s in suite("standard")]
    t0 = time.perf_counter()
    comp = evaluate(model, xs, ys, suite="standard", **kw).to_dict()
    t_comp = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = evaluate(model, xs, ys, attacks=ref_specs, **kw).to_dict()
    t_ref = time.perf_counter() - t0
    fc, fr = comp["per_sample"]["robust"]["autoattack"], ref["per_sample"]["robust"]["autoattack:composed=false"]
    print(f"standard suite, {a.aa_n} points: AutoAttack as one reference call {t_ref:.2f}s, composed per point "
          f"{t_comp:.2f}s, speed-up {t_ref / t_comp:.2f}x; AutoAttack robust accuracy "
          f"{sum(fr) / len(fr):.3f} vs {sum(fc) / len(fc):.3f}, outcomes differ on "
          f"{sum(p != q for p, q in zip(fc, fr))} point(s) (random starts only)")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
