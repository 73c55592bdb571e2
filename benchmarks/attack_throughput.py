"""Attack throughput against the model's own forward + backward floor (issue 27, item 5).

The floor is a hand-written loop measured in the same run: per batch one forward and one backward
pass to the input (cross-entropy), the least any gradient attack needs per iteration.  Each attack
runs through ``kdbench.evaluate`` (attacks only: no checks, no probe) on the same points, and its
rate is its counted model passes (forward + backward images, ``cost``) per second; the ratio
``attack / floor`` is the share of the hardware's pass rate the attack keeps (1.0: no overhead;
APGD's own tensor work, early stop's shrinking batches and Square's small query batches lower it).

Every combination of ``--channels-last`` and ``torch.compile`` (``--compile``) is tried, each
measured against its own floor; the attacks stay in float32.  Weights are random (throughput does
not depend on them) and the labels are the model's own predictions, so every point is attacked.

    python benchmarks/attack_throughput.py                      # ResNet-18, CIFAR shape, the device found
    python benchmarks/attack_throughput.py --n 512 --batch 256 --device cuda
    python benchmarks/attack_throughput.py --n 32 --batch 32 --attacks "apgd-ce,fast:audit=4;n_queries=500"   # CPU
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from kdbench.cli.evaluate import split_attacks
from kdbench.device import resolve_device
from kdbench.evaluation import evaluate
from kdbench.specs import resolve_model

VARIANTS = {"plain": (False, False), "channels-last": (True, False), "compile": (False, True),
            "channels-last+compile": (True, True)}


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def floor(model, x, y, batch, reps, dev):
    """Forward + backward images per second of the plain loop (after one warm-up pass)."""
    def once():
        for i in range(0, len(x), batch):
            xi = x[i:i + batch].detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xi), y[i:i + batch], reduction="sum"), xi)

    once()
    sync(dev)
    t = time.perf_counter()
    for _ in range(reps):
        once()
    sync(dev)
    return 2 * reps * len(x) / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--shape", default="3,32,32", help="C,H,W")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--n", type=int, default=256, help="points per attack")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5, help="floor passes over the n points")
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--attacks", default="apgd-ce,fast", help="attack specs as kdbench evaluate --attacks takes them")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    dev = resolve_device(a.device)
    c, h, w = (int(v) for v in a.shape.split(","))
    torch.manual_seed(0)
    base = resolve_model(a.model, a.classes, c, h).model.to(dev).eval()
    x = torch.rand(a.n, c, h, w, device=dev)
    with torch.no_grad():
        y = base(x).argmax(1)
    attacks = split_attacks(a.attacks)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"{a.model} at {a.shape}, {a.n} points, batch {a.batch}, float32, {name}, torch {torch.__version__}")
    print()
    print("| variant | floor passes/s | " + " | ".join(f"{s} passes/s | {s} / floor" for s in attacks) + " |")
    print("|---|---|" + "---|---|" * len(attacks))
    for v in (s.strip() for s in a.variants.split(",")):
        cl, comp = VARIANTS[v]
        model = base.to(memory_format=torch.channels_last) if cl else base.to(memory_format=torch.contiguous_format)
        xv = x.contiguous(memory_format=torch.channels_last) if cl else x.contiguous()
        if comp:
            model = torch.compile(model)
        f = floor(model, xv, y, a.batch, a.reps, dev)
        cells = []
        for spec in attacks:
            r = evaluate(model, xv, y, attacks=[spec], eps=a.eps, batch_size=a.batch, device=str(dev),
                         channels_last=cl, checks=False, sensitivity=False, progress=False)
            p = r.attacks[spec].passes
            rate = (p.forward + p.backward) / r.attacks[spec].seconds
            cells.append(f"{rate:,.0f} | {rate / f:.2f}")
        print(f"| {v} | {f:,.0f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
