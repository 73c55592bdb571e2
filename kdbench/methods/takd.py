"""Teacher-assistant distillation: one link of a chain (docs/methods.md §8.2-8.4).

``loss: dd`` (default): the defensive-distillation loss at temperature T from the previous
model's soft labels -- the same-architecture chains of Mandal & Gao (seed 000), where
teacher, assistant and student share one architecture and multi-step chains have k links.
``loss: kd``: Mirzadeh et al.'s (1 - lambda) CE + lambda T^2 KL (element-wise mean) -- the
smaller-assistant chain.  Chains are built by ``kdbench train --method takd --chain K``
(see kdbench/training/chain.py); each link's config names its teacher.

Deviation switch: ``released_lr_rule: true`` reproduces TAKD's released learning rate
(0.01 until 75 % of the epochs, then 0.001: its 0.1 phase never runs)."""
from .. import losses
from ..errors import KdbenchError
from .base import METHODS, Method


@METHODS.register("takd", "ta")
class TAKD(Method):
    name = "takd"
    params = {"loss": "dd", "T": 20.0, "lam": 0.5, "released_lr_rule": False}
    num_teachers = (1, 1)
    select_metric = "clean"

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        if self.p["loss"] not in ("dd", "kd"):
            raise KdbenchError(f"takd: loss must be dd or kd, got {self.p['loss']!r}")

    def loss(self, student, x, x_adv, y):
        s_nat, t_nat = student(x), self.teacher(0, x)
        if self.p["loss"] == "dd":
            return losses.dd_loss(s_nat=s_nat, t_nat=t_nat, T=self.p["T"]), s_nat
        return losses.takd_loss(s_nat=s_nat, t_nat=t_nat, y=y, lam=self.p["lam"], T=self.p["T"]), s_nat

    def adjust_lr(self, epoch, epochs, lr, base_lr, milestones, gamma):
        if not self.p["released_lr_rule"]:
            return lr
        return 0.01 if epoch < int(0.75 * epochs) else 0.001
