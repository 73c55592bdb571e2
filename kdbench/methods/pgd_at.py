"""PGD adversarial training (Madry et al. 2018; docs/methods.md §10.1, the harness recommendation):
inner: CE PGD, 10 steps of eps/4 (2/255 at 8/255), uniform start, model in eval;
outer: mean CE on x' with the model in train mode."""
import torch.nn.functional as F

from .. import losses
from ..attacks.pgd import mode, pgd
from .base import METHODS, Method


@METHODS.register("pgd-at", "pgdat", "madry")
class PGDAT(Method):
    name = "pgd-at"

    def perturb(self, student, x, y):
        a = self.attack
        with mode(student, train=False):
            return pgd(x, lambda xa: F.cross_entropy(student(xa), y, reduction="sum"),
                       a.eps, a.step_size, a.steps, start="uniform")

    def loss(self, student, x, x_adv, y):
        logits = student(x_adv)
        return losses.pgd_at_loss(s_adv=logits, y=y), logits
