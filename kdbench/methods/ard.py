"""ARD -- Adversarially Robust Distillation (Goldblum et al., AAAI 2020; docs/methods.md §1).

Inner: student CE (summed) PGD, 10 steps of eps/4, uniform start *not* clipped, the student
in **train** mode (official ``main.py``: BN statistics update during the attack).
Outer: alpha tau^2 KL(T^tau(x) || S^tau(x')) [element-wise mean] + (1 - alpha) CE(S(x), y);
the teacher sees clean x; the clean pass runs even at alpha = 1 (it updates BN statistics).

Deviation switch: ``released_lr_schedule: true`` reproduces the official lr, which decays only
once (at the first milestone) because ``adjust_learning_rate`` scales a local copy."""
from .. import losses
from ..attacks.pgd import ce_pgd
from .base import METHODS, Method


def single_decay(lr, base_lr, epoch, milestones, gamma):
    """The released ARD/IAD schedule: only the first milestone takes effect."""
    return base_lr * (gamma if milestones and epoch >= milestones[0] else 1.0)


@METHODS.register("ard")
class ARD(Method):
    name = "ard"
    params = {"alpha": 1.0, "tau": 30.0, "released_lr_schedule": False}
    num_teachers = (1, 1)

    def perturb(self, student, x, y):
        return ce_pgd(student, x, y, self.attack, train_mode=True, start="uniform", clip_start=False)

    def loss(self, student, x, x_adv, y):
        t_nat = self.teacher(0, x)
        s_adv, s_nat = student(x_adv), student(x)
        return losses.ard_loss(s_nat=s_nat, s_adv=s_adv, t_nat=t_nat, y=y, alpha=self.p["alpha"],
                               tau=self.p["tau"]), s_adv

    def adjust_lr(self, epoch, epochs, lr, base_lr, milestones, gamma):
        return single_decay(lr, base_lr, epoch, milestones, gamma) if self.p["released_lr_schedule"] else lr
