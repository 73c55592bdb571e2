"""kdbench's training engine against a hand-written PGD-AT loop, in the same run.

One epoch of PGD-AT (10 steps) on a Fashion-MNIST subset with the same model, batch size,
steps and optimizer.  Prints both times and their ratio (goal: at most 1.05).

    python benchmarks/train_overhead.py [--n 6000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from kdbench.config import TrainConfig
from kdbench.data import get_dataset
from kdbench.models import build_model
from kdbench.training import train


def hand_written(x_all, y_all, batch, eps, step, steps, seed):
    torch.manual_seed(seed)
    model = build_model("smallcnn", 10, 1, 28)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    perm = torch.randperm(len(y_all))
    t0 = time.perf_counter()
    for i in range(0, len(perm), batch):
        idx = perm[i:i + batch]
        x, y = x_all[idx].float() / 255, y_all[idx]
        model.eval()
        xa = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(steps):
            xa.requires_grad_(True)
            g, = torch.autograd.grad(F.cross_entropy(model(xa), y, reduction="sum"), xa)
            xa = torch.min(torch.max(xa.detach() + step * g.sign(), x - eps), x + eps).clamp(0, 1)
        model.train()
        loss = F.cross_entropy(model(xa), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def engine(n, batch, seed):
    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(method="pgd-at", dataset="fashion-mnist", model="smallcnn", epochs=1, batch_size=batch,
                          train_subset=n, seed=seed)
        cfg.eval.every = 0
        t0 = time.perf_counter()
        train(cfg, d, progress=False)
        return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    ds = get_dataset("fashion-mnist")
    idx, _ = ds.eval_indices(a.n, seed=0, split="train")
    x_all, y_all = ds.train.x[idx], ds.train.y[idx]
    t_hand, t_eng = [], []
    for r in range(a.repeats):  # interleaved, best of N: the machines are noisy
        t_hand.append(hand_written(x_all, y_all, a.batch, 0.1, 0.025, 10, r))
        t_eng.append(engine(a.n, a.batch, r))
        print(f"repeat {r + 1}: hand-written {t_hand[-1]:.2f}s  kdbench {t_eng[-1]:.2f}s")
    h, e = min(t_hand), min(t_eng)
    print(f"PGD-AT epoch, {a.n} Fashion-MNIST images, batch {a.batch}, 10 steps, {torch.get_num_threads()} threads")
    print(f"hand-written loop: {h:.2f}s   kdbench engine: {e:.2f}s   ratio: {e / h:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
