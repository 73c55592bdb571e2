"""Defensive distillation (Papernot et al., S&P 2016; docs/methods.md §8.1, seed 000).

Without a teacher: train at temperature T on hard labels (the distillation *teacher*).
With a teacher: train at T on the teacher's soft labels softmax(Z_T(x) / T) (the *student*).
No inner maximisation; the model's logits are used as-is at test time (T = 1).

Soft labels are computed per batch from the frozen teacher; on un-augmented data (the digit
sets) this equals the reference's labels computed once before training.  The reference's
Keras time decay (lr / (1 + 1e-6 t)) is below 0.3 % over 50 epochs and is not reproduced."""
from .. import losses
from .base import METHODS, Method


@METHODS.register("dd", "defensive-distillation")
class DefensiveDistillation(Method):
    name = "dd"
    params = {"T": 100.0}
    num_teachers = (0, 1)
    select_metric = "clean"

    def loss(self, student, x, x_adv, y):
        s_nat = student(x)
        t_nat = self.teacher(0, x) if self.teacher_models else None
        return losses.dd_loss(s_nat=s_nat, y=y, t_nat=t_nat, T=self.p["T"]), s_nat
