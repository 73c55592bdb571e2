"""TRADES (Zhang et al. 2019; docs/methods.md §10.2).
Inner: sum KL(f(x) || f(x')) with the model in eval, start x + 0.001 N(0, I), 10 steps of
0.007 at eps 0.031 (step = 0.226 eps), project then clip.  Outer (train mode):
CE(f(x), y) + beta * batchmean KL(f(x) || f(x')), beta = 6, target not detached.

Forward passes (``official_passes``, default true): S(x), S(x'), S(x) as the official trades.py
(yaodongyu/TRADES 6e8e11b: one S(x) per term), which BatchNorm's running statistics follow;
``false`` runs S(x) once (the same gradient, one pass fewer)."""
import torch

from .. import losses
from ..attacks.pgd import mode, pgd
from .base import METHODS, Method, student_passes


@METHODS.register("trades")
class TRADES(Method):
    name = "trades"
    params = {"beta": 6.0, "official_passes": True}
    step_ratio = 0.007 / 0.031

    def perturb(self, student, x, y):
        a = self.attack
        with mode(student, train=False):
            with torch.no_grad():
                nat = student(x)
            return pgd(x, lambda xa: losses.kl(nat, student(xa), reduction="sum"),
                       a.eps, a.step_size, a.steps, start="normal", clip_start=False)

    def loss(self, student, x, x_adv, y):
        s_adv, s_nat = student_passes(student, "nan" if self.p["official_passes"] else "na", x, x_adv)
        return losses.trades_loss(s_nat=s_nat, s_adv=s_adv, y=y, beta=self.p["beta"]), s_nat
