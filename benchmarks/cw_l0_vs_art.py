"""kdbench's batched CW-L0 against ART's CarliniL0Method on the same images, same run.

Prints the time ratio (goal: kdbench at least 20x faster) and the mean-L0 ratio
(goal: kdbench / ART at most 1.0), L0 counted as changed pixels for both.

Budgets are matched by default: ART's defaults solve each L0 round with 10 constants
(initial 0.01, doubled on failure) x 10 Adam iterations (plus its line search); kdbench gets the
same constants (c0 = 0.01 up to 0.01 x 2^10) and, per ``--budgets`` entry STEPS:LR, that many Adam
steps per constant at that learning rate (Carlini's is 0.01; ART's line search takes up to 2^5
times its step, which a larger kdbench rate stands in for).
``--carlini`` gives kdbench Carlini's own settings instead (1000 steps, c up to 2e6: much slower,
smaller L0).

    python benchmarks/cw_l0_vs_art.py [--n 64] [--budgets 10:0.01,10:0.1,30:0.01,100:0.01] [--carlini]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn

from kdbench.attacks.cw import cw_l0, l0_pixels
from kdbench.data import get_dataset
from kdbench.cli.evaluate import DEFAULT_WEIGHTS
from kdbench.specs import resolve_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--budgets", default="10:0.01,10:0.1,30:0.01,100:0.01",
                    help="kdbench STEPS:LR per constant, comma-separated: one row each (ART runs once)")
    ap.add_argument("--carlini", action="store_true", help="kdbench with Carlini's settings (1000 steps, c to 2e6)")
    ap.add_argument("--art-batch", type=int, default=1, help="ART's default batch size is 1")
    a = ap.parse_args()
    model = resolve_model("smallcnn", 10, 1, 8, weights=str(DEFAULT_WEIGHTS)).model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ds = get_dataset("digits")
    idx, _ = ds.eval_indices(a.n * 2, seed=0)
    x, y = ds.test.images(idx), ds.test.y[idx]
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok][:a.n], y[ok][:a.n]

    runs = []
    for item in (["1000:0.01"] if a.carlini else a.budgets.split(",")):
        steps, lr = int(item.split(":")[0]), float(item.split(":")[1])
        budget = dict(steps=1000) if a.carlini else dict(steps=steps, lr=lr, c0=0.01, c_max=0.01 * 2 ** 10)
        t0 = time.perf_counter()
        xa, succ = cw_l0(model, x, y, **budget)
        runs.append((budget, time.perf_counter() - t0, succ, l0_pixels(xa - x).float()))

    from art.attacks.evasion import CarliniL0Method
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10,
                            clip_values=(0.0, 1.0))
    atk = CarliniL0Method(clf, batch_size=a.art_batch, verbose=False)
    t0 = time.perf_counter()
    xart = atk.generate(x=x.numpy(), y=y.numpy())
    t_art = time.perf_counter() - t0
    xart = torch.from_numpy(xart)
    with torch.no_grad():
        succ_art = model(xart).argmax(1) != y
    l0_art = l0_pixels(xart - x).float()
    print(f"{len(y)} digits images, smallcnn (PGD-AT), untargeted")
    print(f"ART CarliniL0Method (defaults, batch {a.art_batch}): {t_art:.1f}s, success {succ_art.float().mean():.2%}, "
          f"mean L0 {l0_art[succ_art].mean():.2f} px")
    for budget, t_kd, succ, l0_kd in runs:
        both = succ & succ_art
        ratio = f"{l0_kd[both].mean() / l0_art[both].mean():.3f}" if both.any() else "n/a"
        print(f"kdbench cw-l0 {budget}: {t_kd:.1f}s, success {succ.float().mean():.2%}, mean L0 "
              f"{l0_kd[succ].mean():.2f} px | time ratio ART / kdbench {t_art / t_kd:.1f}x (goal >= 20), "
              f"mean-L0 ratio kdbench / ART on the {int(both.sum())} points both broke {ratio} (goal <= 1.0)")


if __name__ == "__main__":
    main()
