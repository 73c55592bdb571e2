"""Training cost of every method against PGD-AT's, measured back to back in one process.

Each method trains ``--batches`` batches (batch 128, eps 0.1, PGD-10 inner steps) of
Fashion-MNIST through the real engine with the board's teachers; the time per batch excludes
the per-epoch monitor and checkpointing.  Prints seconds per batch and the ratio to PGD-AT.

    python benchmarks/method_cost.py --teachers runs/board-fmnist [--batches 10]
"""
from __future__ import annotations

import argparse
import time

import torch

from kdbench.config import TrainConfig
from kdbench.data import get_dataset, iterate
from kdbench.methods import InnerMaxConfig, get_method
from kdbench.models import build_model
from kdbench.specs import resolve_model

TEACHERS = {"ard": ["pgd-at"], "iad": ["pgd-at"], "iad-ii": ["pgd-at", "natural"], "rslad": ["pgd-at"],
            "mtard": ["pgd-at", "natural"], "adaad": ["pgd-at"], "adaiad": ["pgd-at"], "dd": ["pgd-at"],
            "takd": ["pgd-at"], "darht": ["pgd-at", "trades"], "darht-het": ["pgd-at", "trades", "vit"],
            "smaraad": ["pgd-at"], "smaraadpp": ["pgd-at"], "agkd-bml": ["natural"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teachers", required=True, help="directory with teacher-{pgd-at,natural,trades,vit}")
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--methods", default="pgd-at,natural,trades," + ",".join(TEACHERS))
    a = ap.parse_args()
    ds = get_dataset("fashion-mnist")
    info = ds.info
    dev = torch.device("cpu")
    idx = torch.arange(128 * (a.batches + 1))
    cache = {}
    times = {}
    for name in a.methods.split(","):
        method_id = "darht" if name == "darht-het" else name
        teachers = []
        for t in TEACHERS.get(name, []):
            if t not in cache:
                m = resolve_model(f"{a.teachers}/teacher-{t}").model.eval()
                for p in m.parameters():
                    p.requires_grad_(False)
                cache[t] = m
            teachers.append(cache[t])
        torch.manual_seed(0)
        cls = get_method(method_id)
        student = cls.build_student(build_model("smallcnn", info.num_classes, info.in_channels, info.input_size),
                                    {}, len(teachers), info.num_classes)
        method = cls({}, InnerMaxConfig(0.1, 0.1 * cls.step_ratio, 10), teachers, info.num_classes)
        method.prepare(student, ds.train, None, fresh=False)
        method.begin_epoch(0, 5)
        opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
        t0 = None
        for i, (x, y) in enumerate(iterate(ds.train, 128, dev, indices=idx)):
            if i == 1:  # the first batch warms up
                t0 = time.perf_counter()
            x_adv = method.perturb(student, x, y)
            student.train()
            loss, _ = method.loss(student, x, x_adv, y)
            if loss is None:
                continue
            opt.zero_grad()
            loss.backward()
            opt.step()
        times[name] = (time.perf_counter() - t0) / a.batches
        print(f"{name:10s} {times[name]:.3f} s/batch  {times[name] / times.get('pgd-at', times[name]):.2f}x PGD-AT",
              flush=True)


if __name__ == "__main__":
    main()
