"""TRADES (Zhang et al. 2019; docs/methods.md §10.2).
Inner: sum KL(f(x) || f(x')) with the model in eval, start x + 0.001 N(0, I), 10 steps of
0.007 at eps 0.031 (step = 0.226 eps), project then clip.  Outer (train mode):
CE(f(x), y) + beta * batchmean KL(f(x) || f(x')), beta = 6, target not detached.

Deviation: the official code runs two train-mode forward passes on x (one per term); we run
one.  The gradient is identical; BatchNorm running statistics are updated once, not twice."""
import torch

from .. import losses
from ..attacks.pgd import mode, pgd
from .base import METHODS, Method


@METHODS.register("trades")
class TRADES(Method):
    name = "trades"
    params = {"beta": 6.0}
    step_ratio = 0.007 / 0.031

    def perturb(self, student, x, y):
        a = self.attack
        with mode(student, train=False):
            with torch.no_grad():
                nat = student(x)
            return pgd(x, lambda xa: losses.kl(nat, student(xa), reduction="sum"),
                       a.eps, a.step_size, a.steps, start="normal", clip_start=False)

    def loss(self, student, x, x_adv, y):
        s_nat, s_adv = student(x), student(x_adv)
        return losses.trades_loss(s_nat=s_nat, s_adv=s_adv, y=y, beta=self.p["beta"]), s_nat
