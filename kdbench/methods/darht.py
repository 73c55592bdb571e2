"""DARHT -- Distilling Adversarial Robustness using Heterogeneous Teachers (Deng et al. 2024;
seed 001; docs/methods.md §6 and 7.5).

Student: any kdbench architecture with the STF head (:class:`kdbench.models.stf.STFStudent`):
feature -> dropout -> J x C student-teacher feature map -> logits, Monte-Carlo dropout averaged
over ``samples`` draws before the softmax (Algorithm 1).  Teachers: any number, any architecture
(CNNs, ViTs, teachers from different adversarial-training algorithms).
Inner: with probability ``adv_prob`` (1/2) the batch is replaced by adversarial examples: student
CE (mean) PGD in eval mode, start x + 0.001 N(0, I), 10 steps of 0.003 at eps 0.031 (ratio kept
for other eps); otherwise the clean batch is used.  Teachers see the same batch as the student.
Outer (Eq. 1): CE(S(x~), y) + sum_j w_j KL(S^(T_j)(x~) || T_j(x~)), w = softmax(-CE_j).

Switches for the released code (docs/methods.md §6.3-6.6): ``normalise_weights: false`` (w_j = exp(-CE_j)),
``kl_direction: teacher`` (KL(T_j || S^(T_j))), ``phases: [50, 118]`` (CE only, then CE + KD, then
KD only), ``skip_ce: 8`` (skip a batch whose student CE exceeds 8), ``teacher_train_mode: true``
(teachers left in train mode: one implicit dropout sample per step, BN on batch statistics).
With ``phases``, the CE-only phase runs no teacher, as the release (whose train-mode teachers
would otherwise move their own BN statistics); tests/methods/test_official_steps.py compares a
step in each phase with the released script."""
import torch
import torch.nn.functional as F

from .. import losses
from ..models.stf import STFStudent
from .base import METHODS, Method
from ..attacks.pgd import ce_pgd


@METHODS.register("darht")
class DARHT(Method):
    name = "darht"
    params = {"samples": 4, "dropout": 0.1, "adv_prob": 0.5, "normalise_weights": True, "kl_direction": "student",
              "phases": None, "skip_ce": None, "teacher_train_mode": False}
    num_teachers = (1, None)
    step_ratio = 0.003 / 0.031

    @classmethod
    def build_student(cls, model, params, num_teachers, num_classes):
        p = {**cls.params, **params}
        return STFStudent(model, max(num_teachers, 1), num_classes, dropout=p["dropout"], samples=p["samples"])

    def perturb(self, student, x, y):
        if torch.rand(()) >= self.p["adv_prob"]:
            return None
        return ce_pgd(student, x, y, self.attack, train_mode=False, start="normal", clip_start=False,
                      reduction="mean")

    def teacher(self, i, x):
        if not self.p["teacher_train_mode"]:
            return super().teacher(i, x)
        t = self.teacher_models[i]
        t.train()
        try:
            with torch.no_grad():
                return t(x)
        finally:
            t.eval()

    def weights(self, ce: float, kd: float):
        phases = self.p["phases"]
        if not phases:
            return ce, kd
        first, second = phases
        return (1.0, 0.0) if self.epoch < first else (1.0, 1.0) if self.epoch < second else (0.0, 1.0)

    def loss(self, student, x, x_adv, y):
        xt = x if x_adv is None else x_adv
        logits, stf = student(xt, return_stf=True)
        if self.p["skip_ce"] is not None and F.cross_entropy(logits, y).item() > self.p["skip_ce"]:
            return None, logits
        ce, kd = self.weights(1.0, 1.0)
        if not kd:  # the release's CE-only phase runs no teacher (in train mode they would move BN statistics)
            return F.cross_entropy(logits, y), logits
        teachers = [self.teacher(i, xt) for i in range(len(self.teacher_models))]
        return losses.darht_loss(s_adv=logits, stf=stf, t_adv=teachers, y=y, ce=ce, kd=kd,
                                 normalise=self.p["normalise_weights"], kl_direction=self.p["kl_direction"]), logits
