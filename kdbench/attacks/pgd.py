"""Projected gradient ascent for training-time inner maximisation (docs/methods.md §0.3).

This is the attack *inside* training (PGD-AT, TRADES and every distillation method); it is
deliberately small and native so each method's exact variant (loss, start, steps, step, mode)
is visible.  Evaluation attacks go through the libraries (``kdbench evaluate``).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Tuple

import torch
import torch.nn.functional as F


@contextmanager
def mode(model: torch.nn.Module, train: bool):
    """Temporarily put ``model`` in train (True) or eval (False) mode."""
    prev = model.training
    model.train(train)
    try:
        yield model
    finally:
        model.train(prev)


def random_start(x: torch.Tensor, eps: float, start: str, clip: bool = True) -> torch.Tensor:
    """``uniform``: x + U(-eps, eps) (Madry); ``normal``: x + 0.001 N(0, I) (TRADES);
    ``none``: x.  ``clip`` clips the start to [0, 1] (some official codes do not)."""
    if start == "uniform":
        x0 = x + torch.empty_like(x).uniform_(-eps, eps)
    elif start == "normal":
        x0 = x + 0.001 * torch.randn_like(x)
    elif start == "none":
        x0 = x.clone()
    else:
        raise ValueError(f"unknown random start {start!r}")
    return x0.clamp(0, 1) if clip else x0


def pgd(x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor], eps: float, step_size: float,
        steps: int, start: str = "uniform", clip_start: bool = True, descend: bool = False) -> torch.Tensor:
    """L-inf PGD: ``steps`` sign-gradient steps on ``objective(x')`` (a scalar), each followed by
    projection onto the eps-box around ``x`` and clipping to [0, 1].

    ``descend=True`` minimises the objective (targeted attacks).  Returns a detached tensor.
    """
    x = x.detach()
    x_adv = random_start(x, eps, start, clip_start).detach()
    sign = -1.0 if descend else 1.0
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            grad, = torch.autograd.grad(objective(x_adv), x_adv)
        x_adv = x_adv.detach() + sign * step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)
    return x_adv.detach()


def ce_pgd(student, x, y, attack, train_mode: bool, start: str, clip_start: bool, reduction="sum"):
    """The student-CE inner maximisation shared by ARD, IAD, MTARD and DARHT."""
    with mode(student, train=train_mode):
        return pgd(x, lambda xa: F.cross_entropy(student(xa), y, reduction=reduction), attack.eps,
                   attack.step_size, attack.steps, start=start, clip_start=clip_start)


def cw_margin_pgd(eps, step_size, steps, kappa):
    """CW-inf of the distillation papers: L-inf PGD (uniform start) maximising the Carlini-Wagner
    margin  max_{j != y} Z_j - Z_y, capped at kappa (docs/methods.md §2.4; IAD's basic_eval.py)."""
    def run(model, x, y):
        def objective(xa):
            z = model(xa)
            onehot = F.one_hot(y, z.shape[1]).bool()
            correct = z[onehot]
            other = z.masked_fill(onehot, float("-inf")).max(1).values
            return (-(correct - other + kappa).clamp(min=0)).sum()

        return pgd(x, objective, eps, step_size, steps, start="uniform")

    return run


def early_stop_pgd(model, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, steps: int,
                   step_size: float) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """PGD (uniform start in the L-inf box, or torchattacks PGDL2's start in the L2 ball;
    sign steps / normalised-gradient steps, projection and [0, 1] clipping) that stops on each
    point the moment an iterate is misclassified.  The checks need only each point's verdict, so
    a point is broken when *any* iterate fooled the model (at least as strong as PGD's last
    iterate) and a broken point costs no further passes.  Returns (robust mask, x' -- the first
    fooling iterate where broken, the last iterate elsewhere --, forward images).  Used by the
    validity checks and the ``fast`` suite's first stage."""
    x, y = x.detach(), y
    if norm == "Linf":
        xa = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    else:
        d = torch.randn_like(x)
        d = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        xa = (x + d * torch.rand(len(x), 1, 1, 1, device=x.device) * eps).clamp(0, 1)
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
    out = xa.clone()
    spent = 0
    for step in range(steps + 1):
        act = robust.nonzero().flatten()
        if not len(act):
            break
        xi = xa[act].requires_grad_(True)
        with torch.enable_grad():
            z = model(xi)
            g, = torch.autograd.grad(F.cross_entropy(z, y[act], reduction="sum"), xi) if step < steps else (None,)
        spent += len(act)
        robust[act] = z.detach().argmax(1) == y[act]
        out[act] = xi.detach()
        if g is None:
            break
        keep = robust[act]
        act, xi, g = act[keep], xi.detach()[keep], g[keep]
        if norm == "Linf":
            xn = xi + step_size * g.sign()
            xn = torch.min(torch.max(xn, x[act] - eps), x[act] + eps)
        else:
            xn = xi + step_size * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            dl = xn - x[act]
            dl = dl * (eps / dl.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1).view(-1, 1, 1, 1)
            xn = x[act] + dl
        xa[act] = xn.clamp(0, 1)
    return robust, out, spent
